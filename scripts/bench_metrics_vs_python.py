#!/usr/bin/env python3
"""Throughput of `metrics score-pairs` (release) against the Python reference pipeline, on the same pairs, in one run.

Both sides compute the same work per pair: the five scores after extraction and the five without. The pairs are the
committed goldens (crates/metrics/tests/golden/pairs.jsonl), repeated --repeat times. The Rust binary runs with its
default rayon pool and again with RAYON_NUM_THREADS=1 (best of 3 each); Python is one process. Wall-clock rates
and CPU-time ratios are both printed: on a shared machine the CPU-time ratio is the stable one.

    cargo build --release -p metrics            # CARGO_TARGET_DIR decides where the binary lands
    .cache/venv-metrics/bin/python scripts/bench_metrics_vs_python.py [--binary PATH] [--repeat N]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_metrics as reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    default_target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    parser.add_argument("--binary", default=os.path.join(default_target, "release", "metrics"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    golden = os.path.join(ROOT, "crates", "metrics", "tests", "golden", "pairs.jsonl")
    with open(golden, encoding="utf-8") as f:
        records = [json.loads(line) for line in f][1:]
    pairs = [(r["candidate"], r["reference"]) for r in records] * args.repeat

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for i, (c, r) in enumerate(pairs):
            f.write(json.dumps({"id": i, "candidate": c, "reference": r}) + "\n")
        path = f.name

    def run_rust(threads):
        env = dict(os.environ)
        if threads:
            env["RAYON_NUM_THREADS"] = str(threads)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        out = subprocess.run([args.binary, "score-pairs", path], env=env, capture_output=True, check=True)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert out.stdout.count(b"\n") == len(pairs)
        return elapsed, cpu

    rust_all, rust_all_cpu = min(run_rust(None) for _ in range(3))
    rust_one, rust_one_cpu = min(run_rust(1) for _ in range(3))

    cpu_start = time.process_time()
    start = time.perf_counter()
    for c, r in pairs:
        reference.score_all(reference.strip_generated_code(c), r)
        reference.score_all(c, r)
    python = time.perf_counter() - start
    python_cpu = time.process_time() - cpu_start
    os.unlink(path)

    n = len(pairs)
    print(f"pairs: {n} (goldens x {args.repeat}); cores: {os.cpu_count()}")
    print(f"python reference : {n / python:10.1f} pairs/s ({python:.2f} s)")
    print(f"rust, all cores  : {n / rust_all:10.1f} pairs/s ({rust_all:.3f} s, best of 3, incl. process start)")
    print(f"rust, 1 thread   : {n / rust_one:10.1f} pairs/s ({rust_one:.3f} s, best of 3)")
    print(f"ratio rust/python: {python / rust_all:.1f}x (all cores), {python / rust_one:.1f}x (1 thread), wall clock")
    print(f"cpu seconds      : python {python_cpu:.2f}, rust 1 thread {rust_one_cpu:.3f} "
          f"-> {python_cpu / rust_one_cpu:.1f}x per core (robust to other load on the machine)")
    print(f"load average     : {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
