"""The Fleet: every node's state as one batched object.

Parameters and optimizer momentum are [N, P] stacks; training data lives in one tensor sorted
by owner, node i holding rows offsets[i] : offsets[i] + sizes[i]. Methods take arrays of node
ids and act on all of them in one kernel call.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kernels import BatchedModel, SGDConfig, init_stack, local_sgd
from kernels.random import derive_seed


@dataclass(frozen=True)
class TrainConfig:
    """Local training: `local_steps` SGD steps per activation, or, when `local_epochs` is set,
    ceil(local_epochs * n_i / batch_size) steps for a node holding n_i samples."""
    lr: float = 0.1
    batch_size: int = 8
    local_steps: int = 1
    local_epochs: float | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    reset_momentum: bool = False  # zero a node's momentum whenever it receives a new model

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.local_steps < 1:
            raise ValueError(f"train.local_steps must be >= 1, got {self.local_steps}")
        if self.local_epochs is not None and self.local_epochs <= 0:
            raise ValueError(f"train.local_epochs must be > 0 or null, got {self.local_epochs}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")

    @property
    def sgd(self) -> SGDConfig:
        return SGDConfig(self.lr, self.momentum, self.weight_decay)


def local_steps(train: TrainConfig, sizes: np.ndarray) -> np.ndarray:
    """SGD steps per activation for nodes holding `sizes` samples."""
    if train.local_epochs is None:
        return np.full(len(sizes), train.local_steps, dtype=np.int64)
    return np.ceil(train.local_epochs * np.asarray(sizes) / train.batch_size).astype(np.int64)


class Fleet:
    def __init__(self, module: nn.Module, X_train: np.ndarray, y_train: np.ndarray,
                 owner: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, speeds: np.ndarray,
                 train: TrainConfig, seed: int, *, independent_init: bool = True, device="cpu"):
        n = len(speeds)
        self.n = n
        self.device = torch.device(device)
        self.train_cfg = train
        self.seed = seed
        self.model = BatchedModel(module.to(self.device))
        self.layout = self.model.layout
        self.params = init_stack(module, self.layout, n, derive_seed(seed, "init"),
                                 independent=independent_init, device=self.device)
        self.momentum = torch.zeros_like(self.params)
        order = np.argsort(owner, kind="stable")
        self.sizes_np = np.bincount(owner, minlength=n).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.sizes_np)[:-1]])
        self.X = torch.as_tensor(X_train[order], dtype=torch.float32, device=self.device)
        self.y = torch.as_tensor(y_train[order], dtype=torch.long, device=self.device)
        self.offsets = torch.as_tensor(offsets, device=self.device)
        self.sizes = torch.as_tensor(self.sizes_np, device=self.device)
        self.X_test = torch.as_tensor(X_test, dtype=torch.float32, device=self.device)
        self.y_test = torch.as_tensor(y_test, dtype=torch.long, device=self.device)
        self.speeds = np.asarray(speeds, dtype=np.float64)
        self.step_counter = torch.zeros(n, dtype=torch.long, device=self.device)
        self.last_loss = torch.full((n,), float("nan"), dtype=torch.float64, device=self.device)
        self.steps_np = local_steps(train, self.sizes_np)
        self._sample_seed = derive_seed(seed, "minibatch")

    @property
    def model_bytes(self) -> int:
        """Bytes of one model on the wire (float32 parameters)."""
        return self.layout.size * 4

    def train_time(self, nodes: np.ndarray) -> np.ndarray:
        """Simulated seconds a node's local training takes: samples processed / speed."""
        return self.steps_np[nodes] * self.train_cfg.batch_size / self.speeds[nodes]

    def _ids(self, nodes: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(nodes, dtype=torch.long, device=self.device)

    def train(self, nodes: np.ndarray) -> torch.Tensor:
        """Local SGD on the given nodes' own data, all in one batched call. Returns each
        node's mean training loss (also kept in `last_loss`)."""
        idx = self._ids(nodes)
        whole = len(nodes) == self.n and bool(np.all(nodes == np.arange(self.n)))
        params = self.params if whole else self.params[idx]
        mom = self.momentum if whole else self.momentum[idx]
        counter = self.step_counter[idx]
        losses = local_sgd(self.model, params, mom, self.X, self.y, idx, counter,
                           self.offsets[idx], self.sizes[idx],
                           torch.as_tensor(self.steps_np[nodes], device=self.device),
                           self.train_cfg.batch_size, self.train_cfg.sgd, self._sample_seed)
        self.step_counter[idx] = counter
        self.last_loss[idx] = losses
        if not whole:
            self.params[idx] = params
            self.momentum[idx] = mom
        return losses

    def set_params(self, nodes: np.ndarray, rows: torch.Tensor, *, reset_momentum: bool | None = None) -> None:
        """Replace the nodes' models (a received or merged model); momentum is zeroed when
        `reset_momentum` (default: train.reset_momentum)."""
        idx = self._ids(nodes)
        self.params[idx] = rows
        if self.train_cfg.reset_momentum if reset_momentum is None else reset_momentum:
            self.momentum[idx] = 0.0

    def evaluate(self, rows: torch.Tensor, max_test: int | None = None):
        """Accuracy and loss of each given model row on the held-out test set."""
        X, y = self.X_test, self.y_test
        if max_test is not None and len(y) > max_test:
            X, y = X[:max_test], y[:max_test]
        return self.model.evaluate(rows, X, y)
