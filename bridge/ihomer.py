"""Federated iHOMER on the bridge: the coordinator (ODAC on pooled counts, the partition, the
aggregate) in the ServerApp, the streams, the prequential test, the training and the local drift
detectors on the devices.

The ServerApp holds the scenario's protocol object (`World.protocol()`, its state built as the
simulator builds it) and replays the simulator's clock: round r + 1 starts at max(r * period, the
time round r's last upload lands); a node's download lands after its server link's delay, its
training takes its steps over its speed, its upload lands after the link's delay again (ticks
of sim.resolution as the engine keeps them). Each round every connected node gets the global
row, the published partition and warm-up flags, the simulated time `now` at which the download
lands and `lo`, how many of its rows the coordinator has counted. The node predicts the rows
[lo, arrived at now) with the global row (the prequential test), trains it on the rows that had
arrived (the simulator's kernel and minibatch stream), updates its ADWIN detectors (the
protocol's own `_local_drift`, via IHomer.node_drift) and replies its row, its sample weight, the
count delta of rows [lo, arrived) (`LabelCounts.pack()`: n, n_a, the pairs' n_ab, the
cardinality histogram), its prequential counts (per label tp, fp, fn and summed loss; exact
matches, mean loss, rows) and which clusters it flags; never a label vector. The server
aggregates as the simulator does (sample-weighted mean in upload order, or the robust
`protocol.aggregator` over the rows sorted by node), then calls the protocol's own `coordinate`
(IHomer.coordinate_restarts), so it ends with the simulator's global model and partition.

    train.ihomer  in: "arrays" (the global row), ConfigRecord "config" {round, now, lo,
                  partition, warming, reset-clusters, reset-rounds}; out: "arrays", MetricRecord
                  "metrics" {num-examples, train-loss}, ArrayRecord "counts" {counts: float64
                  [2L + 2 + L(L-1)/2], prequential: float64 [4L + 3], flags (protocol.adwin):
                  0/1 per cluster of the partition sent}

A node keeps its minibatch position and, with protocol.adwin, its detectors (pickled, with the
round each was made) in `context.state`. A cluster the coordinator starts over is announced in
every later message (reset-clusters, "0,4,7", with the round of its last restart): a node drops
its detectors of it made up to that round, as the simulator drops them at the round's close.

A reply that is an error, late or fails the checks is left out of the round (logged): its rows
are counted at the node's next reply (lo stays), the clock is the simulator's all the same.
"""
from __future__ import annotations

import logging
import pickle
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from bridge.relay import Relay
from bridge.scenario import Scenario
from bridge.wire import BadReply, from_record, read_partial, to_record
from clients.nodes import Prequential
from kernels.odac import LabelCounts, partition_groups
from protocols.fedavg import robust_aggregate

log = logging.getLogger("flwr.murmuration")

TRAIN = "train.ihomer"


def problem(sc: Scenario) -> str | None:
    """Why the bridge does not run this iHOMER scenario as the simulator does (None: it does)."""
    c = sc.cfg.protocol
    if c.mode == "local":
        return ("protocol.mode=local keeps every model on its node (only counts travel): simulated only; "
                "the bridge runs protocol.mode=federated")
    if c.mode != "federated":
        return f"protocol.mode={c.mode} is simulated only; the bridge runs federated iHOMER"
    if c.fraction < 1 or c.deadline is not None:
        return "the bridge runs iHOMER with every node each round: protocol.fraction=1 and no protocol.deadline"
    return None


def _key(cluster) -> str:
    return ",".join(str(int(i)) for i in cluster)


# ---------------------------------------------------------------------------------------------
# the node's side


def node_train(sc: Scenario, pid: int, msg: Message, context: Context) -> Message:
    """A node's round: test the global row on the rows [lo, arrived at `now`), train it on what
    had arrived, run the local drift detectors; reply the row, its weight, the count delta of
    rows [lo, arrived), the test's counts and the clusters flagged."""
    cfg = msg.content.config_records["config"]
    now, lo, r = float(cfg["now"]), int(cfg["lo"]), int(cfg["round"])
    part = np.asarray(cfg["partition"], dtype=np.int64)
    chain = sc.world.model
    if part.shape != (chain.n_labels,):
        raise ValueError(f"the partition has {part.size} labels, the model {chain.n_labels}")
    chain.set_partition(part, np.asarray(cfg["warming"], dtype=bool))
    row = from_record(msg.content.array_records["arrays"], sc.layout).view(1, -1).clone()
    data, nodes = sc.node(pid), np.array([pid])
    # test, then train (as Fleet.train): the rows the coordinator has not counted yet are new
    pq = Prequential(data, per_node=True)
    pq.seen[pid] = lo
    pq.test(row, nodes, now)
    tested = pq.node_counts[pid].cpu() if pq.node_counts is not None else \
        torch.zeros(4 * chain.n_labels + 3, dtype=torch.float64)
    node = context.state.config_records.get("node")
    step = torch.tensor([int(node["steps"]) if node is not None else 0])
    loss = data.sgd(row, torch.zeros_like(row), step, nodes, now=now)
    context.state["node"] = ConfigRecord({"steps": int(step[0])})
    arrived = int(data.available(nodes, now)[0])
    first = int(data.offsets[pid])
    labels = data.y[first + lo:first + max(lo, arrived)].to(torch.uint8).cpu().numpy()
    arrays = {"counts": LabelCounts.of(labels.reshape(-1, chain.n_labels)).pack(),
              "prequential": tested.numpy()}
    if sc.cfg.protocol.adwin:
        arrays["flags"] = _drift(sc, pid, r, part, tested, cfg, context)
    return Message(RecordDict({"arrays": to_record(row[0], sc.layout),
                               "metrics": MetricRecord({"num-examples": arrived, "train-loss": float(loss[0])}),
                               "counts": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})}),
                   reply_to=msg)


def _drift(sc: Scenario, pid: int, r: int, part: np.ndarray, tested: torch.Tensor, cfg: ConfigRecord,
           context: Context) -> np.ndarray:
    """The node's ADWIN step (IHomer.node_drift); 0/1 per cluster of `part`: flagged."""
    kept = context.state.config_records.get("ihomer")
    made: dict = pickle.loads(kept["detectors"]) if kept is not None else {}  # cluster -> (round made, ADWIN)
    restarted = dict(zip(cfg["reset-clusters"], cfg["reset-rounds"]))
    made = {c: v for c, v in made.items() if restarted.get(_key(c), -1) < v[0]}
    detectors = {c: det for c, (_, det) in made.items()}
    flagged = sc.world.protocol().node_drift(pid, tested, detectors)
    made = {c: (made[c][0] if c in made else r, det) for c, det in detectors.items()}
    context.state["ihomer"] = ConfigRecord({"detectors": pickle.dumps(made)})
    clusters = {tuple(int(i) for i in g): j for j, g in enumerate(partition_groups(part))}
    flags = np.zeros(len(clusters))
    flags[[clusters[c] for c in flagged]] = 1.0
    return flags


# ---------------------------------------------------------------------------------------------
# the ServerApp's side


class IHomerServer:
    """The coordinator's loop (see the module docstring)."""

    def __init__(self, grid, sc: Scenario, timeout: float):
        self.sc, self.timeout = sc, timeout
        self.relay = Relay(grid, sc, timeout)
        self.proto = proto = sc.world.protocol()
        proto.init_state()  # the simulator's state: ODAC, partition, warm-ups, the fleet's bookkeeping
        proto.global_model = proto.fleet.params[0].clone()
        proto.dropped = 0
        self.restarted: dict[str, int] = {}  # cluster -> round of its last restart (nodes drop its detectors)
        self.t0 = time.perf_counter()

    def discover(self, node_ids: list[int]) -> dict[int, int]:
        return self.relay.discover(node_ids)

    def _tick(self, t):
        """Event times as the engine keeps them (rounded up to sim.resolution ticks)."""
        res = self.sc.cfg.sim.resolution
        return np.ceil(np.asarray(t) / res - 1e-9) * res if res > 0 else np.asarray(t)

    def run(self, rounds: int) -> list[dict]:
        proto, sc = self.proto, self.sc
        nodes = np.arange(sc.cfg.nodes)
        metrics = [self._row(0, 0.0)]
        start = 0.0
        for r in range(1, rounds + 1):
            delay = sc.world.server_delay(nodes, proto.model_bytes)
            down = self._tick(start + delay)
            up = self._tick(self._tick(down + proto.fleet.train_time(nodes, down)) + delay)
            replies = self._exchange(r, down)
            self._close(r, sorted(replies, key=lambda v: (up[v], v)), replies)  # as the uploads land
            metrics.append(self._row(r, float(up.max())))
            start = float(self._tick(max(float(up.max()), r * proto.cfg.period)))
        return metrics

    def _exchange(self, r: int, down: np.ndarray) -> dict[int, Message]:
        proto = self.proto
        part, warm = proto.chain.partition.tolist(), (proto.warming > 0).astype(int).tolist()
        resets = sorted(self.restarted.items())

        def content(v):
            return RecordDict({"arrays": to_record(proto.global_model, self.sc.layout),
                               "config": ConfigRecord({"round": r, "now": float(down[v]),
                                                       "lo": int(proto.reported[v]), "partition": part,
                                                       "warming": warm, "reset-clusters": [c for c, _ in resets],
                                                       "reset-rounds": [q for _, q in resets]})})

        msgs = [Message(content(v), dst_node_id=nid, message_type=TRAIN, group_id=str(r), ttl=self.timeout)
                for v, nid in sorted(self.relay.node_of.items())]
        vertex_of = {nid: v for v, nid in self.relay.node_of.items()}
        replies = {vertex_of[m.metadata.src_node_id]: m for m in self.relay.exchange(msgs)
                   if m.metadata.src_node_id in vertex_of}
        missing = proto.fleet.n - len(replies)
        if missing:
            log.warning("round %d: %d of %d nodes did not reply", r, missing, proto.fleet.n)
            proto.dropped += missing
        return replies

    def _close(self, r: int, order: list[int], replies: dict[int, Message]) -> None:
        """The simulator's _upload for each reply, then its _close: aggregate, coordinate."""
        proto, cfg, L = self.proto, self.proto.cfg, self.proto.n_labels
        fleet, pq = proto.fleet, proto.fleet.prequential
        total = torch.zeros_like(proto.global_model, dtype=torch.float64)
        kept, counts, flags, reporting = [], LabelCounts.zeros(L), {}, 0
        for v in order:
            try:
                row, w, loss, parts = self._read(replies[v])
            except BadReply as err:
                log.warning("round %d: rejected the reply of vertex %d: %s", r, v, err)
                proto.dropped += 1
                continue
            total += w * row.double()
            kept.append((v, row, w))
            counts = counts + LabelCounts.unpack(parts["counts"], L)
            proto.reported[v] = max(int(proto.reported[v]), int(w))
            tested = torch.as_tensor(parts["prequential"], dtype=torch.float64)
            if pq.node_counts is None:
                pq.node_counts = torch.zeros(fleet.n, len(tested), dtype=torch.float64, device=fleet.device)
            pq.node_counts[v] += tested.to(fleet.device)
            pq.total = tested.clone() if pq.total is None else pq.total + tested
            fleet.last_loss[v] = loss
            if cfg.adwin:
                groups = partition_groups(proto.chain.partition)
                for j in np.flatnonzero(parts["flags"] > 0):
                    cluster = tuple(int(i) for i in groups[j])
                    flags[cluster] = flags.get(cluster, 0) + 1
                    proto.local_drifts += 1
                reporting += int(tested[-1] > 0)
        weights = sum(w for _, _, w in kept)
        if weights > 0:  # else nobody held a row yet (or nobody replied): the model stays, as FedAvg.aggregated
            if cfg.aggregator == "mean":
                proto.global_model = (total / weights).to(proto.global_model.dtype)
            else:  # the robust rules see the rows sorted by node, as FedAvg.aggregated
                kept.sort(key=lambda k: k[0])
                rows = torch.stack([k[1] for k in kept])
                w = torch.tensor([k[2] for k in kept], dtype=torch.float64)
                proto.global_model = robust_aggregate(cfg, rows, w, proto.global_model).to(proto.global_model.dtype)
        elif not kept:
            log.warning("round %d: no usable reply; the global model stays", r)
        for cluster in proto.coordinate_restarts(counts, flags, reporting):
            self.restarted[_key(cluster)] = r

    def _read(self, msg: Message) -> tuple[torch.Tensor, float, float, dict[str, np.ndarray]]:
        """(row, weight, training loss, the counts record's arrays) of a reply. Raises BadReply."""
        if msg.has_error():
            raise BadReply(f"error reply: {msg.error.reason}")
        if not msg.has_content() or "arrays" not in msg.content.array_records \
                or "metrics" not in msg.content.metric_records:
            raise BadReply("needs ArrayRecord 'arrays' and MetricRecord 'metrics'")
        row = from_record(msg.content.array_records["arrays"], self.sc.layout)
        metrics = msg.content.metric_records["metrics"]
        w, loss = metrics.get("num-examples"), metrics.get("train-loss", float("nan"))
        if isinstance(w, (list, bool)) or w is None or not np.isfinite(w) or w < 0:
            raise BadReply(f"num-examples must be a number >= 0, got {w!r}")
        if isinstance(loss, list):
            raise BadReply(f"train-loss must be a number, got {loss!r}")
        L = self.proto.n_labels
        shapes = {"counts": (LabelCounts.zeros(L).pack().size,), "prequential": (4 * L + 3,)}
        if self.proto.cfg.adwin:
            shapes["flags"] = (int(self.proto.chain.partition.max()) + 1,)
        return row, float(w), float(loss), read_partial(msg, "counts", shapes)

    def _row(self, r: int, t: float) -> dict:
        """The simulator's metrics.csv row of round r (what this loop can know: no bytes_sent)."""
        proto = self.proto
        scores = self.sc.evaluate(proto.global_model.view(1, -1))
        return {"round": r, "sim_time_s": t, "wall_time_s": time.perf_counter() - self.t0,
                **self.sc.world.task.columns(scores), "train_loss": proto.train_loss(),
                **proto.prequential_metrics(), **proto.extra_metrics()}
