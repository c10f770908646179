"""The Fleet: the default protocol state, one model per node.

Parameters and optimizer momentum are [N, P] stacks, with a local step counter and the last
training loss per node; training runs on the nodes' own data (clients.nodes.NodeData) in one
kernel call for any set of nodes. The parameter stack may be kept in a 16-bit dtype
(`storage`, sim.storage) to halve its memory: training, merging and evaluation read float32
copies (`rows`), and every write rounds back to the storage dtype. A protocol that keeps
other state (an archive, sub-models, models at a coordinator) trains its rows with
`NodeData.sgd` directly.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from clients.nodes import NodeData, Prequential
from kernels import row_blocks


class Fleet:
    def __init__(self, data: NodeData, initial: torch.Tensor, *, prequential: bool = False,
                 storage: torch.dtype = torch.float32):
        """`initial` [N, P]: every node's first model (the Fleet owns it from now on)."""
        self.data = data
        self.n = data.n
        self.device = data.device
        self.train_cfg = data.train_cfg
        self.params = initial.to(self.device, storage)
        # no momentum buffer without momentum (SGD never reads it): one [N, P] copy less
        p = self.params.shape[1]
        self.momentum = torch.zeros(self.n, p if self.train_cfg.momentum else 0, device=self.device)
        self.step_counter = torch.zeros(self.n, dtype=torch.long, device=self.device)
        self.last_loss = torch.full((self.n,), float("nan"), dtype=torch.float64, device=self.device)
        self.prequential = Prequential(data) if prequential else None

    def train_time(self, nodes: np.ndarray, now=math.inf) -> np.ndarray:
        return self.data.train_time(nodes, now)

    def rows(self, nodes: np.ndarray) -> torch.Tensor:
        """The nodes' models, a float32 copy [n, P] (whatever the storage dtype; a 16-bit stack
        is upcast block by block into the copy, with no 16-bit copy of it all on the way)."""
        idx = self.data.ids(nodes)
        if self.params.dtype == torch.float32:
            return self.params[idx]
        out = torch.empty(len(idx), self.params.shape[1], device=self.device)
        for s in row_blocks(len(idx), self.params.shape[1], 1 << 22):
            out[s] = self.params[idx[s]]
        return out

    def train(self, nodes: np.ndarray, now=math.inf) -> torch.Tensor:
        """Local SGD on the given nodes' own data (the rows that had arrived at `now`, a time or
        one per node: when each began training), all in one batched call (with 16-bit storage:
        in blocks of nodes, each upcast, trained and rounded back). Returns each node's mean
        training loss (also kept in `last_loss`)."""
        blocks = row_blocks(len(nodes), self.params.shape[1], 1 << 22)
        if self.params.dtype != torch.float32 and len(blocks) > 1:
            return torch.cat([self._train(nodes[s], now[s] if np.ndim(now) else now) for s in blocks])
        return self._train(nodes, now)

    def _train(self, nodes: np.ndarray, now) -> torch.Tensor:
        idx = self.data.ids(nodes)
        whole = (self.params.dtype == torch.float32 and len(nodes) == self.n
                 and bool(np.all(nodes == np.arange(self.n))))
        params = self.params if whole else self.params[idx].float()
        mom = self.momentum if whole else self.momentum[idx]
        if self.prequential is not None:
            self.prequential.test(params, nodes, now)
        counter = self.step_counter[idx]
        losses = self.data.sgd(params, mom, counter, nodes, now=now)
        self.step_counter[idx] = counter
        self.last_loss[idx] = losses
        if not whole:
            self.params[idx] = params.to(self.params.dtype)
            self.momentum[idx] = mom
        return losses

    def set_params(self, nodes: np.ndarray, rows: torch.Tensor, *, reset_momentum: bool | None = None) -> None:
        """Replace the nodes' models (a received or merged model); momentum is zeroed when
        `reset_momentum` (default: train.reset_momentum)."""
        idx = self.data.ids(nodes)
        self.params[idx] = rows.to(self.params.dtype)
        if self.train_cfg.reset_momentum if reset_momentum is None else reset_momentum:
            self.momentum[idx] = 0.0

    def train_loss(self) -> float:
        """Mean over nodes of the last training loss (NaN before any training)."""
        return float(self.last_loss.nanmean())

    def prequential_metrics(self) -> dict[str, float]:
        """The pooled prequential columns ({} unless task.prequential)."""
        return self.prequential.metrics() if self.prequential is not None else {}
