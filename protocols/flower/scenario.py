"""One config for both worlds: the simulator's scenario, as the bridge's server and nodes see it.

A Flower run carries the scenario as one run-config string, the Hydra overrides `murmur` takes
(`"protocol=gossip topology=ring nodes=4"`). Every process composes it with the simulator's own
`compose` and `RunConfig`, and rebuilds what it needs with the simulator's builders and seeds:
node `partition-id` i gets the simulator's node i (same partition, same initial model row, same
minibatch stream, same topology vertex).
"""
from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

import networkx as nx
import numpy as np
import torch

from clients.datasets import Dataset
from clients.fleet import local_steps
from kernels import BatchedModel, init_stack, local_sgd
from kernels.random import derive_seed
from protocols import PROTOCOLS
from simulator.config import ConfigError, RunConfig
from simulator.run import build_graph_for, build_model, compose, load_partitioned

# The bridge's run config; pyproject's [tool.flwr.app.config] lists the same keys and defaults
# (`flwr run` only accepts overrides of keys listed there; run_simulation passes none).
SETTINGS: dict[str, Any] = {
    "overrides": "",          # the scenario: space-separated Hydra overrides, as for `murmur`
    "round-timeout": 120.0,   # seconds to wait for replies each round
    "connect-timeout": 120.0,  # seconds to wait for every scenario node to connect
    "out-dir": "",            # where the ServerApp writes final models and metrics ("" = nowhere)
}


def settings(run_config: Mapping[str, Any], fixed: Mapping[str, Any] | None = None) -> dict:
    """SETTINGS, updated by the run's config, then by `fixed` (what an app factory was given)."""
    out = dict(SETTINGS)
    out.update({k: v for k, v in run_config.items() if k in SETTINGS})
    unknown = sorted(set(fixed or {}) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown bridge setting {unknown[0]!r}; valid: {', '.join(SETTINGS)}")
    out.update(fixed or {})
    return out


@dataclass(frozen=True)
class Scenario:
    """The parts of one simulator run that a Flower process needs (treat as read-only)."""
    overrides: str
    cfg: RunConfig
    data: Dataset
    owner: np.ndarray        # owner[k] = the node holding training sample k
    model: BatchedModel      # the model template and its row layout
    graph: nx.Graph | None   # the topology (None for star protocols such as fedavg)

    @property
    def layout(self):
        return self.model.layout

    @property
    def independent_init(self) -> bool:
        return getattr(self.cfg.protocol, "init", "shared") == "independent"  # as simulator.run

    def check_partition(self, node_config: Mapping[str, Any]) -> int:
        """The node's partition id (its simulator node id), checked against the scenario."""
        if "partition-id" not in node_config:
            raise ConfigError("this SuperNode has no partition-id; start it with "
                              "--node-config 'partition-id=<i>' (i in 0..nodes-1)")
        pid = int(node_config["partition-id"])
        n = self.cfg.nodes
        if "num-partitions" in node_config and int(node_config["num-partitions"]) != n:
            raise ConfigError(f"this SuperNode has num-partitions={node_config['num-partitions']} "
                              f"but the scenario has nodes={n}")
        if not 0 <= pid < n:
            raise ConfigError(f"partition-id {pid} is outside the scenario's nodes 0..{n - 1}")
        return pid

    def shard(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Node pid's training data, in the order the Fleet keeps it (stable sort by owner)."""
        rows = np.flatnonzero(self.owner == pid)
        return (torch.as_tensor(self.data.X_train[rows], dtype=torch.float32),
                torch.as_tensor(self.data.y_train[rows], dtype=torch.long))

    def n_samples(self, pid: int) -> int:
        return int(np.count_nonzero(self.owner == pid))

    def steps(self, n_samples: int) -> int:
        """Local SGD steps per activation for a node holding n_samples (as the Fleet counts)."""
        return int(local_steps(self.cfg.train, np.array([n_samples]))[0])

    def initial_row(self, pid: int) -> torch.Tensor:
        """Node pid's initial model [P] (row pid of the simulator's stack; row 0 when shared)."""
        rows = pid + 1 if self.independent_init else 1  # row i of init_stack does not depend on n
        stack = init_stack(self.model.module, self.layout, rows, derive_seed(self.cfg.seed, "init"),
                           independent=self.independent_init)
        return stack[-1]

    def train(self, pid: int, row: torch.Tensor, momentum: torch.Tensor, counter: int):
        """Node pid's local SGD from `row` with the simulator's kernel and minibatch stream.

        Returns (row, momentum, counter, mean loss, number of samples); the inputs are not changed.
        """
        X, y = self.shard(pid)
        params, buf = row.detach().clone().view(1, -1), momentum.detach().clone().view(1, -1)
        step = torch.tensor([counter])
        t = self.cfg.train
        loss = local_sgd(self.model, params, buf, X, y, torch.tensor([pid]), step, torch.tensor([0]),
                         torch.tensor([len(y)]), torch.tensor([self.steps(len(y))]), t.batch_size,
                         t.sgd, derive_seed(self.cfg.seed, "minibatch"))
        return params[0], buf[0], int(step[0]), float(loss[0]), len(y)

    def evaluate(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy and loss of each row [k, P] on the held-out test set (as the simulator)."""
        m = self.cfg.eval.max_test
        X = torch.as_tensor(self.data.X_test[:m], dtype=torch.float32)
        y = torch.as_tensor(self.data.y_test[:m], dtype=torch.long)
        return self.model.evaluate(rows, X, y)


@functools.lru_cache(maxsize=8)
def load(overrides: str) -> Scenario:
    """The scenario for one overrides string (cached: a process handles many messages)."""
    cfg = RunConfig.from_mapping(compose(shlex.split(overrides)))
    torch.manual_seed(derive_seed(cfg.seed, "torch"))  # as simulator.run, before the template is built
    data, owner = load_partitioned(cfg)
    graph = build_graph_for(cfg, None) if PROTOCOLS[cfg.protocol_name][0].uses_graph else None
    return Scenario(overrides, cfg, data, owner, BatchedModel(build_model(cfg, data)), graph)
