#!/usr/bin/env python3
"""Matrix-product work of our CPU training steps, LoRA vs full fine-tuning, on the batches a run really saw.

Counts the multiply-adds of every matrix product our `train` runs on the CPU for each step recorded by
`train --dump-batches FILE`, for both methods on the same batches, so the LoRA/full step-time ratio a machine can
reach is bounded from the work alone: both methods run the same gemm kernels at the same speed, and on SmolLM2 these
products are most of a step (perf: ~76 % of a LoRA step's samples in gemm, ~62 % of a full step's).

What is counted (crates/model/src/fused.rs, crates/train/src/engine.rs):
- trunk linears (q, k, v, o, gate, up, down) per token and layer: forward, input gradient (LoRA: none for layer 0's
  q/k/v, whose input, the frozen embedding, is not part of the graph), and for full fine-tuning the weight gradient;
- LoRA adapters on the attention projections (rank r): forward `x·Aᵀ`, `l·Bᵀ`; backward recomputes `x·Aᵀ`, then
  `dB`, `dl`, `dA`, `dx`: 4·in·r + 3·out·r per token (layer 0's q/k/v need no `dx`; counted anyway, < 0.1 %);
- attention in query blocks of 64 rows against the keys each block may attend: QKᵀ and PV forward, and in backward
  the recomputed QKᵀ, dV, dP, dQ, dK (7 products of heads·d·rows·keys);
- the head on the target positions only: logits and the hidden gradient, plus the weight gradient when trained.
On the CPU, LoRA runs the rows of a micro-batch unpadded (concurrently); full fine-tuning runs the padded micro-batch.
Element-wise work (norms, softmax, SwiGLU, AdamW, gradient sums) is not counted: that is where the methods differ
beyond the products.

Usage:
    target/release/train --config CONFIG --max-steps 10 --dump-batches /tmp/batches.jsonl
    python3 scripts/matmul_work.py /tmp/batches.jsonl [--config config.json] [--rank 16]
Model shape: a Hugging Face config.json (`--config`), SmolLM2-135M's by default.
"""

import argparse
import json
import sys

SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
}
QUERY_BLOCK = 64


def attention_macs(length, heads, head_dim):
    """Multiply-adds of one sequence's fused attention, forward and backward, per layer."""
    total = 0
    for start in range(0, length, QUERY_BLOCK):
        rows = min(QUERY_BLOCK, length - start)
        total += heads * head_dim * rows * (start + rows)
    return 7 * total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("batches", help="a `train --dump-batches` file")
    parser.add_argument("--config", help="the model's config.json (default: SmolLM2-135M's shape)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    args = parser.parse_args()
    c = SMOLLM2_135M
    if args.config:
        with open(args.config) as f:
            c = {**c, **json.load(f)}
    hidden, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    layers, heads, kv_heads = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c.get("head_dim") or hidden // heads
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    projections = [(hidden, q_out), (hidden, kv_out), (hidden, kv_out), (q_out, hidden)]
    linear = sum(i * o for i, o in projections) + 3 * hidden * inter
    adapters = sum(4 * i * args.rank + 3 * o * args.rank for i, o in projections)
    layer0_qkv_input_grad = hidden * (q_out + 2 * kv_out)

    lora = {"trunk linears": 0, "LoRA adapters": 0, "attention": 0, "head": 0}
    full = {"trunk linears": 0, "attention": 0, "head": 0}
    full_unpadded_trunk = full_unpadded_attention = 0
    steps = tokens = padded = 0
    try:
        with open(args.batches) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        sys.exit(f"matmul_work: {args.batches}: {err}")
    for record in records:
        steps += 1
        for micro_batch in record["micro_batches"]:
            lengths = [len(row["ids"]) for row in micro_batch]
            longest = max(lengths)
            targets = sum(len(row["ids"]) - row["prompt_len"] for row in micro_batch)
            tokens += sum(lengths)
            padded += longest * len(lengths)
            for length in lengths:
                lora["trunk linears"] += layers * length * 2 * linear - length * layer0_qkv_input_grad
                lora["LoRA adapters"] += layers * length * adapters
                lora["attention"] += layers * attention_macs(length, heads, head_dim)
                full["trunk linears"] += layers * longest * 3 * linear
                full["attention"] += layers * attention_macs(longest, heads, head_dim)
                full_unpadded_trunk += layers * length * 3 * linear
                full_unpadded_attention += layers * attention_macs(length, heads, head_dim)
            lora["head"] += 2 * targets * hidden * vocab
            full["head"] += 3 * targets * hidden * vocab
    if not steps:
        sys.exit(f"matmul_work: {args.batches}: no steps")
    lora_total, full_total = sum(lora.values()), sum(full.values())
    full_unpadded = full_unpadded_trunk + full_unpadded_attention + full["head"]
    g = 1e9
    print(f"{steps} steps, {tokens} tokens ({padded} padded for full fine-tuning's micro-batches)\n")
    print("| multiply-adds (G) | LoRA | full |")
    print("|---|--:|--:|")
    for key in ("trunk linears", "LoRA adapters", "attention", "head"):
        print(f"| {key} | {lora.get(key, 0) / g:.1f} | {full.get(key, 0) / g:.1f} |")
    print(f"| total | {lora_total / g:.1f} | {full_total / g:.1f} |")
    print(
        f"\nfull / LoRA: {full_total / lora_total:.3f} "
        f"({full_unpadded / lora_total:.3f} if full fine-tuning ran its rows unpadded too)"
    )


if __name__ == "__main__":
    main()
