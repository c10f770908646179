"""Sweeps: the same 12-job sweep (gossip, vc_gossip and fedavg x 4 seeds) run side by side (the
default launcher, Hydra's joblib, one job per core with torch's threads divided among them) and
one job after another (`hydra/launcher=basic`), each as one whole `murmur -m` process; wall times,
their ratio, and whether every job's metrics.csv is the same in both (wall_time_s left out).

    python benchmarks/bench_sweep.py                       # 12 jobs, ~5-10 s each on one core
    python benchmarks/bench_sweep.py --threads 1           # every job on one torch thread
    python benchmarks/bench_sweep.py --protocols gossip --seeds 2 --nodes 10 --rounds 1   # smoke test

Exit code 1 when two jobs that ran on the same number of torch threads disagree. Jobs on
different thread counts may differ in the last bits (torch splits its reductions by thread),
which the last lines say, with the largest relative difference.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import header, set_threads, table

ROOT = Path(__file__).resolve().parent.parent


def sweep(overrides: list[str], sweep_dir: Path, timeout: float) -> float:
    """Wall seconds of one whole `murmur -m` process; it must complete every job."""
    cmd = [sys.executable, "-m", "simulator.cli", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, timeout=timeout, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench_sweep: {' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-2000:]}")
    return wall


def jobs_of(sweep_dir: Path) -> dict[str, dict]:
    """{job directory name: its record (threads, ...) and metrics rows without wall_time_s}."""
    out = {}
    for r in (sweep_dir / ".murmur").glob("job-*.json"):
        record = json.loads(r.read_text())
        rows = list(csv.DictReader(open(Path(record["dir"]) / "metrics.csv")))
        out[Path(record["dir"]).name] = {
            "threads": record["threads"],
            "rows": [{k: v for k, v in row.items() if k != "wall_time_s"} for row in rows]}
    return out


def largest_difference(a: list[dict], b: list[dict]) -> float:
    """The largest relative difference between two metrics tables of one shape (inf otherwise)."""
    if len(a) != len(b) or any(ra.keys() != rb.keys() for ra, rb in zip(a, b)):
        return math.inf
    worst = 0.0
    for ra, rb in zip(a, b):
        for k in ra:
            if ra[k] == rb[k]:
                continue
            try:
                x, y = float(ra[k]), float(rb[k])
            except ValueError:
                return math.inf
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-30))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", default="gossip,vc_gossip,fedavg")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per sweep")
    ap.add_argument("--threads", type=int,
                    help="OMP_NUM_THREADS for both sweeps: pins the basic jobs' torch threads and caps "
                         "the parallel ones' (default: torch's choice one after another, the cores "
                         "divided side by side)")
    args = ap.parse_args()
    set_threads(args.threads)

    overrides = [f"protocol={args.protocols}", f"seed={','.join(map(str, range(args.seeds)))}",
                 f"nodes={args.nodes}", f"rounds={args.rounds}", "sim.progress=false"]
    n = len(args.protocols.split(",")) * args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        side_dir, one_dir = Path(tmp, "side_by_side"), Path(tmp, "one_after_another")
        side = sweep(overrides, side_dir, args.timeout)
        one = sweep([*overrides, "hydra/launcher=basic"], one_dir, args.timeout)
        a, b = jobs_of(side_dir), jobs_of(one_dir)
    if len(a) != n or a.keys() != b.keys():
        sys.exit(f"bench_sweep: expected {n} jobs in each sweep, found {len(a)} and {len(b)}")

    same = [j for j in a if a[j]["rows"] == b[j]["rows"]]
    same_threads = [j for j in a if a[j]["threads"] == b[j]["threads"]]
    broken = [j for j in same_threads if j not in same]
    threads = lambda jobs: ", ".join(sorted({str(jobs[j]["threads"]) for j in jobs}))  # noqa: E731

    print(header("Sweeps: jobs side by side against one after another, whole `murmur -m` processes"))
    print(f"- workload: {n} jobs, `murmur -m {' '.join(overrides)}`\n")
    print(table(["launcher", "torch threads per job", "wall (s)"], [
        ["side by side (default: joblib)", threads(a), f"{side:.1f}"],
        ["one after another (`hydra/launcher=basic`)", threads(b), f"{one:.1f}"]]))
    print(f"\n- one after another / side by side: {one / side:.2f}x")
    print(f"- metrics.csv (wall_time_s left out) identical in {len(same)} of {n} jobs")
    if len(same) < n:
        worst = max(largest_difference(a[j]["rows"], b[j]["rows"]) for j in a if j not in same)
        print(f"- the others differ by at most {worst:.2g} (relative)"
              + ("; on different torch thread counts, which split torch's reductions differently"
                 if not broken else ""))
    if broken:
        print(f"- DIFFERENT on the same thread count: {', '.join(sorted(broken))}")
        sys.exit(1)


if __name__ == "__main__":
    main()
