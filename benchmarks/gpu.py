"""The GPU path, proven in one short script: CUDA against CPU on the same scenarios, then
gossip at 10,000 / 100,000 / 1,000,000 nodes on one GPU. Meant to run whenever a GPU machine is
at hand (the whole script is sized for under 5 minutes on one recent GPU); on a CPU it runs the
same code at small sizes, which is how it is tested.

  equality  each scenario runs on the CPU and on `--device`, same seed: the final models must
            agree to 1e-4 (float32 kernels differ in summation order, not in what they compute)
            and the headline metric to 0.01
  scale     gossip, 20 rounds (fewer at a million), synthetic data with 20 training samples
            per node and 16 features, one SGD step of 8 a round, evaluation every round (of
            eval.max_nodes = 1,000 sampled nodes); random 8-regular graphs up to 100,000
            nodes, a torus at 1,000,000 (building a random regular graph of a million nodes
            in networkx takes minutes); each size in its own process, with a timeout

    python benchmarks/gpu.py                                   # on a GPU: everything
    python benchmarks/gpu.py --device cpu --sizes 1000 --rounds 2 --equality-device cpu   # a smoke test
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _machine import header, set_threads, table

EQUALITY = {
    "fedavg": ["protocol=fedavg", "nodes=20"],
    "gossip": ["protocol=gossip", "nodes=50", "topology.degree=4"],
    "vc_gossip": ["protocol=vc_gossip", "nodes=50", "topology.degree=4"],
    "m2n2": ["protocol=m2n2", "nodes=10", "data.validation=0.3", "protocol.fraction=0.5"],
    "fedbuff": ["protocol=fedbuff", "nodes=20", "protocol.buffer=5", "protocol.concurrency=10"],
    "gossip robust": ["protocol=gossip", "nodes=30", "topology.degree=6", "protocol.aggregator=trimmed_mean",
                      "attack={kind: sign_flip, fraction: 0.2}"],
    "multilabel": ["protocol=gossip", "nodes=20", "topology.degree=4", "data=synthetic_multilabel",
                   "data.n_samples=800"],
}
SCALE_ROUNDS = {1_000_000: 5}


def equality(device: str) -> list[list]:
    import torch
    from simulator import run

    rows = []
    for name, ov in EQUALITY.items():
        base = [*ov, "rounds=3", "sim.progress=false", "train.local_steps=2", "train.local_epochs=null"]
        cpu = run(overrides=[*base, "device=cpu"])
        dev = run(overrides=[*base, f"device={device}"])
        h = cpu.summary["headline"] + "_mean"
        gap = float((cpu.final_models - dev.final_models.cpu()).abs().max())
        metric = abs(cpu.metrics[-1][h] - dev.metrics[-1][h])
        ok = gap <= 1e-4 and metric <= 0.01 and torch.isfinite(dev.final_models).all()
        rows.append([name, f"{gap:.2e}", f"{metric:.4f}", "yes" if ok else "NO"])
    return rows


def scale_case(nodes: int, rounds: int, device: str) -> dict:
    import resource

    import torch
    from simulator import run

    topo = ["topology=torus"] if nodes >= 1_000_000 else ["topology=random_regular", "topology.degree=8"]
    ov = ["protocol=gossip", *topo, "data=synthetic", f"data.n_samples={25 * nodes}", "data.n_features=16",
          f"nodes={nodes}", f"rounds={rounds}", "train.local_epochs=null", "train.local_steps=1",
          "train.batch_size=8", "sim.progress=false", f"device={device}"]
    t0 = time.perf_counter()
    res = run(overrides=ov)
    wall = time.perf_counter() - t0
    gpu_gb = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    s = res.summary
    return {"nodes": nodes, "rounds": s["rounds_completed"], "wall_s": wall, "run_wall_s": s["wall_time_s"],
            "per_round_s": s["wall_time_s"] / max(1, s["rounds_completed"]), "gpu_gb": gpu_gb,
            "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "status": s["status"],
            "accuracy": s["final"].get("accuracy_mean"), "overrides": ov}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--equality-device", default=None, help="the device compared with the CPU (default: --device)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per scale case")
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)  # one scale case, in a child process
    args = ap.parse_args()
    set_threads(None)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.case:
        print("GPU_JSON " + json.dumps(scale_case(args.case, SCALE_ROUNDS.get(args.case, args.rounds), device)))
        return
    print(header(f"GPU path: CUDA against CPU, and gossip at scale on {device}"))
    if device.startswith("cuda"):
        print(f"- GPU: {torch.cuda.get_device_name(0)}\n")
    t0 = time.perf_counter()
    print("### Equality: the same scenarios on cpu and on " + (args.equality_device or device))
    print(table(["scenario", "max abs model difference", "headline difference", "agree"],
                equality(args.equality_device or device)))
    print(f"\n({time.perf_counter() - t0:.0f} s)\n\n### Gossip at scale")
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--case", str(n), "--device", device, "--rounds", str(args.rounds)]
        try:
            proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            rows.append([f"{n:,}", "-", f"> {args.timeout:.0f} (timed out)", "-", "-", "-", "-"])
            continue
        line = next((l for l in proc.stdout.splitlines() if l.startswith("GPU_JSON ")), None)
        if proc.returncode or line is None:
            rows.append([f"{n:,}", "-", f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}",
                         "-", "-", "-", "-"])
            continue
        r = json.loads(line.removeprefix("GPU_JSON "))
        rows.append([f"{n:,}", r["rounds"], f"{r['wall_s']:.1f}", f"{r['per_round_s']:.3f}",
                     "-" if r["gpu_gb"] is None else f"{r['gpu_gb']:.2f}", f"{r['rss_gb']:.2f}", r["status"]])
    print(table(["nodes", "rounds", "whole run (s)", "s per round (whole run / rounds)", "peak GPU memory (GB)",
                 "peak host RSS (GB)", "status"], rows))
    print(f"\n(all: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
