"""M2N2's central evolution against the paper's reference code, whole process, same machine, same run.

Ours: `murmur protocol=m2n2 protocol.mode=central ...` (the digits-from-scratch setting of
`+experiment=m2n2_digits`: MLP 64-256-10, archive 20, 50,000 evaluations, the exact sequential
algorithm). The reference: SakanaAI/natural_niches run unchanged (`python main.py --runs 1
--total_forward_passes N`) with the Python of a virtual environment that has its dependencies
(jax, optax, scikit-learn, tqdm, cma); give its checkout with --reference and its Python with
--reference-python. Both are timed as whole processes. The arithmetic of one evaluation is one
forward pass of the MLP over the 1,437 training digits; the achieved rate is set beside a large
matmul measured in the same run.

    python benchmarks/bench_m2n2.py                                   # ours only
    python benchmarks/bench_m2n2.py --reference ../natural_niches --reference-python ../ref/bin/python
    python benchmarks/bench_m2n2.py --evaluations 2000                # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from _machine import header, set_threads

FLOP_PER_EVAL = 2 * 1437 * (64 * 256 + 256 * 10)  # one forward pass over the training digits


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=out)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b, out=out)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def ours(evaluations: int, seed: int) -> dict:
    rounds = max(1, evaluations // 1000)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "simulator.cli", "protocol=m2n2", "protocol.mode=central", "protocol.init=normal",
               "nodes=1", "model.hidden=[256]", "data.split=ordered", "data.pixels=raw", f"rounds={rounds}",
               f"protocol.evaluations_per_round={evaluations // rounds}", f"seed={seed}", "sim.progress=false",
               f"hydra.run.dir={out}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        summary = json.load(open(os.path.join(out, "summary.json")))
    return {"wall_s": wall, "test_accuracy": summary["final"]["accuracy_mean"], "evaluations": rounds * (evaluations // rounds)}


def reference(path: str, python: str, evaluations: int) -> dict:
    os.makedirs(os.path.join(path, "results"), exist_ok=True)
    env = dict(os.environ, JAX_PLATFORM_NAME="cpu")
    t0 = time.perf_counter()
    proc = subprocess.run([python, "main.py", "--runs", "1", "--total_forward_passes", str(evaluations)],
                          cwd=path, capture_output=True, text=True, timeout=7200, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    accs = re.findall(r"Test acc: ([0-9.]+)", proc.stdout + proc.stderr)
    return {"wall_s": wall, "last_logged_test_accuracy": float(accs[-1]) if accs else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--evaluations", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--reference", help="a checkout of SakanaAI/natural_niches")
    ap.add_argument("--reference-python", default=sys.executable)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads)
    print(header("M2N2 central evolution vs the reference code, whole process"))
    peak = matmul_gflops()
    print(f"matmul 2048^2: {peak:.0f} GFLOP/s")
    mine = ours(args.evaluations, args.seed)
    rate = mine["evaluations"] / mine["wall_s"]
    print(f"murmur m2n2 central (sequential): {mine['evaluations']:,} evaluations, whole process {mine['wall_s']:.1f} s, "
          f"{rate:.0f} evaluations/s, {rate * FLOP_PER_EVAL / 1e9:.1f} GFLOP/s "
          f"({rate * FLOP_PER_EVAL / 1e9 / peak:.0%} of the matmul), test accuracy {mine['test_accuracy']:.4f}")
    if args.reference:
        ref = reference(args.reference, args.reference_python, args.evaluations)
        print(f"reference (natural_niches, JAX): whole process {ref['wall_s']:.1f} s, "
              f"{args.evaluations / ref['wall_s']:.0f} evaluations/s, last logged test accuracy "
              f"{ref['last_logged_test_accuracy']}")
        print(f"speed-up, whole process: {ref['wall_s'] / mine['wall_s']:.1f}x")


if __name__ == "__main__":
    main()
