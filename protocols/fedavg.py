"""FedAvg (McMahan et al. 2017): a server samples clients, they train, it takes the
sample-weighted mean of what comes back before the deadline."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kernels import robust, weighted_mean
from kernels.random import derive_seed
from protocols.base import Priority, Protocol, ProtocolConfig


def aggregate(rows: torch.Tensor, num_examples: torch.Tensor) -> torch.Tensor:
    """FedAvg's aggregate: sum_k n_k w_k / sum_k n_k over [k, P] rows -> [P]."""
    return weighted_mean(rows, num_examples)


@dataclass
class FedAvgConfig(ProtocolConfig):
    fraction: float = 1.0          # share of clients sampled each round
    deadline: float | None = None  # seconds after round start; later uploads are dropped
    aggregator: str = "mean"       # mean (sample-weighted) | median | trimmed_mean | krum | multi_krum | centered_clip
    trim: float = 0.1              # trimmed_mean: share dropped at each end
    byzantine: float = 0.2         # krum, multi_krum: the share of a round's uploads assumed Byzantine (f)
    clip_tau: float = 1.0          # centered_clip: the clipping radius
    clip_iters: int = 1            # centered_clip: iterations from the last global model

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"protocol.fraction must be in (0, 1], got {self.fraction}")
        if self.deadline is not None and not 0 < self.deadline < math.inf:
            raise ValueError(f"protocol.deadline must be a finite number > 0 or null, got {self.deadline}")
        check_robust_options(self, robust.RULES)


def check_robust_options(cfg, rules) -> None:
    """The robust-aggregation options a FedAvg or gossip config shares (ValueError naming the key)."""
    if cfg.aggregator not in rules:
        raise ValueError(f"protocol.aggregator must be one of {', '.join(rules)}, got {cfg.aggregator!r}")
    if not 0 <= cfg.trim < 0.5:
        raise ValueError(f"protocol.trim must be in [0, 0.5), got {cfg.trim}")
    if not 0 <= cfg.byzantine < 0.5:
        raise ValueError(f"protocol.byzantine must be in [0, 0.5), got {cfg.byzantine}")
    if not 0 < cfg.clip_tau < math.inf:
        raise ValueError(f"protocol.clip_tau must be a finite number > 0, got {cfg.clip_tau}")
    if not 1 <= cfg.clip_iters <= 1000:
        raise ValueError(f"protocol.clip_iters must be an integer from 1 to 1000, got {cfg.clip_iters}")


def robust_aggregate(cfg: FedAvgConfig, rows: torch.Tensor, num_examples: torch.Tensor,
                     global_model: torch.Tensor) -> torch.Tensor:
    """The round's new global model by `cfg.aggregator` from the uploads [k, P] (sorted by node,
    so that both engines see the same order): FedAvg's weighted mean or a robust rule."""
    if cfg.aggregator == "mean":
        return aggregate(rows.double(), num_examples).to(rows.dtype)
    return robust.aggregate(cfg.aggregator, rows, global_model, trim=cfg.trim, byzantine=cfg.byzantine,
                            tau=cfg.clip_tau, iters=cfg.clip_iters)


class FedAvg(Protocol):
    """Events of round r: download (model reaches client) -> train_done -> upload (reaches
    server). The round ends when every selected client's upload arrived or dropped out, or at
    the deadline. Uploads are summed as they arrive, so the server holds one running weighted sum.

    Faults: the server samples among the clients online at the round start (none online: the
    round waits for the first to come back). A client drops out when its download or upload is
    lost (topology.loss), when its download reaches it offline, or when it goes offline before
    its training ends (`dropouts`)."""
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
        e.on("lost", self._lost, Priority.RECEIVE)
        self.global_model = self.fleet.params[0].clone()
        self.round = 0
        self.dropped = 0

    def start(self):
        self.engine.schedule("round_start", 0.0, -1)

    def models(self):
        return self.global_model.unsqueeze(0)

    def extra_metrics(self):
        return {"clients_dropped": float(self.dropped)}

    def _round_start(self, t, nodes, payload):
        everyone = np.arange(self.fleet.n)
        pool = everyone[self.world.online(everyone, t)]  # the clients online now
        if len(pool) == 0:  # nobody online: the round starts when someone is back
            back = float(self.world.next_online(everyone, t).min())
            if math.isfinite(back):
                self.engine.schedule("round_start", back, -1)
            return
        k = min(max(1, int(round(self.cfg.fraction * len(everyone)))), len(pool))
        self.round += 1
        rng = np.random.default_rng(derive_seed(self.world.seed, "fedavg-select", self.round))
        self.selected = np.sort(rng.choice(pool, size=k, replace=False)) if k < len(pool) else pool
        self.outstanding = len(self.selected)  # selected clients neither arrived nor dropped out
        self.sum = torch.zeros_like(self.global_model, dtype=torch.float64)
        self.kept: list = []  # (nodes, rows, weights) of each upload wave, when the rule needs them
        self.weight = 0.0
        self.open = True
        self.bytes_sent += len(self.selected) * self.model_bytes
        self.server_message("download", t, self.selected, 2 * self.round, round=self.round)
        if self.cfg.deadline is not None:
            self.engine.schedule("deadline", t + self.cfg.deadline, -1, round=self.round)

    def _current(self, payload):
        """Which events of a wave belong to the open round (late ones from closed rounds don't)."""
        return (payload["round"] == self.round) & self.open

    def _lost(self, t, nodes, payload):
        """Downloads and uploads of the open round that were lost: those clients drop out."""
        self._drop_out(t, int(self._current(payload).sum()))

    def _drop_out(self, t: float, k: int) -> None:
        if k:
            self.dropouts += k
            self.outstanding -= k
            if self.outstanding == 0 and self.open:
                self._close(t)

    def _download(self, t, nodes, payload):
        nodes = nodes[self._current(payload)]
        # a client's optimizer lives for one round: momentum starts at zero each download
        self.fleet.set_params(nodes, self.global_model.expand(len(nodes), -1), reset_momentum=True)
        self.engine.schedule("train_done", t + self.fleet.train_time(nodes, t), nodes, round=self.round, start=t)

    def _train_done(self, t, nodes, payload):
        keep = self._current(payload)
        nodes, start = nodes[keep], payload["start"][keep]
        if self.world.availability is not None:  # offline before training ended: a dropout
            stayed = self.world.online_through(nodes, start, t)
            nodes, start = nodes[stayed], start[stayed]
            self._drop_out(t, int((~stayed).sum()))
        self.fleet.train(nodes, start)  # a client trains on the rows it held when training began
        self.bytes_sent += len(nodes) * self.model_bytes
        self.server_message("upload", t, nodes, 2 * self.round + 1, round=self.round, start=start)

    def _upload(self, t, nodes, payload):
        keep = self._current(payload)
        nodes, start = nodes[keep], payload["start"][keep]
        if len(nodes) == 0:
            return
        # weighted by the rows each client trained on
        w = torch.as_tensor(self.fleet.data.available(nodes, start), dtype=torch.float64, device=self.fleet.device)
        rows = self.fleet.params[torch.as_tensor(nodes, device=self.fleet.device)]
        if self._keeps_rows:  # a robust rule or an attack needs every upload of the round
            self.kept.append((nodes, rows.clone(), w))
        else:
            self.sum += w @ rows.double()
        self.weight += float(w.sum())
        self.outstanding -= len(nodes)
        if self.outstanding == 0:
            self._close(t)

    def _deadline(self, t, nodes, payload):
        if self.open and payload["round"][0] == self.round:
            self.dropped += self.outstanding
            self._close(t)

    @classmethod
    def supports_attack(cls, cfg) -> bool:
        return True

    @classmethod
    def supports_faults(cls, cfg) -> bool:
        return True

    @property
    def _keeps_rows(self) -> bool:
        return self.cfg.aggregator != "mean" or self.world.attack is not None

    def aggregated(self) -> torch.Tensor | None:
        """The round's new global model from what arrived (None: nothing did). Attackers'
        uploads are rewritten first (clients.attacks), then `protocol.aggregator` applies."""
        if self.weight <= 0:  # nobody made the deadline: keep the old model
            return None
        if not self._keeps_rows:
            return (self.sum / self.weight).to(self.global_model.dtype)
        nodes = np.concatenate([k[0] for k in self.kept])
        order = np.argsort(nodes, kind="stable")
        rows = torch.cat([k[1] for k in self.kept])[torch.as_tensor(order, device=self.fleet.device)]
        w = torch.cat([k[2] for k in self.kept])[torch.as_tensor(order, device=self.fleet.device)]
        rows = self.world.attacked(rows, nodes[order], self.global_model, self.round)
        return robust_aggregate(self.cfg, rows, w, self.global_model).to(self.global_model.dtype)

    def _close(self, t):
        self.open = False
        model = self.aggregated()
        if model is not None:
            self.global_model = model
        self.on_round(self.round, t)
        self.engine.schedule("round_start", t, -1)
