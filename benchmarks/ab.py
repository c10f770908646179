"""A/B: benchmarks (a)-(e) on this checkout and on another one (e.g. the previous commit), in
one run, interleaved (A B A B ...), so both see the same machine; prints medians and the
ratio this / baseline.

    git worktree add ../baseline HEAD~1          # a checkout of the commit to compare with
    python benchmarks/ab.py --baseline ../baseline               # (a), (b) and (c), 3 repeats
    python benchmarks/ab.py --baseline ../baseline --cases a b_gossip --repeats 5

(a) is the whole `murmur` process of bench_fedavg_digits.py; b_fedavg, b_gossip and c_gossip
are bench_scale.py's cases (the `simulator.run` call, in a process of its own). Each side runs
with PYTHONPATH set to its own checkout. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import header, set_threads, table
from bench_scale import CASES as SCALE_CASES

ROOT = Path(__file__).resolve().parent.parent
# benchmark (a): the same overrides as bench_fedavg_digits.py
A_OVERRIDES = ["protocol=fedavg", "data=digits", "model=mlp", "model.hidden=[32]", "nodes=100", "rounds=5",
               "train.batch_size=8", "train.lr=0.1", "train.local_epochs=1", "sim.progress=false"]
# whole `murmur` processes: (a) and issue 12's gossip command (g); the rest are bench_scale's cases
WHOLE = {"a": A_OVERRIDES,
         "g": ["protocol=gossip", "topology=random_regular", "nodes=1000", "rounds=100", "sim.progress=false"]}
CASES = [*WHOLE, *SCALE_CASES]


def env_for(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree)}


def check_imports(tree: Path) -> None:
    """Each side must import its own code, not the installed checkout's."""
    out = subprocess.run([sys.executable, "-c", "import simulator; print(simulator.__file__)"], cwd=tree,
                         env=env_for(tree), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"{tree} imports simulator from {out}; cannot compare")


def measure(case: str, tree: Path, timeout: float) -> dict:
    """{"wall_s": ..., "peak_rss_gb": ...} of one case on one checkout."""
    if case in WHOLE:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "simulator.cli", *WHOLE[case], f"hydra.run.dir={tmp}"], cwd=tree,
                           env=env_for(tree), check=True, timeout=timeout, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            share = json.loads((Path(tmp) / "summary.json").read_text()).get("evaluation", {}).get("wall_share")
            return {"wall_s": wall, "peak_rss_gb": float("nan"), "eval_share": share}
    proc = subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_scale.py"), "--case", case], cwd=tree,
                          env=env_for(tree), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        sys.exit(f"{case} failed on {tree} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON "))
    return json.loads(line.removeprefix("BENCH_JSON "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=["a", "b_fedavg", "b_gossip", "c_gossip"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    set_threads(args.threads)
    sides = {"baseline": args.baseline.resolve(), "this": ROOT}
    for tree in sides.values():
        check_imports(tree)
    commits = {k: subprocess.run(["git", "-C", str(t), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip() for k, t in sides.items()}

    results = {(c, k): [] for c in args.cases for k in sides}
    for case in args.cases:
        for _ in range(args.repeats):
            for side, tree in sides.items():  # interleaved: A B A B ...
                results[case, side].append(measure(case, tree, args.timeout))

    print(header("A/B: benchmarks (a)-(e), this checkout against a baseline, interleaved"))
    print(f"- baseline: commit {commits['baseline']}; this: commit {commits['this']} (plus uncommitted "
          f"changes, if any); {args.repeats} repeats each\n")
    rows = []
    for case in args.cases:
        walls = {k: [r["wall_s"] for r in results[case, k]] for k in sides}
        rss = {k: max(r["peak_rss_gb"] for r in results[case, k]) for k in sides}
        share = {k: [r.get("eval_share") for r in results[case, k]] for k in sides}
        share = {k: statistics.median(v) if None not in v else None for k, v in share.items()}
        base, this = statistics.median(walls["baseline"]), statistics.median(walls["this"])
        rows.append([case, f"{base:.2f}", f"{this:.2f}", f"{this / base:.2f}x",
                     f"{min(walls['baseline']):.2f} / {min(walls['this']):.2f}",
                     "-" if rss["this"] != rss["this"] else f"{rss['baseline']:.2f} / {rss['this']:.2f}",
                     "-" if None in share.values() else f"{100 * share['baseline']:.0f}% / {100 * share['this']:.0f}%"])
    print(table(["case", "baseline median (s)", "this median (s)", "this / baseline", "min (s), base / this",
                 "peak RSS (GB), base / this", "evaluation share, base / this"], rows))
    print("\n- a: the whole `murmur` process (FedAvg, 100 clients x 5 rounds, digits); g: the whole process of "
          f"`murmur {' '.join(WHOLE['g'])}`; the others: the `simulator.run` call of bench_scale.py's case, "
          "one process each")


if __name__ == "__main__":
    main()
