"""Gossip learning: every node trains, sends its model to all neighbours, and merges
`beta * self + (1 - beta) * mean(received)` as soon as its buffer holds deg(node) models.

`sync`: rounds with a barrier (all nodes train at the round start; the round ends when every
node has merged). `async` (the protocol of Tian et al.'s simulator): each node wakes every
`wake` seconds (an interval drawn per wake-up; never before its previous training is done),
trains, sends after each training; rounds are `round_time` simulated seconds, for evaluation
only.

Its per-node merge rule is `message` (what each sent model carries) and `merge` (own models
and the summed messages of their inboxes -> merged models): a subclass that overrides them
is a new gossip protocol, in the simulator and on the Flower relay alike. With
`receives = "models"` its merge sees every received model instead of their sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clients.profiles import Distribution
from kernels import gossip_merge, sum_rows_into
from kernels.random import counter_uniform, derive_seed
from protocols.base import Priority, Protocol, ProtocolConfig
from topologies import link_delay


def merge(own: torch.Tensor, received_sum: torch.Tensor, received_count: torch.Tensor,
          beta: float) -> torch.Tensor:
    """The gossip merge, row by row: beta * own + (1 - beta) * received_sum / received_count."""
    return gossip_merge(own, received_sum, received_count, beta)


# every field of a distribution, so that an override such as
# protocol.wake='{kind: uniform, low: 0.8, high: 1.2}' may set any of them
WAKE = {"kind": "exponential", "mean": 1.0, "value": 1.0, "low": 0.0, "high": 1.0, "sigma": 0.5}


MAX_WAKES_PER_ROUND = 1e6  # more is a run that looks hung: one round would take hours


@dataclass
class GossipConfig(ProtocolConfig):
    beta: float = 0.5
    init: str = "independent"  # independent | shared initial models
    mode: str = "sync"         # sync (rounds with a barrier) | async (per-node wake-up clocks)
    wake: Any = field(default_factory=lambda: dict(WAKE))  # async: seconds between wake-ups
    round_time: float = 1.0    # async: simulated seconds per evaluation round

    def __post_init__(self):
        if not 0 <= self.beta <= 1:
            raise ValueError(f"protocol.beta must be in [0, 1], got {self.beta}")
        if self.init not in ("independent", "shared"):
            raise ValueError(f"protocol.init must be one of independent, shared; got {self.init!r}")
        if self.mode not in ("sync", "async"):
            raise ValueError(f"protocol.mode must be one of sync, async; got {self.mode!r}")
        if not 0 < self.round_time < math.inf:
            raise ValueError(f"protocol.round_time must be a finite number > 0, got {self.round_time}")
        try:
            wake = Distribution.from_spec(self.wake)
        except ValueError as err:
            raise ValueError(f"protocol.wake: {err}") from None
        if not wake.always_positive:  # a zero interval would wake a node forever at one instant
            raise ValueError("protocol.wake must be > 0 seconds for every wake-up (check its value or low)")
        if self.mode == "async" and self.round_time / wake.typical > MAX_WAKES_PER_ROUND:
            raise ValueError(f"protocol.round_time={self.round_time:g} s is {self.round_time / wake.typical:.3g} "
                             f"wake-ups per node per round (protocol.wake is typically {wake.typical:g} s); "
                             f"keep it at most {MAX_WAKES_PER_ROUND:.0e}")

    @property
    def wake_distribution(self) -> Distribution:
        return Distribution.from_spec(self.wake)


class Mailbox:
    """Models in flight and received, without one copy per edge.

    A send stores the senders' messages once (a snapshot); each delivery names (snapshot, row).
    In "sum" mode a receiver keeps a running sum of its messages and a count; in "models" mode
    it keeps each message in a slot of a [N, slots, width] buffer (NaN where empty), for merge
    rules that need every received model. A snapshot is freed after its last delivery.
    """

    def __init__(self, n: int, device, mode: str = "sum", slots: int = 1):
        if mode not in ("sum", "models"):
            raise ValueError(f"a mailbox keeps 'sum' or 'models', not {mode!r}")
        self.n, self.device, self.mode = n, device, mode
        self.buffer: torch.Tensor | None = None  # [N, width] sums or [N, slots, width] models
        self.slots = max(1, slots)
        self.count = np.zeros(n, dtype=np.int64)
        self._snaps: dict[int, list] = {}
        self._next = 0

    def post(self, rows: torch.Tensor, n_deliveries: int) -> int:
        """Keep `rows` [k, width] (a tensor the caller hands over, not a view) until delivered."""
        sid = self._next
        self._next += 1
        if n_deliveries:
            self._snaps[sid] = [rows, n_deliveries]
        if self.buffer is None:
            shape = (self.n, rows.shape[1]) if self.mode == "sum" else (self.n, self.slots, rows.shape[1])
            self.buffer = torch.full(shape, 0.0 if self.mode == "sum" else math.nan,
                                     dtype=rows.dtype, device=self.device)
        return sid

    def _release(self, sid: int, n: int) -> torch.Tensor:
        rows, _ = entry = self._snaps[sid]
        entry[1] -= n
        if entry[1] == 0:
            del self._snaps[sid]
        return rows

    def deliver(self, dst: np.ndarray, snap: np.ndarray, row: np.ndarray) -> np.ndarray:
        """File the delivered messages with their receivers; returns the distinct receivers."""
        uniq, local = np.unique(dst, return_inverse=True)
        dev = self.device
        if self.mode == "models":
            order = np.argsort(local, kind="stable")
            rank = np.empty(len(dst), np.int64)
            first = np.searchsorted(local[order], local[order])
            rank[order] = np.arange(len(dst)) - first
            slot = self.count[dst] + rank
            self._grow(int(slot.max()) + 1)
            for sid in np.unique(snap).tolist():
                sel = snap == sid
                rows = self._release(sid, int(sel.sum()))
                self.buffer[torch.as_tensor(dst[sel], device=dev), torch.as_tensor(slot[sel], device=dev)] = \
                    rows[torch.as_tensor(row[sel], device=dev)]
        else:
            acc = None
            for sid in np.unique(snap).tolist():  # few snapshots per wave, not one per node
                sel = snap == sid
                rows = self._release(sid, int(sel.sum()))
                part = sum_rows_into(torch.as_tensor(local[sel], device=dev),
                                     torch.as_tensor(row[sel], device=dev), rows, len(uniq))
                acc = part if acc is None else acc + part
            self.buffer[torch.as_tensor(uniq, device=dev)] += acc
        self.count += np.bincount(dst, minlength=len(self.count))
        return uniq

    def _grow(self, slots: int) -> None:
        if slots > self.buffer.shape[1]:
            pad = self.buffer.new_full((self.n, slots - self.buffer.shape[1], self.buffer.shape[2]), math.nan)
            self.buffer = torch.cat([self.buffer, pad], dim=1)

    def take(self, nodes: np.ndarray):
        """The nodes' inboxes and counts, and their buffers emptied: sums [n, width], or models
        [n, k, width] with k the largest count among them (NaN beyond a node's own count)."""
        idx = torch.as_tensor(nodes, device=self.device)
        c = torch.as_tensor(self.count[nodes], device=self.device)
        if self.mode == "sum":
            s = self.buffer[idx]
            self.buffer[idx] = 0.0
        else:
            s = self.buffer[idx, :int(self.count[nodes].max(initial=1))]
            self.buffer[idx] = math.nan
        self.count[nodes] = 0
        return s, c


class Gossip(Protocol):
    name = "gossip"
    config = GossipConfig
    columns = ("merges",)

    @classmethod
    def independent_init(cls, cfg) -> bool:
        return cfg.init == "independent"

    def bind(self):
        e, f = self.engine, self.fleet
        e.on("deliver", self._deliver, Priority.RECEIVE)
        e.on("train_done", self._train_done, Priority.TRAINED)
        e.on("wake", self._wake, Priority.WAKE)
        e.on("round_start", self._round_start, Priority.ROUND)
        self.edges = self.world.edges
        self.degree = self.edges["degree"]
        self.mailbox = Mailbox(f.n, f.device, self.receives, slots=int(self.degree.max(initial=1)))
        self.round = 0
        self.merges = 0
        self._wake_seed = derive_seed(self.world.seed, "wake")
        self._wake_dist = None if self.synchronous else self.cfg.wake_distribution
        self.wakes = np.zeros(f.n, dtype=np.int64)

    @property
    def synchronous(self) -> bool:
        """Rounds with a barrier (mode sync; a subclass without wake-up clocks is synchronous)."""
        return getattr(self.cfg, "mode", "sync") != "async"

    def start(self):
        if self.synchronous:
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
        return self._wake_dist.quantile(u.numpy())

    # sync rounds
    # (a round ends when every node has trained and every node with neighbours has merged;
    # an isolated node only trains)
    def _round_start(self, t, nodes, payload):
        self.round += 1
        self.merged = int((self.degree == 0).sum())  # isolated nodes have nothing to wait for
        self.trained = 0
        everyone = np.arange(self.fleet.n)
        self.engine.schedule("train_done", t + self.fleet.train_time(everyone, t), everyone, start=t)

    def _end_round_if_done(self, t: float) -> None:
        if self.merged == self.fleet.n and self.trained == self.fleet.n:
            self.on_round(self.round, t)
            self.engine.schedule("round_start", t, -1)

    # async clock: wake, train for train_time, send; wake again `interval` after the last
    # wake-up, or when training ends if that is later
    def _wake(self, t, nodes, payload):
        busy = self.fleet.train_time(nodes, t)
        gap = np.maximum(self._interval(nodes), busy)
        self.wakes[nodes] += 1
        self.engine.schedule("train_done", t + busy, nodes, start=t)
        self.engine.schedule("wake", t + gap, nodes)

    def _train_done(self, t, nodes, payload):
        self.fleet.train(nodes, payload["start"])  # on the rows held when training began
        self.send(t, nodes)
        if self.synchronous:
            self.trained += len(nodes)
            self._end_round_if_done(t)

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
        snap = self.mailbox.post(self.message(rows), total)
        delay = link_delay(self.edges["latency"][e], self.edges["bandwidth"][e], self.model_bytes)
        self.bytes_sent += total * self.model_bytes
        self.engine.schedule("deliver", t + delay, self.edges["dst"][e], key=self.edges["src"][e],
                             snap=snap, row=np.repeat(np.arange(len(nodes)), deg))

    def _deliver(self, t, nodes, payload):
        receivers = self.mailbox.deliver(nodes, payload["snap"], payload["row"])
        full = receivers[self.mailbox.count[receivers] >= self.degree[receivers]]
        if len(full):
            self.merge_nodes(full)
        if self.synchronous:
            self.merged += len(full)
            self._end_round_if_done(t)

    def relay_problem(self):
        if not self.synchronous:
            return "the bridge runs gossip in synchronous rounds; use protocol.mode=sync"
        return None

    def merge_nodes(self, nodes: np.ndarray) -> None:
        """Merge the nodes' buffered models into their own."""
        received, count = self.mailbox.take(nodes)
        idx = torch.as_tensor(nodes, device=self.fleet.device)
        self.fleet.set_params(nodes, self.merge(self.fleet.params[idx], received, count))
        self.merges += len(nodes)

    def merge(self, own: torch.Tensor, received: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The merge rule: own [n, P] and the inboxes (summed messages [n, width], or with
        receives = "models", the messages [n, k, width], NaN beyond count) -> merged [n, P]."""
        return merge(own, received, count, self.cfg.beta)
