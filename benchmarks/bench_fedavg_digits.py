"""Benchmark (a): FedAvg, 100 clients, digits, MLP 64-32-10, batch 8, lr 0.1, one local
epoch, 5 rounds, timed as a whole `murmur` process (imports, Hydra, data, run, outputs).

    python benchmarks/bench_fedavg_digits.py              # 3 repeats
    python benchmarks/bench_fedavg_digits.py --nodes 10 --rounds 1 --repeats 1   # smoke test
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import header, set_threads, table

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 5.0
FLOWER_S = 113  # Flower 1.42 Ray simulation, 100 clients x 5 rounds (shared notes, performance.md)


def timed(cmd: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per process")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    set_threads(args.threads)

    overrides = ["protocol=fedavg", "data=digits", "model=mlp", "model.hidden=[32]",
                 f"nodes={args.nodes}", f"rounds={args.rounds}", "train.batch_size=8",
                 "train.lr=0.1", "train.local_epochs=1", "sim.progress=false"]
    walls, inner, acc = [], [], None
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "simulator.cli", *overrides, f"hydra.run.dir={tmp}"]
            walls.append(timed(cmd, args.timeout))
            summary = json.loads((Path(tmp) / "summary.json").read_text())
            inner.append(summary["wall_time_s"])
            acc = summary["final"]["accuracy_mean"]
    floor = [timed([sys.executable, "-c", "import torch"], args.timeout) for _ in range(args.repeats)]

    med, fmed = statistics.median(walls), statistics.median(floor)
    print(header("(a) FedAvg on digits, whole `murmur` process"))
    print(f"- workload: {args.nodes} clients x {args.rounds} rounds, MLP 64-32-10, batch 8, "
          f"lr 0.1, 1 local epoch; {args.repeats} repeats")
    print(f"- murmur overrides: `{' '.join(overrides)}`\n")
    print(table(["measure", "min", "median"], [
        ["`murmur` process wall (s)", f"{min(walls):.2f}", f"{med:.2f}"],
        ["of which `run()` itself (summary wall_time_s)", f"{min(inner):.2f}", f"{statistics.median(inner):.2f}"],
        ["`python -c 'import torch'` (s), start-up floor", f"{min(floor):.2f}", f"{fmed:.2f}"],
        ["murmur / import-torch (median ratio)", "", f"{med / fmed:.1f}x"],
    ]))
    print(f"\n- final test accuracy (global model): {acc:.4f}")
    print(f"- target: whole process < {TARGET_S:.0f} s -> {'met' if med < TARGET_S else 'NOT met'} "
          f"(median {med:.2f} s)")
    print(f"- reference: Flower's Ray simulation takes ~{FLOWER_S} s on 100 clients x 5 rounds of this "
          f"workload (performance.md), ~{FLOWER_S / med:.0f}x this median")


if __name__ == "__main__":
    main()
