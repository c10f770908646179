"""Reports over a sweep: one table and one figure comparing its arms.

`SweepReport` is a Hydra callback (see scenarios/experiment/): when a multirun ends it reads
every job's summary.json and metrics.csv, groups the jobs by `label` (the arm), and writes
report.md, report.csv and report.png into the sweep directory. `write_report(sweep_dir)` does
the same from Python.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

try:  # the callback base class; report functions work without Hydra too
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


def _summaries(sweep_dir: str | Path, completed: bool):
    """(path, summary) of every job of a sweep that completed (or, completed=False, did not; a
    summary from before statuses existed counts as completed)."""
    for summary_path in sorted(Path(sweep_dir).glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        if (summary.get("status", "completed") == "completed") == completed:
            yield summary_path, summary


def load_sweep(sweep_dir: str | Path) -> dict[str, list[dict]]:
    """{arm: [ {summary, metrics: {column: np.array}} per seed ]} from a sweep directory: only
    the runs that completed (see `incomplete_runs` for the others)."""
    arms: dict[str, list[dict]] = {}
    for summary_path, summary in _summaries(sweep_dir, completed=True):
        rows = list(csv.DictReader(open(summary_path.parent / "metrics.csv")))
        cols = {k: np.array([float(r[k]) if r[k] != "" else math.nan for r in rows]) for k in rows[0]} if rows else {}
        arm = summary.get("label") or summary["config"]["protocol"]["name"]
        arms.setdefault(arm, []).append({"summary": summary, "metrics": cols})
    return arms


def incomplete_runs(sweep_dir: str | Path) -> list[str]:
    """'job: status (why)' for every run of the sweep that did not complete."""
    return [f"{path.parent.name}: {summary['status']} ({summary.get('status_detail', '')})"
            for path, summary in _summaries(sweep_dir, completed=False)]


def time_to_reach(times: np.ndarray, acc: np.ndarray, target: float) -> float:
    """First simulated time at which accuracy >= target (inf if never)."""
    hit = np.flatnonzero(acc >= target - 1e-12)
    return float(times[hit[0]]) if len(hit) else math.inf


def summarize(arms: dict[str, list[dict]], reference: str | None = None) -> list[dict]:
    """One row per arm: final accuracy, time to reach the reference arm's final accuracy (as a
    multiple of the reference's duration), and layer-1 weight variance against its initial."""
    ref_acc = ref_time = None
    if reference in arms:
        runs = arms[reference]
        ref_acc = float(np.mean([r["metrics"]["accuracy_mean"][-1] for r in runs]))
        ref_time = float(np.mean([r["metrics"]["sim_time_s"][-1] for r in runs]))
    table = []
    for arm, runs in arms.items():
        final = [r["metrics"]["accuracy_mean"][-1] for r in runs]
        row = {"arm": arm, "seeds": len(runs),
               "final_accuracy": float(np.mean(final)), "final_accuracy_std": float(np.std(final)),
               "duration": float(np.mean([r["metrics"]["sim_time_s"][-1] for r in runs]))}
        if "layer1_var_mean" in runs[0]["metrics"]:
            ratios_min = [r["metrics"]["layer1_var_mean"].min() / r["metrics"]["layer1_var_mean"][0] for r in runs]
            ratios_end = [r["metrics"]["layer1_var_mean"][-1] / r["metrics"]["layer1_var_mean"][0] for r in runs]
            row["layer1_var_min_over_initial"] = float(np.mean(ratios_min))
            row["layer1_var_final_over_initial"] = float(np.mean(ratios_end))
        if ref_acc is not None:
            # the mean curve over seeds (seeds share evaluation times for tick-clocked arms)
            n = min(len(r["metrics"]["accuracy_mean"]) for r in runs)
            acc = np.mean([r["metrics"]["accuracy_mean"][:n] for r in runs], axis=0)
            t = np.mean([r["metrics"]["sim_time_s"][:n] for r in runs], axis=0)
            reach = time_to_reach(t, acc, ref_acc)
            row["time_to_reference_accuracy"] = reach
            row["time_over_reference_duration"] = reach / ref_time
        table.append(row)
    return table


def _fmt(v) -> str:
    if isinstance(v, float):
        return "never" if math.isinf(v) else f"{v:.4g}"
    return str(v)


def write_report(sweep_dir: str | Path, reference: str | None = None, title: str = "",
                 x: str = "sim_time_s") -> str:
    """Write report.csv, report.md and report.png (against the metrics column `x`) for a sweep;
    returns the markdown."""
    sweep_dir = Path(sweep_dir)
    arms = load_sweep(sweep_dir)
    if not arms:
        return ""
    table = summarize(arms, reference)
    keys = list(dict.fromkeys(k for row in table for k in row))
    with open(sweep_dir / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(table)
    lines = [f"# {title or 'Sweep report'}", ""]
    if reference in arms:
        lines.append(f"Reference arm: {reference} (its mean final accuracy and duration); times "
                     "are simulated (ticks or seconds); accuracies are means over seeds.")
        lines.append("")
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|" + "---|" * len(keys))
    lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in table]
    left_out = incomplete_runs(sweep_dir)
    if left_out:
        lines += ["", f"Left out ({len(left_out)} runs did not complete):", ""] + [f"- {x}" for x in left_out]
    md = "\n".join(lines) + "\n"
    (sweep_dir / "report.md").write_text(md)
    plot_arms(arms, sweep_dir / "report.png", title, x)
    return md


def plot_arms(arms: dict[str, list[dict]], path: Path, title: str = "", x: str = "sim_time_s") -> None:
    """Accuracy and layer-1 weight variance against simulated time (or another metrics column
    `x`, e.g. evaluations), one line per arm (mean over seeds) with a band from the lowest to
    the highest seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("accuracy_mean", "test accuracy", False)]
    if any("layer1_var_mean" in r["metrics"] for runs in arms.values() for r in runs):
        panels.append(("layer1_var_mean", "layer-1 weight variance", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    axes = np.atleast_1d(axes)
    for ax, (col, label, log) in zip(axes, panels):
        for arm, runs in arms.items():
            n = min(len(r["metrics"][col]) for r in runs)
            ys = np.array([r["metrics"][col][:n] for r in runs])
            t = np.mean([r["metrics"][x][:n] for r in runs], axis=0)
            line, = ax.plot(t, ys.mean(0), label=f"{arm} ({len(runs)} seeds)")
            ax.fill_between(t, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
        ax.set_xlabel("simulated time" if x == "sim_time_s" else x.replace("_", " "))
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class SweepReport(Callback):
    """Hydra callback: writes the report when a multirun ends and prints its table."""

    def __init__(self, reference: str | None = None, title: str = "", x: str = "sim_time_s"):
        self.reference = reference
        self.title = title
        self.x = x

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        md = write_report(sweep_dir, self.reference, self.title, self.x)
        if md:
            print(md)
            print(f"murmur: report written to {sweep_dir / 'report.md'} and report.png")
