"""One run, from a configuration to metrics: the Python API behind `murmur`.

    from simulator import run
    result = run(overrides=["protocol=gossip", "topology=ring", "nodes=50"])
    result.metrics      # list of dicts, one per evaluation (metrics.csv rows)
    result.summary      # dict (summary.json)

A run is the scenario assembly (scenarios.assemble: the World), the protocol built on it, the
engine that drives the protocol's events, and the recorder. `config` may be a mapping (any
part of a config; the rest keeps its defaults) instead of, or on top of, overrides; `graph` (a
networkx graph) and `model` (a torch nn.Module template) replace the named ones.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import networkx as nx
import numpy as np
import torch
from torch import nn

from kernels import consensus_distance
from kernels.variance import segment_indicator, segment_moments
from scenarios import RunConfig, World, assemble, resolve
from scenarios.world import rng
from simulator.engine import Engine
from simulator.metrics import Recorder


@dataclass
class RunResult:
    metrics: list[dict]
    summary: dict
    event_log: list | None = None
    final_models: torch.Tensor | None = None  # Protocol.models() at the end: [N, P] or the global [1, P]

    def table(self):
        """The metrics as a pandas DataFrame (pandas is optional)."""
        import pandas as pd
        return pd.DataFrame(self.metrics)


def run(config: Mapping[str, Any] | RunConfig | None = None, *, overrides: Sequence[str] = (),
        graph: nx.Graph | None = None, model: nn.Module | None = None,
        out_dir: str | Path | None = None, progress: bool | None = None) -> RunResult:
    """Run one scenario; see the module docstring. Writes metrics.csv, summary.json and
    curves.png when `out_dir` is given."""
    wall0 = time.perf_counter()
    cfg = resolve(config, overrides)
    world = assemble(cfg, graph=graph, model=model)
    protocol = world.protocol()
    engine = Engine(batching=cfg.sim.batching, resolution=cfg.sim.resolution, record=cfg.sim.record_events)
    recorder = Recorder(out_dir, world.task.headline)
    show = cfg.sim.progress if progress is None else progress
    eval_nodes = None
    if cfg.nodes > cfg.eval.max_nodes:
        eval_nodes = torch.as_tensor(np.sort(rng(cfg.seed, "eval-nodes").choice(
            cfg.nodes, cfg.eval.max_nodes, replace=False)), device=world.device)

    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.rounds, desc=f"{cfg.protocol.name} x{cfg.nodes}", unit="round", leave=False)

    def evaluate(r: int, t: float) -> None:
        models = protocol.models()
        rows = models if eval_nodes is None or len(models) == 1 else models[eval_nodes]
        row = {"round": r, "sim_time_s": t, "wall_time_s": time.perf_counter() - wall0,
               **world.task.columns(world.evaluate(rows)),
               "consensus_distance": consensus_distance(models), "bytes_sent": protocol.bytes_sent,
               "train_loss": protocol.train_loss(), **protocol.prequential_metrics(),
               **protocol.extra_metrics(), **layer_variances(rows, world.layout)}
        recorder.add(row)
        if bar is not None:
            bar.set_postfix({world.task.headline[:8]: f"{row[world.task.headline + '_mean']:.3f}"})

    def on_round(r: int, t: float) -> None:
        if bar is not None:
            bar.update(1)
        if r % cfg.eval.every == 0 or r >= cfg.rounds:
            evaluate(r, t)
        if r >= cfg.rounds:
            engine.stop()

    protocol.attach(engine, on_round)
    try:
        evaluate(0, 0.0)  # the initial models: round 0
        protocol.start()
        engine.run()
    finally:
        if bar is not None:
            bar.close()
        recorder.close(summarize(cfg, world, protocol, engine, recorder.rows, time.perf_counter() - wall0))
    return RunResult(recorder.rows, recorder.summary, engine.log, protocol.models().clone())


def layer_variances(rows: torch.Tensor, layout) -> dict[str, float]:
    """Per weight tensor k (layer1, layer2, ...): the mean and spread over the given models of
    the tensor's element variance (the quantity that collapses in plain gossip)."""
    _, var = segment_moments(rows, segment_indicator(layout.sizes, rows.device))
    out = {}
    for k, col in enumerate([i for i, w in enumerate(layout.is_weight()) if w], start=1):
        out[f"layer{k}_var_mean"] = float(var[:, col].mean())
        out[f"layer{k}_var_std"] = float(var[:, col].std(unbiased=False))
    return out


def summarize(cfg: RunConfig, world: World, protocol, engine: Engine, rows: list[dict], wall: float) -> dict:
    final = rows[-1] if rows else {}
    metrics = world.task.metrics
    return {
        "title": f"{cfg.label + ': ' if cfg.label else ''}{cfg.protocol.name}, {cfg.nodes} nodes, "
                 f"{world.topology_name}, {cfg.data.name}",
        "label": cfg.label,
        "task": world.task.name,
        "headline": world.task.headline,
        "config": asdict(cfg),
        "final": {k: v for k, v in final.items() if k.startswith((*metrics, "consensus", "prequential"))},
        "rounds_completed": final.get("round", 0),
        "sim_time_s": engine.now,
        "wall_time_s": wall,
        "bytes_sent": protocol.bytes_sent,
        "handler_calls": engine.calls,
        "n_parameters": world.layout.size,
        "seed": cfg.seed,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "networkx": nx.__version__},
    }


def summary_line(summary: dict) -> str:
    f = summary["final"]
    head = summary.get("headline", "accuracy")
    name = "test accuracy" if head == "accuracy" else f"test {head.replace('_', '-')}"
    return (f"murmur: {summary['title']}: {summary['rounds_completed']} rounds, "
            f"{name} {f.get(head + '_mean', math.nan):.4f} (min {f.get(head + '_min', math.nan):.4f}), "
            f"sim time {summary['sim_time_s']:.2f} s, wall time {summary['wall_time_s']:.1f} s, "
            f"{summary['bytes_sent'] / 1e6:.1f} MB sent")
