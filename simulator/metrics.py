"""The metrics recorder: metrics.csv (flushed row by row, so a crash loses nothing already
measured), summary.json and curves.png in the run directory.

Both files are strict: metrics.csv leaves a cell empty where a value is NaN (not measured, or
not a number), and summary.json holds no bare NaN/Infinity tokens (NaN becomes null, an
infinity the string "inf" or "-inf", which float() reads back). summary.json is written to a
temporary name and renamed, so a reader never sees half a file."""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path


class Recorder:
    def __init__(self, out_dir: str | Path | None, headline: str = "accuracy"):
        self.rows: list[dict] = []
        self.headline = headline  # the task's main metric: what curves.png draws
        self.summary: dict = {}
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._file = self._writer = None
        if self.out_dir is not None:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                from scenarios import ConfigError
                raise ConfigError(f"cannot create the run directory {self.out_dir}: "
                                  f"{err.strerror or err}") from None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.out_dir is None:
            return
        if self._writer is None:
            self._file = open(self.out_dir / "metrics.csv", "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=list(row))
            self._writer.writeheader()
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()

    def close(self, summary: dict) -> None:
        self.summary = summary
        if self._file is not None:
            self._file.close()
        if self.out_dir is None:
            return
        write_json(self.out_dir / "summary.json", summary)
        if self.rows:
            try:
                plot_curves(self.rows, self.out_dir / "curves.png", title=summary.get("title", ""),
                            headline=self.headline)
            except Exception as err:  # the figure is a view of metrics.csv: never lose the run over it
                warnings.warn(f"curves.png not drawn: {type(err).__name__}: {err}", stacklevel=2)


def _cell(v):
    return "" if isinstance(v, float) and math.isnan(v) else v


def strict(x):
    """x with every float JSON can hold: NaN -> None, +-inf -> "inf"/"-inf" (recursively)."""
    if hasattr(x, "item") and not isinstance(x, (list, tuple, dict, str)):
        x = x.item() if getattr(x, "ndim", 0) == 0 else x.tolist()
    if isinstance(x, float):
        return None if math.isnan(x) else (("inf" if x > 0 else "-inf") if math.isinf(x) else x)
    if isinstance(x, dict):
        return {str(k): strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict(v) for v in x]
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return str(x)


def write_json(path: Path, obj) -> None:
    """Strict JSON, written whole or not at all (a temporary file renamed over the target)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(strict(obj), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def plot_curves(rows: list[dict], path: Path, title: str = "", headline: str = "accuracy") -> None:
    """The task's headline metric (accuracy, micro-F1, ...) and loss against round and against
    simulated time."""
    # a bare Figure on the Agg canvas: no pyplot, no GUI backend to find (a faster import)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    r = [row["round"] for row in rows]
    t = [row["sim_time_s"] for row in rows]
    preq = [k for k in rows[0] if k.startswith("prequential_") and k != "prequential_loss"
            and not k.startswith("prequential_node")]
    # a third row: every prequential metric, when the run streams (multi-label: F1s, subset, Hamming)
    fig = Figure(figsize=(10, 9.5 if len(preq) > 1 else 6.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3 if len(preq) > 1 else 2, 2, sharey="row")
    # a protocol that re-partitions (iHOMER) counts it: mark each change on every panel
    changes = []
    if "restructures" in rows[0]:
        changes = [i for i in range(1, len(rows)) if rows[i]["restructures"] > rows[i - 1]["restructures"]]
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
        if len(preq) > 1:
            ax = axes[2, col]
            for k in preq:
                ax.plot(x, [row[k] for row in rows], label=k.removeprefix("prequential_").replace("_", " "))
            ax.set_xlabel(label)
            ax.set_ylabel("prequential (pooled)")
            ax.legend(loc="best", fontsize=8)
            ax.grid(alpha=0.3)
        for i in changes:
            for ax in axes[:, col]:
                ax.axvline(x[i], color="gray", ls=":", lw=0.8)
    if changes:
        title = f"{title}\n(dotted: the label partition changed)"
    fig.suptitle(title)
    # fixed margins: tight_layout would draw the whole figure once more just to measure it
    h = fig.get_figheight()
    lines = title.count("\n") + 1
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.55 / h, top=1 - (0.2 + 0.22 * lines) / h,
                        hspace=0.28, wspace=0.12)
    fig.savefig(path, dpi=100)
