"""iHOMER (Neves et al. 2025), federated: online label-space partitioning for multi-label streams.

Rows stream to the nodes (data.stream_rate); every round each node first predicts the rows
that arrived since it last trained (prequential test-then-train), then trains its sub-models on
what it holds and uploads them, with the count delta of its new rows: n, n_a per label, n_ab
per pair and the labelset-cardinality histogram (never a label vector). The coordinator:

  1. sums the count deltas and runs ONE ODAC over labels (kernels.odac) on the pooled counts,
     so its partition is exactly the one a single stream of the same rows would give;
  2. aggregates the sub-models with sample-weighted FedAvg. The sub-models (kernels.chains:
     per-label heads coupled within each cluster, by stacked probabilities or as a classifier
     chain, `learner`) are packed in one row per node, so with one published partition and the
     same sample weight for every cluster of a node, per-cluster FedAvg is the row-wise FedAvg;
  3. on a new partition (a new version), keeps the clusters that did not change and starts the
     new ones from the per-label heads with zero coupling weights that train `warmup` rounds
     before they count in predictions;
  4. local drift: each node runs river's ADWIN on the loss of each of its clusters (prequential
     rows); when at least `drift_quorum` of the round's nodes flag a cluster, its chain starts
     over (warm-up again). Partition changes are the global drift; both are counted.

Options that make the baselines of the same sweep: `partition=singletons` (binary relevance),
`one` (one cluster: every label coupled with every other), `random` (ODAC's cluster sizes, labels drawn at random),
`mode=local` (no model leaves its node; only counts are pooled). Centralized is `nodes=1`. `mode=decentralized` (the `Decentralized` class) runs it by gossip.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from clients.nodes import Prequential
from kernels.chains import ChainModel
from kernels.odac import LabelCounts, LabelODAC, partition_groups
from kernels.random import derive_seed
from kernels.tasks import Multilabel
from protocols.base import Priority
from protocols.fedavg import FedAvg, FedAvgConfig
from protocols.registry import ProtocolError

PARTITIONS = ("odac", "singletons", "one", "random")
MODES = ("federated", "local", "decentralized")
LEARNERS = ("chain", "stacked")


@dataclass
class IHomerConfig(FedAvgConfig):
    mode: str = "federated"       # federated | local (models never leave their node) | decentralized (gossip)
    partition: str = "odac"       # odac | singletons (binary relevance) | one (a full chain) | random
    learner: str = "stacked"      # stacked: each label also sees its cluster's predicted probabilities |
    #                               chain: a classifier chain per cluster (true labels in training, greedy at prediction)
    period: float = 10.0          # simulated seconds from one round's start to the next (0: at once)
    n_min: int = 200              # pooled instances between two ODAC checks
    delta: float = 0.05           # the Hoeffding bound's delta
    tau: float = 0.1              # ODAC's tie-break
    confirm: int = 2              # consecutive checks a split or merge must hold (hysteresis)
    min_size: Optional[int] = None  # refinement: smaller clusters join a relative (null: the modal cardinality)
    max_size: Optional[int] = None  # refinement never makes a larger cluster (null: no cap)
    drift: bool = True            # ODAC rebuilds when a cluster's mean distance jumps
    warmup: int = 2               # rounds a new cluster's chain trains before it counts
    adwin: bool = True            # local drift: ADWIN on each node's per-cluster loss
    adwin_delta: float = 0.002
    drift_quorum: float = 0.5     # share of a round's nodes that must flag a cluster

    def __post_init__(self):
        super().__post_init__()
        for key, choices in (("mode", MODES), ("partition", PARTITIONS), ("learner", LEARNERS)):
            if getattr(self, key) not in choices:
                raise ValueError(f"protocol.{key} must be one of {', '.join(choices)}; got {getattr(self, key)!r}")
        if not 0 <= self.period < math.inf:
            raise ValueError(f"protocol.period must be a finite number >= 0 (seconds), got {self.period}")
        for key, low in (("n_min", 1), ("confirm", 1), ("warmup", 0)):
            if not low <= getattr(self, key) <= 10**9:
                raise ValueError(f"protocol.{key} must be an integer from {low} to 10^9, got {getattr(self, key)}")
        for key in ("delta", "adwin_delta"):
            if not 0 < getattr(self, key) < 1:
                raise ValueError(f"protocol.{key} must be in (0, 1), got {getattr(self, key)}")
        if not 0 <= self.tau < math.inf:
            raise ValueError(f"protocol.tau must be a finite number >= 0, got {self.tau}")
        if not 0 < self.drift_quorum <= 1:
            raise ValueError(f"protocol.drift_quorum must be in (0, 1], got {self.drift_quorum}")
        for key in ("min_size", "max_size"):
            v = getattr(self, key)
            if v is not None and not 1 <= v <= 10**9:
                raise ValueError(f"protocol.{key} must be an integer >= 1 or null, got {v}")


class IHomer(FedAvg):
    name = "ihomer"
    config = IHomerConfig
    columns = ("clients_dropped", "partition_version", "clusters", "restructures", "odac_rebuilds",
               "local_drifts", "cluster_resets", "warming_labels", "prequential_node_micro_f1_mean",
               "prequential_node_micro_f1_min", "instances", "partition")

    def __new__(cls, cfg, world):
        return super().__new__(Decentralized if cls is IHomer and cfg.mode == "decentralized" else cls)

    @classmethod
    def needs_graph(cls, cfg) -> bool:
        return cfg.mode == "decentralized"

    @classmethod
    def supports_attack(cls, cfg) -> bool:
        return False

    @classmethod
    def supports_faults(cls, cfg) -> bool:
        return False

    @classmethod
    def template(cls, cfg, data):
        if data.task != "multilabel":
            raise ProtocolError(f"protocol=ihomer partitions a label space: it needs multi-label data "
                                f"(data=yeast, label_blocks or synthetic_multilabel), got data={data.name}")
        return ChainModel(data.n_features, data.n_classes, stacked=cfg.learner == "stacked")

    # state
    def init_state(self):
        super().init_state()
        self.chain: ChainModel = self.world.model
        self.n_labels = self.chain.n_labels
        self.fleet.prequential = Prequential(self.fleet.data, per_node=True)
        c = self.cfg
        self.odac = LabelODAC(self.n_labels, n_min=c.n_min, delta=c.delta, tau=c.tau, confirm=c.confirm,
                              min_size=c.min_size, max_size=c.max_size, drift=c.drift)
        self.reported = np.zeros(self.fleet.n, dtype=np.int64)  # rows each node has counted so far
        self.round_counts = LabelCounts.zeros(self.n_labels)
        self.warming = np.zeros(self.n_labels, dtype=np.int64)
        self.version = self.restructures = self.local_drifts = self.cluster_resets = 0
        self._adwin: dict = {}
        self._seen_loss = None  # per-node label-loss sums and rows at the last ADWIN update
        self._flags: dict[tuple, set] = {}   # cluster -> the nodes that flagged it this round
        self._flagged: list[tuple] = []      # (node, cluster) flags this round
        self._reporting: set = set()         # the nodes that reported losses this round
        self._apply(self._target(self.odac), initial=True)

    def _target(self, odac: LabelODAC) -> np.ndarray:
        """The partition to publish for `protocol.partition`, given the ODAC's."""
        L = self.n_labels
        kind = self.cfg.partition
        if kind == "singletons":
            return np.arange(L)
        if kind == "one":
            return np.zeros(L, dtype=np.int64)
        if kind == "random":  # ODAC's cluster sizes, labels shuffled
            sizes = np.bincount(odac.partition)
            perm = np.random.default_rng(derive_seed(self.world.seed, "ihomer-random", odac.version)).permutation(L)
            part = np.empty(L, dtype=np.int64)
            part[perm] = np.repeat(np.arange(len(sizes)), sizes)
            return part
        return odac.partition.copy()

    def _apply(self, part: np.ndarray, initial: bool = False) -> None:
        """Publish a partition: changed clusters start their chains over and warm up."""
        old = None if initial else {tuple(g) for g in partition_groups(self.chain.partition)}
        fresh = [g for g in partition_groups(part) if old is not None and tuple(g) not in old]
        for g in fresh:
            self._reset_chain(g)
        if not initial:
            self.version += 1
            self.restructures += 1
        self.chain.set_partition(part, self.warming > 0)

    def _reset_chain(self, labels: np.ndarray) -> None:
        """Zero the chain terms of these labels (in every model) and warm them up."""
        rows = [self.global_model.unsqueeze(0), self.fleet.params]
        for r in rows:
            self.chain.layout.unflatten(r)["chain"][:, torch.as_tensor(labels, device=r.device)] = 0.0
        self.warming[labels] = self.cfg.warmup

    # rounds
    def models(self):
        return self.fleet.params if self.cfg.mode == "local" else self.global_model.unsqueeze(0)

    def _download(self, t, nodes, payload):
        if self.cfg.mode == "local":  # nothing arrives: train the node's own model
            nodes = nodes[self._current(payload)]
            self.engine.schedule("train_done", t + self.fleet.train_time(nodes, t), nodes, round=self.round, start=t)
            return
        super()._download(t, nodes, payload)

    def _train_done(self, t, nodes, payload):
        super()._train_done(t, nodes, payload)
        if self.cfg.adwin:
            self._local_drift(nodes[self._current(payload)])

    def _upload(self, t, nodes, payload):
        keep = self._current(payload)
        up, start = nodes[keep], payload["start"][keep]
        if len(up):
            avail = self.fleet.data.available(up, start)
            self.round_counts = self.round_counts + LabelCounts.of(self._rows(up, self.reported[up], avail))
            self.reported[up] = np.maximum(self.reported[up], avail)
            self.bytes_sent += len(up) * self.counts_bytes
        super()._upload(t, nodes, payload)

    @property
    def model_bytes(self) -> int:
        """A model on the wire; mode=local moves none (only count deltas travel)."""
        return 0 if self.cfg.mode == "local" else super().model_bytes

    @property
    def counts_bytes(self) -> int:
        L = self.n_labels
        return 8 * (2 * L + 2 + L * (L - 1) // 2)

    def _rows(self, nodes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The label rows [lo_i, hi_i) of each node's stream, all nodes at once (uint8 [m, L])."""
        d = self.fleet.data
        n = np.maximum(hi - lo, 0)
        if n.sum() == 0:
            return np.zeros((0, self.n_labels), dtype=np.uint8)
        first = d.offsets.cpu().numpy()[nodes] + lo
        idx = np.repeat(first - np.cumsum(n) + n, n) + np.arange(n.sum())
        return d.y[torch.as_tensor(idx, device=d.device)].to(torch.uint8).cpu().numpy()

    def _close(self, t):
        self.open = False
        model = self.aggregated() if self.cfg.mode == "federated" else None
        if model is not None:
            self.global_model = model
        self._close_round()
        self.on_round(self.round, t)
        self.engine.schedule("round_start", max(t, self.round * self.cfg.period), -1)

    def _close_round(self) -> None:
        """The coordinator's step at the end of a round, on what the round's uploads brought."""
        flags = {k: len(v) for k, v in self._flags.items()}
        reporting = len(self._reporting)
        self._flags, self._flagged, self._reporting = {}, [], set()
        counts, self.round_counts = self.round_counts, LabelCounts.zeros(self.n_labels)
        self.coordinate(counts, flags, reporting)

    def coordinate(self, counts: LabelCounts, flags: dict[tuple, int], reporting: int) -> None:
        """Pooled count deltas -> ODAC -> maybe a new partition; a cluster flagged by at least
        drift_quorum of the `reporting` nodes starts its chain over; warm-ups tick down.
        (The simulator and the Flower bridge's ServerApp both call this.)"""
        self.warming = np.maximum(self.warming - 1, 0)
        changed = self.odac.update(counts)
        if changed and self.cfg.partition in ("odac", "random"):
            target = self._target(self.odac)
            if not np.array_equal(target, self.chain.partition):
                self._apply(target)
        for cluster, flagged in flags.items():
            if flagged >= self.cfg.drift_quorum * max(1, reporting):
                self.cluster_resets += 1
                self._reset_chain(np.asarray(cluster))
                self._adwin = {k: v for k, v in self._adwin.items() if k[1] != cluster}
        self.chain.set_partition(self.chain.partition, self.warming > 0)

    def _local_drift(self, nodes: np.ndarray, partition: np.ndarray | None = None) -> None:
        """ADWIN per (node, cluster) on the mean loss of the cluster's labels over the rows the
        node predicted since its last update; flags are counted for the coordinator."""
        from river.drift import ADWIN

        pq = self.fleet.prequential
        if pq.node_counts is None or len(nodes) == 0:
            return
        counts = pq.node_counts[self.fleet.data.ids(nodes)].cpu().numpy()
        if self._seen_loss is None:
            self._seen_loss = np.zeros((self.fleet.n, counts.shape[1]))
        delta = counts - self._seen_loss[nodes]
        self._seen_loss[nodes] = counts
        rows = delta[:, -1]
        losses = Multilabel.label_losses(delta)
        groups = partition_groups(self.chain.partition if partition is None else partition)
        self._reporting.update(nodes[rows > 0].tolist())
        for g in groups:
            key = tuple(int(i) for i in g)
            per = losses[:, g].sum(1) / np.maximum(rows * len(g), 1)
            for node, r, value in zip(nodes.tolist(), rows.tolist(), per.tolist()):
                if r <= 0:
                    continue
                det = self._adwin.get((node, key))
                if det is None:
                    det = self._adwin[(node, key)] = ADWIN(delta=self.cfg.adwin_delta, clock=1)  # one value a round: test each
                det.update(value)
                if det.drift_detected:
                    self.local_drifts += 1
                    self._flags.setdefault(key, set()).add(node)
                    self._flagged.append((node, key))

    def extra_metrics(self):
        pq = self.fleet.prequential
        node_f1 = [math.nan]
        if pq.node_counts is not None:
            c = pq.node_counts.cpu()
            L = self.n_labels
            tp, fp, fn = c[:, :L].sum(1), c[:, L:2 * L].sum(1), c[:, 2 * L:3 * L].sum(1)
            seen = c[:, -1] > 0
            den = 2 * tp + fp + fn
            f1 = torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.zeros_like(den))[seen]
            node_f1 = f1.tolist() or node_f1
        return {"clients_dropped": float(self.dropped), "partition_version": self.version,
                "clusters": int(self.chain.partition.max()) + 1, "restructures": self.restructures,
                "odac_rebuilds": self.odac.rebuilds, "local_drifts": self.local_drifts,
                "cluster_resets": self.cluster_resets, "warming_labels": int((self.warming > 0).sum()),
                "prequential_node_micro_f1_mean": float(np.mean(node_f1)),
                "prequential_node_micro_f1_min": float(np.min(node_f1)),
                "instances": int(self.reported.sum()),  # rows streamed, tested and trained on so far
                "partition": " ".join(map(str, self.chain.partition.tolist()))}

    # the Flower bridge's side (bridge/ihomer.py): the simulator's own steps, fed what a node or
    # the ServerApp holds, so both engines run one piece of math

    def node_drift(self, node: int, counts: torch.Tensor, detectors: dict) -> list[tuple]:
        """`_local_drift` at one Flower node: `counts` [4L + 3] are its prequential counts of
        this round's rows (under the partition in self.chain), `detectors` {cluster: ADWIN} its
        own, updated in place. Returns the clusters it flags. Needs no init_state."""
        from types import SimpleNamespace

        n = self.world.n
        pq = SimpleNamespace(node_counts=torch.zeros(n, len(counts), dtype=torch.float64))
        pq.node_counts[node] = counts
        self.fleet = SimpleNamespace(n=n, prequential=pq, data=SimpleNamespace(ids=torch.as_tensor))
        self.chain = self.world.model
        self._seen_loss = np.zeros((n, len(counts)))  # the delta is this round's counts
        self._adwin = {(node, key): det for key, det in detectors.items()}
        self._flags, self._flagged, self._reporting, self.local_drifts = {}, [], set(), 0
        self._local_drift(np.array([node]))
        detectors.clear()
        detectors.update({key: det for (_, key), det in self._adwin.items()})
        return [key for _, key in self._flagged]

    def coordinate_restarts(self, counts: LabelCounts, flags: dict[tuple, int], reporting: int) -> list[tuple]:
        """`coordinate`, and the flagged clusters it started over: every node drops its
        detectors of those (what coordinate does to self._adwin in the simulator)."""
        self._adwin = {(-1, cluster): None for cluster in flags}
        self.coordinate(counts, flags, reporting)
        restarted = [cluster for cluster in flags if (-1, cluster) not in self._adwin]
        self._adwin = {}
        return restarted


class Decentralized(IHomer):
    """iHOMER by gossip, in synchronous rounds over the graph. Each node keeps its own estimate
    of the pooled counts by dynamic average consensus (it adds its own count delta, then mixes
    its neighbours' estimates with Metropolis weights, which keeps the network's sum: N times a
    node's estimate tends to the pooled counts) and runs its own ODAC on it, so partitions may
    differ between nodes for a while. Models merge label by label: a node averages a label's
    head and chain row, sample-weighted, with the neighbours whose cluster of that label is the
    same set of labels as its own. Local drift restarts the flagged cluster at the flagging node.
    Every node's model is evaluated under its own partition."""

    def init_state(self):
        super().init_state()
        n, L = self.fleet.n, self.n_labels
        c = self.cfg
        self.odacs = [LabelODAC(L, n_min=c.n_min, delta=c.delta, tau=c.tau, confirm=c.confirm, min_size=c.min_size,
                                max_size=c.max_size, drift=c.drift) for _ in range(n)]
        self.parts = np.tile(self.chain.partition, (n, 1))       # each node's published partition
        self.node_warming = np.zeros((n, L), dtype=np.int64)
        self.node_versions = np.zeros(n, dtype=np.int64)
        k = LabelCounts.zeros(L).pack().size
        self.estimate = np.zeros((n, k))      # each node's share of the pooled counts (times N: the pool)
        self.fed = np.zeros((n, k))           # what each node's ODAC has been fed
        self.sent_estimate = np.zeros((n, k))
        self.sent = torch.empty_like(self.fleet.params)  # the models of this round's sends
        e = self.world.edges
        self.src, self.dst = e["src"], e["dst"]
        deg = e["degree"]
        self.mix = 1.0 / (1.0 + np.maximum(deg[self.src], deg[self.dst]))   # Metropolis weights
        self.self_mix = 1.0 - np.bincount(self.dst, weights=self.mix, minlength=n)
        self._keys = np.random.default_rng(derive_seed(self.world.seed, "ihomer-keys")).integers(1, 2**62, L)
        lay = self.chain.layout
        # the label each parameter belongs to: a head's row, its bias, a chain row
        owner = [np.repeat(np.arange(L), size // L) for size in lay.sizes]
        self.param_label = torch.as_tensor(np.concatenate(owner), device=self.world.device)

    def bind(self):
        e = self.engine
        e.on("round_start", self._round_start, Priority.ROUND)
        e.on("train_done", self._trained, Priority.TRAINED)
        e.on("merge", self._merge, Priority.RECEIVE)
        self.global_model = self.fleet.params[0].clone()  # unused: kept for the shared reset code
        self.round = 0
        self.dropped = 0

    def start(self):
        self.engine.schedule("round_start", 0.0, -1)

    def models(self):
        return self.fleet.params

    @property
    def message_bytes(self) -> int:
        return self.model_bytes + self.counts_bytes + 8 * self.n_labels

    def _groups(self, nodes: np.ndarray):
        """Nodes sharing a partition and warm-up flags: (partition, warming, their nodes)."""
        key = np.concatenate([self.parts[nodes], self.node_warming[nodes] > 0], 1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        for g in range(len(uniq)):
            yield uniq[g, :self.n_labels], uniq[g, self.n_labels:].astype(bool), nodes[inv.ravel() == g]

    def evaluate(self, rows, nodes=None):
        ids = np.arange(self.fleet.n) if nodes is None else nodes.cpu().numpy()
        out: dict[str, torch.Tensor] = {}
        for part, warm, group in self._groups(ids):
            self.chain.set_partition(part, warm)
            at = torch.as_tensor(np.flatnonzero(np.isin(ids, group)), device=rows.device)
            for k, v in self.world.evaluate(rows[at]).items():
                out.setdefault(k, torch.empty(len(ids), dtype=v.dtype, device=v.device))[at] = v
        return out

    def _round_start(self, t, nodes, payload):
        self.round += 1
        n = self.fleet.n
        everyone = np.arange(n)
        self.start = t
        finish = t + self.fleet.train_time(everyone, t)
        delay = self.world.edges["latency"] + self.message_bytes / self.world.edges["bandwidth"]
        arrive = finish.copy()
        np.maximum.at(arrive, self.dst, finish[self.src] + delay)
        self.waiting = n
        self.engine.schedule("train_done", finish, everyone, round=self.round)
        self.engine.schedule("merge", arrive, everyone, round=self.round)

    def _trained(self, t, nodes, payload):
        for part, warm, group in self._groups(nodes):
            self.chain.set_partition(part, warm)
            self.fleet.train(group, self.start)
            if self.cfg.adwin:
                self._local_drift(group, part)
        if self.cfg.adwin:
            for node, cluster in self._flagged:
                self.cluster_resets += 1
                self._reset_node_chain(node, np.asarray(cluster))
            self._flagged, self._flags, self._reporting = [], {}, set()
        avail = self.fleet.data.available(nodes, self.start)
        self.estimate[nodes] += self._node_counts(nodes, self.reported[nodes], avail)
        self.reported[nodes] = np.maximum(self.reported[nodes], avail)
        self.sent[self.fleet.data.ids(nodes)] = self.fleet.params[self.fleet.data.ids(nodes)]
        self.sent_estimate[nodes] = self.estimate[nodes]
        self.bytes_sent += int(self.world.edges["degree"][nodes].sum()) * self.message_bytes

    def _node_counts(self, nodes, lo, hi) -> np.ndarray:
        """Each node's packed count delta of its rows [lo, hi) [len(nodes), K], at once."""
        L = self.n_labels
        n = np.maximum(hi - lo, 0)
        Y = self._rows(nodes, lo, hi).astype(np.float64)
        owner = np.repeat(np.arange(len(nodes)), n)
        iu = np.triu_indices(L, 1)
        out = np.zeros((len(nodes), self.estimate.shape[1]))
        out[:, 0] = n
        np.add.at(out[:, 1:1 + L], owner, Y)
        np.add.at(out[:, 1 + L:1 + L + len(iu[0])], owner, Y[:, iu[0]] * Y[:, iu[1]])
        np.add.at(out[:, 1 + L + len(iu[0]):], owner, np.eye(L + 1)[Y.sum(1).astype(np.int64)])
        return out

    def _cluster_ids(self, nodes: np.ndarray) -> np.ndarray:
        """[len(nodes), L]: a hash of the SET of labels in each label's cluster at each node."""
        parts = self.parts[nodes]
        sums = np.zeros(parts.shape, dtype=np.int64)
        rows = np.repeat(np.arange(len(nodes)), self.n_labels)
        np.add.at(sums, (rows, parts.ravel()), np.tile(self._keys, len(nodes)))
        return np.take_along_axis(sums, parts, 1)

    def _merge(self, t, nodes, payload):
        d = self.fleet.data
        into = np.isin(self.dst, nodes)
        src, dst = self.src[into], self.dst[into]
        # models, label by label, with the neighbours that hold the same cluster
        cid = self._cluster_ids(np.arange(self.fleet.n))
        agree = torch.as_tensor(cid[src] == cid[dst], device=d.device)            # [E, L]
        w_n = torch.as_tensor(d.available(np.arange(self.fleet.n), self.start), dtype=torch.float64,
                              device=d.device).clamp(min=1.0)
        w = agree[:, self.param_label].double() * w_n[torch.as_tensor(src, device=d.device)].view(-1, 1)
        ids = d.ids(nodes)
        own = w_n[ids].view(-1, 1)
        total = torch.zeros(len(nodes), self.fleet.params.shape[1], dtype=torch.float64, device=d.device)
        weight = own.expand_as(total).clone()
        local = torch.as_tensor(np.searchsorted(nodes, dst), device=d.device)
        total.index_add_(0, local, w * self.sent[torch.as_tensor(src, device=d.device)].double())
        weight.index_add_(0, local, w)
        total += own * self.sent[ids].double()
        self.fleet.set_params(nodes, (total / weight).float())
        # counts: mix the neighbours' estimates (Metropolis), then each node's ODAC
        mixed = self.self_mix[nodes, None] * self.sent_estimate[nodes]
        contrib = self.mix[into, None] * self.sent_estimate[src]
        np.add.at(mixed, np.searchsorted(nodes, dst), contrib)
        self.estimate[nodes] = mixed
        pool = self.fleet.n * mixed
        for i, node in enumerate(nodes.tolist()):
            delta = LabelCounts.unpack(pool[i] - self.fed[node], self.n_labels)
            self.fed[node] = pool[i]
            if self.odacs[node].update(delta) and self.cfg.partition in ("odac", "random"):
                self._publish_node(node)
        self.waiting -= len(nodes)
        if self.waiting == 0:
            self.node_warming = np.maximum(self.node_warming - 1, 0)
            self.chain.set_partition(self.parts[0], self.node_warming[0] > 0)
            self.on_round(self.round, t)
            self.engine.schedule("round_start", max(t, self.round * self.cfg.period), -1)

    def _publish_node(self, node: int) -> None:
        odac = self.odacs[node]
        target = self._target(odac)
        old = {tuple(g) for g in partition_groups(self.parts[node])}
        if np.array_equal(target, self.parts[node]):
            return
        for g in partition_groups(target):
            if tuple(g) not in old:
                self._reset_node_chain(node, g)
        self.parts[node] = target
        self.node_versions[node] += 1
        self.restructures += 1

    def _reset_node_chain(self, node: int, labels: np.ndarray) -> None:
        view = self.chain.layout.unflatten(self.fleet.params)["chain"]
        view[node, torch.as_tensor(labels, device=view.device)] = 0.0
        self.node_warming[node, labels] = self.cfg.warmup

    def extra_metrics(self):
        out = super().extra_metrics()
        versions = self.node_versions
        out.update({"partition_version": float(versions.mean()), "clusters": float(self.parts.max(1).mean() + 1),
                    "odac_rebuilds": float(np.mean([o.rebuilds for o in self.odacs])),
                    "warming_labels": float((self.node_warming > 0).sum(1).mean()),
                    "partition": " ".join(map(str, self.parts[0].tolist()))})
        return out
