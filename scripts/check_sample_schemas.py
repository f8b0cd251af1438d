#!/usr/bin/env python3
"""Check every reference in data/sample/ (or another CloudEval-layout directory).

For each problem directory `<root>/Kubernetes/<category>/q<N>/` it checks:
  * the files: question.txt, question_simplified.txt and labeled_code.yaml are present and non-empty
    (question_translated.txt is optional);
  * the YAML: every document is a mapping with string keys and no duplicate key, the file starts with
    `apiVersion:` (CloudEval's output extraction cuts everything before the first `apiVersion:`), there is no
    trailing `---`, the file does not end inside a `|`/`>` block scalar (CloudEval strips the final newline),
    and no plain scalar's type differs between YAML 1.1 and 1.2 (yes/no/on/off, 0-prefixed octal, 1:20);
  * the labels: a line ending in `# *` must carry a scalar (`key: value # *` or `- value # *`);
  * strict Kubernetes JSON-schema validity of the reference and of any manifest the question embeds in ``` fences,
    against .cache/assets/k8s-schemas/v1.37.0-local-strict
    (run scripts/fetch-assets.sh first);
  * the numbering: q1..qN without gaps, at least 4 problems per category.
It prints one line per failure (path, document, JSON path, reason), then counts, and exits 1 on any failure.

Usage: .cache/venv-data/bin/python scripts/check_sample_schemas.py [DATA_ROOT]   (default: data/sample)
Needs jsonschema==4.26.0 and PyYAML==6.0.4 (see data/README.md for the venv).
"""

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parent.parent
SCHEMA_DIR = (
    Path(os.environ.get("KUBETUNE_ASSETS", REPO / ".cache" / "assets")) / "k8s-schemas" / "v1.37.0-local-strict"
)
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
REQUIRED_FILES = ("question.txt", "question_simplified.txt", "labeled_code.yaml")
MIN_PER_CATEGORY = 4

# Plain scalars that YAML 1.1 (PyYAML, CloudEval) and YAML 1.2 resolve to different types.
AMBIGUOUS_PLAIN = re.compile(
    r"^(y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF|0[0-7]+|[-+]?\d+(:[0-5]?\d)+(\.\d*)?)$"
)


def schema_file_name(api_version: str, kind: str) -> str:
    """`apps/v1` + `Deployment` -> `deployment-apps-v1.json`; core `v1` -> `<kind>-v1.json`."""
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return f"{kind.lower()}-{group.split('.')[0]}-{version}.json"
    return f"{kind.lower()}-{api_version}.json"


class SchemaValidator:
    def __init__(self, schema_dir: Path):
        if not (schema_dir / "_definitions.json").is_file():
            sys.exit(f"error: {schema_dir}/_definitions.json not found; run scripts/fetch-assets.sh first")
        self.schema_dir = schema_dir
        definitions = json.loads((schema_dir / "_definitions.json").read_text())
        resource = Resource.from_contents(definitions, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(DEFINITIONS_ID, resource)
        self.validators = {}

    def errors(self, doc: dict):
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return ["document lacks a string apiVersion or kind"]
        name = schema_file_name(api_version, kind)
        if name not in self.validators:
            path = self.schema_dir / name
            if not path.is_file():
                return [f"no schema {name} for apiVersion {api_version}, kind {kind}"]
            self.validators[name] = Draft202012Validator(json.loads(path.read_text()), registry=self.registry)
        return [
            f"{'/' + '/'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in sorted(self.validators[name].iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        ]


def non_string_keys(node, path="$"):
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                yield f"{path}: non-string key {key!r}"
            yield from non_string_keys(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from non_string_keys(value, f"{path}[{i}]")


def labels_a_scalar(line: str) -> bool:
    """`key: value # *` and `- value # *` label a scalar; `key: # *` and `- # *` label a collection."""
    content = line.split("#", 1)[0].rstrip()
    if not re.search(r"\s$", line.split("#", 1)[0]) or not line.rstrip().endswith("# *"):
        return False
    return content.strip() not in ("", "-") and not content.endswith(":")


class DuplicateKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last one; stricter parsers error)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def check_yaml_text(text: str):
    """Problems with the reference text itself (not the schema)."""
    problems = []
    if not text.startswith("apiVersion:"):
        problems.append("file must start with 'apiVersion:'")
    if re.search(r"^---\s*\Z", text, re.M) or text.rstrip().endswith("---"):
        problems.append("trailing '---'")
    last_scalar = None
    for token in yaml.scan(text):
        if isinstance(token, yaml.ScalarToken):
            last_scalar = token
            if token.plain and AMBIGUOUS_PLAIN.match(token.value):
                line = token.start_mark.line + 1
                problems.append(f"line {line}: plain scalar {token.value!r} differs between YAML 1.1 and 1.2; quote it")
    # CloudEval strips the output's trailing newline, which changes the value of a final block scalar.
    if last_scalar is not None and last_scalar.style in ("|", ">"):
        problems.append(f"line {last_scalar.start_mark.line + 1}: file ends inside a block scalar; reorder keys")
    for number, line in enumerate(text.splitlines(), 1):
        if "#" in line and line.rstrip().endswith("*") and not labels_a_scalar(line):
            problems.append(f"line {number}: '# *' label on a line without a scalar value: {line.strip()!r}")
    return problems


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "data" / "sample"
    kube = root / "Kubernetes"
    if not kube.is_dir():
        sys.exit(f"error: {kube} is not a directory")
    validator = SchemaValidator(SCHEMA_DIR)
    failures = []
    counts = Counter()
    stats = Counter()

    def fail(path, message):
        failures.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {message}")

    for category_dir in sorted(p for p in kube.iterdir() if p.is_dir()):
        numbers = []
        for problem in sorted(p for p in category_dir.iterdir() if p.is_dir()):
            if not re.fullmatch(r"q[1-9]\d*", problem.name):
                fail(problem, "problem folder must be named q<N>")
                continue
            numbers.append(int(problem.name[1:]))
            counts[category_dir.name] += 1
            for name in REQUIRED_FILES:
                f = problem / name
                if not f.is_file() or not f.read_text().strip():
                    fail(f, "missing or empty")
            translated = problem / "question_translated.txt"
            if translated.exists():
                if not translated.read_text().strip():
                    fail(translated, "empty")
                stats["translated"] += 1
            for name in ("question.txt", "question_translated.txt"):
                question = problem / name
                if not question.is_file():
                    continue
                blocks = re.findall(r"```[a-z]*\n(.*?)```", question.read_text(), re.S)
                if blocks and name == "question.txt":
                    stats["yaml_context"] += 1
                # A manifest given as context must itself be valid, or the question teaches a broken input.
                for block in (b for b in blocks if b.startswith("apiVersion:")):
                    try:
                        context_docs = list(yaml.load_all(block, Loader=DuplicateKeyLoader))
                    except yaml.YAMLError as e:
                        fail(question, f"YAML context does not parse: {e}")
                        continue
                    for doc in context_docs:
                        for message in validator.errors(doc) if isinstance(doc, dict) else ["not a mapping"]:
                            fail(question, f"YAML context ({doc.get('kind') if isinstance(doc, dict) else '?'}): {message}")
            ref = problem / "labeled_code.yaml"
            if not ref.is_file():
                continue
            text = ref.read_text()
            for message in check_yaml_text(text):
                fail(ref, message)
            if any(line.rstrip().endswith("# *") for line in text.splitlines()):
                stats["labelled"] += 1
                stats["label_lines"] += sum(line.rstrip().endswith("# *") for line in text.splitlines())
            try:
                docs = list(yaml.load_all(text, Loader=DuplicateKeyLoader))
            except yaml.YAMLError as e:
                fail(ref, f"YAML parse error: {e}")
                continue
            if len(docs) > 1:
                stats["multi_document"] += 1
            kinds = set()
            for i, doc in enumerate(docs):
                if not isinstance(doc, dict):
                    fail(ref, f"document {i + 1} is not a mapping ({type(doc).__name__})")
                    continue
                kinds.add(str(doc.get("kind", "")).lower())
                for message in non_string_keys(doc):
                    fail(ref, f"document {i + 1}: {message}")
                for message in validator.errors(doc):
                    fail(ref, f"document {i + 1} ({doc.get('kind')}): {message}")
            if category_dir.name not in kinds:
                fail(ref, f"no document of kind {category_dir.name!r} (kinds: {sorted(kinds)})")
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            fail(category_dir, f"problems must be numbered q1..q{len(numbers)} without gaps, found {sorted(numbers)}")
        if len(numbers) < MIN_PER_CATEGORY:
            fail(category_dir, f"{len(numbers)} problems, need at least {MIN_PER_CATEGORY}")

    for line in failures:
        print(f"FAIL {line}")
    total = sum(counts.values())
    print(f"{total} problems in {len(counts)} categories: " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
    print(
        f"multi-document {stats['multi_document']}, labelled {stats['labelled']} "
        f"({stats['label_lines']} '# *' lines), translated {stats['translated']}, "
        f"YAML context in question {stats['yaml_context']}"
    )
    print(f"{len(failures)} failure(s)" if failures else "all references pass strict schema validation")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
