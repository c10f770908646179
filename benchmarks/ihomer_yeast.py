"""iHOMER on Yeast (river's bundled copy): the paper's single stream and a 10-node federation,
every baseline in the same sweep. Not a speed benchmark: an experiment whose figures the README
quotes, kept here with its output (ihomer_yeast/report.md, report.png).

  single stream  one node streams Yeast in river's order (2,415 rows, prequential: each batch of
               50 rows is predicted, then trained on): the paper's setting (published iHOMER
               micro-F1 .608, subset accuracy .142)
  federated    10 nodes, IID or label-skewed (Dirichlet 0.5 on each row's rarest label) shards
               of the same stream, 1 row/s each, a round every 10 simulated seconds

Arms: iHOMER (ODAC partition; stacked heads, or classifier chains), FedAvg binary relevance (singletons), one cluster (a full chain
over all labels), iHOMER with a random partition of ODAC's sizes, local-only (no model leaves
its node), centralized (all rows at one node).

    python benchmarks/ihomer_yeast.py              # 3 seeds, as recorded
    python benchmarks/ihomer_yeast.py --seeds 1    # a quick look
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _machine import header, set_threads

TRAIN = ["train.lr=2.0", "train.local_epochs=3", "train.batch_size=8", "sim.progress=false", "eval.every=5"]
ARMS = {
    "ihomer": ["protocol.partition=odac"],
    "ihomer, chain learner": ["protocol.partition=odac", "protocol.learner=chain"],
    "binary relevance": ["protocol.partition=singletons"],
    "one cluster": ["protocol.partition=one"],
    "random partition": ["protocol.partition=random"],
    "local-only": ["protocol.partition=odac", "protocol.mode=local"],
}
PREQ = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")


def scenario(setting: str, arm: str, seed: int) -> list[str]:
    base = ["protocol=ihomer", "data=yeast", f"seed={seed}", *TRAIN]
    if setting == "single stream":  # 50 rows a round, 200 minibatch steps on what has arrived
        return [*base, "nodes=1", "data.stream_rate=10", "data.test_fraction=0.001", "protocol.period=5",
                "rounds=50", "train.local_steps=200", *ARMS[arm]]
    if arm == "centralized":  # the federation's rows at one node, at the federation's pace
        return [*base, "nodes=1", "data.stream_rate=10", "protocol.period=10", "rounds=22", *ARMS["ihomer"]]
    skew = ["data.partition=dirichlet", "data.alpha=0.5"] if setting == "label-skewed" else []
    return [*base, "nodes=10", "data.stream_rate=1", "protocol.period=10", "rounds=22", *skew, *ARMS[arm]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("ihomer_yeast")))
    args = ap.parse_args()
    set_threads(None)
    from simulator import run

    out = Path(args.out)
    out.mkdir(exist_ok=True)
    plan = [("single stream", a) for a in ("ihomer", "ihomer, chain learner", "binary relevance", "one cluster",
                                           "random partition")]
    plan += [(s, a) for s in ("IID", "label-skewed") for a in (*ARMS, "centralized")]
    results = {}
    curves = {}
    for setting, arm in plan:
        finals = []
        for seed in range(args.seeds):
            res = run(overrides=scenario(setting, arm, seed))
            last = res.metrics[-1]
            finals.append({k: last[f"prequential_{k}"] for k in PREQ} | {
                "test_micro_f1": last["micro_f1_mean"], "test_subset_accuracy": last["subset_accuracy_mean"],
                "clusters": last["clusters"], "restructures": last["restructures"],
                "local_drifts": last["local_drifts"], "bytes_sent": last["bytes_sent"]})
            if seed == 0:
                curves[(setting, arm)] = [(r["sim_time_s"], r["prequential_micro_f1"], r["restructures"])
                                          for r in res.metrics]
        results[(setting, arm)] = finals
        m = {k: np.mean([f[k] for f in finals]) for k in finals[0]}
        print(f"{setting:14s} {arm:17s} " + " ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)
    write_report(out, results, curves, args.seeds)


def write_report(out: Path, results: dict, curves: dict, seeds: int) -> None:
    lines = [header("iHOMER on Yeast"), "",
             f"Prequential (test-then-train) figures pooled over every node, mean ± std over {seeds} seeds; "
             "held-out test figures of the final model(s) on the last 20% of Yeast (not streamed; the single "
             "stream streams every row but 2, so it has none).", "",
             "| setting | arm | micro-F1 | macro-F1 | subset acc. | Hamming loss | test micro-F1 | test subset acc. | "
             "clusters | partition changes | local drifts | MB sent |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table = []
    for (setting, arm), finals in results.items():
        def ms(k):
            v = [f[k] for f in finals]
            return f"{np.mean(v):.3f} ± {np.std(v):.3f}"
        single = setting == "single stream"  # the whole stream is prequential: no held-out rows
        lines.append(f"| {setting} | {arm} | {ms('micro_f1')} | {ms('macro_f1')} | {ms('subset_accuracy')} | "
                     f"{ms('hamming_loss')} | {'-' if single else ms('test_micro_f1')} | "
                     f"{'-' if single else ms('test_subset_accuracy')} | "
                     f"{np.mean([f['clusters'] for f in finals]):.1f} | "
                     f"{np.mean([f['restructures'] for f in finals]):.1f} | "
                     f"{np.mean([f['local_drifts'] for f in finals]):.1f} | "
                     f"{np.mean([f['bytes_sent'] for f in finals]) / 1e6:.2f} |")
        table.append({"setting": setting, "arm": arm, **{k: float(np.mean([f[k] for f in finals])) for k in finals[0]}})
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(table, indent=1) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = list(dict.fromkeys(s for s, _ in results))
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), sharey=True)
    for ax, setting in zip(axes, settings):
        for (s, arm), pts in curves.items():
            if s != setting:
                continue
            t, f1, rs = zip(*pts)
            line, = ax.plot(t, f1, label=arm)
            marks = [t[i] for i in range(1, len(rs)) if rs[i] > rs[i - 1]]
            if arm == "ihomer":
                for x in marks:
                    ax.axvline(x, color=line.get_color(), ls=":", lw=0.8)
        ax.set_title(f"{setting} (dotted: iHOMER partition changes)", fontsize=9)
        ax.set_xlabel("simulated time (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("prequential micro-F1 (pooled)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)


if __name__ == "__main__":
    main()
