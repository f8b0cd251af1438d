#!/usr/bin/env python3
"""Generate the tiny model fixtures under crates/model/tests/fixtures/.

Each fixture is a random-init Hugging Face checkpoint small enough to commit (hidden 64, 2 layers, vocab 512):
config.json (written in the classic HF layout with `rope_theta` / `rope_scaling`, as the real checkpoints are),
model.safetensors (f32), a byte-level BPE tokenizer.json trained here on Kubernetes-like YAML and English,
tokenizer_config.json, and reference.json holding fixed input ids and transformers' f32 logits, so the Rust
decoder can be checked for parity without Python.

Determinism: the corpus comes from a seeded `random.Random`, weights from a seeded torch generator, and the
tokenizer trainer is deterministic for a fixed corpus; two runs give byte-identical files (checked with sha256sum).

Usage (from the repository root):
    python3 -m venv .cache/venv-fixtures
    .cache/venv-fixtures/bin/pip install torch==2.15.0 transformers==5.25.0 tokenizers==0.23.3 \
        safetensors==0.8.0 peft==0.21.2 gguf==0.19.0 accelerate==1.16.0 numpy==2.4.6
    .cache/venv-fixtures/bin/python scripts/make_fixtures.py [--only NAME ...]
    .cache/venv-fixtures/bin/python scripts/make_fixtures.py --assets   # goldens from .cache/assets (below)

`--assets` needs `scripts/fetch-assets.sh` to have run. It writes, under crates/model/tests/fixtures/assets/,
small goldens computed from the fetched artefacts (never the artefacts themselves): Mistral v0.1 token ids from
Python `tokenizers` on the fetched tokenizer.json (whose ids equal SentencePiece's, see
/work/shared/docs/offline-artefacts.md §2), chat-template renderings by transformers, and the SmolLM2 GGUF
reference (transformers' own GGUF conversion: weight checksums, top-20 logits, tokenizer ids).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "model" / "tests" / "fixtures"

VOCAB_SIZE = 512
# Special tokens take the first ids, in this order, in every fixture's tokenizer.
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, PAD, IM_START, IM_END = range(len(SPECIAL_TOKENS))

# A deliberately small ChatML-style template (SmolLM2-Instruct uses ChatML). It exercises `raise_exception`,
# `bos_token` and `add_generation_prompt`.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ------------------------------------------------------------------------------------------------------------------
# Corpus: Kubernetes-like YAML and English intents, generated from templates with a fixed seed.

NAMES = ["web", "api", "nginx", "redis", "postgres", "frontend", "backend", "worker", "cache", "gateway",
         "metrics", "auth", "billing", "search", "queue", "logger"]
IMAGES = ["nginx:1.27", "redis:7.2", "postgres:16", "busybox:1.36", "python:3.12-slim", "node:20-alpine",
          "golang:1.22", "httpd:2.4", "memcached:1.6", "alpine:3.19"]
NAMESPACES = ["default", "prod", "staging", "kube-system", "monitoring", "dev"]
KINDS_EN = ["Deployment", "Service", "ConfigMap", "Pod", "Job", "CronJob", "Secret", "Ingress", "StatefulSet",
            "DaemonSet", "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "Namespace"]
ENGLISH = [
    "Create a deployment that runs three replicas of the image and exposes port eighty.",
    "Write a service of type ClusterIP that selects the pods labelled app and forwards traffic.",
    "I need a config map holding the application settings for the staging namespace.",
    "Please define a cron job that runs a backup script every night at two o'clock.",
    "Give me a pod with a busybox container that sleeps for one hour and then exits.",
    "The manifest should set resource requests and limits for memory and cpu.",
    "Add a readiness probe that checks the health endpoint over HTTP every ten seconds.",
    "Mount the secret as a volume at the path where the application expects its credentials.",
    "Expose the deployment through an ingress with a host name and a TLS certificate.",
    "Use a persistent volume claim of five gigabytes with the ReadWriteOnce access mode.",
    "Schedule the daemon set on every node, tolerating the control plane taint.",
    "Grant the service account permission to list and watch pods in its namespace.",
    "Only output the YAML, without any explanation before or after it.",
    "Kubernetes is an open source system for automating deployment, scaling and management of containers.",
]


def yaml_deployment(r: random.Random) -> str:
    name, image = r.choice(NAMES), r.choice(IMAGES)
    return (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n"
        f"  name: {name}\n  namespace: {r.choice(NAMESPACES)}\n  labels:\n    app: {name}\n"
        f"spec:\n  replicas: {r.randint(1, 5)}\n  selector:\n    matchLabels:\n      app: {name}\n"
        f"  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n"
        f"      - name: {name}\n        image: {image}\n        ports:\n        - containerPort: {r.choice([80, 443, 6379, 5432, 8080, 9090])}\n"
        f"        resources:\n          requests:\n            cpu: {r.choice(['100m', '250m', '500m'])}\n"
        f"            memory: {r.choice(['64Mi', '128Mi', '256Mi'])}\n"
    )


def yaml_service(r: random.Random) -> str:
    name = r.choice(NAMES)
    port = r.choice([80, 443, 8080, 6379])
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}-svc\nspec:\n"
        f"  type: {r.choice(['ClusterIP', 'NodePort', 'LoadBalancer'])}\n  selector:\n    app: {name}\n"
        f"  ports:\n  - protocol: TCP\n    port: {port}\n    targetPort: {port}\n"
    )


def yaml_configmap(r: random.Random) -> str:
    name = r.choice(NAMES)
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-config\n  namespace: {r.choice(NAMESPACES)}\n"
        f"data:\n  LOG_LEVEL: \"{r.choice(['debug', 'info', 'warn'])}\"\n  MAX_CONNECTIONS: \"{r.randint(10, 500)}\"\n"
        f"  config.yaml: |\n    server:\n      port: {r.choice([8080, 9000])}\n      timeout: {r.randint(1, 60)}s\n"
    )


def yaml_cronjob(r: random.Random) -> str:
    name = r.choice(NAMES)
    return (
        f"apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: {name}-backup\nspec:\n"
        f"  schedule: \"{r.randint(0, 59)} {r.randint(0, 23)} * * *\"\n  jobTemplate:\n    spec:\n      template:\n"
        f"        spec:\n          restartPolicy: OnFailure\n          containers:\n          - name: backup\n"
        f"            image: {r.choice(IMAGES)}\n            command: [\"/bin/sh\", \"-c\", \"echo backup\"]\n"
    )


def corpus(seed: int = 20261204) -> list[str]:
    r = random.Random(seed)
    makers = [yaml_deployment, yaml_service, yaml_configmap, yaml_cronjob]
    texts = []
    for i in range(240):
        texts.append(makers[i % len(makers)](r))
        texts.append(r.choice(ENGLISH) + f" Name it {r.choice(NAMES)} and use a {r.choice(KINDS_EN)}.")
    return texts + ENGLISH


def train_tokenizer() -> Tokenizer:
    """A GPT-2-style byte-level BPE (no prefix space), like SmolLM2's and Llama 3's families."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


# ------------------------------------------------------------------------------------------------------------------
# Fixture specs. Every config is written as real checkpoints write theirs (rope_theta / rope_scaling at the top
# level), and transformers 5 must load it: the reference logits come from the reloaded directory.

COMMON = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": BOS,
    "torch_dtype": "float32",
    "use_cache": True,
}

FIXTURE_SPECS = {
    # GQA (4 query heads, 2 KV heads), separate <pad>; the tokenizer adds no BOS and tokenizer_config.json does
    # not say `add_bos_token`, so the default (prepend BOS) applies. Used by configs/tiny.toml.
    "tiny-llama": {
        "config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_key_value_heads": 2,
                   "rope_theta": 10000.0, "tie_word_embeddings": False, "eos_token_id": EOS, "pad_token_id": PAD},
        "pad": "<pad>", "add_bos_token": None, "post_bos": False, "chat_template": None,
    },
    # Llama 3.1-style rope scaling; eos_token_id is a list (as in Llama 3 Instruct); head_dim given explicitly.
    "tiny-llama3-rope": {
        "config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_key_value_heads": 2,
                   "head_dim": 16, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                   "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                   "tie_word_embeddings": False, "eos_token_id": [EOS, IM_END], "pad_token_id": PAD},
        "pad": "<pad>", "add_bos_token": None, "post_bos": False, "chat_template": None,
    },
    # DeepSeek-Coder style: MHA, linear rope scaling x4 written with the old `type` key, theta 100000.
    "tiny-deepseek": {
        "config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_key_value_heads": 4,
                   "rope_theta": 100000.0, "rope_scaling": {"type": "linear", "factor": 4.0},
                   "max_position_embeddings": 2048, "tie_word_embeddings": False, "eos_token_id": EOS,
                   "pad_token_id": PAD},
        "pad": "<pad>", "add_bos_token": True, "post_bos": False, "chat_template": None,
    },
    # Mistral v0.1 style: GQA and a sliding window (4) shorter than the reference sequences (8), so the
    # reference logits depend on the window. Its tokenizer's post-processor adds <s> itself, like Mistral's.
    "tiny-mistral": {
        "config": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "num_key_value_heads": 2,
                   "rope_theta": 10000.0, "sliding_window": 4, "tie_word_embeddings": False,
                   "eos_token_id": EOS, "pad_token_id": None},
        "pad": None, "add_bos_token": True, "post_bos": True, "chat_template": None,
    },
    # SmolLM2 style: tied embeddings (no lm_head.weight in the file), pad == eos, no BOS, a chat template.
    "tiny-smollm": {
        "config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_key_value_heads": 2,
                   "rope_theta": 100000.0, "tie_word_embeddings": True, "eos_token_id": EOS,
                   "pad_token_id": EOS},
        "pad": "</s>", "add_bos_token": False, "post_bos": False, "chat_template": CHAT_TEMPLATE,
    },
}

REFERENCE_TEXTS = [
    "apiVersion: apps/v1\nkind: Deployment",
    "Create a Service",
]
SEQ_LEN = 8
TOKENIZER_PROBES = [
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\n",
    "Create a deployment with 3 replicas of nginx:1.27 in namespace prod.",
    "  - containerPort: 8080\n\ttabbed: \"quoted\" # comment",
    "Unicode: café, naïve, 東京, emoji 🚀",
    "",
    " ",
    "</s> <s>literal specials",
]


def fixture_tokenizer(base: Tokenizer, post_bos: bool) -> Tokenizer:
    tok = Tokenizer.from_str(base.to_str())
    if post_bos:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]),
        ])
    return tok


def tokenizer_config(spec: dict) -> dict:
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": None,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
    }
    if spec["pad"] is not None:
        cfg["pad_token"] = spec["pad"]
    if spec["add_bos_token"] is not None:
        cfg["add_bos_token"] = spec["add_bos_token"]
    if spec["chat_template"] is not None:
        cfg["chat_template"] = spec["chat_template"]
    return cfg


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Larger-than-default random weights, so a wrong op or layout shows up in the logits (std 0.02 gives
    near-uniform logits that hide bugs). RMSNorm gains are 1 + noise, so a missing gain is visible too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def f32(x: float) -> float:
    """Shortest decimal that round-trips to the same f32 (keeps reference.json small and exact)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def nested_f32(t: torch.Tensor):
    if t.ndim == 0:
        return f32(t.item())
    return [nested_f32(x) for x in t]


def reference_batch(tok: Tokenizer, spec: dict):
    """Row 0: BOS + text 0, cut/extended to SEQ_LEN. Row 1: BOS + a shorter text, left-padded to SEQ_LEN.
    The pad id in the ids is the fixture's pad (or EOS when it has none): masks come from lengths."""
    pad_id = tok.token_to_id(spec["pad"]) if spec["pad"] is not None else EOS
    rows, masks = [], []
    for i, text in enumerate(REFERENCE_TEXTS):
        ids = [BOS] + tok.encode(text, add_special_tokens=False).ids
        if i == 0:
            # Pad the full row with more text ids when the text is short, so no row-0 position is padding.
            while len(ids) < SEQ_LEN:
                ids += tok.encode(" spec", add_special_tokens=False).ids
            ids = ids[:SEQ_LEN]
        else:
            ids = ids[: SEQ_LEN - 3]  # at least 3 pad positions
        n_pad = SEQ_LEN - len(ids)
        rows.append([pad_id] * n_pad + ids)
        masks.append([0] * n_pad + [1] * len(ids))
    return rows, masks


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def make_fixture(name: str, spec: dict, base_tok: Tokenizer, seed: int) -> dict:
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = dict(COMMON)
    config.update(spec["config"])
    write_json(out / "config.json", config)

    tok = fixture_tokenizer(base_tok, spec["post_bos"])
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", tokenizer_config(spec))

    # Build from our config.json (so the file is what transformers parses), randomise, save as plain f32
    # safetensors (tied lm_head left out, as save_pretrained does), then reload from disk for the reference.
    torch.manual_seed(seed)
    hf_config = AutoConfig.from_pretrained(out)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    init_weights(model, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        state.pop("lm_head.weight")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    loaded_rope = getattr(model.config, "rope_parameters", None)

    ids, mask = reference_batch(tok, spec)
    input_ids = torch.tensor(ids)
    attention_mask = torch.tensor(mask)
    # transformers' forward takes positions 0..t-1 unless told; the contract is per-row positions from the mask
    # (what `generate` does), so pass them explicitly.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    last = logits[:, -1, :]
    top = torch.topk(last, 5, dim=-1)

    hf_tok = AutoTokenizer.from_pretrained(out)
    probes = []
    for text in TOKENIZER_PROBES:
        plain = tok.encode(text, add_special_tokens=False).ids
        probes.append({
            "text": text,
            "ids_no_special": plain,
            # What transformers' AutoTokenizer gives with add_special_tokens=True (BOS only if the tokenizer's
            # post-processor adds it): TextCodec must not add a second BOS in that case.
            "ids_hf_default": hf_tok(text)["input_ids"],
            "decoded": tok.decode(plain, skip_special_tokens=False),
        })
    chat = None
    if spec["chat_template"] is not None:
        msgs = [{"role": "user", "content": "Create a Service named web."}]
        chat = {
            "messages": msgs,
            "rendered_with_generation_prompt": hf_tok.apply_chat_template(msgs, tokenize=False,
                                                                          add_generation_prompt=True),
            "rendered_without_generation_prompt": hf_tok.apply_chat_template(msgs, tokenize=False,
                                                                             add_generation_prompt=False),
        }

    reference = {
        "generator": "scripts/make_fixtures.py",
        "transformers_class": type(model).__name__,
        "attn_implementation": "eager",
        "seed": seed,
        "note": "logits at positions where attention_mask is 0 are not meaningful; compare only where it is 1",
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": position_ids.tolist(),
        "logits": nested_f32(logits),
        "last_top5_ids": top.indices.tolist(),
        "tokenizer_probes": probes,
        "chat": chat,
    }
    write_json(out / "reference.json", reference)
    return {"name": name, "params": sum(p.numel() for p in model.parameters()), "rope": loaded_rope}


# ------------------------------------------------------------------------------------------------------------------
# Goldens from the fetched assets.

ASSETS = ROOT / ".cache" / "assets"
ASSET_GOLDENS = FIXTURES / "assets"

YAML_PROBES = [
    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nginx-deployment\n  labels:\n    app: nginx\n",
    "spec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n      - name: nginx\n        image: nginx:1.14.2\n",
    "        ports:\n        - containerPort: 80\n\tresources: {limits: {cpu: \"500m\", memory: 128Mi}}",
    "Create a Service named my-service that targets TCP port 9376 on pods labelled app=MyApp.",
    "data:\n  game.properties: |\n    enemies=aliens\n    lives=3\n  ui.properties: 'color.good=purple'\n",
    "# comment with unicode: café 東京 🚀\n---\nkind: ConfigMap",
    " leading space, trailing space ",
    "",
]


def asset(path: str) -> Path:
    p = ASSETS / path
    if not p.exists():
        raise SystemExit(f"{p} is missing: run scripts/fetch-assets.sh")
    return p


def mistral_goldens() -> dict:
    tok = Tokenizer.from_file(str(asset("tokenizers/mistral-v0.1/tokenizer.json")))
    return {
        "source": "Python tokenizers " + __import__("tokenizers").__version__
                  + " on .cache/assets/tokenizers/mistral-v0.1/tokenizer.json, add_special_tokens=False",
        "cases": [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in YAML_PROBES],
    }


def chat_goldens() -> dict:
    llama3_dir = asset("tokenizers/llama3")
    hf_tok = AutoTokenizer.from_pretrained(llama3_dir)
    conversations = {
        "user": [{"role": "user", "content": "Create a Service named web that exposes port 80."}],
        "system_user": [{"role": "system", "content": "  You write Kubernetes YAML.  "},
                        {"role": "user", "content": "Create a ConfigMap\nwith two keys."}],
    }
    cases = []
    for template_name, template in [
        ("tokenizers/llama3/tokenizer_config.json", None),
        ("chat-templates/meta-llama-Llama-3.1-8B-Instruct.jinja",
         asset("chat-templates/meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()),
    ]:
        for conv_name, messages in conversations.items():
            for gen in (True, False):
                cases.append({
                    "template": template_name,
                    "conversation": conv_name,
                    "add_generation_prompt": gen,
                    "rendered": hf_tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                           add_generation_prompt=gen),
                })
    return {"source": "transformers " + __import__("transformers").__version__ + " apply_chat_template",
            "bos_token": hf_tok.bos_token, "eos_token": hf_tok.eos_token,
            "conversations": conversations, "cases": cases}


def checksum(w: torch.Tensor) -> dict:
    """Order-sensitive summary of a weight: a row-weighted sum catches a permutation of rows (the q/k rotary
    layout) that a plain sum would not."""
    w = w.detach().to(torch.float64)
    rows = torch.arange(1, w.shape[0] + 1, dtype=torch.float64)
    weighted = (w * rows.reshape(-1, *([1] * (w.ndim - 1)))).sum().item()
    sample_rows = sorted({0, 1, 2, w.shape[0] // 3, w.shape[0] // 2 + 1, w.shape[0] - 1})
    return {
        "shape": list(w.shape),
        "sum": w.sum().item(),
        "abs_sum": w.abs().sum().item(),
        "row_weighted_sum": weighted,
        "samples": {str(r): [f32(x) for x in (w[r, :4] if w.ndim == 2 else w[r:r + 1])] for r in sample_rows},
    }


def gguf_goldens() -> dict:
    gguf_path = asset("smollm2-135m-instruct.gguf")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
             "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
             "model.layers.0.input_layernorm.weight", "model.layers.29.self_attn.q_proj.weight",
             "model.layers.29.self_attn.k_proj.weight", "model.layers.29.mlp.down_proj.weight",
             "model.layers.29.post_attention_layernorm.weight", "model.norm.weight"]
    state = model.state_dict()
    prompt = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name:"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    positions = [len(ids) - 3, len(ids) - 2, len(ids) - 1]
    top = []
    for p in positions:
        t = torch.topk(logits[p], 20)
        top.append({"position": p, "ids": t.indices.tolist(), "values": [f32(v) for v in t.values]})
    cfg = model.config
    return {
        "source": "transformers " + __import__("transformers").__version__ + " GGUF loading (gguf "
                  + __import__("importlib.metadata").metadata.version("gguf") + "), f32, eager forward, no BOS",
        "gguf_sha256": hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
        "config": {k: getattr(cfg, k) for k in ["vocab_size", "hidden_size", "intermediate_size",
                                                 "num_hidden_layers", "num_attention_heads",
                                                 "num_key_value_heads", "rms_norm_eps", "max_position_embeddings",
                                                 "tie_word_embeddings", "bos_token_id", "eos_token_id",
                                                 "pad_token_id"]}
                  | {"rope_theta": cfg.rope_parameters["rope_theta"]},
        "weights": {n: checksum(state[n]) for n in names},
        "prompt": prompt,
        "prompt_ids": ids,
        "top20": top,
        "tokenizer": [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in YAML_PROBES],
        "special_ids": {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id},
    }


def make_asset_goldens() -> None:
    ASSET_GOLDENS.mkdir(parents=True, exist_ok=True)
    write_json(ASSET_GOLDENS / "mistral-v0.1-tokenizer.json", mistral_goldens())
    write_json(ASSET_GOLDENS / "llama3-chat.json", chat_goldens())
    write_json(ASSET_GOLDENS / "smollm2-gguf.json", gguf_goldens())
    for f in sorted(ASSET_GOLDENS.iterdir()):
        print(hashlib.sha256(f.read_bytes()).hexdigest()[:16], f.relative_to(FIXTURES), f.stat().st_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="fixture names to (re)generate; default all")
    ap.add_argument("--assets", action="store_true", help="write the goldens computed from .cache/assets")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    if args.assets:
        make_asset_goldens()
        return
    base_tok = train_tokenizer()
    for i, (name, spec) in enumerate(FIXTURE_SPECS.items()):
        if args.only and name not in args.only:
            continue
        info = make_fixture(name, spec, base_tok, seed=1000 + i)
        print(f"{info['name']}: {info['params']} params, rope {info['rope']}")
    total = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    print(f"fixtures total: {total} bytes")
    for f in sorted(FIXTURES.rglob("*")):
        if f.is_file() and f.name != "README.md":
            print(hashlib.sha256(f.read_bytes()).hexdigest()[:16], f.relative_to(FIXTURES))


if __name__ == "__main__":
    main()
