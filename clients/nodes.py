"""Per-node data and local training over rows of ANY stack.

`NodeData` holds every node's training rows in one tensor sorted by owner (node i's rows are
offsets[i] : offsets[i] + sizes[i]), an optional fixed validation split per node, the compute
speeds, the local-training settings and, for a stream, each node's arrival rate: at simulated
time t node i holds min(sizes[i], floor(rate[i] * t)) rows, the first ones of its range.

Its `sgd` trains any rows (a node's model, archive members, sub-models) on the data of the nodes
named for them, keyed by (seed, key, counter) so that batching never changes a draw. A protocol
that keeps one model per node uses the `Fleet` (clients.fleet) on top of it.

`NodeData(..., only=[i])` keeps node i's rows alone, with global node ids: what a Flower
SuperNode that plays node i needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kernels import BatchedModel, SGDConfig, local_sgd
from kernels.random import derive_seed


FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class TrainConfig:
    """Local training per activation: `local_steps` SGD steps when set, else `local_epochs`
    passes over the node's data, i.e. ceil(local_epochs * n_i / batch_size) steps for a node
    holding n_i rows."""
    lr: float = 0.2
    batch_size: int = 8
    local_steps: int | None = None   # when set, it wins over local_epochs
    local_epochs: float | None = 3.0
    momentum: float = 0.0
    weight_decay: float = 0.0
    reset_momentum: bool = False  # zero a node's momentum whenever it receives a new model

    def __post_init__(self):
        if not 0 < self.lr <= FLOAT32_MAX:  # the kernels take it as a float32
            raise ValueError(f"train.lr must be a finite number > 0 (at most 3.4e38), got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.local_steps is None and self.local_epochs is None:
            raise ValueError("train.local_steps and train.local_epochs are both null; set one, "
                             "e.g. train.local_steps=1")
        if self.local_steps is not None and not 1 <= self.local_steps <= 10**6:
            raise ValueError(f"train.local_steps must be from 1 to 10^6 (per activation) or null, got {self.local_steps}")
        if self.local_epochs is not None and not (0 < self.local_epochs <= 10**4):
            raise ValueError(f"train.local_epochs must be a number in (0, 10^4] or null, got {self.local_epochs}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay <= FLOAT32_MAX:
            raise ValueError(f"train.weight_decay must be a finite number >= 0 (at most 3.4e38), got {self.weight_decay}")

    @property
    def sgd(self) -> SGDConfig:
        return SGDConfig(self.lr, self.momentum, self.weight_decay)

    def steps(self, sizes: np.ndarray) -> np.ndarray:
        """SGD steps per activation for nodes holding `sizes` rows (0 rows: no step)."""
        sizes = np.asarray(sizes)
        if self.local_steps is not None:
            steps = np.full(len(sizes), self.local_steps, dtype=np.int64)
        else:
            steps = np.ceil(self.local_epochs * sizes / self.batch_size).astype(np.int64)
        return np.where(sizes > 0, steps, 0)


class NodeData:
    def __init__(self, model: BatchedModel, X_train: np.ndarray, y_train: np.ndarray,
                 owner: np.ndarray, n: int, speeds: np.ndarray, train: TrainConfig, seed: int, *,
                 val_owner: np.ndarray | None = None, stream_rates: np.ndarray | None = None,
                 only: np.ndarray | None = None, device="cpu"):
        """`model` is what `sgd` trains (template, layout, task); owner[k] is the node of
        training row k (-1: none, e.g. a validation row); val_owner[k] (-1: none) the node whose
        fixed validation split holds row k; `only` keeps the rows of these nodes alone."""
        self.n = n
        self.model = model
        self.device = torch.device(device)
        self.train_cfg = train
        self.seed = seed
        self.speeds = np.asarray(speeds, dtype=np.float64)
        self.stream_rates = None if stream_rates is None else np.asarray(stream_rates, dtype=np.float64)
        self._label_dtype = model.task.label_dtype
        keep = owner >= 0 if only is None else np.isin(owner, only)
        self.sizes_np, self.offsets, self.X, self.y = self._pack(X_train, y_train, owner, keep)
        self.sizes = torch.as_tensor(self.sizes_np, device=self.device)
        self.val_sizes_np = np.zeros(n, np.int64)
        self.val_offsets = self.X_val = self.y_val = None
        if val_owner is not None:
            vkeep = val_owner >= 0 if only is None else np.isin(val_owner, only)
            self.val_sizes_np, self.val_offsets, self.X_val, self.y_val = self._pack(
                X_train, y_train, val_owner, vkeep)
        self._sample_seed = derive_seed(seed, "minibatch")

    def _pack(self, X, y, owner, keep):
        """Rows of kept samples sorted by owner (stable): sizes [n], offsets, X, y on the device."""
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(owner[rows], kind="stable")]
        sizes = np.bincount(owner[rows], minlength=self.n).astype(np.int64)
        offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), device=self.device)
        return (sizes, offsets, torch.as_tensor(X[rows], dtype=torch.float32, device=self.device),
                torch.as_tensor(y[rows], dtype=self._label_dtype, device=self.device))

    def ids(self, nodes) -> torch.Tensor:
        """Node ids as a tensor on the device."""
        return torch.as_tensor(nodes, dtype=torch.long, device=self.device)

    def available(self, nodes: np.ndarray, now=math.inf) -> np.ndarray:
        """Rows each node holds at simulated time `now` (a scalar or one time per node): all of
        them unless the data streams."""
        sizes = self.sizes_np[nodes]
        if self.stream_rates is None:
            return sizes
        now = np.broadcast_to(np.asarray(now, dtype=np.float64), sizes.shape)
        finite = np.isfinite(now)
        arrived = np.floor(self.stream_rates[nodes] * np.where(finite, now, 0.0))
        return np.where(finite, np.minimum(sizes, arrived), sizes).astype(np.int64)

    def steps(self, nodes: np.ndarray, now=math.inf) -> np.ndarray:
        return self.train_cfg.steps(self.available(nodes, now))

    def train_time(self, nodes: np.ndarray, now=math.inf) -> np.ndarray:
        """Simulated seconds a node's local training takes: samples processed / speed."""
        return self.steps(nodes, now) * self.train_cfg.batch_size / self.speeds[nodes]

    def sgd(self, params: torch.Tensor, momentum: torch.Tensor, counters: torch.Tensor,
            nodes: np.ndarray, *, now=math.inf, keys: torch.Tensor | None = None,
            seed: int | None = None) -> torch.Tensor:
        """Local SGD, in place, on rows params[i] (momentum[i], step counter counters[i], all
        advanced) with node nodes[i]'s data as of time `now`. The minibatch stream is keyed by
        (seed, keys[i], counter): keys default to the node ids; a protocol training several rows
        per node gives each its own key (and may pass its own seed). Returns the mean losses."""
        idx = self.ids(nodes)
        avail = self.available(nodes, now)
        return local_sgd(self.model, params, momentum, self.X, self.y, idx if keys is None else keys, counters,
                         self.offsets[idx], torch.as_tensor(avail, device=self.device),
                         torch.as_tensor(self.train_cfg.steps(avail), device=self.device),
                         self.train_cfg.batch_size, self.train_cfg.sgd,
                         self._sample_seed if seed is None else seed)


class Prequential:
    """Test-then-train: before a node trains on rows that arrived since it last trained, its
    current model predicts them. Counts pool over every node and row (task.counts), so the
    metrics are those of one prequential pass over the union of the streams."""

    def __init__(self, data: NodeData, max_elements: int = 1 << 22, per_node: bool = False):
        """`per_node`: also keep each node's own counts (`node_counts` [N, K], on the device)."""
        self.data = data
        self.task = data.model.task
        self.seen = np.zeros(data.n, dtype=np.int64)
        self.total: torch.Tensor | None = None
        self.node_counts: torch.Tensor | None = None
        self.per_node = per_node
        self.max_elements = max_elements

    @torch.no_grad()
    def test(self, params: torch.Tensor, nodes: np.ndarray, now=math.inf) -> None:
        """params[i] is node nodes[i]'s model; tests it on node i's newly arrived rows."""
        d = self.data
        avail = d.available(nodes, now)
        new = avail - self.seen[nodes]
        if new.max(initial=0) <= 0:
            return
        width = int(new.max())
        chunk = max(1, self.max_elements // (width * max(1, d.X.shape[1])))
        slot = torch.arange(width, device=d.device).view(1, -1)
        for a in range(0, len(nodes), chunk):
            sl = slice(a, a + chunk)
            ids = d.ids(nodes[sl])
            first = d.offsets[ids] + torch.as_tensor(self.seen[nodes[sl]], device=d.device)
            count = torch.as_tensor(new[sl], device=d.device).view(-1, 1)
            idx = (first.view(-1, 1) + torch.minimum(slot, (count - 1).clamp(min=0))).clamp(max=len(d.X) - 1)
            counts = self.task.counts(d.model.logits(params[sl], d.X[idx]), d.y[idx], slot < count, per_model=True)
            if self.per_node:
                if self.node_counts is None:
                    self.node_counts = torch.zeros(d.n, counts.shape[1], dtype=torch.float64, device=d.device)
                self.node_counts[ids] += counts
            pooled = counts.sum(0).cpu()
            self.total = pooled if self.total is None else self.total + pooled
        self.seen[nodes] = np.maximum(self.seen[nodes], avail)

    def metrics(self) -> dict[str, float]:
        """{prequential_<metric>: value} pooled so far (NaN before any row was tested)."""
        values = self.task.from_counts(self.total) if self.total is not None else \
            {k: math.nan for k in self.task.metrics}
        return {f"prequential_{k}": v for k, v in values.items()}
