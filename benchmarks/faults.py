"""Fleets that fail, on digits: the experiments the README quotes (not a speed benchmark), kept
here with their output (faults/report.md and its figures).

  churn      final accuracy against the share of nodes online (sessions of exponential length,
             a 1 s on/off cycle on average), fedavg / gossip / vc_gossip, 100 nodes, 30 rounds
  loss       final accuracy against topology.loss, the same three protocols
  byzantine  FedAvg, 100 clients, 30 rounds: attacks x aggregators x 10/20/30% attackers
             (trim = the attack's share; Krum's f = the attack's share of the uploads)
  fedbuff    FedBuff against FedAvg on a heterogeneous-speed fleet (lognormal speeds, sigma 1):
             simulated time to a target test accuracy, 10 clients at work at once

    python benchmarks/faults.py                    # everything, as recorded
    python benchmarks/faults.py --only byzantine   # one experiment
"""
from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np

from _machine import header, set_threads, table

COMMON = ["sim.progress=false", "nodes=100", "rounds=30"]
SHARES = (1.0, 0.75, 0.5, 0.25)
LOSSES = (0.0, 0.1, 0.3, 0.5)
GOSSIP = ["topology=random_regular", "topology.degree=8", "train.local_epochs=null", "train.local_steps=10"]
PROTOCOLS = {"fedavg": ["protocol=fedavg", "protocol.fraction=0.2"],
             "gossip": ["protocol=gossip", "protocol.init=shared", *GOSSIP],
             "vc_gossip": ["protocol=vc_gossip", *GOSSIP]}
ATTACKS = {"none": None, "sign flip x10": "{kind: sign_flip, fraction: F, scale: 10}",
           "gaussian (std 1)": "{kind: gaussian, fraction: F}", "scale x10": "{kind: scale, fraction: F}",
           "ALIE": "{kind: alie, fraction: F}", "label flip": "{kind: label_flip, fraction: F}"}
RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip")
FRACTIONS = (0.1, 0.2, 0.3)


def final(res) -> float:
    if res.summary["status"] != "completed":
        return math.nan
    return res.metrics[-1]["accuracy_mean"]


def churn(run, seeds):
    rows, curves = [], {}
    for name, ov in PROTOCOLS.items():
        accs = []
        for share in SHARES:
            avail = [] if share == 1 else [f"availability={{kind: sessions, on: {{kind: exponential, mean: {share}}}, "
                                           f"off: {{kind: exponential, mean: {1 - share}}}}}"]
            accs.append(np.mean([final(run(overrides=[*COMMON, *ov, *avail, f"seed={s}"])) for s in range(seeds)]))
        curves[name] = accs
        rows.append([name, *(f"{a:.3f}" for a in accs)])
    return table(["protocol", *(f"{s:.0%} online" for s in SHARES)], rows), curves


def loss(run, seeds):
    rows, curves = [], {}
    for name, ov in PROTOCOLS.items():
        accs = [np.mean([final(run(overrides=[*COMMON, *ov, f"topology.loss={p}", f"seed={s}"])) for s in range(seeds)])
                for p in LOSSES]
        curves[name] = accs
        rows.append([name, *(f"{a:.3f}" for a in accs)])
    return table(["protocol", *(f"loss {p:g}" for p in LOSSES)], rows), curves


def byzantine(run, seeds):
    out = []
    for f in FRACTIONS:
        rows = []
        for attack, spec in ATTACKS.items():
            cells = []
            for rule in RULES:
                ov = [*COMMON, "protocol=fedavg", f"protocol.aggregator={rule}", f"protocol.trim={f}",
                      f"protocol.byzantine={f}"]
                if spec:
                    ov.append("attack=" + spec.replace("F", str(f)))
                accs = []
                for s in range(seeds):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = run(overrides=[*ov, f"seed={s}"])
                    accs.append(final(res))
                a = np.mean(accs)
                cells.append("diverged" if math.isnan(a) else f"{a:.3f}")
            rows.append([attack, *cells])
        out.append(f"**{f:.0%} attackers**\n\n" + table(["attack", *RULES], rows))
    return "\n\n".join(out)


def fedbuff(run, seeds, target=0.85):
    fleet = ["nodes=100", "sim.progress=false", "speed={kind: lognormal, mean: 500, sigma: 1}",
             "train.local_epochs=null", "train.local_steps=10"]
    arms = {"FedAvg (10 a round)": ["protocol=fedavg", "protocol.fraction=0.1", "rounds=60"],
            "FedBuff (10 at work, K=5)": ["protocol=fedbuff", "protocol.concurrency=10", "protocol.buffer=5",
                                          "rounds=120"],
            "FedBuff (10 at work, K=10)": ["protocol=fedbuff", "protocol.concurrency=10", "protocol.buffer=10",
                                           "rounds=60"],
            "FedAsync (10 at work)": ["protocol=fedasync", "protocol.concurrency=10", "rounds=600",
                                      "eval.every=10"]}
    rows, curves = [], {}
    for name, ov in arms.items():
        reach, last, runs = [], [], []
        for s in range(seeds):
            res = run(overrides=[*fleet, *ov, f"seed={s}"])
            runs.append(res.metrics)
            hit = [m["sim_time_s"] for m in res.metrics if m["accuracy_mean"] >= target]
            reach.append(hit[0] if hit else math.inf)
            last.append((res.metrics[-1]["sim_time_s"], final(res)))
        curves[name] = runs[0]
        rows.append([name, f"{np.median(reach):.2f}", f"{np.mean([l[1] for l in last]):.3f}",
                     f"{np.mean([l[0] for l in last]):.2f}"])
    return table(["arm", f"sim. seconds to {target}", "final accuracy", "sim. seconds in all"], rows), curves


def plot(path, x, curves, xlabel, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in curves.items():
        ax.plot(x, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_time(path, curves, target):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, rows in curves.items():
        ax.plot([r["sim_time_s"] for r in rows], [r["accuracy_mean"] for r in rows], label=name)
    ax.axhline(target, color="gray", ls="--", lw=1)
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("churn", "loss", "byzantine", "fedbuff"))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("faults")))
    args = ap.parse_args()
    set_threads(None)
    from simulator import run

    out = Path(args.out)
    out.mkdir(exist_ok=True)
    parts = [header("Fleets that fail (digits)"), f"- mean over {args.seeds} seeds\n"]
    if args.only in (None, "churn"):
        text, curves = churn(run, args.seeds)
        plot(out / "churn.png", [s * 100 for s in SHARES], curves, "% of nodes online", "churn")
        parts += ["### Accuracy against churn", text]
    if args.only in (None, "loss"):
        text, curves = loss(run, args.seeds)
        plot(out / "loss.png", LOSSES, curves, "message loss probability", "lost messages")
        parts += ["### Accuracy against message loss", text]
    if args.only in (None, "byzantine"):
        parts += ["### Byzantine clients (FedAvg)", byzantine(run, args.seeds)]
    if args.only in (None, "fedbuff"):
        text, curves = fedbuff(run, args.seeds)
        plot_time(out / "fedbuff.png", curves, 0.85)
        parts += ["### FedBuff against FedAvg (heterogeneous speeds)", text]
    report = "\n\n".join(parts) + "\n"
    name = "report.md" if args.only is None else f"report_{args.only}.md"
    (out / name).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
