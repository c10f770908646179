"""Gossip learning: every node trains, sends its model to all neighbours, and merges
`beta * self + (1 - beta) * mean(received)` as soon as its buffer holds deg(node) models.

`sync`: rounds with a barrier (all nodes train at the round start; the round ends when every
node has merged). `async` (the protocol of Tian et al.'s simulator): each node wakes every
`wake` seconds (an interval drawn per wake-up; never before its previous training is done),
trains, sends after each training; rounds are `round_time` simulated seconds, for evaluation
only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clients.profiles import Distribution
from kernels import gossip_merge, sum_rows_into
from kernels.random import counter_uniform, derive_seed
from protocols.base import Protocol
from topologies import link_delay


def merge(own: torch.Tensor, received_sum: torch.Tensor, received_count: torch.Tensor,
          beta: float) -> torch.Tensor:
    """The gossip merge, row by row: beta * own + (1 - beta) * received_sum / received_count."""
    return gossip_merge(own, received_sum, received_count, beta)


@dataclass(frozen=True)
class GossipConfig:
    beta: float = 0.5
    init: str = "independent"  # independent | shared
    mode: str = "sync"         # sync | async
    wake: Any = field(default_factory=lambda: {"kind": "exponential", "mean": 1.0})
    round_time: float = 1.0    # async: simulated seconds per evaluation round

    def __post_init__(self):
        if not 0 <= self.beta <= 1:
            raise ValueError(f"protocol.beta must be in [0, 1], got {self.beta}")
        if self.init not in ("independent", "shared"):
            raise ValueError(f"protocol.init must be one of independent, shared; got {self.init!r}")
        if self.mode not in ("sync", "async"):
            raise ValueError(f"protocol.mode must be one of sync, async; got {self.mode!r}")
        if self.round_time <= 0:
            raise ValueError(f"protocol.round_time must be > 0, got {self.round_time}")
        object.__setattr__(self, "wake", Distribution.from_spec(self.wake))


class Mailbox:
    """Models in flight and received, without one copy per edge.

    A send stores the senders' rows once (a snapshot); each delivery names (snapshot, row).
    Receivers keep a running sum and a count; a snapshot is freed after its last delivery.
    A row may carry extra columns after the parameters (per-model statistics that a protocol
    wants summed over the received models); `width` is the full row length.
    """

    def __init__(self, n: int, width: int, device):
        self.sum = torch.zeros(n, width, device=device)
        self.count = np.zeros(n, dtype=np.int64)
        self._snaps: dict[int, list] = {}
        self._next = 0

    def post(self, rows: torch.Tensor, n_deliveries: int) -> int:
        """Keep `rows` (a tensor the caller hands over, not a view) until delivered."""
        sid = self._next
        self._next += 1
        if n_deliveries:
            self._snaps[sid] = [rows, n_deliveries]
        return sid

    def deliver(self, dst: np.ndarray, snap: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Add the delivered rows to the receivers' sums; returns the distinct receivers."""
        uniq, local = np.unique(dst, return_inverse=True)
        dev = self.sum.device
        acc = None
        for sid in np.unique(snap).tolist():  # few snapshots per wave, not one per node
            sel = snap == sid
            rows, _ = entry = self._snaps[sid]
            part = sum_rows_into(torch.as_tensor(local[sel], device=dev),
                                 torch.as_tensor(row[sel], device=dev), rows, len(uniq))
            acc = part if acc is None else acc + part
            entry[1] -= int(sel.sum())
            if entry[1] == 0:
                del self._snaps[sid]
        idx = torch.as_tensor(uniq, device=dev)
        self.sum[idx] += acc
        self.count += np.bincount(dst, minlength=len(self.count))
        return uniq

    def take(self, nodes: np.ndarray):
        """The nodes' received sums and counts; their buffers are emptied."""
        idx = torch.as_tensor(nodes, device=self.sum.device)
        s, c = self.sum[idx], torch.as_tensor(self.count[nodes], device=self.sum.device)
        self.sum[idx] = 0.0
        self.count[nodes] = 0
        return s, c


class Gossip(Protocol):
    name = "gossip"
    extra_columns = 0  # statistics sent along with each model (see `outgoing`)

    @property
    def independent_init(self):
        return self.cfg.init == "independent"

    def bind(self):
        e, f = self.engine, self.fleet
        e.on("deliver", self._deliver, priority=10)
        e.on("train_done", self._train_done, priority=20)
        e.on("wake", self._wake, priority=30)
        e.on("round_start", self._round_start, priority=40)
        self.edges = self.ctx.edges
        self.degree = self.edges["degree"]
        self.mailbox = Mailbox(f.n, f.layout.size + self.extra_columns, f.device)
        self.round = 0
        self.merges = 0
        self._wake_seed = derive_seed(self.ctx.seed, "wake")
        self.wakes = np.zeros(f.n, dtype=np.int64)

    def start(self):
        if self.cfg.mode == "sync":
            self.engine.schedule("round_start", 0.0, -1)
        else:
            nodes = np.arange(self.fleet.n)
            self.engine.schedule("wake", self._interval(nodes), nodes)
            self.start_clock(self.cfg.round_time)

    def extra_metrics(self):
        return {"merges": float(self.merges)}

    def _interval(self, nodes: np.ndarray) -> np.ndarray:
        """Each node's next wake-up interval, keyed by (node, how many times it woke)."""
        u = counter_uniform(self._wake_seed, torch.as_tensor(nodes), torch.as_tensor(self.wakes[nodes]))
        return self.cfg.wake.quantile(u.numpy())

    # sync rounds
    def _round_start(self, t, nodes, payload):
        self.round += 1
        self.merged = int((self.degree == 0).sum())  # isolated nodes have nothing to wait for
        everyone = np.arange(self.fleet.n)
        self.engine.schedule("train_done", t + self.fleet.train_time(everyone), everyone)

    # async clock: wake, train for train_time, send; wake again `interval` after the last
    # wake-up, or when training ends if that is later
    def _wake(self, t, nodes, payload):
        busy = self.fleet.train_time(nodes)
        gap = np.maximum(self._interval(nodes), busy)
        self.wakes[nodes] += 1
        self.engine.schedule("train_done", t + busy, nodes)
        self.engine.schedule("wake", t + gap, nodes)

    def _train_done(self, t, nodes, payload):
        self.fleet.train(nodes)
        self.send(t, nodes)

    def send(self, t: float, nodes: np.ndarray) -> None:
        """Each node sends its current model to all its neighbours."""
        off, deg = self.edges["offsets"], self.degree[nodes]
        total = int(deg.sum())
        if total == 0:
            return
        starts = np.repeat(off[nodes] - np.concatenate([[0], np.cumsum(deg)[:-1]]), deg)
        e = starts + np.arange(total)
        # advanced indexing copies: the snapshot keeps the models as sent
        rows = self.fleet.params[torch.as_tensor(nodes, device=self.fleet.device)]
        snap = self.mailbox.post(self.outgoing(rows), total)
        delay = link_delay(self.edges["latency"][e], self.edges["bandwidth"][e], self.fleet.model_bytes)
        self.bytes_sent += total * self.fleet.model_bytes
        self.engine.schedule("deliver", t + delay, self.edges["dst"][e], key=self.edges["src"][e],
                             snap=snap, row=np.repeat(np.arange(len(nodes)), deg))

    def _deliver(self, t, nodes, payload):
        receivers = self.mailbox.deliver(nodes, payload["snap"], payload["row"])
        full = receivers[self.mailbox.count[receivers] >= self.degree[receivers]]
        if len(full):
            self.merge_nodes(full)
        if self.cfg.mode == "sync":
            self.merged += len(full)
            if self.merged == self.fleet.n:
                self.ctx.on_round(self.round, t)
                self.engine.schedule("round_start", t, -1)

    def outgoing(self, rows: torch.Tensor) -> torch.Tensor:
        """What a send carries per model: the parameters (subclasses append statistics)."""
        return rows

    def merge_nodes(self, nodes: np.ndarray) -> None:
        """Merge the nodes' buffered models into their own."""
        received, count = self.mailbox.take(nodes)
        idx = torch.as_tensor(nodes, device=self.fleet.device)
        self.fleet.set_params(nodes, self.merge_rule(self.fleet.params[idx], received, count))
        self.merges += len(nodes)

    def merge_rule(self, own: torch.Tensor, received: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """own [n, P], received [n, width] summed rows, count [n] -> merged [n, P]."""
        return merge(own, received, count, self.cfg.beta)
