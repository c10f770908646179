"""Federated iHOMER on the bridge: the coordinator (ODAC on pooled counts, the partition, the
sample-weighted mean) in the ServerApp, the streams and the training on the devices.

Each round the server sends every node the global row, the published partition, the warm-up
flags, the simulated time at which the node's download lands (the simulator's clock: round
starts every `protocol.period` seconds or when the last upload lands, link delays from the
server links, training time from the node's speed) and how many of the node's rows it has
counted. The node trains on the rows that had arrived by then, with the simulator's kernel and
minibatch stream, and replies its row, its sample weight and the count delta of its new rows
(`LabelCounts.pack()`: n, n_a, the pairs' n_ab, the cardinality histogram; never a label
vector). The server adds the deltas up and calls the protocol's own `coordinate`, so it ends
with the simulator's partition and global model.

    train.ihomer  "arrays" (the global row) and ConfigRecord "config" {now, lo, partition,
                  warming} in; "arrays", MetricRecord {"num-examples", "train-loss"} and
                  ArrayRecord "counts" {"counts": float64 [2L + 2 + L(L-1)/2]} out
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from bridge.relay import Relay
from bridge.scenario import Scenario
from bridge.wire import BadReply, from_record, read_partial, to_record
from kernels.odac import LabelCounts

log = logging.getLogger("flwr.murmuration")


def problem(sc: Scenario) -> str | None:
    """Why the bridge does not run this iHOMER scenario as the simulator does (None: it does)."""
    c = sc.cfg.protocol
    if c.mode != "federated":
        return f"protocol.mode={c.mode} is simulated only; the bridge runs federated iHOMER"
    if c.adwin:
        return "protocol.adwin=true keeps river detectors per node and is simulated only; set protocol.adwin=false"
    if c.fraction < 1 or c.deadline is not None:
        return "the bridge runs iHOMER with every node each round: protocol.fraction=1 and no protocol.deadline"
    return None


def node_train(sc: Scenario, pid: int, msg: Message, context: Context) -> Message:
    """A node's round: train the global row on the rows that had arrived at `now`; reply the
    row, its weight and the count delta of rows [lo, arrived)."""
    cfg = msg.content.config_records["config"]
    now, lo = float(cfg["now"]), int(cfg["lo"])
    chain = sc.world.model
    chain.set_partition(np.asarray(cfg["partition"], dtype=np.int64), np.asarray(cfg["warming"], dtype=bool))
    row = from_record(msg.content.array_records["arrays"], sc.layout).view(1, -1).clone()
    node = context.state.config_records.get("node")
    step = torch.tensor([int(node["steps"]) if node is not None else 0])
    data = sc.node(pid)
    loss = data.sgd(row, torch.zeros_like(row), step, np.array([pid]), now=now)
    arrived = int(data.available(np.array([pid]), now)[0])
    first = int(data.offsets[pid])
    labels = data.y[first + lo:first + max(lo, arrived)].to(torch.uint8).cpu().numpy()
    context.state["node"] = ConfigRecord({"steps": int(step[0])})
    counts = LabelCounts.of(labels.reshape(-1, chain.n_labels)).pack()
    return Message(RecordDict({"arrays": to_record(row[0], sc.layout),
                               "metrics": MetricRecord({"num-examples": arrived, "train-loss": float(loss[0])}),
                               "counts": ArrayRecord({"counts": Array(counts)})}), reply_to=msg)


class IHomerServer:
    """The coordinator's loop (see the module docstring)."""

    def __init__(self, grid, sc: Scenario, timeout: float):
        self.sc, self.timeout = sc, timeout
        self.relay = Relay(grid, sc, timeout)
        self.proto = proto = sc.world.protocol()
        proto.init_state()
        proto.global_model = proto.fleet.params[0].clone()
        self.reported = np.zeros(sc.cfg.nodes, dtype=np.int64)
        self.t0 = time.perf_counter()

    def discover(self, node_ids: list[int]) -> dict[int, int]:
        return self.relay.discover(node_ids)

    def _tick(self, t: np.ndarray) -> np.ndarray:
        """Event times as the engine keeps them (rounded up to sim.resolution ticks)."""
        res = self.sc.cfg.sim.resolution
        return np.ceil(t / res - 1e-9) * res if res > 0 else t

    def run(self, rounds: int) -> list[dict]:
        proto, sc = self.proto, self.sc
        n = sc.cfg.nodes
        nodes = np.arange(n)
        metrics = [self._evaluate(0)]
        start = 0.0
        for r in range(1, rounds + 1):
            delay = sc.world.server_delay(nodes, proto.model_bytes)
            down = self._tick(start + delay)
            done = self._tick(down + proto.fleet.train_time(nodes, down))
            up = self._tick(done + delay)
            part, warm = proto.chain.partition.tolist(), (proto.warming > 0).astype(int).tolist()

            def content(v):
                return RecordDict({"arrays": to_record(proto.global_model, sc.layout),
                                   "config": ConfigRecord({"now": float(down[v]), "lo": int(self.reported[v]),
                                                           "partition": part, "warming": warm})})

            msgs = [Message(content(v), dst_node_id=self.relay.node_of[v], message_type="train.ihomer",
                            group_id=str(r), ttl=self.timeout) for v in range(n)]
            vertex_of = {nid: v for v, nid in self.relay.node_of.items()}
            replies = {vertex_of[m.metadata.src_node_id]: m for m in self.relay.exchange(msgs)
                       if m.metadata.src_node_id in vertex_of}
            total = torch.zeros_like(proto.global_model, dtype=torch.float64)
            weight = 0.0
            counts = LabelCounts.zeros(proto.n_labels)
            K = counts.pack().size
            for v in sorted(replies, key=lambda v: (up[v], v)):  # as the uploads land in the simulator
                try:
                    row, w = self._read(replies[v])
                    delta = read_partial(replies[v], "counts", {"counts": (K,)})["counts"]
                except BadReply as err:
                    log.warning("round %d: rejected the reply of vertex %d: %s", r, v, err)
                    continue
                total += w * row.double()
                weight += w
                counts = counts + LabelCounts.unpack(delta, proto.n_labels)
                self.reported[v] = max(self.reported[v], int(w))
            if weight > 0:
                proto.global_model = (total / weight).to(proto.global_model.dtype)
            proto.coordinate(counts, {}, 0)
            metrics.append(self._evaluate(r))
            start = max(float(up.max()), r * proto.cfg.period)
        return metrics

    def _read(self, msg: Message) -> tuple[torch.Tensor, float]:
        if msg.has_error():
            raise BadReply(f"error reply: {msg.error.reason}")
        row = from_record(msg.content.array_records["arrays"], self.sc.layout)
        w = msg.content.metric_records["metrics"]["num-examples"]
        if isinstance(w, list) or not np.isfinite(w) or w < 0:
            raise BadReply(f"num-examples must be a number >= 0, got {w!r}")
        return row, float(w)

    def _evaluate(self, r: int) -> dict:
        scores = self.sc.evaluate(self.proto.global_model.view(1, -1))
        return {"round": r, **{f"{k}_mean": float(v[0]) for k, v in scores.items()},
                "partition_version": self.proto.version, "partition": " ".join(map(str, self.proto.chain.partition)),
                "wall_time_s": time.perf_counter() - self.t0}
