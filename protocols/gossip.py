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

Robust merges (`aggregator`): beta * own + (1 - beta) * RULE(received) with RULE a
coordinate-wise median, a trimmed mean or (multi-)Krum over the received models
(kernels.robust), or `clipped`, ClippedGossip (He, Karimireddy and Jaggi 2022): own +
(1 - beta) * mean_j clip_tau(x_j - own). These keep every received model (the mailbox's
"models" mode, which decentralized M2N2 uses too).

Faults (the World's availability, topology.loss, topology.failures, topology.dynamic): an
offline node neither trains nor sends; a node that goes offline while training drops out
(its training is lost). Which messages arrive is World.transmit's. When fewer than deg models
can arrive, `merge_on` says when a node merges:
  arrived  sync: once every message sent to it this round has landed or is known lost (with
           no faults: its deg models, as always); a node offline at the round start sits the
           round out. async: once deg models are in its buffer (they may span several sends).
  timeout  `timeout` seconds after its own send, with whatever has arrived (nothing: no merge).
Byzantine senders (`attack`) rewrite the model they send with the reference 0: sign_flip
sends -scale * w, scale sends scale * w, gaussian sends noise, alie sends the mean minus z
standard deviations of the honest models sent at the same instant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clients.profiles import Distribution
from kernels import gossip_merge, robust, row_blocks
from kernels.mixing import add_messages_into, gossip_merge_
from kernels.random import counter_uniform, derive_seed
from protocols.base import Priority, Protocol, ProtocolConfig
from protocols.fedavg import check_robust_options
from topologies import link_delay


def merge(own: torch.Tensor, received_sum: torch.Tensor, received_count: torch.Tensor,
          beta: float) -> torch.Tensor:
    """The gossip merge, row by row: beta * own + (1 - beta) * received_sum / received_count."""
    return gossip_merge(own, received_sum, received_count, beta)


# every field of a distribution, so that an override such as
# protocol.wake='{kind: uniform, low: 0.8, high: 1.2}' may set any of them
WAKE = {"kind": "exponential", "mean": 1.0, "value": 1.0, "low": 0.0, "high": 1.0, "sigma": 0.5}


MAX_WAKES_PER_ROUND = 1e6  # more is a run that looks hung: one round would take hours
RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "clipped")


@dataclass
class GossipConfig(ProtocolConfig):
    beta: float = 0.5
    init: str = "independent"  # independent | shared initial models
    mode: str = "sync"         # sync (rounds with a barrier) | async (per-node wake-up clocks)
    wake: Any = field(default_factory=lambda: dict(WAKE))  # async: seconds between wake-ups
    round_time: float = 1.0    # async: simulated seconds per evaluation round
    merge_on: str = "arrived"  # arrived | timeout: when a node merges if fewer than deg models can arrive
    timeout: float = 1.0       # merge_on=timeout: seconds after a node's send
    aggregator: str = "mean"   # mean | median | trimmed_mean | krum | multi_krum | clipped (ClippedGossip)
    trim: float = 0.1          # trimmed_mean: share dropped at each end
    byzantine: float = 0.2     # krum, multi_krum: the share of received models assumed Byzantine
    clip_tau: float = 1.0      # clipped: the clipping radius
    clip_iters: int = 1        # clipped: iterations from the node's own model

    def __post_init__(self):
        if not 0 <= self.beta <= 1:
            raise ValueError(f"protocol.beta must be in [0, 1], got {self.beta}")
        if self.init not in ("independent", "shared"):
            raise ValueError(f"protocol.init must be one of independent, shared; got {self.init!r}")
        if self.mode not in ("sync", "async"):
            raise ValueError(f"protocol.mode must be one of sync, async; got {self.mode!r}")
        if not 0 < self.round_time < math.inf:
            raise ValueError(f"protocol.round_time must be a finite number > 0, got {self.round_time}")
        if self.merge_on not in ("arrived", "timeout"):
            raise ValueError(f"protocol.merge_on must be one of arrived, timeout; got {self.merge_on!r}")
        if not 0 < self.timeout < math.inf:
            raise ValueError(f"protocol.timeout must be a finite number of seconds > 0, got {self.timeout}")
        check_robust_options(self, RULES)
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
        dev = self.device
        if self.mode == "models":
            uniq, local = np.unique(dst, return_inverse=True)
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
            parts = []
            for sid in np.unique(snap).tolist():  # few snapshots per wave, not one per node
                sel = snap == sid
                parts.append((self._release(sid, int(sel.sum())), sel, row))
            uniq = add_messages_into(self.buffer, dst, parts)
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

    def __init__(self, cfg, world):
        super().__init__(cfg, world)
        self.rule = getattr(cfg, "aggregator", "mean")  # a subclass's config may have no aggregator
        if self.rule != "mean":
            self.receives = "models"  # a robust rule needs every received model

    @classmethod
    def independent_init(cls, cfg) -> bool:
        return cfg.init == "independent"

    @classmethod
    def supports_attack(cls, cfg) -> bool:
        return True

    @classmethod
    def supports_faults(cls, cfg) -> bool:
        return True

    @classmethod
    def supports_storage(cls, cfg) -> bool:
        return True

    def bind(self):
        e, f = self.engine, self.fleet
        e.on("deliver", self._deliver, Priority.RECEIVE)
        e.on("train_done", self._train_done, Priority.TRAINED)
        e.on("wake", self._wake, Priority.WAKE)
        e.on("round_start", self._round_start, Priority.ROUND)
        e.on("merge_timeout", self._merge_timeout, Priority.DEADLINE)
        e.on("settle", self._settle_event, Priority.DEADLINE)
        e.on("redraw", self._redraw, Priority.TOPOLOGY)
        self.version = 0
        self.edges = self.world.edges
        self.degree = self.edges["degree"]
        self.mailbox = Mailbox(f.n, f.device, self.receives, slots=int(self.degree.max(initial=1)))
        self.round = 0
        self.merges = 0
        self._wake_seed = derive_seed(self.world.seed, "wake")
        self._wake_dist = None if self.synchronous else self.cfg.wake_distribution
        self.wakes = np.zeros(f.n, dtype=np.int64)
        self.sends = np.zeros(f.n, dtype=np.int64)  # keys each send's losses and attack noise
        self.faulty = self.world.faulty
        self.timeout = getattr(self.cfg, "merge_on", "arrived") == "timeout"
        # sync rounds: who takes part, how many neighbours' sends and messages each node awaits
        self.participant = np.ones(f.n, dtype=bool)
        self.waiting = np.zeros(f.n, dtype=np.int64)
        self.pending = np.zeros(f.n, dtype=np.int64)
        self.settled = np.ones(f.n, dtype=bool)
        self._observe_honest()

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
            if self.world.dynamic is not None:
                self.engine.schedule("redraw", self.world.dynamic.every, -1)

    def extra_metrics(self):
        return {"merges": float(self.merges)}

    def _interval(self, nodes: np.ndarray) -> np.ndarray:
        """Each node's next wake-up interval, keyed by (node, how many times it woke)."""
        u = counter_uniform(self._wake_seed, torch.as_tensor(nodes), torch.as_tensor(self.wakes[nodes]))
        return self._wake_dist.quantile(u.numpy())

    def _use_graph(self, version: int) -> None:
        if version != self.version:
            self.version = version
            self.edges = self.world.edges_at(version)
            self.degree = self.edges["degree"]

    def _redraw(self, t, nodes, payload):
        """async: the graph changes at once (sync rounds take the graph of their start)."""
        self._use_graph(self.world.graph_version(t))
        self.engine.schedule("redraw", (self.version + 1) * self.world.dynamic.every, -1)

    def _neighbours(self, nodes: np.ndarray) -> np.ndarray:
        """Every out-edge index of the nodes, in node order."""
        off, deg = self.edges["offsets"], self.degree[nodes]
        total = int(deg.sum())
        starts = np.repeat(off[nodes] - np.concatenate([[0], np.cumsum(deg)[:-1]]), deg)
        return starts + np.arange(total)

    # sync rounds
    # (a round ends when every participant has trained and settled: merged, or found that
    # nothing will arrive; an isolated node only trains)
    def _round_start(self, t, nodes, payload):
        n = self.fleet.n
        everyone = np.arange(n)
        if self.faulty:
            self._use_graph(self.world.graph_version(t))
            self.participant = self.world.online(everyone, t)
            if not self.participant.any():  # nobody online: the round starts when someone is
                back = float(self.world.next_online(everyone, t).min())
                if math.isfinite(back):
                    self.engine.schedule("round_start", back, -1)
                return
        self.round += 1
        self._observe_honest()
        part = everyone[self.participant]
        self.trained, self.expected = 0, len(part)
        e = self._neighbours(part)
        self.waiting = np.bincount(self.edges["dst"][e], minlength=n)
        self.pending[:] = 0
        self.settled = ~self.participant | (self.degree == 0) | ((self.waiting == 0) & (not self.timeout))
        self.unsettled = int((~self.settled).sum())
        self.engine.schedule("train_done", t + self.fleet.train_time(part, t), part, start=t)

    def _end_round_if_done(self, t: float) -> None:
        if self.trained == self.expected and self.unsettled == 0:
            self.on_round(self.round, t)
            self.engine.schedule("round_start", t, -1)

    def _settle(self, t: float, nodes: np.ndarray) -> None:
        """Sync rounds: these participants merge what they hold (if anything, and if they are
        online) and are done."""
        nodes = self._mark_settled(nodes)
        if self.faulty:
            nodes = nodes[(self.mailbox.count[nodes] > 0) & self.world.online(nodes, t)]
        if len(nodes):
            self.merge_nodes(nodes)

    def _settle_event(self, t, nodes, payload):
        self._settle(t, np.unique(nodes))
        self._end_round_if_done(t)

    def _mark_settled(self, nodes: np.ndarray) -> np.ndarray:
        """Sync rounds: the nodes settled now (those not settled before)."""
        nodes = nodes[~self.settled[nodes]]
        self.settled[nodes] = True
        self.unsettled -= len(nodes)
        return nodes

    # async clock: wake, train for train_time, send; wake again `interval` after the last
    # wake-up, or when training ends if that is later
    def _wake(self, t, nodes, payload):
        busy = self.fleet.train_time(nodes, t)
        gap = np.maximum(self._interval(nodes), busy)
        self.wakes[nodes] += 1
        up = self.world.online(nodes, t) if self.faulty else slice(None)  # an offline node sleeps on
        self.engine.schedule("train_done", t + busy[up], nodes[up], start=t)
        self.engine.schedule("wake", t + gap, nodes)

    def _train_done(self, t, nodes, payload):
        start = payload["start"]
        done = nodes
        if self.faulty:  # a node that went offline while training drops out: nothing trained or sent
            stayed = self.world.online_through(nodes, start, t)
            self.dropouts += int((~stayed).sum())
            done, start = nodes[stayed], start[stayed]
        self.fleet.train(done, start)  # on the rows held when training began
        self.send(t, done)
        self.sends[done] += 1  # after the send, which keys its draws by the count before it
        if self.timeout:
            self.engine.schedule("merge_timeout", t + self.cfg.timeout, done)
        if self.synchronous:
            self.trained += len(nodes)
            if self.timeout:
                self._mark_settled(np.setdiff1d(nodes, done))
            else:
                near, k = np.unique(self.edges["dst"][self._neighbours(nodes)], return_counts=True)
                self.waiting[near] -= k
                # nothing more will reach these (their last messages were lost): they merge once
                # this instant's training is done, however its events are split into calls
                ready = near[(self.waiting[near] == 0) & (self.pending[near] == 0) & ~self.settled[near]]
                self.engine.schedule("settle", t, ready)
            self._end_round_if_done(t)

    def send(self, t: float, nodes: np.ndarray) -> None:
        """Each node sends its current model to all its neighbours."""
        e = self._neighbours(nodes)
        total = len(e)
        if total == 0:
            return
        # advanced indexing copies: the snapshot keeps the models as sent
        rows = self.fleet.rows(nodes)
        # attackers send a rewritten model, with the reference 0 (see the module doc)
        rows = self.world.attacked(rows, nodes, rows.new_zeros(rows.shape[1]), torch.as_tensor(self.sends[nodes]),
                                   honest=self._honest)
        src, dst = self.edges["src"][e], self.edges["dst"][e]
        row = np.repeat(np.arange(len(nodes)), self.degree[nodes])
        arrive = t + link_delay(self.edges["latency"][e], self.edges["bandwidth"][e], self.model_bytes)
        self.bytes_sent += total * self.model_bytes
        counted = self.synchronous and not self.timeout
        if self.faulty:
            ok, when = self.world.transmit(src, dst, t, arrive, self.sends[src], edges=(self.version, e))
            self.lost += int((~ok).sum())
            # a message counts toward this round's merge when a participant receives it on time
            counted = ok & (when == arrive) & self.participant[dst] & counted
            src, dst, row, arrive = src[ok], dst[ok], row[ok], when[ok]
            counted = counted[ok]
            if len(dst) == 0:
                return
        snap = self.mailbox.post(self.message(rows), len(dst))
        if counted is not False:
            near, k = np.unique(dst[np.broadcast_to(counted, dst.shape)], return_counts=True)
            self.pending[near] += k
        self.engine.schedule("deliver", arrive, dst, key=src, snap=snap, row=row, counted=counted)

    def _observe_honest(self) -> None:
        """alie: the attackers' view of the honest models (their coordinate-wise mean and std),
        taken once per round, so that no send depends on which sends share its instant."""
        self._honest = None
        w = self.world
        if w.attack is None or w.attack.kind != "alie":
            return
        good = np.flatnonzero(~w.byzantine)
        rows = self.fleet.params[torch.as_tensor(good if len(good) else np.arange(w.n), device=self.fleet.device)]
        rows = rows.double()
        self._honest = (rows.mean(0), rows.std(0, unbiased=False), w.n, int(w.byzantine.sum()))

    def _on_tick(self, t, nodes, payload):
        self._observe_honest()
        super()._on_tick(t, nodes, payload)

    def _deliver(self, t, nodes, payload):
        receivers = self.mailbox.deliver(nodes, payload["snap"], payload["row"])
        if self.timeout:
            return
        if self.synchronous:
            near, k = np.unique(nodes[payload["counted"].astype(bool)], return_counts=True)
            self.pending[near] -= k
            r = receivers[~self.settled[receivers]]
            self._settle(t, r[(self.pending[r] == 0) & (self.waiting[r] == 0)])
            self._end_round_if_done(t)
        else:
            full = receivers[self.mailbox.count[receivers] >= self.degree[receivers]]
            if len(full):
                self.merge_nodes(full)

    def _merge_timeout(self, t, nodes, payload):
        """merge_on=timeout: each node merges what reached it by now (if it is online)."""
        if self.synchronous:
            self._mark_settled(nodes)
        if self.faulty:
            nodes = nodes[self.world.online(nodes, t)]
        nodes = nodes[self.mailbox.count[nodes] > 0]
        if len(nodes):
            self.merge_nodes(nodes)
        if self.synchronous:
            self._end_round_if_done(t)

    def relay_problem(self):
        if not self.synchronous:
            return "the bridge runs gossip in synchronous rounds; use protocol.mode=sync"
        if getattr(self.cfg, "merge_on", "arrived") == "timeout":
            return "the bridge merges once every message arrived; use protocol.merge_on=arrived"
        return None

    def merge_nodes(self, nodes: np.ndarray) -> None:
        """Merge the nodes' buffered models into their own."""
        f = self.fleet
        if type(self).merge is Gossip.merge and self.rule == "mean":
            # the plain rule, in place and block by block (row-wise arithmetic: the same numbers
            # as one call, with no [n, P] temporaries)
            for s in row_blocks(len(nodes), f.params.shape[1], 1 << 20):
                part = nodes[s]
                received, count = self.mailbox.take(part)
                f.set_params(part, gossip_merge_(f.rows(part), received, count, self.cfg.beta))
        else:
            received, count = self.mailbox.take(nodes)
            f.set_params(nodes, self.merge(f.rows(nodes), received, count))
        self.merges += len(nodes)

    def merge(self, own: torch.Tensor, received: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The merge rule: own [n, P] and the inboxes (summed messages [n, width], or with
        receives = "models", the messages [n, k, width], NaN beyond count) -> merged [n, P]."""
        if self.rule == "mean":
            return merge(own, received, count, self.cfg.beta)
        return robust_merge(self.cfg, own, received, count)


def robust_merge(cfg: GossipConfig, own: torch.Tensor, received: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """beta * own + (1 - beta) * RULE(received models), row by row: own [n, P], received
    [n, k, P] (NaN beyond count [n]). Rows with the same count go through the rule together."""
    out = torch.empty_like(own)
    for c in torch.unique(count).tolist():
        sel = count == c
        rows, mine = received[sel, :c], own[sel]
        if cfg.aggregator == "clipped":
            agg = robust.centered_clip(rows, mine, cfg.clip_tau, cfg.clip_iters)
        else:
            agg = robust.aggregate(cfg.aggregator, rows, mine, trim=cfg.trim, byzantine=cfg.byzantine)
        out[sel] = (cfg.beta * mine.double() + (1 - cfg.beta) * agg.double()).to(own.dtype)
    return out
