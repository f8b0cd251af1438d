#!/usr/bin/env python3
"""Time our release `train` step against PyTorch + transformers + PEFT on the same weights and batches.

Both sides train SmolLM2-135M-Instruct (the GGUF from scripts/fetch-assets.sh, converted once to a plain HF
directory by transformers so both load byte-identical f32 weights) on the same token batches: our binary runs first
with `--dump-batches`, and the PyTorch side replays exactly those rows (same padding, same masks, same loss
normalisation: summed token NLL / target tokens). f32, batch 2, rows of at most 256 tokens, AdamW lr 2e-4, clip 1.0,
LoRA r=16 alpha=16 on q/k/v/o with dropout 0 (the two frameworks' dropout streams differ), and full fine-tuning.

Reported per method: mean step wall time, non-padding tokens per wall second and per CPU second (user + system, all
threads: on a shared machine the CPU rate measures the work, the wall rate also counts waiting for a core) over the
timed steps (the first `--warmup` steps are dropped), peak RSS with the same definition on both sides (VmHWM, reset by /proc/self/clear_refs right before the
training loop, so model loading is excluded but the resident weights are not), and the step-1 losses (equal
weights and batch, so they must agree to float rounding).

Usage (from the repository root):
    python3 scripts/bench_train_vs_torch.py [--steps 12] [--warmup 2] [--methods lora,full] [--threads 1] [--rounds 1]
`--threads` sets both sides' thread counts (RAYON_NUM_THREADS, the size of our compute pool, and
torch.set_num_threads). Our binary keeps its default CANDLE_NUM_THREADS=1 (candle's elementwise ops on the calling
thread; see ARCHITECTURE.md, "CPU speed"): setting it to the thread count brings back candle's spinning pool.
The PyTorch venv (.cache/venv-torch, pinned torch/transformers/peft, about 3 GB) is created on first use.
Results go to results/bench/train_vs_torch.{json,md}.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from torch_venv import ensure_venv

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / ".cache" / "assets" / "smollm2-135m-instruct.gguf"
WORK = ROOT / ".cache" / "bench-train"
HF_DIR = WORK / "smollm2-135m-hf"


def convert_gguf():
    """GGUF → plain f32 HF directory (config.json, model.safetensors, tokenizer files), once."""
    if (HF_DIR / "model.safetensors").exists():
        return
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not GGUF.exists():
        sys.exit(f"{GGUF} is missing: run scripts/fetch-assets.sh first")
    HF_DIR.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, torch_dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = "float32"
    config.save_pretrained(HF_DIR)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(state, str(HF_DIR / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(HF_DIR)


def write_config(method, max_steps):
    lora = '[lora]\nr = 16\nalpha = 16\ndropout = 0.0\ntargets = ["q_proj", "k_proj", "v_proj", "o_proj"]\n' if method == "lora" else ""
    text = f"""# Written by scripts/bench_train_vs_torch.py.
[model]
source = "{HF_DIR}"
dtype = "f32"
device = "cpu"

[data]
path = "{ROOT / 'data/sample'}"
variants = ["original", "simplified", "translated"]
split = "{ROOT / 'data/splits/sample.json'}"
validation_fraction = 0.0

[prompt]
template = "paper-role"

[optim]
lr = 2e-4
epochs = 1
batch_size = 2
max_grad_norm = 1.0
max_seq_len = 256
seed = 42
max_steps = {max_steps}

{lora}
[output]
run = "bench-{method}"
out_dir = "{WORK / 'out'}"
results_dir = "{WORK / 'results'}"
"""
    path = WORK / f"bench-{method}.toml"
    path.write_text(text)
    return path


def run_ours(method, steps, threads):
    import shutil

    config = write_config(method, steps)
    dump = WORK / f"batches-{method}.jsonl"
    for p in (dump, WORK / "out" / f"bench-{method}", WORK / "results" / f"bench-{method}"):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    subprocess.run(["cargo", "build", "--release", "-p", "train"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    binary = target / "release" / "train"
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    env.pop("CANDLE_NUM_THREADS", None)
    subprocess.run([str(binary), "--config", str(config), "--quiet", "--dump-batches", str(dump)], cwd=ROOT, check=True, env=env)
    summary = json.loads((WORK / "results" / f"bench-{method}" / "train_summary.json").read_text())
    batches = [json.loads(line) for line in dump.read_text().splitlines() if line.strip()]
    return summary, batches


def read_vmhwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_torch(method, batches, pad_id, threads):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(HF_DIR), torch_dtype=torch.float32, attn_implementation="eager")
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], bias="none", task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    reset_ok = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset_ok = False
    steps = []
    for entry in batches:
        rows = [row for micro in entry["micro_batches"] for row in micro]
        t = max(len(r["ids"]) for r in rows)
        ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        target_mask = torch.zeros((len(rows), t - 1))
        for i, r in enumerate(rows):
            n = len(r["ids"])
            ids[i, :n] = torch.tensor(r["ids"])
            mask[i, :n] = 1
            target_mask[i, r["prompt_len"] - 1 : n - 1] = 1.0
        start = time.perf_counter()
        cpu_start = time.process_time()
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        tokens = target_mask.sum()
        loss = -(logp * target_mask).sum() / tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        steps.append({"loss": loss.item(), "seconds": seconds, "cpu_seconds": cpu_seconds, "non_padding_tokens": int(mask.sum())})
    return steps, read_vmhwm(), reset_ok


def timed(steps, warmup):
    kept = steps[warmup:]
    seconds = sum(s["seconds"] for s in kept)
    cpu = sum(s.get("cpu_seconds", 0.0) for s in kept)
    tokens = sum(s["non_padding_tokens"] for s in kept)
    return {
        "steps": len(kept),
        "mean_step_seconds": seconds / len(kept),
        "mean_step_cpu_seconds": cpu / len(kept),
        "tokens_per_second": tokens / seconds,
        "tokens_per_cpu_second": tokens / cpu if cpu > 0 else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps per method (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="leading steps left out of the timing (default 2)")
    parser.add_argument("--methods", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--threads", type=int, default=1, help="threads on both sides (default 1, see the module doc)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run ours then PyTorch this many times per method, alternating, and report each side's median round "
        "(default 1; on a shared machine the speed drifts by more than 10%% within minutes, and alternating puts "
        "both sides in the same drift)",
    )
    args = parser.parse_args()
    ensure_venv()
    WORK.mkdir(parents=True, exist_ok=True)
    convert_gguf()
    pad_id = json.loads((HF_DIR / "config.json").read_text()).get("pad_token_id")
    if pad_id is None:
        pad_id = 0
    report = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to f32)", "threads": args.threads, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "methods": {}}
    for method in args.methods.split(","):
        rounds = []
        for _ in range(max(args.rounds, 1)):
            summary, batches = run_ours(method, args.steps, args.threads)
            ours_steps = summary["loss_history"]
            torch_steps, torch_peak, reset_ok = run_torch(method, batches, pad_id, args.threads)
            rounds.append({
                "ours": {**timed(ours_steps, args.warmup), "peak_rss_bytes": summary["peak_memory_bytes"], "memory_definition": summary["memory_definition"], "step1_loss": ours_steps[0]["loss"]},
                "torch": {**timed(torch_steps, args.warmup), "peak_rss_bytes": torch_peak, "memory_definition": "process peak RSS (VmHWM, reset before the training loop)" if reset_ok else "process peak RSS (VmHWM since start)", "step1_loss": torch_steps[0]["loss"]},
                "losses": {"ours": [s["loss"] for s in ours_steps], "torch": [s["loss"] for s in torch_steps]},
            })
        median = lambda side: sorted(rounds, key=lambda r: r[side]["tokens_per_second"])[(len(rounds) - 1) // 2][side]
        report["methods"][method] = {
            "ours": median("ours"),
            "torch": median("torch"),
            "losses": rounds[-1]["losses"],
            "wall_ratio_per_round": [r["ours"]["tokens_per_second"] / r["torch"]["tokens_per_second"] for r in rounds],
            "rounds": rounds,
        }
    load = os.getloadavg()
    report["load_average"] = load
    lines = [
        f"threads per side: {args.threads}; load average at the end: {load[0]:.1f} on {os.cpu_count()} cores",
        "",
        "| method | side | step s (wall) | step s (CPU) | non-pad tok/s (wall) | non-pad tok/CPU-s | peak RSS MiB | step-1 loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, r in report["methods"].items():
        for side in ("ours", "torch"):
            s = r[side]
            lines.append(
                f"| {method} | {side} | {s['mean_step_seconds']:.2f} | {s['mean_step_cpu_seconds']:.2f} | {s['tokens_per_second']:.1f} | "
                f"{s['tokens_per_cpu_second'] or 0:.1f} | {s['peak_rss_bytes'] / 2**20:.0f} | {s['step1_loss']:.5f} |"
            )
        o, t = r["ours"], r["torch"]
        cpu_ratio = (o["tokens_per_cpu_second"] or 0) / (t["tokens_per_cpu_second"] or 1)
        lines.append(
            f"| {method} | ours/torch | {o['mean_step_seconds'] / t['mean_step_seconds']:.2f}× | {o['mean_step_cpu_seconds'] / max(t['mean_step_cpu_seconds'], 1e-9):.2f}× | "
            f"{o['tokens_per_second'] / t['tokens_per_second']:.2f}× | {cpu_ratio:.2f}× | {o['peak_rss_bytes'] / t['peak_rss_bytes']:.2f}× | |"
        )
    if args.rounds > 1:
        lines.append("")
        lines.append(f"Each side's median of {args.rounds} alternating rounds (by tokens/s); ours/torch tokens/s (wall) per round:")
        for method, r in report["methods"].items():
            per_round = ", ".join(f"{x:.2f}×" for x in r["wall_ratio_per_round"])
            lines.append(f"- {method}: {per_round}")
    if {"lora", "full"} <= report["methods"].keys():
        lo, fu = report["methods"]["lora"]["ours"], report["methods"]["full"]["ours"]
        lines.append("")
        lines.append(
            f"ours: LoRA step {fu['mean_step_seconds'] / lo['mean_step_seconds']:.2f}× faster than full (wall), "
            f"{fu['mean_step_cpu_seconds'] / lo['mean_step_cpu_seconds']:.2f}× (CPU); LoRA peak RSS {100 * (1 - lo['peak_rss_bytes'] / fu['peak_rss_bytes']):.0f}% below full"
        )
    text = "\n".join(lines)
    print(text)
    out = ROOT / "results" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_vs_torch.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "train_vs_torch.md").write_text(f"# train step: ours vs PyTorch (scripts/bench_train_vs_torch.py)\n\n{text}\n")


if __name__ == "__main__":
    main()
