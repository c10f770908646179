"""M2N2 against FedAvg, gossip and vc_gossip on a label-skewed federation (2 classes per node), on
the same number of model transfers. Not a speed benchmark: an experiment whose figures the
README quotes, kept here with its output (m2n2_label_skew/report.md, report.png).

Every arm runs `rounds` rounds and is read at the largest number of model transfers every arm
reached (bytes_sent / model size): the budget. The arms' costs per round differ a lot, e.g.
at 10 nodes FedAvg moves 2 x 10 models a round, sync gossip (degree 4) 40, federated M2N2
(fraction 0.5) 5 down + 5 up + 5 x 10 to have every node score the 5 new children.

    python benchmarks/m2n2_label_skew.py                  # both scales, seeds as below
    python benchmarks/m2n2_label_skew.py --scale 10 --seeds 1   # a quick look
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from _machine import header, set_threads

SKEW = ["data.partition=shards", "data.classes_per_node=2", "data.validation=0.2", "sim.progress=false",
        "eval.every=1"]
SCALES = {
    10: dict(rounds=60, seeds=3, base=["nodes=10", "topology.degree=4", "train.local_steps=10", *SKEW],
             arms={"fedavg": ["protocol=fedavg"],
                   "gossip": ["protocol=gossip"],
                   "vc_gossip": ["protocol=vc_gossip"],
                   "m2n2 federated": ["protocol=m2n2", "protocol.fraction=0.5"],
                   "m2n2 decentralized": ["protocol=m2n2", "protocol.mode=decentralized"]}),
    1000: dict(rounds=1000, seeds=1,
               base=["nodes=1000", "data=synthetic", "data.n_samples=25000", "topology.degree=8",
                     "train.local_steps=5", *SKEW],
               arms={"fedavg": ["protocol=fedavg", "protocol.fraction=0.1"],
                     "gossip": ["protocol=gossip", "rounds=25"],
                     "vc_gossip": ["protocol=vc_gossip", "rounds=25"],
                     "m2n2 federated": ["protocol=m2n2", "protocol.fraction=0.01", "rounds=20"],
                     "m2n2 decentralized": ["protocol=m2n2", "protocol.mode=decentralized", "rounds=25"]}),
}


def at_budget(metrics: list[dict], model_bytes: int, budget: float) -> float:
    """Test accuracy (mean over the evaluated models) at the last evaluation within the budget."""
    within = [r for r in metrics if r["bytes_sent"] / model_bytes <= budget + 1e-9]
    return within[-1]["accuracy_mean"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, choices=sorted(SCALES), action="append")
    ap.add_argument("--seeds", type=int, help="seeds per arm (default: the scale's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "m2n2_label_skew"))
    args = ap.parse_args()
    set_threads(args.threads)
    from simulator import run  # after the thread setting

    print(header("M2N2 on a label-skewed federation, at equal model transfers"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# M2N2 on a label-skewed federation (2 classes per node), at equal model transfers", ""]
    curves = {}
    for scale in args.scale or sorted(SCALES):
        spec = SCALES[scale]
        seeds = args.seeds or spec["seeds"]
        runs = {}
        for arm, ov in spec["arms"].items():
            for seed in range(seeds):
                res = run(overrides=[*spec["base"], f"rounds={spec['rounds']}", *ov, f"seed={seed}"])
                mb = res.summary["n_parameters"] * 4
                runs.setdefault(arm, []).append((res.metrics, mb, res.summary["wall_time_s"]))
                print(json.dumps({"scale": scale, "arm": arm, "seed": seed,
                                  "final_accuracy": round(res.metrics[-1]["accuracy_mean"], 4),
                                  "transfers": res.metrics[-1]["bytes_sent"] // mb,
                                  "wall_s": round(res.summary["wall_time_s"], 1)}), flush=True)
        budget = min(m[-1]["bytes_sent"] / mb for arm in runs.values() for m, mb, _ in arm)
        lines += [f"## {scale} nodes ({seeds} seed{'s' if seeds > 1 else ''}): budget {budget:,.0f} model transfers",
                  "", "| arm | accuracy at the budget | final accuracy | transfers at the end | wall s |",
                  "|---|---|---|---|---|"]
        for arm, rs in runs.items():
            acc = [at_budget(m, mb, budget) for m, mb, _ in rs]
            fin = [m[-1]["accuracy_mean"] for m, _, _ in rs]
            lines.append(f"| {arm} | {np.mean(acc):.4f} ± {np.std(acc):.4f} | {np.mean(fin):.4f} | "
                         f"{np.mean([m[-1]['bytes_sent'] / mb for m, mb, _ in rs]):,.0f} | "
                         f"{np.mean([w for _, _, w in rs]):.1f} |")
        lines.append("")
        curves[scale] = (runs, budget)
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md)
    print(md)
    plot(curves, out / "report.png")


def plot(curves, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), squeeze=False)
    for ax, (scale, (runs, budget)) in zip(axes[0], curves.items()):
        for arm, rs in runs.items():
            n = min(len(m) for m, _, _ in rs)
            x = np.mean([[r["bytes_sent"] / mb for r in m[:n]] for m, mb, _ in rs], axis=0)
            y = np.mean([[r["accuracy_mean"] for r in m[:n]] for m, _, _ in rs], axis=0)
            ax.plot(x, y, label=arm)
        ax.axvline(budget, color="grey", linestyle=":", label="budget")
        ax.set_xscale("symlog", linthresh=max(1.0, budget / 100))
        ax.set_xlabel("model transfers")
        ax.set_ylabel("test accuracy (mean over evaluated models)")
        ax.set_title(f"{scale} nodes, 2 classes each")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
