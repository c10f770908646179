"""The metrics recorder: metrics.csv (flushed row by row, so a crash loses nothing already
measured), summary.json and curves.png in the run directory."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path


class Recorder:
    def __init__(self, out_dir: str | Path | None, headline: str = "accuracy"):
        self.rows: list[dict] = []
        self.headline = headline  # the task's main metric: what curves.png draws
        self.summary: dict = {}
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._file = self._writer = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.out_dir is None:
            return
        if self._writer is None:
            self._file = open(self.out_dir / "metrics.csv", "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=list(row))
            self._writer.writeheader()
        self._writer.writerow(row)
        self._file.flush()

    def close(self, summary: dict) -> None:
        self.summary = summary
        if self._file is not None:
            self._file.close()
        if self.out_dir is None:
            return
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_plain) + "\n")
        if self.rows:
            plot_curves(self.rows, self.out_dir / "curves.png", title=summary.get("title", ""),
                        headline=self.headline)


def _plain(x):
    return x.item() if hasattr(x, "item") else str(x)


def plot_curves(rows: list[dict], path: Path, title: str = "", headline: str = "accuracy") -> None:
    """The task's headline metric (accuracy, micro-F1, ...) and loss against round and against
    simulated time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = [row["round"] for row in rows]
    t = [row["sim_time_s"] for row in rows]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharey="row")
    for col, x, label in ((0, r, "round"), (1, t, "simulated time (s)")):
        ax = axes[0, col]
        ax.plot(x, [row[f"{headline}_mean"] for row in rows], label="mean over nodes")
        lo = [row[f"{headline}_min"] for row in rows]
        hi = [row[f"{headline}_max"] for row in rows]
        ax.fill_between(x, lo, hi, alpha=0.2, label="min-max")
        if f"prequential_{headline}" in rows[0]:
            ax.plot(x, [row[f"prequential_{headline}"] for row in rows], "--", label="prequential (pooled)")
        ax.set_ylabel(f"test {headline.replace('_', ' ')}")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        ax.plot(x, [row["loss_mean"] for row in rows], label="test loss")
        ax.plot(x, [row["train_loss"] if not math.isnan(row["train_loss"]) else None for row in rows],
                label="train loss")
        ax.set_xlabel(label)
        ax.set_ylabel("loss")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
