"""FedAvg (McMahan et al. 2017): a server samples clients, they train, it takes the
sample-weighted mean of what comes back before the deadline."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kernels import weighted_mean
from kernels.random import derive_seed
from protocols.base import Priority, Protocol, ProtocolConfig


def aggregate(rows: torch.Tensor, num_examples: torch.Tensor) -> torch.Tensor:
    """FedAvg's aggregate: sum_k n_k w_k / sum_k n_k over [k, P] rows -> [P]."""
    return weighted_mean(rows, num_examples)


@dataclass
class FedAvgConfig(ProtocolConfig):
    fraction: float = 1.0          # share of clients sampled each round
    deadline: float | None = None  # seconds after round start; later uploads are dropped

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"protocol.fraction must be in (0, 1], got {self.fraction}")
        if self.deadline is not None and not 0 < self.deadline < math.inf:
            raise ValueError(f"protocol.deadline must be a finite number > 0 or null, got {self.deadline}")


class FedAvg(Protocol):
    """Events of round r: download (model reaches client) -> train_done -> upload (reaches
    server). The round ends when every selected client's upload arrived, or at the deadline.
    Uploads are summed as they arrive, so the server holds one running weighted sum."""
    name = "fedavg"
    config = FedAvgConfig
    uses_graph = False
    columns = ("clients_dropped",)

    def bind(self):
        e = self.engine
        e.on("round_start", self._round_start, Priority.ROUND)
        e.on("download", self._download, Priority.DISPATCH)
        e.on("train_done", self._train_done, Priority.TRAINED)
        e.on("upload", self._upload, Priority.RECEIVE)
        e.on("deadline", self._deadline, Priority.DEADLINE)
        self.global_model = self.fleet.params[0].clone()
        self.round = 0
        self.dropped = 0

    def start(self):
        self.engine.schedule("round_start", 0.0, -1)

    def models(self):
        return self.global_model.unsqueeze(0)

    def extra_metrics(self):
        return {"clients_dropped": float(self.dropped)}

    def _delay(self, nodes):
        return self.world.server_delay(nodes, self.model_bytes)

    def _round_start(self, t, nodes, payload):
        self.round += 1
        n = self.fleet.n
        k = max(1, int(round(self.cfg.fraction * n)))
        rng = np.random.default_rng(derive_seed(self.world.seed, "fedavg-select", self.round))
        self.selected = np.sort(rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)
        self.expected = len(self.selected)
        self.received = 0
        self.sum = torch.zeros_like(self.global_model, dtype=torch.float64)
        self.weight = 0.0
        self.open = True
        self.bytes_sent += k * self.model_bytes
        self.engine.schedule("download", t + self._delay(self.selected), self.selected, round=self.round)
        if self.cfg.deadline is not None:
            self.engine.schedule("deadline", t + self.cfg.deadline, -1, round=self.round)

    def _current(self, payload):
        """Which events of a wave belong to the open round (late ones from closed rounds don't)."""
        return (payload["round"] == self.round) & self.open

    def _download(self, t, nodes, payload):
        nodes = nodes[self._current(payload)]
        # a client's optimizer lives for one round: momentum starts at zero each download
        self.fleet.set_params(nodes, self.global_model.expand(len(nodes), -1), reset_momentum=True)
        self.engine.schedule("train_done", t + self.fleet.train_time(nodes, t), nodes, round=self.round, start=t)

    def _train_done(self, t, nodes, payload):
        keep = self._current(payload)
        nodes, start = nodes[keep], payload["start"][keep]
        self.fleet.train(nodes, start)  # a client trains on the rows it held when training began
        self.bytes_sent += len(nodes) * self.model_bytes
        self.engine.schedule("upload", t + self._delay(nodes), nodes, round=self.round, start=start)

    def _upload(self, t, nodes, payload):
        keep = self._current(payload)
        nodes, start = nodes[keep], payload["start"][keep]
        if len(nodes) == 0:
            return
        # weighted by the rows each client trained on
        w = torch.as_tensor(self.fleet.data.available(nodes, start), dtype=torch.float64, device=self.fleet.device)
        self.sum += w @ self.fleet.params[torch.as_tensor(nodes, device=self.fleet.device)].double()
        self.weight += float(w.sum())
        self.received += len(nodes)
        if self.received == self.expected:
            self._close(t)

    def _deadline(self, t, nodes, payload):
        if self.open and payload["round"][0] == self.round:
            self.dropped += self.expected - self.received
            self._close(t)

    def _close(self, t):
        self.open = False
        if self.weight > 0:  # nobody made the deadline: keep the old model
            self.global_model = (self.sum / self.weight).to(self.global_model.dtype)
        self.on_round(self.round, t)
        self.engine.schedule("round_start", t, -1)
