"""Reports over a sweep: one table and one figure comparing its groups of runs.

    murmur-report multirun/2025-01-01/12-00-00          # report.md, report.csv, report.png there
    murmur-report DIR --target 0.9 --x rounds

`write_report(sweep_dir)` reads every job directory of a sweep (`DIR/*/summary.json` and
`metrics.csv`) and groups the jobs by what was swept: the config keys (dotted paths) whose
values differ between jobs, less `seed` and the keys that never change results (`IGNORED`).
Each group is one row of report.md and report.csv and one line of report.png.

- Final figures: each run's last evaluation (the last row of its metrics.csv): the headline
  metric's mean over nodes and its minimum (the worst node), the test loss, the consensus
  distance, the bytes sent and the simulated duration; a group shows their mean and standard
  deviation over its completed runs (the population deviation: 0 for one run).
- Time to target: per run, the x value (simulated seconds by default) of the first evaluation
  at which the headline's mean over nodes reaches the target; runs are not interpolated, so this
  is exact at the evaluations and an upper bound between them. The default target is 90% of
  the best group's mean final headline (or, with `reference`, that group's mean final
  headline); `target` sets it. A group's mean is `inf` ("never") when one of its runs never
  reached it; `reached` counts those that did.
- The figure: the headline's mean over nodes against x, one line per group: the mean over its
  runs, with a band from the lowest to the highest run. The runs of a group share their
  evaluation schedule (rounds, eval.every) but not always their clocks (asynchronous gossip,
  stragglers): a group's curve is taken evaluation by evaluation, the k-th point at the mean
  x of the runs' k-th evaluations (up to the shortest run), never interpolated.
- Runs that did not complete (failed, diverged, interrupted, or no summary.json at all: killed)
  are listed under the table and left out of every number.

`SweepReport` is the Hydra callback (see scenarios/experiment/) that writes the report when a
multirun ends. An experiment may ask for additions: `reference` (the time of each group to
reach the reference group's final headline, on the groups' mean curves, also as a multiple of
the reference's duration) and `variance` (layer-1 weight variance against its initial value,
a column pair and a second panel: the vanishing-variance experiment).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:  # the callback base class; report functions work without Hydra too
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object

# config keys that never change a run's results: not a reason to tell runs apart (a prefix
# stands for every key below it)
IGNORED = ("seed", "resume", "sim.progress", "sim.checkpoint_every", "sim.record_events", "log")
# the final figures of a run (metrics.csv columns; {h}: the task's headline metric)
FINAL = ("{h}_mean", "{h}_min", "loss_mean", "consensus_distance", "bytes_sent", "sim_time_s")
ABSENT = "\0absent"  # a key a job's config does not have (another protocol's field)


class ReportError(ValueError):
    """Nothing to report, or a report option that does not fit the sweep (one line)."""


@dataclass
class Job:
    """One job directory of a sweep."""
    name: str
    summary: dict | None = None
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    status: str = "completed"
    detail: str = ""

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def headline(self) -> str:
        return (self.summary or {}).get("headline", "accuracy")

    @property
    def seed(self):
        return (self.summary or {}).get("seed", ((self.summary or {}).get("config") or {}).get("seed"))


@dataclass
class Group:
    """The jobs of a sweep that share every swept value but the seed."""
    values: dict[str, object]  # the display keys' values (ABSENT where a job has no such key)
    jobs: list[Job]

    @property
    def runs(self) -> list[Job]:
        return [j for j in self.jobs if j.completed]

    @property
    def name(self) -> str:
        return ", ".join(_value(v) if k == "label" else f"{k}={_value(v)}"
                         for k, v in self.values.items()) or "all runs"


def _natural(name: str):
    """'2' before '10': job directories in the order Hydra numbered them."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def _read_metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}

    def number(s):
        try:
            return float(s) if s not in ("", None) else math.nan
        except ValueError:
            return math.nan
    return {k: np.array([number(r[k]) for r in rows]) for k in rows[0]}


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job directory of a sweep (a folder holding summary.json, or metrics.csv or .hydra/
    without one: a job killed before it could write its summary), in Hydra's numbering order."""
    jobs = []
    dirs = [d for d in Path(sweep_dir).iterdir() if d.is_dir()] if Path(sweep_dir).is_dir() else []
    for d in sorted(dirs, key=lambda d: _natural(d.name)):
        summary_path, metrics_path = d / "summary.json", d / "metrics.csv"
        if not summary_path.is_file():
            if metrics_path.is_file() or (d / ".hydra").is_dir():
                jobs.append(Job(d.name, status="unfinished",
                                detail="no summary.json: the job was killed, or is still running"))
            continue
        try:
            summary = json.loads(summary_path.read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            jobs.append(Job(d.name, status="unreadable", detail=f"summary.json: {err}"))
            continue
        job = Job(d.name, summary, status=summary.get("status", "completed"),
                  detail=summary.get("status_detail", ""))
        if job.completed:  # a summary from before statuses existed counts as completed
            try:
                job.metrics = _read_metrics(metrics_path) if metrics_path.is_file() else {}
            except (OSError, csv.Error, UnicodeDecodeError) as err:
                job.status, job.detail = "unreadable", f"metrics.csv: {err}"
            if job.completed and not job.metrics:
                job.status, job.detail = "unreadable", "no evaluation in metrics.csv"
        jobs.append(job)
    return jobs


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{'train.lr': 0.1, 'model.hidden': [32], ...}: nested dicts as dotted keys."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _canon(v) -> str:
    return v if v is ABSENT else json.dumps(v, sort_keys=True)


def _ignored(key: str) -> bool:
    return any(key == i or key.startswith(i + ".") for i in IGNORED)


def swept_keys(configs: list[dict]) -> list[str]:
    """The flattened keys whose values differ between the configs (a key some configs lack
    counts as differing), less the seed and `IGNORED`, in config order."""
    flat = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if not _ignored(k) and len({_canon(f.get(k, ABSENT)) for f in flat}) > 1]


def _display_keys(keys: list[str], combos: list[tuple]) -> list[str]:
    """The fewest swept keys (greedily: `label`, then `protocol.name`, then config order) that
    tell the groups apart; the others follow from them (another protocol's own fields)."""
    order = sorted(range(len(keys)), key=lambda i: {"label": 0, "protocol.name": 1}.get(keys[i], 2))
    chosen: list[int] = []

    def distinct(cols):
        return len({tuple(c[i] for i in cols) for c in combos})
    for i in order:
        if distinct(chosen) == len(combos):
            break
        if distinct(chosen + [i]) > distinct(chosen):
            chosen.append(i)
    return [keys[i] for i in sorted(chosen, key=order.index)]


def _sort_key(v):
    if v is ABSENT or v is None:
        return (0, 0.0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (1, float(v), "")
    return (2, 0.0, _canon(v))


def group_jobs(jobs: list[Job]) -> tuple[list[Group], list[str]]:
    """(groups, swept keys): the jobs that have a config grouped by every swept key, each group
    named by the few keys that tell the groups apart; groups sorted by those values (numbers
    by value), runs within a group by seed."""
    known = [j for j in jobs if j.summary is not None and isinstance(j.summary.get("config"), dict)]
    keys = swept_keys([j.summary["config"] for j in known])
    by_combo: dict[tuple, list[Job]] = {}
    values: dict[tuple, tuple] = {}
    for j in known:
        flat = flatten(j.summary["config"])
        combo = tuple(_canon(flat.get(k, ABSENT)) for k in keys)
        by_combo.setdefault(combo, []).append(j)
        values[combo] = tuple(flat.get(k, ABSENT) for k in keys)
    shown = _display_keys(keys, list(by_combo))
    idx = [keys.index(k) for k in shown]
    groups = [Group({k: values[c][i] for k, i in zip(shown, idx)},
                    sorted(js, key=lambda j: (_sort_key(j.seed), _natural(j.name))))
              for c, js in by_combo.items()]
    groups.sort(key=lambda g: ([_sort_key(v) for v in g.values.values()], g.name))
    return groups, keys


def find_group(groups: list[Group], name: str | None) -> Group | None:
    """The group a reference names: by its name in the report, or by its label."""
    if name is None:
        return None
    return next((g for g in groups if name in (g.name, _value(g.values.get("label", ABSENT)))), None)


def time_to_reach(times: np.ndarray, acc: np.ndarray, target: float) -> float:
    """First time (x value) at which the metric >= target (inf if never)."""
    hit = np.flatnonzero(np.asarray(acc) >= target - 1e-12)
    return float(np.asarray(times)[hit[0]]) if len(hit) else math.inf


def group_curve(runs: list[Job], col: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, values [runs, evaluations]): a group's runs taken evaluation by evaluation. Runs of
    a group share their schedule (the same rounds and eval.every), so the k-th evaluation of
    every run is placed at their mean x (runs whose clocks differ, as asynchronous gossip's
    or FedAvg's with stragglers, are averaged round by round, not interpolated); runs of
    different lengths are taken up to the shortest."""
    n = min(len(r.metrics[col]) for r in runs)
    return (np.mean([r.metrics[x][:n] for r in runs], axis=0),
            np.array([r.metrics[col][:n] for r in runs]))


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    if not len(a):
        return math.nan, math.nan
    if np.isinf(a).any():
        return float(np.mean(a)), math.nan
    return float(np.mean(a)), float(np.std(a))


def _value(v) -> str:
    """A config value as one would write it on the command line."""
    if v is ABSENT:
        return "-"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _last(job: Job, col: str) -> float:
    v = job.metrics.get(col)
    return float(v[-1]) if v is not None and len(v) else math.nan


def summarize(groups: list[Group], *, x: str = "sim_time_s", target: float | None = None,
              reference: str | None = None, variance: bool = False) -> tuple[list[dict], dict[str, float]]:
    """(one row per group, the target per headline metric): the columns of report.csv."""
    heads = sorted({j.headline for g in groups for j in g.runs})
    generic = len(heads) > 1  # a sweep over tasks: the headline named in its own column
    ref = find_group(groups, reference)
    ref = ref if ref is not None and ref.runs else None
    targets = {}
    for h in heads:
        finals = [np.mean([_last(j, f"{h}_mean") for j in g.runs]) for g in groups
                  if g.runs and g.runs[0].headline == h]
        if target is not None:
            targets[h] = float(target)
        elif ref is not None and ref.runs[0].headline == h:
            targets[h] = float(np.mean([_last(j, f"{h}_mean") for j in ref.runs]))
        else:
            targets[h] = 0.9 * float(np.nanmax(finals)) if finals and not np.isnan(finals).all() else math.nan
    ref_level = ref_time = None
    if ref is not None:
        h = ref.runs[0].headline
        ref_level = float(np.mean([_last(j, f"{h}_mean") for j in ref.runs]))
        ref_time = float(np.mean([_last(j, x) for j in ref.runs]))

    table = []
    for g in groups:
        runs = g.runs
        h = runs[0].headline if runs else (heads[0] if heads else "accuracy")
        row = {"group": g.name, **{k: _value(v) for k, v in g.values.items()}}
        if generic:
            row["headline"] = h
        row["runs"] = len(runs)
        row["seeds"] = " ".join(_value(j.seed) for j in runs)
        for col in FINAL:
            name = "final_" + col.format(h="headline" if generic else h)
            row[name], row[name + "_std"] = _mean_std([_last(j, col.format(h=h)) for j in runs])
        t = targets.get(h, math.nan)
        times = [time_to_reach(j.metrics[x], j.metrics[f"{h}_mean"], t) for j in runs]
        row["target"] = t
        row["time_to_target"], row["time_to_target_std"] = _mean_std(times)
        row["reached"] = sum(math.isfinite(v) for v in times)
        if variance and runs and all("layer1_var_mean" in j.metrics for j in runs):
            v = [j.metrics["layer1_var_mean"] for j in runs]
            row["layer1_var_min_over_initial"] = float(np.mean([a.min() / a[0] for a in v]))
            row["layer1_var_final_over_initial"] = float(np.mean([a[-1] / a[0] for a in v]))
        if ref_level is not None:
            if runs:
                grid, ys = group_curve(runs, f"{h}_mean", x)
                reach = time_to_reach(grid, ys.mean(0), ref_level)
            else:
                reach = math.nan
            row["time_to_reference_accuracy"] = reach
            row["time_over_reference_duration"] = reach / ref_time if ref_time else math.nan
        table.append(row)
    return table, targets


def _fmt(v, unit: float = 1.0) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return "never" if math.isinf(v) else f"{v / unit:.4g}"
    return str(v)


def _cell(v):
    """report.csv: full precision, NaN as an empty cell (as metrics.csv), infinities as inf."""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _markdown(table: list[dict], targets: dict, jobs: list[Job], groups: list[Group], keys: list[str],
              title: str, x: str, reference: str | None, why: str) -> str:
    shown = list(groups[0].values) if groups else []
    generic = "headline" in (table[0] if table else {})
    h = "headline" if generic else next(iter(targets), "accuracy")
    xname = "simulated s" if x == "sim_time_s" else x.replace("_", " ")
    seeds = sorted({_value(j.seed) for j in jobs if j.summary}, key=_natural)
    done = sum(len(g.runs) for g in groups)
    extra = [k for k in keys if k not in shown]
    name = h.replace("_", "-")

    def plural(k, word):
        return f"{k} {word}{'s' * (k != 1)}"
    intro = (f"{plural(done, 'completed run')} in {plural(len(groups), 'group')}"
             + (f" (swept: {', '.join(shown)}" + (f"; {plural(len(extra), 'more key')} following from them"
                                                  if extra else "") + ")" if shown else "")
             + (f"; seeds {', '.join(seeds)}" if seeds else "") + ". "
             "Each figure is a run's last evaluation, as mean ± standard deviation over the group's "
             "completed runs.")
    finite = [t for t in targets.values() if math.isfinite(t)]
    if finite:
        intro += (f" Time to target: the first evaluation at which a run's {name} (mean "
                  f"over nodes) reaches {' / '.join(f'{t:.4g}' for t in finite)} ({why}), in {xname}; "
                  "'never' when a run (for the mean: any run) did not reach it.")
    lines = [f"# {title or 'Sweep report'}", "", intro, ""]
    head = [*shown, *(["headline"] if generic else []), "runs", f"{name} mean", f"{name} min",
            "loss", "consensus distance", "MB sent", "sim time (s)", f"time to target ({xname})", "reached"]
    cols = [("final_{h}_mean", 1.0), ("final_{h}_min", 1.0), ("final_loss_mean", 1.0),
            ("final_consensus_distance", 1.0), ("final_bytes_sent", 1e6), ("final_sim_time_s", 1.0),
            ("time_to_target", 1.0)]
    extras = [k for k in (table[0] if table else {})
              if k.startswith(("layer1_var", "time_to_reference", "time_over"))]
    head += [k.replace("_", " ") for k in extras]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row[k] for k in shown] + ([row["headline"]] if generic else []) + [str(row["runs"])]
        for c, unit in cols:
            c = c.format(h=h)
            m, s = row[c], row[c + "_std"]
            cells.append(_fmt(m, unit) if row["runs"] < 2 or not math.isfinite(s) else
                         f"{_fmt(m, unit)} ± {_fmt(s, unit)}")
        cells.append(f"{row['reached']}/{row['runs']}")
        cells += [_fmt(row[k]) for k in extras]
        lines.append("| " + " | ".join(cells) + " |")
    if reference is not None and any("time_to_reference_accuracy" in r for r in table):
        lines += ["", f"Reference group: {reference}; time to reference accuracy: the first x at which "
                  "a group's mean curve over runs reaches the reference's mean final headline "
                  "(over duration: as a multiple of the reference's mean duration)."]
    left_out = [j for j in jobs if not j.completed]
    if left_out:
        group_of = {id(j): g.name for g in groups for j in g.jobs if g.values}
        lines += ["", f"Did not complete ({plural(len(left_out), 'run')}, left out of every number):", ""]
        lines += [f"- {j.name}" + (f" ({group_of[id(j)]})" if id(j) in group_of else "")
                  + f": {j.status}" + (f" ({j.detail})" if j.detail else "") for j in left_out]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: str | Path, reference: str | None = None, title: str = "",
                 x: str = "sim_time_s", *, target: float | None = None, variance: bool = False) -> list[Path]:
    """Write report.md, report.csv and report.png (against the metrics column `x`) into a
    sweep directory; returns the paths written ([] when the directory holds no job; no
    report.png when no run completed, or the figure failed: a warning says why)."""
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        return []
    groups, keys = group_jobs(jobs)
    for j in (j for g in groups for j in g.runs):
        for col in (x, f"{j.headline}_mean"):
            if col not in j.metrics:
                raise ReportError(f"job {j.name}'s metrics.csv has no column {col!r} "
                                  f"(it has {', '.join(j.metrics)})")
    if reference is not None and find_group(groups, reference) is None:
        warnings.warn(f"report: no group {reference!r} to take as the reference (groups: "
                      f"{', '.join(g.name for g in groups)})", stacklevel=2)
    table, targets = summarize(groups, x=x, target=target, reference=reference, variance=variance)
    fields = list(dict.fromkeys(k for row in table for k in row))
    with open(sweep_dir / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: _cell(row.get(k, math.nan)) for k in fields} for row in table)
    why = ("as set" if target is not None else
           f"{reference}'s mean final value" if table and "time_to_reference_accuracy" in table[0] else
           "90% of the best group's mean final value")
    md = _markdown(table, targets, jobs, groups, keys, title, x, reference, why)
    (sweep_dir / "report.md").write_text(md)
    written = [sweep_dir / "report.md", sweep_dir / "report.csv"]
    if any(g.runs for g in groups):
        try:
            plot_groups(groups, sweep_dir / "report.png", title=title, x=x, targets=targets, variance=variance)
            written.append(sweep_dir / "report.png")
        except Exception as err:  # the figure is a view of the table: never lose the report over it
            warnings.warn(f"report.png not drawn: {type(err).__name__}: {err}", stacklevel=2)
    return written


def plot_groups(groups: list[Group], path: Path, *, title: str = "", x: str = "sim_time_s",
                targets: dict[str, float] | None = None, variance: bool = False) -> None:
    """The headline's mean over nodes against `x`, one line per group (mean over its runs) with
    a band from its lowest to its highest run; with `variance`, layer-1 weight variance too."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [g for g in groups if g.runs]
    heads = sorted({g.runs[0].headline for g in groups})
    panels = [("{h}_mean", "test " + (heads[0].replace("_", "-") if len(heads) == 1 else "headline metric")
               + " (mean over nodes)", False)]
    if variance and any("layer1_var_mean" in j.metrics for g in groups for j in g.runs):
        panels.append(("layer1_var_mean", "layer-1 weight variance", True))
    outside = len(groups) > 6  # many groups: the legend beside the panels, not over the curves
    fig = Figure(figsize=(6 * len(panels) + (3.5 if outside else 0), 4.5))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (col, label, log) in zip(axes, panels):
        for g in groups:
            runs = [j for j in g.runs if col.format(h=j.headline) in j.metrics]
            if not runs:
                continue
            grid, ys = group_curve(runs, col.format(h=runs[0].headline), x)
            line, = ax.plot(grid, ys.mean(0), label=f"{g.name} ({len(runs)} run{'s' * (len(runs) > 1)})")
            if len(runs) > 1:
                ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, lw=0)
        if col == "{h}_mean" and targets and len(heads) == 1 and math.isfinite(targets.get(heads[0], math.nan)):
            ax.axhline(targets[heads[0]], color="gray", ls=":", lw=1, label=f"target {targets[heads[0]]:.3g}")
        ax.set_xlabel("simulated time (s)" if x == "sim_time_s" else x.replace("_", " "))
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if outside:
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                        ncol=1 + len(groups) // 25, frameon=False)
    else:
        axes[0].legend(loc="best", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


# ---- the views the experiments and tests have used ---------------------------------------------
def load_sweep(sweep_dir: str | Path) -> dict[str, list[dict]]:
    """{arm: [ {summary, metrics: {column: np.array}} per seed ]} from a sweep directory, the
    arm being each job's label (else its protocol): only the runs that completed (see
    `incomplete_runs` for the others)."""
    arms: dict[str, list[dict]] = {}
    for j in load_jobs(sweep_dir):
        if j.completed and j.summary is not None:
            arm = j.summary.get("label") or j.summary["config"]["protocol"]["name"]
            arms.setdefault(arm, []).append({"summary": j.summary, "metrics": j.metrics})
    return arms


def incomplete_runs(sweep_dir: str | Path) -> list[str]:
    """'job: status (why)' for every run of the sweep that did not complete."""
    return [f"{j.name}: {j.status} ({j.detail})" for j in load_jobs(sweep_dir) if not j.completed]


class SweepReport(Callback):
    """Hydra callback: writes the report when a multirun ends and prints its table. A report
    that cannot be written says so in one line and never fails the sweep."""

    def __init__(self, reference: str | None = None, title: str = "", x: str = "sim_time_s",
                 target: float | None = None, variance: bool = False):
        self.reference = reference
        self.title = title
        self.x = x
        self.target = target
        self.variance = variance

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            written = write_report(sweep_dir, self.reference, self.title, self.x,
                                   target=self.target, variance=self.variance)
        except Exception as err:
            print(f"murmur: report not written: {type(err).__name__}: {err}", file=sys.stderr)
            return
        if written:
            print(written[0].read_text())
            print(f"murmur: report written to {sweep_dir / 'report.md'} "
                  f"({', '.join(p.name for p in written[1:])})")


# ---- murmur-report ---------------------------------------------------------------------------
def _saved_options(sweep_dir: Path) -> dict:
    """The report options the sweep's own callback used (multirun.yaml), so that rerunning
    `murmur-report` on an experiment's sweep rewrites the same report."""
    try:
        import yaml
        cfg = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
        cb = cfg["hydra"]["callbacks"]["report"]
    except Exception:
        return {}
    if not isinstance(cb, dict) or not str(cb.get("_target_", "")).endswith("SweepReport"):
        return {}
    ok = {"reference": str, "title": str, "x": str, "target": (int, float), "variance": bool}
    return {k: v for k, v in cb.items() if k in ok and isinstance(v, ok[k]) and "${" not in str(v)}


def main(argv: list[str] | None = None) -> int:
    """`murmur-report DIR`: writes report.md, report.csv and report.png into a sweep directory.
    Exit codes: 0 written, 2 a bad directory or option (one line on stderr)."""
    p = argparse.ArgumentParser(
        prog="murmur-report",
        description="Compare the runs of a sweep (murmur -m ...): one row and one curve per group "
                    "of runs that differ only in their seed. Writes report.md, report.csv and "
                    "report.png into DIR.")
    p.add_argument("dir", metavar="DIR",
                   help="a sweep directory (its job folders hold summary.json and metrics.csv)")
    p.add_argument("--target", type=float, default=None,
                   help="the headline value a run's time to target is measured to "
                        "(default: 90%% of the best group's mean final value)")
    p.add_argument("--x", default=None, help="the metrics.csv column of the time axis (default sim_time_s; "
                                             "e.g. round)")
    p.add_argument("--title", default=None, help="the report's title")
    p.add_argument("--reference", default=None,
                   help="a group (its label or name in the report): its mean final value is the target, "
                        "and each group's time to reach it is added")
    p.add_argument("--variance", action="store_true", default=None,
                   help="add layer-1 weight variance against its initial value (a column pair and a panel)")
    args = p.parse_args(argv)

    def error(msg: str) -> int:
        print(f"murmur-report: error: {msg}", file=sys.stderr)
        return 2

    sweep_dir = Path(args.dir)
    if not sweep_dir.is_dir():
        return error(f"{args.dir}: " + ("not a directory" if sweep_dir.exists() else "no such directory"))
    if args.target is not None and not math.isfinite(args.target):
        return error(f"--target must be a finite number, got {args.target}")
    if not load_jobs(sweep_dir):
        hint = (" (it is one run; pass the sweep directory above it)" if (sweep_dir / "summary.json").is_file()
                else "")
        return error(f"{args.dir}: no runs found (no job folder with a summary.json){hint}")
    opts = _saved_options(sweep_dir)
    opts.update({k: v for k, v in vars(args).items() if k != "dir" and v is not None})
    if args.reference is not None:
        groups, _ = group_jobs(load_jobs(sweep_dir))
        if find_group(groups, args.reference) is None:
            return error(f"--reference {args.reference!r} names no group of this sweep; its groups: "
                         + "; ".join(g.name for g in groups))
    try:
        written = write_report(sweep_dir, opts.get("reference"), opts.get("title", ""),
                               opts.get("x", "sim_time_s"), target=opts.get("target"),
                               variance=bool(opts.get("variance", False)))
    except ReportError as err:
        return error(str(err))
    except OSError as err:
        return error(f"cannot write the report in {args.dir}: {err.strerror or err}")
    print(written[0].read_text())
    print(f"murmur-report: wrote {', '.join(str(w) for w in written)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
