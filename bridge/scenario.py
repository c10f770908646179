"""One config for both engines: the scenario as the bridge's server and nodes see it.

A Flower run carries the scenario as one run-config string, the Hydra overrides `murmur` takes
(`"protocol=gossip topology=ring nodes=4"`). Every process resolves it and builds the World
with the very assembly the simulator uses (scenarios.assemble), so node `partition-id` i is the
simulator's node i: same data rows, same initial model row, same minibatch stream, same
topology vertex. A node trains with the simulator's kernels (clients.nodes.NodeData keeps its
rows alone) and merges with its protocol's own merge rule.
"""
from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from scenarios import ConfigError, World, assemble, resolve

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


@dataclass(eq=False)
class Scenario:
    """The World of one overrides string and its protocol, as a Flower process uses them."""
    overrides: str
    world: World

    @property
    def cfg(self):
        return self.world.cfg

    @property
    def layout(self):
        return self.world.layout

    @property
    def graph(self):
        return self.world.graph

    @functools.cached_property
    def protocol(self):
        """The protocol (its config and math; no engine): its merge rule is what nodes apply."""
        return self.world.protocol()

    @property
    def independent_init(self) -> bool:
        return self.world.protocol_class.independent_init(self.cfg.protocol)

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

    @functools.lru_cache(maxsize=4)
    def node(self, pid: int):
        """Node pid's data alone (clients.nodes.NodeData), on the scenario's device."""
        return self.world.node_data(only=[pid])

    def n_samples(self, pid: int) -> int:
        return int(self.node(pid).sizes_np[pid])

    def initial_row(self, pid: int) -> torch.Tensor:
        """Node pid's initial model [P] (row pid of the simulator's stack; row 0 when shared)."""
        return self.world.initial_row(pid, self.independent_init)

    def train(self, pid: int, row: torch.Tensor, momentum: torch.Tensor, counter: int):
        """Node pid's local SGD from `row` with the simulator's kernel and minibatch stream.

        Returns (row, momentum, counter, mean loss, number of samples); the inputs are not changed.
        """
        params, buf = row.detach().clone().view(1, -1), momentum.detach().clone().view(1, -1)
        step = torch.tensor([counter])
        loss = self.node(pid).sgd(params, buf, step, [pid])
        return params[0], buf[0], int(step[0]), float(loss[0]), self.n_samples(pid)

    def evaluate(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The task's metrics of each row [k, P] on the held-out test set (as the simulator)."""
        return self.world.evaluate(rows)


@functools.lru_cache(maxsize=8)
def load(overrides: str) -> Scenario:
    """The scenario for one overrides string (cached: a process handles many messages)."""
    return Scenario(overrides, assemble(resolve(overrides=shlex.split(overrides))))
