#!/usr/bin/env python3
"""Generation speed of our release `eval` against transformers `generate`, on the same weights and prompts.

Both sides run SmolLM2-135M-Instruct from the GGUF of scripts/fetch-assets.sh. Our `eval` converts it through
`model::source` into `.cache/converted/<stem>-<sha>/` (dequantised f32 safetensors + tokenizer.json); PyTorch loads
that same directory with transformers, so the weights are byte-identical. Prompts are the first `--rows` test rows
of the sample split rendered by our pipeline (read back from predictions.jsonl); PyTorch tokenizes them and the
script checks every prompt has exactly the token count our side recorded.

Both sides: f32, CPU, greedy, `--max-new-tokens` (64) new tokens, batches of `--batch-size` (8) rows sorted by prompt
length (longest first, as eval does), left padding, stop at EOS. Throughput = generated tokens (EOS excluded) /
seconds spent in generation (prefill included, model loading excluded), summed over batches.

Checks reported: our batched outputs equal our one-at-a-time outputs (`--batch-size 1` run), and how many rows
PyTorch's greedy text equals ours.

Usage (from the repository root; builds nothing, run `cargo build --release -p eval` first):
    python3 scripts/bench_generate_vs_torch.py [--rows 16] [--batch-size 8] [--max-new-tokens 64] [--torch-single]
The PyTorch venv (.cache/venv-torch, shared with scripts/bench_train_vs_torch.py) is created on first use.
Results go to results/bench/generate_vs_torch.{json,md}.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from torch_venv import ensure_venv

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / ".cache" / "assets" / "smollm2-135m-instruct.gguf"
CONFIG = ROOT / "configs" / "smollm2_lora.toml"
WORK = ROOT / ".cache" / "bench-generate"
EVAL = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "eval"


def run_ours(run_name, batch_size, args):
    """Runs our eval on the first `args.rows` rows; returns (scores.json, predictions in canonical order)."""
    results = WORK / "results"
    # A previous run's predictions would be resumed (nothing generated, old timings): start afresh.
    shutil.rmtree(results / run_name, ignore_errors=True)
    command = [
        str(EVAL), "--base", str(GGUF), "--config", str(CONFIG), "--results-dir", str(results),
        "--run-name", run_name, "--batch-size", str(batch_size), "--max-new-tokens", str(args.max_new_tokens),
        "--limit", str(args.rows), "--device", "cpu",
    ]
    print("+", " ".join(command), file=sys.stderr)
    subprocess.run(command, check=True, cwd=ROOT)
    directory = results / run_name
    scores = json.loads((directory / "scores.json").read_text())
    predictions = [json.loads(line) for line in (directory / "predictions.jsonl").read_text().splitlines() if line]
    return scores, predictions


def converted_dir():
    """The HF directory our model::source made from the GGUF (exactly one is expected)."""
    candidates = sorted(glob.glob(str(ROOT / ".cache" / "converted" / f"{GGUF.stem}-*")))
    candidates = [c for c in candidates if (Path(c) / "config.json").is_file()]
    if len(candidates) != 1:
        sys.exit(f"expected one conversion of {GGUF.name} under .cache/converted, found {candidates}")
    return Path(candidates[0])


def run_torch(model_dir, predictions, batch_size, max_new_tokens):
    """Greedy generation with transformers on our prompts; returns (tokens/s, texts by row id, generated tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else model.config.eos_token_id[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for p in predictions:
        ids = tokenizer.encode(p["prompt"], add_special_tokens=False)
        if len(ids) + 1 == p["prompt_tokens"] and tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        if len(ids) != p["prompt_tokens"]:
            sys.exit(f"{p['row_id']}: transformers gives {len(ids)} prompt tokens, ours {p['prompt_tokens']}")
        rows.append((p["row_id"], ids))
    rows.sort(key=lambda r: -len(r[1]))  # stable: longest first, ties in split order, as eval does
    texts, generated, seconds = {}, 0, 0.0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        longest = max(len(ids) for _, ids in batch)
        input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for _, ids in batch])
        mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for _, ids in batch])
        began = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=pad)
        seconds += time.perf_counter() - began
        for (row_id, _), sequence in zip(batch, out[:, longest:].tolist()):
            new = sequence[:sequence.index(eos)] if eos in sequence else sequence
            generated += len(new)
            texts[row_id] = tokenizer.decode(new, skip_special_tokens=False)
    return generated / seconds, texts, generated


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--torch-single", action="store_true", help="also time transformers one row at a time")
    args = parser.parse_args()
    if not EVAL.is_file():
        sys.exit(f"{EVAL} not found: run `cargo build --release -p eval` first")
    if not GGUF.is_file():
        sys.exit(f"{GGUF} not found: run scripts/fetch-assets.sh")
    ensure_venv()

    load_before = os.getloadavg()[0]
    batched_scores, batched = run_ours(f"smollm2-b{args.batch_size}", args.batch_size, args)
    single_scores, single = run_ours("smollm2-b1", 1, args)
    ours_batched = {p["row_id"]: p["raw_output"] for p in batched}
    ours_single = {p["row_id"]: p["raw_output"] for p in single}
    identical_batching = sum(ours_batched[r] == ours_single[r] for r in ours_batched)

    model_dir = converted_dir()
    torch_rate, torch_texts, torch_tokens = run_torch(model_dir, batched, args.batch_size, args.max_new_tokens)
    torch_single_rate = None
    if args.torch_single:
        torch_single_rate, _, _ = run_torch(model_dir, batched, 1, args.max_new_tokens)
    load_after = os.getloadavg()[0]
    same_as_torch = sum(ours_batched[r] == torch_texts[r] for r in ours_batched)

    result = {
        "model": f"{GGUF.name} via model::source ({model_dir.relative_to(ROOT)})",
        "rows": len(batched),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": os.cpu_count(),
        # Other processes on the machine slow both sides; the 1-minute load average says how busy it was.
        "load_average_before": load_before,
        "load_average_after": load_after,
        "ours_tokens_per_second": batched_scores["generation_tokens_per_second"],
        "ours_batch1_tokens_per_second": single_scores["generation_tokens_per_second"],
        "ours_generated_tokens": sum(p["generated_tokens"] for p in batched),
        "torch_tokens_per_second": torch_rate,
        "torch_batch1_tokens_per_second": torch_single_rate,
        "torch_generated_tokens": torch_tokens,
        "ratio_ours_over_torch": batched_scores["generation_tokens_per_second"] / torch_rate,
        "batched_equals_one_at_a_time": f"{identical_batching}/{len(batched)}",
        "rows_identical_to_torch": f"{same_as_torch}/{len(batched)}",
    }
    out = ROOT / "results" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate_vs_torch.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Greedy generation: our `eval` vs transformers `generate`",
        "",
        "Generated by `python3 scripts/bench_generate_vs_torch.py "
        f"--rows {args.rows} --batch-size {args.batch_size} --max-new-tokens {args.max_new_tokens}"
        f"{' --torch-single' if args.torch_single else ''}` (CPU, f32, {os.cpu_count()} threads; 1-minute load "
        f"average {load_before:.1f} before, {load_after:.1f} after: other processes shared the cores).",
        "",
        "| | tokens/s |",
        "|---|---|",
        f"| ours, batch {args.batch_size} | {result['ours_tokens_per_second']:.1f} |",
        f"| transformers, batch {args.batch_size} | {torch_rate:.1f} |",
        f"| ours, batch 1 | {result['ours_batch1_tokens_per_second']:.1f} |",
    ]
    if torch_single_rate is not None:
        lines.append(f"| transformers, batch 1 | {torch_single_rate:.1f} |")
    lines += [
        "",
        f"- ratio ours / transformers at batch {args.batch_size}: {result['ratio_ours_over_torch']:.2f}",
        f"- our batched outputs equal our one-at-a-time outputs: {result['batched_equals_one_at_a_time']} rows",
        f"- rows whose greedy text equals transformers': {result['rows_identical_to_torch']}",
        "",
    ]
    (out / "generate_vs_torch.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
