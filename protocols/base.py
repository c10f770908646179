"""What every protocol shares: the context it is bound to and the round clock.

A protocol has two halves. Its math (aggregate, merge) is pure functions of tensors at module
level, batch-size agnostic: the simulator calls them on thousands of rows, the Flower bridge
on one. Its orchestration is a `Protocol` subclass whose event handlers the engine calls with
waves of node ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from clients.fleet import Fleet


@dataclass
class Context:
    """What the simulator hands a protocol."""
    fleet: Fleet
    edges: dict[str, np.ndarray]      # topologies.edge_arrays of the graph
    server_latency: np.ndarray        # [N] seconds, each client's link to a server (star protocols)
    server_bandwidth: np.ndarray      # [N] bytes/s
    engine: object                    # simulator.engine.Engine: schedule(), on(), stop(), now
    seed: int
    on_round: Callable[[int, float], None]  # called when round r ends at simulated time t


class Protocol:
    """Base class: subclasses set `name`, register handlers in `bind` and start in `start`."""
    name = ""
    independent_init = False  # does every node start from its own random model?
    uses_graph = True         # False: clients talk only to a server (its links: Context.server_*)

    def __init__(self, cfg, ctx: Context):
        self.cfg = cfg
        self.ctx = ctx
        self.fleet = ctx.fleet
        self.engine = ctx.engine
        self.bytes_sent = 0
        self.bind()

    def bind(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def models(self) -> torch.Tensor:
        """The models to evaluate, one row each (all nodes; FedAvg: the global model)."""
        return self.fleet.params

    def extra_metrics(self) -> dict[str, float]:
        """Protocol-specific columns for metrics.csv."""
        return {}

    def start_clock(self, round_time: float) -> None:
        """Asynchronous protocols: a round is `round_time` simulated seconds."""
        self._round_time = round_time
        self._tick = 0
        self.engine.on("tick", self._on_tick, priority=1000)
        self.engine.schedule("tick", round_time, -1)

    def _on_tick(self, t: float, nodes: np.ndarray, payload: dict) -> None:
        self._tick += 1
        self.engine.schedule("tick", (self._tick + 1) * self._round_time, -1)
        self.ctx.on_round(self._tick, t)
