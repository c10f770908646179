"""The metrics recorder: metrics.csv (flushed row by row, so a crash loses nothing already
measured), summary.json and curves.png in the run directory; with `tensorboard=True` every
row is also logged to TensorBoard (tensorboard/ in the run directory). `plot_graph` draws the
topology with each node coloured by a value (graph.png).

Both files are strict: metrics.csv leaves a cell empty where a value is NaN (not measured, or
not a number), and summary.json holds no bare NaN/Infinity tokens (NaN becomes null, an
infinity the string "inf" or "-inf", which float() reads back). summary.json is written to a
temporary name and renamed, so a reader never sees half a file."""
from __future__ import annotations

import csv
import json
import math
import numbers
import warnings
from pathlib import Path

import numpy as np


class Recorder:
    """`tensorboard`: also log every finite number of every row as a TensorBoard scalar (tag:
    the column, step: the row's round) into out_dir/tensorboard/ (nothing without out_dir);
    it needs the tensorboard package, and says so in one line (a ConfigError) when it is
    missing."""

    def __init__(self, out_dir: str | Path | None, headline: str = "accuracy", tensorboard: bool = False):
        self.rows: list[dict] = []
        self.headline = headline  # the task's main metric: what curves.png draws
        self.summary: dict = {}
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._file = self._writer = self._board = None
        if tensorboard and self.out_dir is not None:
            try:  # imported only when asked for: TensorBoard is an optional dependency
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from scenarios import ConfigError
                raise ConfigError("log.tensorboard=true needs the tensorboard package: "
                                  "pip install 'murmuration[tensorboard]'") from None
        if self.out_dir is not None:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                from scenarios import ConfigError
                raise ConfigError(f"cannot create the run directory {self.out_dir}: "
                                  f"{err.strerror or err}") from None
            if tensorboard:
                self._board = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

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
        if self._board is not None:
            step = int(row["round"])
            for k, v in row.items():
                if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
                    self._board.add_scalar(k, float(v), step)
            self._board.flush()  # as metrics.csv: what was measured is on disk

    def close(self, summary: dict) -> None:
        self.summary = summary
        if self._file is not None:
            self._file.close()
        if self._board is not None:
            self._board.close()
            self._board = None
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


def plot_graph(graph, nodes, values, path: Path, *, seed: int, title: str = "",
               label: str = "test accuracy", max_nodes: int = 2000) -> str:
    """graph.png: the topology (a networkx graph) with node `nodes[i]` coloured by `values[i]`
    (a colorbar; nodes without a finite value are grey). Beyond `max_nodes` nodes it draws a
    seeded sample of max_nodes (nodes with values first) and the edges among them, and says so
    in the title (returned). The layout is seeded and cheap (`_layout`: 2,000 nodes draw in a
    few seconds). Drawing may fail (an odd graph, a full disk): the caller warns and keeps the
    run, as for curves.png."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    order = list(graph.nodes())
    n = len(order)
    value = dict(zip(np.asarray(nodes).tolist(), np.asarray(values, dtype=float).tolist()))
    if n > max_nodes:
        rng = np.random.default_rng(seed)
        valued = [v for v in order if v in value and math.isfinite(value[v])]
        others = [v for v in order if not (v in value and math.isfinite(value[v]))]
        if len(valued) >= max_nodes:
            keep = [valued[i] for i in np.sort(rng.choice(len(valued), max_nodes, replace=False))]
        else:
            keep = valued + [others[i] for i in np.sort(rng.choice(len(others), max_nodes - len(valued),
                                                                   replace=False))]
        graph = graph.subgraph(keep)
        order = list(graph.nodes())
        note = f"sampled: {max_nodes:,} of {n:,} nodes (seeded) and the edges among them"
        title = f"{title}\n{note}" if title else note
    pos = _layout(graph, seed)
    xy = np.array([pos[v] for v in order]).reshape(-1, 2)
    vals = np.array([value.get(v, math.nan) for v in order], dtype=float)
    has = np.isfinite(vals)

    fig = Figure(figsize=(8, 7))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    small = len(order) <= 300
    if graph.number_of_edges():
        segments = np.array([(pos[a], pos[b]) for a, b in graph.edges()])
        few = len(segments) <= 2000
        ax.add_collection(LineCollection(segments, colors="0.6", linewidths=0.6 if few else 0.2,
                                         alpha=0.7 if few else 0.3, zorder=1))
    size = 60 if small else max(4.0, 6000 / max(len(order), 1))
    ax.scatter(xy[~has, 0], xy[~has, 1], s=size, c="0.75", edgecolors="none", zorder=2)
    if has.any():
        dots = ax.scatter(xy[has, 0], xy[has, 1], s=size, c=vals[has], cmap="viridis",
                          edgecolors="k" if small else "none", linewidths=0.3, zorder=3)
        fig.colorbar(dots, ax=ax, label=label, shrink=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.autoscale_view()
    ax.set_axis_off()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return title


def _layout(graph, seed: int) -> dict:
    """Node positions, seeded: Fruchterman-Reingold (as networkx's spring_layout) from a circle,
    vectorised in float32 with the all-pairs repulsion taken by blocks of rows
    (memory stays small at any size); 50 iterations up to 300 nodes, 25 beyond (each costs
    O(n^2), as two matrix products: 2,000 nodes take about a second)."""
    order = list(graph.nodes())
    n = len(order)
    if n == 0:
        return {}
    index = {v: i for i, v in enumerate(order)}
    edges = np.array([(index[a], index[b]) for a, b in graph.edges() if a != b], dtype=np.int64).reshape(-1, 2)
    # the start: the nodes on a circle in their order (a ring or small world, numbered along the
    # ring, starts untangled), jittered by the seed
    angle = 2 * np.pi * np.arange(n) / n
    pos = (0.5 + 0.5 * np.stack([np.cos(angle), np.sin(angle)], 1)
           + 0.01 * np.random.default_rng(seed).standard_normal((n, 2))).astype(np.float32)
    k = np.float32(1 / math.sqrt(n))  # the ideal edge length
    iterations = 50 if n <= 300 else 25
    temp = 0.1  # the largest step, cooled linearly to 0
    block = max(1, (1 << 21) // n)
    for it in range(iterations):
        disp = np.zeros_like(pos)
        sq = (pos * pos).sum(1)
        for s in range(0, n, block):  # repulsion k^2/d between every pair: sum_j w_ij (p_i - p_j)
            rows = slice(s, s + block)
            d2 = np.maximum(sq[rows, None] + sq[None, :] - 2 * pos[rows] @ pos.T, np.float32(1e-4))
            w = (k * k) / d2
            w[np.arange(len(w)), np.arange(s, s + len(w))] = 0
            disp[rows] = pos[rows] * w.sum(1)[:, None] - w @ pos
        if len(edges):  # attraction d^2/k along every edge
            d = pos[edges[:, 0]] - pos[edges[:, 1]]
            f = d * (np.sqrt((d * d).sum(-1)) / k)[:, None]
            np.add.at(disp, edges[:, 0], -f)
            np.add.at(disp, edges[:, 1], f)
        length = np.maximum(np.sqrt((disp * disp).sum(-1)), np.float32(0.01))
        pos += disp * (temp * (1 - it / iterations) / length)[:, None]
    return {v: pos[i] for i, v in enumerate(order)}
