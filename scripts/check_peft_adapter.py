#!/usr/bin/env python3
"""Check that PEFT and transformers read what our Rust `model` crate writes.

1. Runs the Rust test `model_io::peft_export` with KUBETUNE_PEFT_EXPORT=<dir>: on the `tiny-llama` fixture it
   attaches LoRA adapters (r 4, alpha 8, all seven linear modules) filled with fixed non-zero values, and writes
   `<dir>/adapter/` (`save_adapter`: adapter_config.json + adapter_model.safetensors), `<dir>/full/`
   (`save_full`: the merged weights as an HF directory) and `<dir>/our_logits.json` (our f32 logits on the
   fixture's reference batch, real positions only).
2. Loads the base fixture into transformers, applies the adapter with `peft.PeftModel.from_pretrained`, and
   compares its logits with ours.
3. Loads `<dir>/full` with `AutoModelForCausalLM.from_pretrained` and compares again.

Exit status 0 when both max |difference| are below --tol (default 1e-4), 1 otherwise.

Usage (repository root; venv from scripts/make_fixtures.py):
    .cache/venv-fixtures/bin/python scripts/check_peft_adapter.py [--export-dir .cache/peft-check] [--no-build]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def our_export(export_dir: Path, build: bool) -> dict:
    if build:
        env = dict(os.environ, KUBETUNE_PEFT_EXPORT=str(export_dir))
        env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target" / "candle"))
        cmd = ["cargo", "test", "-p", "model", "--test", "tests", "model_io::peft_export", "--", "--exact",
               "model_io::peft_export::lora_adapter_and_full_checkpoint_export_for_peft"]
        print("+", " ".join(cmd), f"(KUBETUNE_PEFT_EXPORT={export_dir})", flush=True)
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return json.loads((export_dir / "our_logits.json").read_text())


def logits_at_real_positions(model, record: dict) -> list[torch.Tensor]:
    ids = torch.tensor(record["input_ids"])
    mask = torch.tensor(record["attention_mask"])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return [logits[b][mask[b] == 1] for b in range(ids.shape[0])]


def max_diff(theirs: list[torch.Tensor], ours: list) -> float:
    return max((t - torch.tensor(o)).abs().max().item() for t, o in zip(theirs, ours))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export-dir", type=Path, default=ROOT / ".cache" / "peft-check")
    ap.add_argument("--no-build", action="store_true", help="reuse an existing export instead of running cargo")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.manual_seed(0)
    export_dir = args.export_dir.resolve()
    export_dir.mkdir(parents=True, exist_ok=True)
    record = our_export(export_dir, build=not args.no_build)
    ours = record["logits_at_real_positions"]

    base = AutoModelForCausalLM.from_pretrained(record["base"], dtype=torch.float32, attn_implementation="eager")
    adapter_config = json.loads((export_dir / "adapter" / "adapter_config.json").read_text())
    peft_model = PeftModel.from_pretrained(base, export_dir / "adapter")
    peft_model.eval()
    n_lora = sum(1 for name, _ in peft_model.named_parameters() if "lora_" in name)
    peft_diff = max_diff(logits_at_real_positions(peft_model, record), ours)

    full = AutoModelForCausalLM.from_pretrained(export_dir / "full", dtype=torch.float32,
                                                attn_implementation="eager")
    full.eval()
    full_diff = max_diff(logits_at_real_positions(full, record), ours)

    print(f"adapter_config: r={adapter_config.get('r')} lora_alpha={adapter_config.get('lora_alpha')} "
          f"target_modules={adapter_config.get('target_modules')}")
    print(f"PEFT loaded {n_lora} LoRA tensors; max |logits(PEFT) - logits(ours)| = {peft_diff:.3e}")
    print(f"transformers loaded save_full; max |logits(transformers) - logits(ours)| = {full_diff:.3e}")
    ok = peft_diff < args.tol and full_diff < args.tol
    print("OK" if ok else f"FAIL (tolerance {args.tol})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
