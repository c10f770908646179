"""The bridge's ServerApp: the scenario's protocol on the SuperNodes of this SuperLink.

`fedavg` runs under Flower's own FedAvg strategy (`ScenarioFedAvg`: every reply checked on its
own, the survivors aggregated with the simulator's rule, `protocol.aggregator`); `m2n2` in its federated mode keeps its
archive here and asks the nodes for partial sums (`archive`); federated `ihomer` keeps its
label partitioner here, replays the simulator's clock (which rows of its stream a node holds
when it trains) and gets count deltas, prequential counts, drift flags and trained rows from
the nodes (`ihomer`); only iHOMER deploys a stream (data.stream_rate); every
protocol that declares a per-node merge rule (Protocol.merge: gossip, vc_gossip, a user's own) runs through the relay.
Decentralized M2N2 and central M2N2 are refused (`check_bridged`). The server evaluates the
models it holds on the held-out test set each round and, when `out-dir` is set, writes
`models.npz` (the final models, one row per vertex, or the global model; for m2n2 also the
whole archive, `archive` [P, D] and `occupied` [P]) and `summary.json` (settings and per-round
metrics: row 0 the initial models, row r the models after round r, as the simulator's
metrics.csv) there, and logs where.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from bridge import ihomer
from bridge.archive import ArchiveServer
from bridge.relay import Relay
from bridge.scenario import Scenario, load, settings
from bridge.wire import BadReply, from_record, read_reply, to_record
from protocols import fedavg, m2n2
from protocols.ihomer import IHomer
from scenarios import ConfigError

log = logging.getLogger("flwr.murmuration")


@dataclass
class BridgeResult:
    protocol: str
    models: torch.Tensor       # [k, P]: every vertex's final model (relay) or the global model (fedavg,
    #                            m2n2: the archive member with the best pooled selection accuracy),
    #                            what the simulator's RunResult.final_models holds
    vertices: list[int]        # the vertex of each row of `models` (fedavg, m2n2: [] for the global model)
    metrics: list[dict]        # row 0 the initial models, row r after round r (as metrics.csv)
    archive: torch.Tensor | None = None    # m2n2: the final archive [A, P] (empty slots all zero),
    occupied: np.ndarray | None = None     # which slots hold a model [A]: the simulator's
    #                                        Federated.params and .occupied

    def save(self, out_dir: str | Path, s: Mapping[str, Any]) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        extra = {} if self.archive is None else {"archive": self.archive.numpy(), "occupied": self.occupied}
        np.savez(out / "models.npz", models=self.models.numpy(),
                 vertices=np.asarray(self.vertices, dtype=np.int64), **extra)
        (out / "summary.json").write_text(json.dumps(
            {"protocol": self.protocol, "settings": dict(s), "metrics": self.metrics}, indent=1))


class ScenarioFedAvg(FedAvg):
    """Flower's FedAvg, checking each reply on its own: an error, a missing key, a wrong shape or
    a NaN leaves that reply out (logged) instead of failing the round; the rest are averaged by
    `protocols.fedavg.aggregate`. A round with no usable reply keeps the global model."""

    def __init__(self, sc: Scenario, **kwargs):
        super().__init__(**kwargs)
        self.sc = sc
        self.sent = 0

    def configure_train(self, server_round, arrays, config, grid):
        self.current = from_record(arrays, self.sc.layout)  # centered clipping starts from it
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        self.sent = len(msgs)
        return msgs

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord]:
        replies = list(replies)
        rows, weights = [], []
        for msg in replies:
            try:
                row, w = read_reply(msg, self.sc.layout, self.arrayrecord_key, self.weighted_by_key)
            except BadReply as err:
                log.warning("round %d: rejected the reply of node %d: %s", server_round,
                            msg.metadata.src_node_id, err)
                continue
            rows.append(row)
            weights.append(w)
        metrics = MetricRecord({"accepted": len(rows), "rejected": len(replies) - len(rows),
                                "missing": self.sent - len(replies)})
        if not rows:
            log.warning("round %d: no usable reply; the global model stays", server_round)
            return None, metrics
        model = fedavg.robust_aggregate(self.sc.cfg.protocol, torch.stack(rows),
                                        torch.tensor(weights, dtype=torch.float64), self.current)
        return to_record(model.float(), self.sc.layout), metrics


def bridge_problem(sc: Scenario) -> str | None:
    """Why the bridge does not run this scenario as the simulator does, in one line (None: it does)."""
    proto = sc.protocol
    if sc.cfg.sim.storage != "float32":
        return (f"sim.storage={sc.cfg.sim.storage} keeps the simulator's node stacks in 16 bits; on a fleet each "
                "device keeps its own model (set sim.storage=float32)")
    if sc.world.attack is not None:
        return "attack (Byzantine clients) is simulated only; on a real fleet the attackers are the devices"
    if sc.world.faulty:
        return ("availability, topology.loss, topology.failures and topology.dynamic are simulated only; on a real "
                "fleet the devices and the network fail by themselves")
    if isinstance(proto, IHomer):
        return ihomer.problem(sc)
    if sc.world.stream_rates is not None:  # FedAvg, M2N2 and the relay train on every row they hold
        return (f"data.stream_rate streams rows in simulated time, a clock the bridge replays for protocol=ihomer "
                f"only; set data.stream_rate=null to deploy protocol={proto.cfg.name}")
    if isinstance(proto, fedavg.FedAvg) or isinstance(proto, m2n2.Federated):
        return None
    if isinstance(proto, m2n2.Central):
        return ("protocol.mode=central runs M2N2 at one coordinator with no nodes: nothing to deploy; the bridge "
                "runs protocol.mode=federated")
    if isinstance(proto, m2n2.M2N2):
        return proto.relay_problem() or "the bridge runs M2N2's federated mode only"
    if proto.merge is None:
        return (f"protocol={proto.cfg.name} has no Flower bridge: it is not fedavg or federated m2n2 and "
                "declares no per-node merge rule (Protocol.merge)")
    return proto.relay_problem()


def check_bridged(sc: Scenario) -> None:
    """Refuse scenarios the bridge would run differently from the simulator (ConfigError, one line)."""
    problem = bridge_problem(sc)
    if problem:
        raise ConfigError(problem)
    proto = sc.protocol
    if isinstance(proto, fedavg.FedAvg) and proto.cfg.deadline is not None:
        log.warning("protocol.deadline is simulated time and is ignored; the bridge waits "
                    "round-timeout wall seconds for replies")


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    """The connected node ids, once n are connected or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while len(ids := sorted(grid.get_node_ids())) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    if not ids:
        raise RuntimeError(f"no SuperNode connected within {timeout:g} s")
    if len(ids) < n:
        log.warning("%d of the scenario's %d nodes connected within %g s; going on without the rest",
                    len(ids), n, timeout)
    return ids


def serve(grid: Grid, s: Mapping[str, Any]) -> BridgeResult:
    """Run the scenario named by settings `s` (see scenario.SETTINGS) on the grid's nodes."""
    sc = load(s["overrides"])
    cfg = sc.cfg
    check_bridged(sc)
    node_ids = wait_for_nodes(grid, cfg.nodes, float(s["connect-timeout"]))
    timeout = float(s["round-timeout"])
    if isinstance(sc.protocol, m2n2.Federated):
        return _m2n2(grid, sc, node_ids, timeout)
    if isinstance(sc.protocol, IHomer):
        server = ihomer.IHomerServer(grid, sc, timeout)
        server.discover(node_ids)
        metrics = server.run(cfg.rounds)
        return BridgeResult("ihomer", server.proto.global_model.view(1, -1).clone(), [], metrics)
    if not isinstance(sc.protocol, fedavg.FedAvg):
        relay = Relay(grid, sc, timeout)
        relay.discover(node_ids)
        res = relay.run(cfg.rounds)
        vertices = sorted(res.models)
        models = torch.stack([res.models[v] for v in vertices]) if vertices else torch.empty(0, sc.layout.size)
        return BridgeResult(cfg.protocol.name, models, vertices, res.metrics)
    return _fedavg(grid, sc, node_ids, timeout)


def _m2n2(grid: Grid, sc: Scenario, node_ids: list[int], timeout: float) -> BridgeResult:
    """Federated M2N2: the archive here, the scores at the nodes (bridge.archive). `models` is the
    global model (Federated.models()), `archive` and `occupied` the whole final archive."""
    server = ArchiveServer(grid, sc, timeout)
    server.discover(node_ids)
    res = server.run(sc.cfg.rounds)
    return BridgeResult("m2n2", res.params[res.best].view(1, -1).clone(), [], res.metrics,
                        archive=res.params, occupied=res.occupied)


def _fedavg(grid: Grid, sc: Scenario, node_ids: list[int], timeout: float) -> BridgeResult:
    cfg, t0 = sc.cfg, time.perf_counter()
    k = min(len(node_ids), max(1, round(cfg.protocol.fraction * cfg.nodes)))  # as the simulator's sample
    strategy = ScenarioFedAvg(sc, fraction_train=cfg.protocol.fraction, fraction_evaluate=0.0,
                              min_train_nodes=k, min_available_nodes=len(node_ids))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = sc.evaluate(from_record(arrays, sc.layout).view(1, -1))
        return MetricRecord({**{f"{k}_mean": float(v[0]) for k, v in metrics.items()},
                             "wall_time_s": time.perf_counter() - t0})

    initial = to_record(sc.initial_row(0), sc.layout)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds,
                            timeout=timeout, evaluate_fn=evaluate)
    final = result.arrays if len(result.arrays) else initial
    # rows as the simulator's: 0 the initial model, r the global model after round r
    metrics = [{"round": r, **dict(result.train_metrics_clientapp.get(r, {})),
                **dict(result.evaluate_metrics_serverapp[r])} for r in range(cfg.rounds + 1)]
    return BridgeResult("fedavg", from_record(final, sc.layout).view(1, -1), [], metrics)


def server_app(fixed: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp; `fixed` settings win over the run config (run_simulation passes none)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = settings(context.run_config, fixed)
        result = serve(grid, s)
        if s["out-dir"]:
            out = Path(s["out-dir"]).resolve()  # a relative out-dir is under the SuperLink's working directory
            result.save(out, s)
            log.info("wrote models.npz and summary.json to %s", out)

    return app


app = server_app()
