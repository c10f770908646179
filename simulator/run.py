"""One run, from a configuration to metrics: the Python API behind `murmur`.

    from simulator import run
    result = run(overrides=["protocol=gossip", "topology=ring", "nodes=50"])
    result.metrics      # list of dicts, one per evaluation (metrics.csv rows)
    result.summary      # dict (summary.json)

A run is the scenario assembly (scenarios.assemble: the World), the protocol built on it, the
engine that drives the protocol's events, and the recorder. `config` may be a mapping (any
part of a config; the rest keeps its defaults) instead of, or on top of, overrides; `graph` (a
networkx graph) and `model` (a torch nn.Module whose weights every node starts from) replace
the named ones.

With `sim.checkpoint_every=k` the run writes checkpoint.pt every k rounds, between two
simulated instants (simulator.checkpoint); `resume=PATH` continues one, and ends with the
metrics the run would have had if never stopped (wall_time_s aside).

Every run ends with a status in summary.json and in `RunResult.status`:
  completed    all rounds ran;
  diverged     a model's parameters became NaN or inf (found at an evaluation): the run stops
               there and `status_detail` names the nodes and the round;
  interrupted  SIGINT (Ctrl-C) or SIGTERM: at the end of the simulated instant it arrived in,
               checkpoint.pt (with out_dir), summary.json and curves.png are written, then
               KeyboardInterrupt or `Interrupted` is raised again (its `checkpoint`: the path);
  failed       an error inside the run (written, then raised again), or a run that stalled
               (no event left before the last round).
"""
from __future__ import annotations

import math
import platform
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import networkx as nx
import numpy as np
import torch
from torch import nn

from kernels import consensus_distance, row_blocks
from kernels.variance import segment_indicator, segment_moments
from scenarios import ConfigError, RunConfig, World, assemble, resolve
from scenarios.schema import first_line
from scenarios.world import rng
from simulator.checkpoint import NAME as CHECKPOINT
from simulator.checkpoint import Checkpoint, continued_config, save
from simulator.engine import Engine
from simulator.metrics import Recorder, plot_graph


@dataclass
class RunResult:
    metrics: list[dict]
    summary: dict
    event_log: list | None = None
    final_models: torch.Tensor | None = None  # Protocol.models() at the end: [N, P] or the global [1, P]

    @property
    def status(self) -> str:
        """completed, diverged, interrupted or failed (see the module docstring)."""
        return self.summary.get("status", "completed")

    def table(self):
        """The metrics as a pandas DataFrame (pandas is optional)."""
        import pandas as pd
        return pd.DataFrame(self.metrics)


class Interrupted(BaseException):
    """SIGTERM arrived during a run (SIGINT raises KeyboardInterrupt). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunWarning(RuntimeWarning):
    """A run returned without completing (diverged, or stalled): see RunResult.status."""


class Diverged(Exception):
    """Some model rows became non-finite."""


def run(config: Mapping[str, Any] | RunConfig | None = None, *, overrides: Sequence[str] = (),
        graph: nx.Graph | None = None, model: nn.Module | None = None,
        out_dir: str | Path | None = None, progress: bool | None = None) -> RunResult:
    """Run one scenario; see the module docstring. Writes metrics.csv, summary.json and
    curves.png when `out_dir` is given (and checkpoint.pt: sim.checkpoint_every, interrupts)."""
    wall0 = time.perf_counter()
    cfg = resolve(config, overrides)
    resumed = None
    if cfg.resume is not None:
        resumed = Checkpoint(cfg.resume)
        cfg = continued_config(cfg, resumed.config)
    if cfg.sim.checkpoint_every and out_dir is None:
        raise ConfigError("sim.checkpoint_every needs a run directory to write checkpoint.pt in "
                          "(murmur has one; from Python pass out_dir=...)")
    world = assemble(cfg, graph=graph, model=model)
    protocol = world.protocol()
    engine = Engine(batching=cfg.sim.batching, resolution=cfg.sim.resolution, record=cfg.sim.record_events)
    recorder = Recorder(out_dir, world.task.headline, tensorboard=cfg.log.tensorboard)
    show = cfg.sim.progress if progress is None else progress
    eval_nodes = None
    if cfg.nodes > cfg.eval.max_nodes:
        eval_nodes = torch.as_tensor(np.sort(rng(cfg.seed, "eval-nodes").choice(
            cfg.nodes, cfg.eval.max_nodes, replace=False)), device=world.device)

    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.rounds, desc=f"{cfg.protocol.name} x{cfg.nodes}", unit="round", leave=False)

    first_loss = []  # the initial models' mean test loss (at least 1): the yardstick of eval.diverged_loss
    evaluated = {"models": 0, "of": 0, "test_samples": 0, "wall_s": 0.0}  # what an evaluation covers, its cost

    def evaluate(r: int, t: float) -> None:
        t0 = time.perf_counter()
        try:
            _evaluate(r, t)
        finally:
            evaluated["wall_s"] += time.perf_counter() - t0

    last_scores: list = []  # (which rows, each one's headline metric) of the last evaluation: graph.png

    def _evaluate(r: int, t: float) -> None:
        models = protocol.models()
        ok = finite_rows(models)
        which = None if eval_nodes is None or len(models) == 1 else eval_nodes
        rows = (models if which is None else models[which]).float()  # 16-bit storage: scored in float32
        evaluated.update(models=len(rows), of=len(models), test_samples=len(world.test_set[1]))
        scores = protocol.evaluate(rows, which)
        last_scores[:] = [which, scores[world.task.headline]]
        loss = scores["loss"]
        if not first_loss:
            finite = loss[torch.isfinite(loss)]
            first_loss.append(max(1.0, float(finite.mean())) if len(finite) else math.inf)
        limit = math.inf if cfg.eval.diverged_loss is None else cfg.eval.diverged_loss * first_loss[0]
        exploded = ~torch.isfinite(loss) | (loss > limit)
        ok[eval_nodes if eval_nodes is not None and len(models) > 1 else slice(None)] &= ~exploded
        row = {"round": r, "sim_time_s": t, "wall_time_s": time.perf_counter() - wall0,
               **world.task.columns(scores),
               "consensus_distance": consensus_distance(models), "bytes_sent": protocol.bytes_sent,
               "train_loss": protocol.train_loss(), **protocol.prequential_metrics(),
               **protocol.extra_metrics(), **(protocol.fault_metrics(t) if world.faulty else {}),
               **layer_variances(rows, world.layout)}
        recorder.add(row)
        if bar is not None:
            bar.set_postfix({world.task.headline[:8]: f"{row[world.task.headline + '_mean']:.3f}"})
        if not bool(ok.all()):
            raise Diverged(diverged_message(ok, r, t))

    def checkpoint(r: int) -> None:
        """Write checkpoint.pt (between two instants: nothing is half done). Not once the last
        round has run: an instant may hold several rounds (FedAsync), the last among them."""
        if engine.stopped:
            return
        try:
            path = Path(out_dir) / CHECKPOINT
            save(path, cfg, r, world=world, protocol=protocol, engine=engine,
                 on_round=on_round, run_state={"rows": recorder.rows, "first_loss": first_loss,
                                               "evaluated": evaluated, "wall_s": time.perf_counter() - wall0,
                                               "round": r})
            written[:] = [path]
        except Exception as err:  # never lose the run over its checkpoint (the last one stays whole)
            warnings.warn(f"checkpoint not written: {one_line(err)}", RunWarning, stacklevel=2)

    last_round = [0]
    written: list[Path] = []  # the checkpoint written last (an interrupt names it)

    def on_round(r: int, t: float) -> None:
        last_round[0] = r
        if bar is not None:
            bar.update(1)
        if r % cfg.eval.every == 0 or r >= cfg.rounds:
            evaluate(r, t)
        if r >= cfg.rounds:
            engine.stop()
        elif cfg.sim.checkpoint_every and r % cfg.sim.checkpoint_every == 0:
            engine.after_instant(lambda: checkpoint(r))

    protocol.attach(engine, on_round)
    if resumed is not None:
        saved = resumed.restore(world=world, protocol=protocol, engine=engine, on_round=on_round)
        for row in saved["rows"]:
            recorder.add(row)
        first_loss[:], last_round[0] = saved["first_loss"], saved["round"]
        evaluated.update(saved["evaluated"])
        wall0 -= saved["wall_s"]  # wall time goes on from where the checkpoint left it
        if bar is not None:
            bar.update(saved["round"])
    status, detail = "completed", ""
    try:
        with interrupts(engine, (lambda: checkpoint(last_round[0])) if out_dir is not None else None):
            if resumed is None:
                evaluate(0, 0.0)  # the initial models: round 0
                protocol.start()
            engine.run()
        done = recorder.rows[-1]["round"]
        if done < cfg.rounds:
            status, detail = "failed", (f"the run stalled after round {done} of {cfg.rounds}: no event was "
                                        f"left (at simulated time {engine.now:.6g} s)")
    except Diverged as err:
        status, detail = "diverged", str(err)
    except KeyboardInterrupt as err:
        status, detail = "interrupted", "SIGINT"
        err.checkpoint = written[0] if written else None  # what `murmur` tells to resume
        raise
    except Interrupted as err:
        status, detail = "interrupted", str(err)
        err.checkpoint = written[0] if written else None
        raise
    except BaseException as err:
        status, detail = "failed", one_line(err)
        raise
    finally:
        if bar is not None:
            bar.close()
        recorder.close({"status": status, "status_detail": detail,
                        **summarize(cfg, world, protocol, engine, recorder.rows, time.perf_counter() - wall0,
                                    evaluated)})
    if out_dir is not None and cfg.log.graph and last_scores and world.graph.number_of_edges():
        draw_graph(world, cfg, last_scores, Path(out_dir) / "graph.png", recorder.summary.get("title", ""))
    if status != "completed":
        warnings.warn(f"run {status}: {detail}", RunWarning, stacklevel=2)
    return RunResult(recorder.rows, recorder.summary, engine.log, protocol.models().to(torch.float32, copy=True))


@contextmanager
def interrupts(engine: Engine | None = None, checkpoint: Callable[[], None] | None = None):
    """Within the block SIGINT raises KeyboardInterrupt and SIGTERM raises Interrupted (so the
    run can write what it has). With `checkpoint`, a signal that arrives while the engine runs
    waits for the current instant to end, writes the checkpoint there and then raises (a second
    signal raises at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []

    def fail(signum):
        raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(signum)

    def then_fail(signum):
        checkpoint()
        fail(signum)

    def handler(signum, frame):
        if checkpoint is None or not engine.running or pending:
            fail(signum)
        pending.append(signum)
        engine.after_instant(lambda: then_fail(signum))

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def draw_graph(world: World, cfg: RunConfig, last_scores: list, path: Path, title: str) -> None:
    """graph.png: the topology, each node coloured by its last evaluation's headline metric."""
    which, values = last_scores
    if which is None and len(values) != world.n:  # not one model per node (FedAvg's global model)
        return
    nodes = np.arange(len(values)) if which is None else which.cpu().numpy()
    try:
        plot_graph(world.graph, nodes, values.detach().float().cpu().numpy(), path, seed=cfg.seed, title=title,
                   label=f"final test {world.task.headline.replace('_', '-')}")
    except Exception as err:  # a view of the run: never lose the run over it
        warnings.warn(f"graph.png not drawn: {one_line(err)}", RunWarning, stacklevel=3)


def one_line(err: BaseException) -> str:
    """`Type: first line of the message`, for a status or a last line."""
    return f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__


def finite_rows(models: torch.Tensor, block: int = 1 << 22) -> torch.Tensor:
    """[N] bool: no NaN/inf anywhere in the row (nor a sum past float32's max), in float32 and
    by blocks of rows, so a 16-bit stack is never upcast whole."""
    return torch.cat([torch.isfinite(models[s].float().sum(dim=1)) for s in row_blocks(*models.shape, block)]
                     or [torch.ones(0, dtype=torch.bool, device=models.device)])


def diverged_message(ok: torch.Tensor, r: int, t: float) -> str:
    """Which models diverged (non-finite parameters or an exploded test loss), and when."""
    bad = torch.nonzero(~ok).flatten().tolist()
    if len(ok) == 1:
        who = "the global model"
    else:
        listed = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        who = f"{len(bad)} of {len(ok)} nodes (nodes {listed})"
    return (f"at round {r} (simulated time {t:.6g} s) {who} diverged: non-finite parameters or a test "
            f"loss above eval.diverged_loss x the initial; lower train.lr, or check the data")


def layer_variances(rows: torch.Tensor, layout) -> dict[str, float]:
    """Per weight tensor k (layer1, layer2, ...): the mean and spread over the given models of
    the tensor's element variance (the quantity that collapses in plain gossip)."""
    _, var = segment_moments(rows, segment_indicator(layout.sizes, rows.device))
    out = {}
    for k, col in enumerate([i for i, w in enumerate(layout.is_weight()) if w], start=1):
        out[f"layer{k}_var_mean"] = float(var[:, col].mean())
        out[f"layer{k}_var_std"] = float(var[:, col].std(unbiased=False))
    return out


def summarize(cfg: RunConfig, world: World, protocol, engine: Engine, rows: list[dict], wall: float,
              evaluated: dict | None = None) -> dict:
    """summary.json. `evaluated`: how many models an evaluation scores (a seeded sample of
    eval.max_nodes when there are more), of how many, on how many test samples, and the wall
    seconds all evaluations took (their share of the run is what evaluation costs)."""
    final = rows[-1] if rows else {}
    ev = dict(evaluated or {})
    if ev:
        ev["wall_share"] = ev["wall_s"] / wall if wall > 0 else 0.0
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
        "evaluation": ev,
        "seed": cfg.seed,
        "torch_threads": torch.get_num_threads(),  # results depend on it (torch's reductions split by thread)
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "networkx": nx.__version__},
    }


def summary_line(summary: dict) -> str:
    """The last line a run prints: its status, what it reached, and what it took."""
    f = {k: math.nan if v is None else float(v) for k, v in summary["final"].items()}
    head = summary.get("headline", "accuracy")
    name = "test accuracy" if head == "accuracy" else f"test {head.replace('_', '-')}"
    status = summary.get("status", "completed")
    why = f" ({summary['status_detail']})" if status != "completed" else ""
    return (f"murmur: {status}{why}: {summary['title']}: {summary['rounds_completed']} rounds, "
            f"{name} {f.get(head + '_mean', math.nan):.4f} (min {f.get(head + '_min', math.nan):.4f}), "
            f"sim time {summary['sim_time_s']:.2f} s, wall time {summary['wall_time_s']:.1f} s, "
            f"{summary['bytes_sent'] / 1e6:.1f} MB sent")
