"""One run, from a configuration to metrics: the Python API behind `murmur`.

    from simulator import run
    result = run(overrides=["protocol=gossip", "topology=ring", "nodes=50"])
    result.metrics      # list of dicts, one per evaluation (metrics.csv rows)
    result.summary      # dict (summary.json)

`config` may be a mapping (a full config, e.g. from Hydra) instead of overrides; `graph` (a
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

from clients.datasets import Dataset, load_dataset
from clients.fleet import Fleet
from clients.partition import partition
from clients.profiles import compute_speeds
from kernels import MLP, LeNet, LogisticRegression, SmallCNN, consensus_distance
from kernels.random import derive_seed
from kernels.variance import segment_indicator, segment_moments
from protocols import PROTOCOLS, Context
from simulator.config import ConfigError, RunConfig
from simulator.engine import Engine
from simulator.metrics import Recorder
from topologies import attach_links, build_graph, check_graph, edge_arrays

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


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


def compose(overrides: Sequence[str] = ()) -> dict:
    """The scenario config with Hydra overrides applied, as a plain dict."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(SCENARIOS), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, name))


def build_model(cfg: RunConfig, data: Dataset) -> nn.Module:
    m = cfg.model
    if m.name in ("cnn", "lenet") and data.image_shape is None:
        raise ConfigError(f"model={m.name} needs image data; data={cfg.data.name} is tabular (use model=mlp)")
    if m.name == "logreg":
        return LogisticRegression(data.n_features, data.n_classes)
    if m.name == "mlp":
        return MLP(data.n_features, data.n_classes, m.hidden)
    if m.name == "cnn":
        return SmallCNN(data.image_shape, data.n_classes, m.channels)
    if min(data.image_shape[1:]) < 16:
        raise ConfigError(f"model=lenet needs images of at least 16x16; got {data.image_shape} (use model=cnn)")
    return LeNet(data.image_shape, data.n_classes)


def load_partitioned(cfg: RunConfig) -> tuple[Dataset, np.ndarray]:
    """The run's dataset and owner[k], the node holding training sample k."""
    data = load_dataset(cfg.data.name, seed=cfg.seed, **cfg.data.options)
    d = cfg.data
    owner = partition(data.y_train, cfg.nodes, d.partition, _rng(cfg.seed, "partition"),
                      alpha=d.alpha, classes_per_node=d.classes_per_node, exponent=d.exponent)
    return data, owner


def build_graph_for(cfg: RunConfig, graph: nx.Graph | None) -> nx.Graph:
    t = cfg.topology
    if graph is None:
        graph = build_graph(t.name, cfg.nodes, _rng(cfg.seed, "topology"), degree=t.degree, p=t.p,
                            k=t.k, m=t.m, path=t.path)
    graph = check_graph(graph, cfg.nodes, allow_disconnected=t.allow_disconnected)
    links = _rng(cfg.seed, "links")
    return attach_links(graph, lambda n: t.latency.sample(n, links), lambda n: t.bandwidth.sample(n, links))


def run(config: Mapping[str, Any] | RunConfig | None = None, *, overrides: Sequence[str] = (),
        graph: nx.Graph | None = None, model: nn.Module | None = None,
        out_dir: str | Path | None = None, progress: bool | None = None) -> RunResult:
    """Run one scenario; see the module docstring. Writes metrics.csv, summary.json and
    curves.png when `out_dir` is given."""
    wall0 = time.perf_counter()
    if not isinstance(config, RunConfig):
        raw = compose(overrides) if config is None else dict(config)
        config = RunConfig.from_mapping(raw)
    cfg = config
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but no CUDA GPU is available; use device=cpu")
    torch.manual_seed(derive_seed(cfg.seed, "torch"))

    data, owner = load_partitioned(cfg)
    speeds = compute_speeds(cfg.speed, cfg.nodes, _rng(cfg.seed, "speed"))
    proto_cls, _ = PROTOCOLS[cfg.protocol_name]
    # star protocols (FedAvg) talk to a server outside the graph: build none unless given
    G = build_graph_for(cfg, graph) if proto_cls.uses_graph or graph is not None else nx.empty_graph(cfg.nodes)
    edges = edge_arrays(G)
    topology_name = ("user graph" if graph is not None else cfg.topology.name) if proto_cls.uses_graph \
        or graph is not None else "server"
    srv = _rng(cfg.seed, "server-links")
    server_latency = cfg.topology.latency.sample(cfg.nodes, srv)
    server_bandwidth = cfg.topology.bandwidth.sample(cfg.nodes, srv)

    module = model if model is not None else build_model(cfg, data)
    fleet = Fleet(module, data.X_train, data.y_train, owner, data.X_test, data.y_test, speeds,
                  cfg.train, cfg.seed, independent_init=getattr(cfg.protocol, "init", "shared") == "independent",
                  device=cfg.device)
    engine = Engine(batching=cfg.sim.batching, resolution=cfg.sim.resolution, record=cfg.sim.record_events)
    recorder = Recorder(out_dir)
    show = cfg.sim.progress if progress is None else progress
    eval_nodes = None
    if cfg.nodes > cfg.eval.max_nodes:
        eval_nodes = torch.as_tensor(np.sort(_rng(cfg.seed, "eval-nodes").choice(
            cfg.nodes, cfg.eval.max_nodes, replace=False)), device=fleet.device)

    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.rounds, desc=f"{cfg.protocol_name} x{cfg.nodes}", unit="round", leave=False)

    def evaluate(r: int, t: float) -> None:
        models = protocol.models()
        rows = models if eval_nodes is None or len(models) == 1 else models[eval_nodes]
        acc, loss = fleet.evaluate(rows, cfg.eval.max_test)
        row = {"round": r, "sim_time_s": t, "wall_time_s": time.perf_counter() - wall0,
               "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(unbiased=False)),
               "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
               "loss_mean": float(loss.mean()), "consensus_distance": consensus_distance(models),
               "bytes_sent": protocol.bytes_sent, "train_loss": float(fleet.last_loss.nanmean()),
               **protocol.extra_metrics(), **layer_variances(rows, fleet.layout)}
        recorder.add(row)
        if bar is not None:
            bar.set_postfix(acc=f"{row['accuracy_mean']:.3f}")

    def on_round(r: int, t: float) -> None:
        if bar is not None:
            bar.update(1)
        if r % cfg.eval.every == 0 or r >= cfg.rounds:
            evaluate(r, t)
        if r >= cfg.rounds:
            engine.stop()

    ctx = Context(fleet=fleet, edges=edges, server_latency=server_latency,
                  server_bandwidth=server_bandwidth, engine=engine, seed=cfg.seed, on_round=on_round)
    protocol = proto_cls(cfg.protocol, ctx)
    try:
        evaluate(0, 0.0)  # the initial models: round 0
        protocol.start()
        engine.run()
    finally:
        if bar is not None:
            bar.close()
        final = recorder.rows[-1] if recorder.rows else {}
        summary = {
            "title": f"{cfg.label + ': ' if cfg.label else ''}{cfg.protocol_name}, {cfg.nodes} nodes, "
                     f"{topology_name}, {cfg.data.name}",
            "label": cfg.label,
            "config": asdict(cfg),
            "final": {k: v for k, v in final.items() if k.startswith(("accuracy", "loss", "consensus"))},
            "rounds_completed": final.get("round", 0),
            "sim_time_s": engine.now,
            "wall_time_s": time.perf_counter() - wall0,
            "bytes_sent": protocol.bytes_sent,
            "handler_calls": engine.calls,
            "n_parameters": fleet.layout.size,
            "seed": cfg.seed,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numpy": np.__version__, "networkx": nx.__version__},
        }
        recorder.close(summary)
    return RunResult(recorder.rows, summary, engine.log, protocol.models().clone())


def layer_variances(rows: torch.Tensor, layout) -> dict[str, float]:
    """Per weight tensor k (layer1, layer2, ...): the mean and spread over the given models of
    the tensor's element variance (the quantity that collapses in plain gossip)."""
    _, var = segment_moments(rows, segment_indicator(layout.sizes, rows.device))
    out = {}
    for k, col in enumerate([i for i, w in enumerate(layout.is_weight()) if w], start=1):
        out[f"layer{k}_var_mean"] = float(var[:, col].mean())
        out[f"layer{k}_var_std"] = float(var[:, col].std(unbiased=False))
    return out


def summary_line(summary: dict) -> str:
    f = summary["final"]
    acc = f.get("accuracy_mean", math.nan)
    return (f"murmur: {summary['title']}: {summary['rounds_completed']} rounds, "
            f"test accuracy {acc:.4f} (min {f.get('accuracy_min', math.nan):.4f}), "
            f"sim time {summary['sim_time_s']:.2f} s, wall time {summary['wall_time_s']:.1f} s, "
            f"{summary['bytes_sent'] / 1e6:.1f} MB sent")
