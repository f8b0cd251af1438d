#!/usr/bin/env python3
"""Golden-file generator for crates/metrics: a faithful re-implementation of the CloudEval-YAML harness's scoring
pipeline (spec: /work/shared/docs/cloudeval-metrics.md, harness commit 78b22ff), calling the same public libraries.

Pinned environment (CPython 3.11; must be <= 3.13 because 3.14 rewrote difflib's _fancy_replace):
    python3.11 -m venv .cache/venv-metrics
    .cache/venv-metrics/bin/pip install nltk==3.8.1 PyYAML==6.0.2 deepdiff==6.7.1
    .cache/venv-metrics/bin/python scripts/golden_metrics.py

Writes crates/metrics/tests/golden/{pairs,yaml}.jsonl (GOLDEN_OUT overrides the directory; GOLDEN_MUTATIONS sets
the number of random-edit YAML parse probes, 500 by default). The first line of each file is a header object naming this
generator and the library versions. Cases are built from data/sample/**/labeled_code.yaml (when present) plus
built-in references, with perturbations that exercise every quirk the spec lists.
"""
import datetime
import difflib
import glob
import json
import math
import os
import random
import re
import sys

import deepdiff
import nltk
import yaml
from deepdiff import DeepDiff
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get("GOLDEN_OUT", os.path.join(ROOT, "crates", "metrics", "tests", "golden"))
assert sys.version_info < (3, 14), "difflib._fancy_replace changed in 3.14; use CPython <= 3.13"


# ---- the harness pipeline (re-implemented from the spec) ---------------------------------------------------------

def strip_generated_code(s):
    s = re.split(r'.*?\bHere\b.*?\n', s)[-1]
    if '```' in s:
        s = s.split('```')[1]
    if '<code>' in s:
        s = s.split('<code>')[1]
    if 'START SOLUTION' in s:
        s = s.split('START SOLUTION')[1]
    if '\\begin\\{code\\}' in s:
        s = s.split('\\begin\\{code\\}')[1]
    s = s.split('\\end\\{code\\}')[0]
    s = s.split('END SOLUTION')[0]
    s = s.split('</code>')[0]
    s = s.strip()
    if 'apiVersion:' in s:
        s = 'apiVersion:' + s.split('apiVersion:', 1)[1]
    elif 'static_resources:' in s:
        s = 'static_resources:' + s.split('static_resources:', 1)[1]
    return s


def bleu(result, reference):
    ref = reference.split()
    hyp = result.split()
    if len(ref) < 4 or len(hyp) < 4:
        return 0
    return corpus_bleu([[ref]], [hyp], weights=(0.25,) * 4, smoothing_function=SmoothingFunction().method3)


def edit_distance(result, reference):
    a = [l.strip() for l in result.strip().splitlines()]
    b = [l.strip() for l in reference.strip().splitlines()]
    diff = list(difflib.Differ().compare(a, b))
    changed = sum(1 for l in diff if l.startswith('+ ') or l.startswith('- '))
    return max(1 - changed / len(b), 0)


def exact_match(result, reference):
    return result.strip() == reference.strip()


def kv_match(result, reference):
    try:
        a = list(yaml.safe_load_all(result))
    except Exception:
        return 0
    try:
        b = list(yaml.safe_load_all(reference))
    except Exception:
        return 0
    if not b:
        return 0
    if len(a) != len(b):
        return False
    return all(not DeepDiff(x, y) for x, y in zip(a, b))


def _leaves(d):
    out = []
    for k, v in d.items():
        name = k.rstrip('*')
        if isinstance(v, dict):
            out += [([name] + p, val, w) for p, val, w in _leaves(v)]
        elif isinstance(v, list) and len(v) > 0 and isinstance(v[0], dict):
            for item in v:
                out += [([name] + p, val, w) for p, val, w in _leaves(item)]
        else:
            out.append(([name], v, k.endswith('*')))
    return out


def _kv_wildcard_raw(result, reference):
    lines = []
    for line in reference.splitlines():
        if '#' in line and line.rstrip().endswith('*'):
            k, v = line.split(':', 1)
            line = k.rstrip() + '*:' + v
        lines.append(line)
    labelled = '\n'.join(lines) + ('\n' if reference.endswith('\n') else '')
    try:
        cand = list(yaml.safe_load_all(result))
    except Exception:
        return False
    ref = list(yaml.safe_load_all(labelled))
    n = max(len(cand), len(ref))
    cand += [{}] * (n - len(cand))
    ref += [{}] * (n - len(ref))
    inter = union = 0
    for c, r in zip(cand, ref):
        cl, rl = _leaves(c), _leaves(r)
        i = 0
        for rp, rv, rw in rl:
            for cp, cv, _ in cl:
                if cp == rp and (rw or cv == rv):
                    i += 1
                    break
        inter += i
        union += len(cl) + len(rl) - i
    return inter / union


def kv_wildcard(result, reference):
    try:
        return _kv_wildcard_raw(result, reference)
    except Exception:
        return 0


def score_all(candidate, reference):
    return {
        "bleu": float(bleu(candidate, reference)),
        "edit_distance": float(edit_distance(candidate, reference)),
        "exact_match": float(exact_match(candidate, reference)),
        "kv_exact_match": float(kv_match(candidate, reference)),
        "kv_wildcard_match": float(kv_wildcard(candidate, reference)),
    }


# ---- typed YAML encoding (mirrored by the Rust golden test) --------------------------------------------------------

def encode(v):
    if v is None:
        return {"null": None}
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"float": repr(v)}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, datetime.datetime):
        off = v.utcoffset()
        return {"datetime": [v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond,
                             None if off is None else int(off.total_seconds() // 60)]}
    if isinstance(v, datetime.date):
        return {"date": [v.year, v.month, v.day]}
    if isinstance(v, list):
        return {"seq": [encode(x) for x in v]}
    if isinstance(v, dict):
        return {"map": [[encode(k), encode(x)] for k, x in v.items()]}
    raise TypeError(type(v))


def load_result(text):
    try:
        return {"ok": True, "documents": [encode(d) for d in yaml.safe_load_all(text)]}
    except Exception as e:  # noqa: BLE001 - any failure is the parity signal
        return {"ok": False, "error": type(e).__name__}


# ---- cases ----------------------------------------------------------------------------------------------------------

BUILTIN_REFERENCES = {
    "pod": """apiVersion: v1
kind: Pod
metadata:
  name: nginx-pod # *
  labels:
    app: web
spec:
  containers:
  - name: nginx # *
    image: nginx:1.25
    ports:
    - containerPort: 80
    env:
    - name: MODE
      value: "on"
""",
    "deployment_two_containers": """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: app
        image: busybox:1.36
        command: ["sh", "-c", "sleep 3600"]
      - name: app
        image: busybox:1.36
""",
    "multi_doc": """apiVersion: v1
kind: Service
metadata:
  name: svc # *
spec:
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
data:
  key: value
  enabled: "true"
""",
    "envoy": """static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address:
        address: 0.0.0.0
        port_value: 10000
  clusters:
  - name: service
    connect_timeout: 0.25s
    type: STRICT_DNS
""",
    "labelled_list": """apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: c
    image: alpine
    args: ["a", "b"] # *
    resources: {}
""",
    "block_scalar": """apiVersion: v1
kind: ConfigMap
metadata:
  name: script
data:
  run.sh: |
    #!/bin/sh
    echo hello
""",
}


def long_reference():
    """A 200+-line reference with repeated lines, so difflib's autojunk and Differ's _fancy_replace matter."""
    lines = ["static_resources:", "  clusters:"]
    for i in range(24):
        lines += [
            f"  - name: cluster_{i}",
            "    connect_timeout: 0.25s",
            "    type: STRICT_DNS",
            "    lb_policy: ROUND_ROBIN",
            "    load_assignment:",
            f"      cluster_name: cluster_{i}",
            "      endpoints:",
            "      - lb_endpoints:",
            "        - endpoint:",
        ]
    return "\n".join(lines) + "\n"


def sample_references():
    refs = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "data", "sample", "**", "labeled_code.yaml"), recursive=True)):
        rel = os.path.relpath(os.path.dirname(path), os.path.join(ROOT, "data", "sample")).replace(os.sep, "_")
        with open(path, encoding="utf-8") as f:
            refs["sample_" + rel] = f.read()
    return refs


def perturbations(ref, rng):
    lines = ref.splitlines()
    out = {"verbatim": ref, "stripped_labels": "\n".join(re.sub(r"\s*#\s*\*\s*$", "", l) for l in lines)}
    if len(lines) > 3:
        i = rng.randrange(1, len(lines))
        out["deleted_line"] = "\n".join(lines[:i] + lines[i + 1:])
        j = rng.randrange(1, len(lines) - 1)
        swapped = list(lines)
        swapped[j], swapped[j + 1] = swapped[j + 1], swapped[j]
        out["swapped_lines"] = "\n".join(swapped)
        out["repeated_line"] = "\n".join(lines[:j] + [lines[j]] * 3 + lines[j:])
    changed = re.sub(r"(\d+)", lambda m: str(int(m.group(1)) + 1), ref, count=1)
    out["changed_number"] = changed
    out["changed_image"] = re.sub(r"(image: \S+?):[\w.]+", r"\1:latest", ref)
    out["fenced_prose"] = "Here is the YAML you asked for:\n```yaml\n" + ref + "```\nLet me know if it helps."
    out["prose_no_fence"] = "Sure! Here's the config\n" + ref + "\nThis sets everything up."
    out["kind_first"] = re.sub(r"^(apiVersion: .*)\n(kind: .*)\n", r"\2\n\1\n", ref, count=1)
    out["trailing_doc_marker"] = ref + "---\n"
    out["crlf"] = ref.replace("\n", "\r\n")
    out["indent_changed"] = "\n".join("  " + l for l in lines)
    out["unicode"] = ref.replace("name:", "name: ünïcødé-", 1)
    out["fs_separator"] = ref.replace(" ", "\x1c", 1)
    out["tabs"] = ref.replace("  ", "\t", 1)
    out["truncated"] = "\n".join(lines[: max(1, len(lines) // 2)])
    out["unparseable"] = ref.replace(":", "", 2) + "\n  - : ]["
    out["code_tags"] = "<code>\n" + ref + "</code> done"
    out["solution_markers"] = "START SOLUTION\n" + ref + "END SOLUTION"
    out["latex_markers"] = "\\begin{code}\n" + ref + "\\end{code}"
    out["latex_escaped_markers"] = "\\begin\\{code\\}\n" + ref + "\\end\\{code\\}"
    out["where_there"] = "Where is it? There:\n" + ref
    out["here_last_line"] = ref + "Here"
    out["yaml_fence_no_anchor"] = "```yaml\nnode:\n  id: x\nadmin: {}\n```"
    return out


YAML_SCALARS = [
    "yes", "no", "on", "off", "Yes", "NO", "y", "n", "true", "False", "TRUE", "010", "0o7", "09", "0x1F", "0b101",
    "1:30", "-1:30", "1_000", "1e3", "1.5e5", "1.5e+5", "1.", ".5", "-.5", "+.inf", "-.inf", ".nan", ".NaN", "1:30.5",
    "2001-12-14", "2001-1-4", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10", "2001-12-14T21:59:43Z",
    "2023-13-45", "2023-02-29", "2024-02-29", "2001-12-14T25:00:00", "=", "~", "null", "Null", "", "'yes'", '"010"',
    "!!str 010", "!!int '42'", "!!float 1", "!!bool yes", "!foo bar", "! 10", "<<", "0b", "0x_", "+0", "-0", "00",
    "123456789012345678901234567890", "0.1", "1_0.5", "1e+3", "3.", "8080", "'8080'", "[1, 2]", "{a: 1}",
    "0755", "12:00", "1:60", "abc def", "a#b", "a #b", "\"a\\tb\"", "'it''s'", "|\n  x\n  y\n", ">\n  x\n  y\n",
]


def yaml_cases():
    cases = {}
    for i, s in enumerate(YAML_SCALARS):
        cases[f"scalar_{i}"] = "k: " + s + "\n"
    cases.update({
        "dup_keys": "a: 1\nb: 2\na: 3\n",
        "merge": "base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n",
        "merge_list": "a: &a {x: 1}\nb: &b {x: 2, z: 3}\nm:\n  <<: [*a, *b]\n  w: 0\n",
        "merge_bad": "m:\n  <<: 1\n",
        "anchors": "a: &x [1, 2]\nb: *x\n",
        "undefined_alias": "a: *nope\n",
        "unhashable": "? [a]\n: 1\n",
        "unhashable_map": "? {a: 1}\n: 1\n",
        "tab_indent": "a:\n\tb: 1\n",
        "tab_after_colon": "a:\tb\n",
        "tab_in_quotes": "a: \"x\ty\"\n",
        "tab_in_comment": "a: b # x\ty\n",
        "tab_in_block": "a: |\n  x\ty\n",
        "tab_trailing": "a: b\t\n",
        "nonprintable": "a: b\x1c\n",
        "nonprintable_del": "a: b\x7f\n",
        "nel_ok": "a: b\x85c\n",
        "bom": "\ufeffa: 1\n",
        "empty": "",
        "comment_only": "# hi\n",
        "doc_marker": "---\n",
        "two_markers": "---\n---\n",
        "trailing_marker": "a: 1\n---\n",
        "doc_end": "a: 1\n...\n",
        "top_list": "- a\n- b\n",
        "prose": "This is just prose.\n",
        "int_key": "80: http\n",
        "bool_key": "on: push\n",
        "float_key_collides": "1: a\n1.0: b\ntrue: c\n",
        "null_key": "~: a\n",
        "eq_key": "=: a\n",
        "flow": "{a: [1, {b: c}], d: 'e'}\n",
        "nested_seq": "- - a\n  - b\n- c\n",
        "multiline_plain": "a: this is\n  folded text\n",
        "quoted_escape": "a: \"\\x41\\u00e9\\n\"\n",
        "explicit_doc": "--- a\n--- b\n",
        "bad_indent": "a:\n  b: 1\n c: 2\n",
        "colon_in_value": "a: b: c\n",
        "percent_directive": "%YAML 1.1\n---\na: 1\n",
        "seq_tag_on_map": "!!seq {a: 1}\n",
        "str_tag_on_seq": "a: !!str [1]\n",
        "big_neg": "a: -0x7fffffffffffffffffffffffffffffffff\n",
        "sexagesimal_big": "a: 190:20:30\n",
        "octal_underscore": "a: 0_7\n",
        "anchor_scalar_merge_keys": "a: &k key\n*k : v\n",
        "deep": "a:\n  b:\n    c:\n      - d: 1\n        e: [x, y]\n",
        "block_eof_clip": "a: |\n  x",
        "block_eof_keep": "a: |+\n  x",
        "block_eof_strip": "a: |-\n  x",
        "folded_eof": "a: >\n  x\n  y",
        "block_clip_blank": "a: |\n  x\n\n",
        "block_keep_blank": "a: |+\n  x\n\n",
        "block_clip_spaces_eof": "a: |\n  x\n  ",
        "block_trailing_spaces": "a: |\n  x  ",
        "block_seq_eof": "- |\n  x\n- |\n  y",
        "block_comment_after": "a: |\n  x\n# c",
        "block_keep_spaces_eof": "a: |+\n  x\n\n  ",
        "block_keep_crlf": "a: |+\r\n  x\r\n\r\n",
        "block_header_comment": "a: |- # note | here\n  x\n",
        "nel_break": "a: b\x85c: d\n",
        "ls_in_quotes": "a: 'x\u2028y'\n",
        "ls_in_plain": "a: x\u2028y\n",
        "quoted_low_indent": "a:\n  b: \"x\ny\"\n",
        "quoted_multiline": "a: \"x\n  y\"\n",
        "plain_multiline_low": "a:\n  b: x\n y\n",
        "flow_low_indent": "a:\n  b: [x,\n  y]\n",
        "flow_lower_indent": "a:\n  b: [x,\ny]\n",
        "flow_map_low_indent": "a:\n  b: {x: 1,\n y: 2}\n",
        "ls_between_keys": "a: 1\u2028b: 2\n",
        "long_key": "k" * 1030 + ": v\n",
        "key_no_space": "a:b\n",
        "flow_colon": "{a:1}\n",
        "seq_same_indent": "a:\n- x\n- y\n",
        "anchor_dup": "a: &x 1\nb: &x 2\nc: *x\n",
        "comment_no_space": "a: b#c\n",
        "question_key": "? a\n: b\n",
        "backtick": "a: `x`\n",
        "at_sign": "a: @x\n",
        "percent_plain": "a: %x\n",
        "dash_plain": "a: -x\n",
        "star_plain": "a: x*\n",
        "json_style": "{\"a\": [1, 2.5, true, null]}\n",
        "inline_comment_after_seq": "- a # c\n- b\n",
        "empty_values": "a:\nb:\n  c:\n",
        "doc_end_then_content": "a: 1\n...\n---\nb: 2\n",
        "yaml12_directive": "%YAML 1.2\n---\na: 1\n",
        "tag_directive": "%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
        "verbatim_str_tag": "a: !<tag:yaml.org,2002:str> 5\n",
        "binary_tag": "a: !!binary aGVsbG8=\n",
        "set_tag": "a: !!set {x, y}\n",
        "omap_tag": "a: !!omap [x: 1]\n",
        "comment_after_flow": "a: [1]# c\nb: 2\n",
        "comment_after_quote": "a: \"x\"# c\n",
        "comment_after_single_quote": "a: 'x'#c\n",
        "colon_line_start": "a: 1\n: b\n",
        "colon_nested": "a:\n  : b\n",
        "explicit_empty_key": "? \n: b\n",
        "seq_empty_key": "- : a\n",
        "flow_empty_key": "{: a}\n",
        "flow_seq_empty_key": "a: [: b]\n",
    })
    return cases


KV_PAIRS = {
    # (candidate, reference) pairs targeting the YAML metrics' typing and wildcard rules.
    "kv_yes_vs_true": ("a: yes\nb: 1\nc: x\nd: y\n", "a: true\nb: 1\nc: x\nd: y\n"),
    "kv_int_vs_float": ("a: 1.0\nb: 2\nc: 3\nd: 4\n", "a: 1\nb: 2\nc: 3\nd: 4\n"),
    "kv_int_vs_str": ("a: '1'\nb: 2\nc: 3\nd: 4\n", "a: 1\nb: 2\nc: 3\nd: 4\n"),
    "kv_list_scalar_types": ("a: [1, 2]\nb: c d e f\n", "a: [true, 2]\nb: c d e f\n"),
    "kv_list_of_maps_types": ("a: [{x: 1}]\nb: c d e f\n", "a: [{x: true}]\nb: c d e f\n"),
    "kv_nan": ("a: .nan\nb: [.nan]\nc: x y z w\n", "a: .nan\nb: [.nan]\nc: x y z w\n"),
    "kv_octal": ("mode: 0644\nx: a b c d\n", "mode: 420\nx: a b c d\n"),
    "kv_dates": ("d: 2020-01-01\nt: 2020-01-01T10:00:00+02:00\nw: a b c\n",
                 "d: 2020-01-01\nt: 2020-01-01T08:00:00Z\nw: a b c\n"),
    "kv_date_vs_str": ("d: '2020-01-01'\nw: a b c d\n", "d: 2020-01-01\nw: a b c d\n"),
    "wc_wildcard": ("name: other\nimage: nginx\nport: 80\n", "name: web # *\nimage: nginx\nport: 80\n"),
    "wc_map_label": ("meta:\n  a: 1\n  b: 2\nx: 1\n", "meta: # *\n  a: 5\n  b: 2\nx: 1\n"),
    "wc_over_one": ("c:\n- name: x\n  image: i\n", "c:\n- name: x\n  image: i\n- name: x\n"),
    "wc_bag": ("l:\n- name: a\n  v: 2\n- name: b\n  v: 1\n", "l:\n- name: a\n  v: 1\n- name: b\n  v: 2\n"),
    "wc_list_item_not_map": ("l:\n- a: 1\n- 2\n", "l:\n- a: 1\n- a: 2\n"),
    "wc_non_str_key": ("80: http\nx: 1\n", "x: 1\ny: 2\n"),
    "wc_label_no_colon": ("a: 1\nb: 2\n", "a: 1\n- b # *\n"),
    "wc_textual_label": ("pattern: z\nq: 1\n", "pattern: a#b*\nq: 1\n"),
    "wc_numeric_cross": ("a: 1\nb: true\nc: 1.0\n", "a: 1.0\nb: 1\nc: true\n"),
    "wc_list_value": ("a: [1, 2]\nb: [x]\n", "a: [1, 2] # *\nb: [y]\n"),
    "wc_empty_map": ("a: {}\nb: 1\n", "a: {}\nb: 1\n"),
    "wc_extra_docs": ("a: 1\n---\nb: 2\n", "a: 1\n"),
    "wc_fewer_docs": ("a: 1\n", "a: 1\n---\nb: 2 # *\n"),
    "tiny_empty": ("", "a: 1\nb: 2\n"),
    "tiny_one_token": ("x", "a: 1\n"),
    "tiny_three_tokens": ("a: 1 b", "a: 1 b: 2\n"),
    "unicode_ws": ("a:\u3000b c d e\n", "a: b c d e\n"),
}

POD = BUILTIN_REFERENCES["pod"]
EXTRACTION_CASES = {
    # Model-output shapes: where the harness's post-processing keeps, cuts or breaks the YAML.
    "here_after_code": "```yaml\n" + POD + "```\nHere is an explanation:\n- it runs nginx\n",
    "here_inside_yaml": POD.replace("app: web", "app: web # Here it is", 1),
    "two_fences": "```yaml\n" + POD + "```\nand\n```yaml\nkind: Other\n```\n",
    "unclosed_fence": "Sure.\n```yaml\n" + POD,
    "api_in_comment": "# uses apiVersion: v2 later\n" + POD,
    "api_in_value": "description: set apiVersion: v1\n" + POD,
    "chinese_prose": "这是您的配置：\n```yaml\n" + POD + "```\n希望对您有帮助。",
    "html_code": "<pre><code>" + POD + "</code></pre>",
    "end_solution_only": POD + "END SOLUTION\ntrailing",
    "end_latex_literal": POD + "\\end\\{code\\}\ntrailing",
    "crlf_here": "Here is the file:\r\n" + POD.replace("\n", "\r\n"),
    "here_unicode_boundary": "éHere\n" + POD,
    "here_digit_boundary": "Here1\n" + POD,
    "here_underscore": "x_Here\n" + POD,
    "here_punct": "(Here)\n" + POD,
    "only_prose": "I cannot help with that request.",
    "empty_output": "",
    "whitespace_output": " \n\t\x1c\n",
    "fence_no_newline": "```apiVersion: v1\nkind: Pod```",
    "static_resources_first": "admin:\n  address: x\nstatic_resources:\n  listeners: []\n",
}


MUTATION_PIECES = [' ', ':', '-', '"', "'", '\n', '  ', '#', '[', ']', '{', '}', ',', '|', '>', '&a ', '*a', '!',
                   '?', '\t', 'x', '0', '.', '%', '@']


def mutations(refs, count, seed):
    """Random small edits of references (insert/delete/replace a YAML-significant piece): parse-parity probes."""
    rng = random.Random(seed)
    texts = list(refs.values())
    out = {}
    for k in range(count):
        chars = list(rng.choice(texts))
        for _ in range(rng.randint(1, 3)):
            op, i, piece = rng.random(), rng.randrange(len(chars)), rng.choice(MUTATION_PIECES)
            if op < 0.4:
                chars.insert(i, piece)
            elif op < 0.7:
                del chars[i]
            else:
                chars[i] = piece
        out[f"mutation_{k}"] = "".join(chars)
    return out


def main():
    rng = random.Random(20261204)
    os.makedirs(OUT, exist_ok=True)
    header = {
        "generator": "scripts/golden_metrics.py",
        "python": sys.version.split()[0],
        "nltk": nltk.__version__,
        "pyyaml": yaml.__version__,
        "deepdiff": deepdiff.__version__,
        "harness": "CloudEval-YAML 78b22ff (re-implemented from /work/shared/docs/cloudeval-metrics.md)",
    }
    refs = dict(BUILTIN_REFERENCES)
    refs["long_222"] = long_reference()
    refs.update(sample_references())
    pairs = []
    for ref_name, ref in refs.items():
        variants = perturbations(ref, rng)
        names = sorted(variants)
        if ref_name.startswith("sample_"):
            # Keep the goldens small (< 2 MB): a seeded subset of perturbations per sample reference.
            names = ["verbatim", "stripped_labels"] + rng.sample([n for n in names if n not in ("verbatim", "stripped_labels")], 3)
        for p_name in names:
            pairs.append((f"{ref_name}/{p_name}", variants[p_name], ref))
    # Long-reference specials: swapped sibling keys and a rewritten block.
    long = long_reference().splitlines()
    swapped = list(long)
    swapped[30], swapped[31] = swapped[31], swapped[30]
    pairs.append(("long_222/swap_siblings", "\n".join(swapped), long_reference()))
    rewritten = list(long)
    for k in range(40, 80):
        rewritten[k] = rewritten[k].replace("ROUND_ROBIN", "LEAST_REQUEST").replace("0.25s", "1s")
    pairs.append(("long_222/rewrite_block", "\n".join(rewritten), long_reference()))
    shuffled = list(long)
    rng.shuffle(shuffled)
    pairs.append(("long_222/shuffled", "\n".join(shuffled), long_reference()))
    for name, (cand, ref) in KV_PAIRS.items():
        pairs.append((name, cand, ref))
    for name, output in EXTRACTION_CASES.items():
        pairs.append((f"extract/{name}", output, POD))
    for name, text in yaml_cases().items():
        pairs.append((f"yaml/{name}", text, "a: 1\nb: 2\nk: v\nx: y\n"))
    with open(os.path.join(OUT, "pairs.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for name, cand, ref in pairs:
            extracted = strip_generated_code(cand)
            record = {"case": name, "candidate": cand, "reference": ref, "extracted": extracted,
                      "scores": score_all(extracted, ref), "raw": score_all(cand, ref)}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "yaml.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        texts = dict(yaml_cases())
        for ref_name, ref in refs.items():
            texts[f"ref/{ref_name}"] = ref
        small_refs = {k: v for k, v in refs.items() if len(v) < 700}
        texts.update(mutations(small_refs, int(os.environ.get("GOLDEN_MUTATIONS", "500")), 20261205))
        for name, text in texts.items():
            f.write(json.dumps({"case": name, "text": text, **load_result(text)}, ensure_ascii=False) + "\n")
    print(f"{len(pairs)} pairs, {len(texts)} yaml cases -> {OUT}")


if __name__ == "__main__":
    main()
