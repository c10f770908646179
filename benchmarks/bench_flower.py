"""Benchmark (e): per-round wall time of the Flower bridge against the simulator on the same
10-node scenario (digits, MLP 64-32-10, the default training), FedAvg and gossip on a ring.

    python benchmarks/bench_flower.py                      # 10 nodes x 2 rounds, all three engines
    python benchmarks/bench_flower.py --rounds 5 --engines simulator,ray   # no deployment
    python benchmarks/bench_flower.py --workload peer --nodes 1000 --engines murmur,ray   # whole processes

Engines: `simulator` (`simulator.run`, one process), `ray` (Flower's Ray simulation,
`flwr.simulation.run_simulation`, each protocol in its own child process), `deployment`
(`bridge.launch.LocalFleet`: a SuperLink and 10 SuperNodes on loopback, `flwr run`).
Per round: the median time between consecutive round ends (the first round, which also pays
for start-up and discovery, and the relay's final merge-only message are not counted).
Needs the flower extra (pip install -e ".[flower]").
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import header, set_threads, table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROTOCOLS = {"fedavg": ["protocol=fedavg"], "gossip": ["protocol=gossip", "topology=ring"]}
# --workload peer: the FedAvg job of the performance notes' peer table (and of benchmark (a))
PEER = {"fedavg": ["protocol=fedavg", "data=digits", "model=mlp", "model.hidden=[32]", "train.batch_size=8",
                   "train.lr=0.1", "train.local_epochs=1"]}


def per_round(ends: list[float]) -> float:
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    return statistics.median(gaps) if gaps else float("nan")


def simulator(overrides: list[str]) -> dict:
    from simulator import run

    res = run(overrides=[*overrides, "sim.progress=false"])
    return {"total": res.summary["wall_time_s"], "round": per_round([m["wall_time_s"] for m in res.metrics]),
            "accuracy": res.metrics[-1]["accuracy_mean"]}


def murmur(overrides: list[str], timeout: float) -> dict:
    """The whole `murmur` process (imports, data, run, outputs), as a user waits for it."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "simulator.cli", *overrides, "sim.progress=false",
                        f"hydra.run.dir={out}"], cwd=ROOT, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - t0
        with open(Path(out) / "metrics.csv", newline="") as f:
            rows = [{k: float(v) for k, v in r.items() if k in ("wall_time_s", "accuracy_mean")}
                    for r in csv.DictReader(f)]
        return bridge_figures({"metrics": rows}, total)


def bridge_figures(summary: dict, total: float) -> dict:
    rows = summary["metrics"]
    return {"total": total, "round": per_round([m["wall_time_s"] for m in rows]),
            "accuracy": rows[-1]["accuracy_mean"]}


def ray(overrides: list[str], nodes: int, timeout: float) -> dict:
    """One run_simulation in a child process (Ray's own processes go with its process group)."""
    with tempfile.TemporaryDirectory() as out:
        spec = json.dumps({"overrides": overrides, "nodes": nodes, "out": out})
        cmd = [sys.executable, __file__, "--ray-child", spec]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        try:
            _, err = child.communicate(timeout=timeout)
        finally:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # Ray's raylet and workers, if any are left
            except ProcessLookupError:
                pass
        total = time.perf_counter() - t0
        if child.returncode or not (Path(out) / "summary.json").exists():
            raise RuntimeError(f"run_simulation failed ({child.returncode}): {err.decode()[-2000:]}")
        return bridge_figures(json.loads((Path(out) / "summary.json").read_text()), total)


def ray_child(spec: str) -> None:
    from flwr.simulation import run_simulation

    from bridge.client import client_app
    from bridge.server import server_app

    spec = json.loads(spec)
    fixed = {"overrides": " ".join(spec["overrides"]), "out-dir": spec["out"]}
    run_simulation(server_app(fixed), client_app(fixed), num_supernodes=spec["nodes"],
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engines", default="simulator,ray,deployment",
                    help="any of simulator (in-process run), murmur (the whole murmur process), ray, deployment")
    ap.add_argument("--workload", choices=["bridge", "peer"], default="bridge",
                    help="bridge: FedAvg and gossip on a ring, default training; peer: the performance "
                         "notes' FedAvg job (MLP 64-32-10, batch 8, lr 0.1, 1 epoch), whole processes")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per bridge run")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads, also of every node process (default 1: on few cores more "
                         "threads than cores slow torch down many times over)")
    ap.add_argument("--ray-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ray_child:
        return ray_child(args.ray_child)
    set_threads(args.threads)
    engines = args.engines.split(",")
    base = [f"nodes={args.nodes}", f"rounds={args.rounds}"]
    results, notes = [], []
    protocols = PEER if args.workload == "peer" else PROTOCOLS
    if "simulator" in engines:
        simulator([f"nodes={args.nodes}", "rounds=1"])  # warm-up: imports and data loading, not timed
    for name in ("simulator", "murmur", "ray"):
        if name in engines:
            for proto, ov in protocols.items():
                fig = (simulator(base + ov) if name == "simulator" else murmur(base + ov, args.timeout)
                       if name == "murmur" else ray(base + ov, args.nodes, args.timeout))
                results.append((name, proto, fig))
    if "deployment" in engines:
        from bridge.launch import LocalFleet, free_port

        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            with LocalFleet(args.nodes, work, port=free_port(), node_port=free_port()) as fleet:
                notes.append(f"- deployment: SuperLink + {args.nodes} SuperNodes up in "
                             f"{time.perf_counter() - t0:.1f} s (not counted below)")
                for proto, ov in protocols.items():
                    outcome = fleet.run(base + ov, timeout=args.timeout)
                    if not outcome.completed:
                        raise RuntimeError(f"deployment {proto}: {outcome.status}\n{outcome.log[-3000:]}")
                    results.append(("deployment", proto, bridge_figures(outcome.summary(), outcome.wall_s)))

    print(header(f"(e) Flower bridge vs simulator, {args.nodes} nodes x {args.rounds} rounds"))
    print(f"- scenario: `{' '.join(base)}` + " + " | ".join(f"`{' '.join(ov)}`" for ov in protocols.values())
          + (" (digits, MLP 64-32-10, 3 local epochs, batch 8)" if args.workload == "bridge" else ""))
    print(f"- load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores; other work on the machine slows every engine)")
    print(*notes, sep="\n")
    print()
    sim = {p: f["round"] for e, p, f in results if e == "simulator"}
    whole = {p: f["total"] for e, p, f in results if e == "murmur"}
    print(table(["engine", "protocol", "per round (s, median)", "per round / simulator", "run total (s)",
                 "run total / murmur", "final accuracy"],
                [[e, p, f"{f['round']:.3f}", f"{f['round'] / sim[p]:.0f}x" if p in sim else "",
                  f"{f['total']:.1f}", f"{f['total'] / whole[p]:.1f}x" if p in whole else "",
                  f"{f['accuracy']:.4f}"] for e, p, f in results]))
    print("\n- run total: simulator `run()` (in-process, after imports); murmur: the whole `murmur` process "
          "(imports, data, outputs); ray: the whole child process (Ray start-up included); deployment: "
          "`flwr run` to finished (app install, discovery included)")
    print("- the bridge trains with the simulator's kernels and randomness, so every engine ends "
          "with the same models (tests/test_flower.py checks them to 1e-5)")
    print("- deployment: every message starts a fresh app process on its SuperNode (imports, data) "
          "and SuperNodes poll the SuperLink every 3 s")


if __name__ == "__main__":
    main()
