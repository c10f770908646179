"""Asynchronous federated learning: FedBuff (Nguyen et al. 2022) and FedAsync (Xie, Koyejo and
Gupta 2019), on FedAvg's speed profiles, server links, sampling among online clients and
Byzantine clients.

The server keeps `concurrency` clients training at once (default: protocol.fraction of them).
A client downloads the current global model (version v), trains, uploads; the update arrives
with staleness s = (the server's version now) - v, weighted by S(s):
  constant    1
  polynomial  (1 + s) ** -staleness_a                  (FedBuff's 1 / sqrt(1 + s) at a = 0.5)
  hinge       1 if s <= staleness_b, else 1 / (staleness_a * (s - staleness_b) + 1)
When an update arrives, or a client drops out, another idle online client is sampled (seeded).
An update arriving later than `deadline` seconds after its download is discarded.

fedbuff   keeps `buffer` = K updates; at the K-th the global model moves by
          server_lr * AGG over the buffer of g + S(s_i) (x_i - x_i's download), g the current
          model; AGG is the sample-weighted mean, or a robust rule of `aggregator` (whose rows
          the attackers rewrite first, as in FedAvg). With K = all clients, all training at
          once, S = 1 and server_lr = 1, a round is FedAvg's.
fedasync  mixes each update on arrival: g <- (1 - alpha S(s)) g + alpha S(s) x_i.

A round is one server update (fedbuff: K arrivals; fedasync: one); `staleness_mean` and
`staleness_max` are those of the updates it used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from kernels.random import derive_seed
from protocols.base import Priority, Protocol
from protocols.fedavg import FedAvgConfig, robust_aggregate

STALENESS = ("constant", "polynomial", "hinge")


def staleness_weight(s: np.ndarray, kind: str, a: float, b: float) -> np.ndarray:
    """S(s) for staleness values s >= 0 (see the module doc)."""
    s = np.asarray(s, dtype=np.float64)
    if kind == "constant":
        return np.ones_like(s)
    if kind == "polynomial":
        return (1.0 + s) ** -a
    return np.where(s <= b, 1.0, 1.0 / (a * (s - b) + 1.0))


@dataclass
class AsyncConfig(FedAvgConfig):
    concurrency: Optional[int] = None  # clients training at once (null: round(fraction * nodes))
    staleness: str = "polynomial"      # constant | polynomial | hinge
    staleness_a: float = 0.5           # polynomial exponent; hinge slope
    staleness_b: float = 4.0           # hinge: updates up to this staleness count fully

    def __post_init__(self):
        super().__post_init__()
        if self.concurrency is not None and not 1 <= self.concurrency <= 10**9:
            raise ValueError(f"protocol.concurrency must be an integer >= 1 or null, got {self.concurrency}")
        if self.staleness not in STALENESS:
            raise ValueError(f"protocol.staleness must be one of {', '.join(STALENESS)}, got {self.staleness!r}")
        if not 0 <= self.staleness_a < math.inf:
            raise ValueError(f"protocol.staleness_a must be a finite number >= 0, got {self.staleness_a}")
        if not 0 <= self.staleness_b < math.inf:
            raise ValueError(f"protocol.staleness_b must be a finite number >= 0, got {self.staleness_b}")


@dataclass
class FedBuffConfig(AsyncConfig):
    buffer: int = 10          # K: updates per server step
    server_lr: float = 1.0    # the server's step on the aggregated update

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.buffer <= 10**9:
            raise ValueError(f"protocol.buffer must be an integer >= 1, got {self.buffer}")
        if not 0 < self.server_lr < math.inf:
            raise ValueError(f"protocol.server_lr must be a finite number > 0, got {self.server_lr}")


@dataclass
class FedAsyncConfig(AsyncConfig):
    alpha: float = 0.6        # the mixing weight of a fresh update

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.alpha <= 1:
            raise ValueError(f"protocol.alpha must be in (0, 1], got {self.alpha}")
        if self.aggregator not in ("mean", "centered_clip"):
            raise ValueError(f"protocol.aggregator: fedasync mixes one update at a time (mean, or centered_clip "
                             f"of that update); a robust rule over many needs protocol=fedbuff (got {self.aggregator!r})")


class FedBuff(Protocol):
    name = "fedbuff"
    config = FedBuffConfig
    uses_graph = False
    columns = ("staleness_mean", "staleness_max", "updates", "clients_dropped")

    @classmethod
    def supports_attack(cls, cfg) -> bool:
        return True

    @classmethod
    def supports_faults(cls, cfg) -> bool:
        return True

    def bind(self):
        e, n = self.engine, self.fleet.n
        e.on("download", self._download, Priority.DISPATCH)
        e.on("train_done", self._train_done, Priority.TRAINED)
        e.on("upload", self._upload, Priority.RECEIVE)
        e.on("refill", self._refill_event, Priority.ROUND)
        e.on("lost", self._lost, Priority.RECEIVE)
        self.global_model = self.fleet.params[0].clone()
        self.version = 0
        self.snapshots = {0: self.global_model}  # versions some client still trains from
        self.busy = np.zeros(n, dtype=bool)
        self.from_version = np.zeros(n, dtype=np.int64)
        self.concurrency = min(n, self.cfg.concurrency or max(1, int(round(self.cfg.fraction * n))))
        self.dispatches = 0
        self.jobs = np.zeros(n, dtype=np.int64)  # how often each client got work: keys its messages' losses
        self.buffer: list = []  # (node, row, weight, staleness) of each update kept
        self.dropped = 0
        self.last_staleness = np.zeros(0)
        self._refill_at = math.inf

    def start(self):
        self._free(0.0, np.zeros(0, dtype=np.int64))

    def models(self):
        return self.global_model.unsqueeze(0)

    def extra_metrics(self):
        s = self.last_staleness
        return {"staleness_mean": float(s.mean()) if len(s) else 0.0,
                "staleness_max": float(s.max()) if len(s) else 0.0,
                "updates": float(self.version), "clients_dropped": float(self.dropped)}

    # dispatch: keep `concurrency` online clients training
    def _refill(self, t: float) -> None:
        want = self.concurrency - int(self.busy.sum())
        if want <= 0 or self.engine.stopped:
            return
        idle = np.flatnonzero(~self.busy)
        pool = idle[self.world.online(idle, t)] if self.world.availability is not None else idle
        if len(pool) == 0:  # nobody to send work to: try again when an idle client is back
            back = float(self.world.next_online(idle, t).min()) if len(idle) else math.inf
            if math.isfinite(back) and back < self._refill_at:
                self._refill_at = back
                self.engine.schedule("refill", back, -1)
            return
        self.dispatches += 1
        rng = np.random.default_rng(derive_seed(self.world.seed, "fedbuff-select", self.dispatches))
        chosen = np.sort(rng.choice(pool, size=want, replace=False)) if want < len(pool) else pool
        self.busy[chosen] = True
        self.jobs[chosen] += 1
        self.from_version[chosen] = self.version
        self.snapshots.setdefault(self.version, self.global_model)
        self.bytes_sent += len(chosen) * self.model_bytes
        self.server_message("download", t, chosen, 2 * self.jobs[chosen], version=self.version, start=t)

    def _refill_event(self, t, nodes, payload):
        self._refill_at = math.inf
        self._refill(t)

    def _lost(self, t, nodes, payload):
        self._drop_out(t, nodes)

    def _drop_out(self, t: float, nodes: np.ndarray) -> None:
        if len(nodes):
            self.dropouts += len(nodes)
            self._free(t, nodes)

    def _free(self, t: float, nodes: np.ndarray) -> None:
        """The nodes are idle again; replacements go out once this instant's events are done
        (one draw for all of them, however the instant's events are split into calls)."""
        self.busy[nodes] = False
        if t < self._refill_at:
            self._refill_at = t
            self.engine.schedule("refill", t, -1)

    # a client's work
    def _download(self, t, nodes, payload):
        rows = torch.stack([self.snapshots[v] for v in payload["version"].tolist()])
        self.fleet.set_params(nodes, rows, reset_momentum=True)
        self.engine.schedule("train_done", t + self.fleet.train_time(nodes, t), nodes,
                             version=payload["version"], start=payload["start"], trained_from=t)

    def _train_done(self, t, nodes, payload):
        keep = np.ones(len(nodes), dtype=bool)
        if self.world.availability is not None:  # offline before training ended: a dropout
            keep = self.world.online_through(nodes, payload["trained_from"], t)
            self._drop_out(t, nodes[~keep])
        nodes = nodes[keep]
        self.fleet.train(nodes, payload["trained_from"][keep])
        self.bytes_sent += len(nodes) * self.model_bytes
        self.server_message("upload", t, nodes, 2 * self.jobs[nodes] + 1, version=payload["version"][keep],
                            start=payload["start"][keep], trained_from=payload["trained_from"][keep])

    def _upload(self, t, nodes, payload):
        late = np.zeros(len(nodes), dtype=bool)
        if self.cfg.deadline is not None:
            late = t - payload["start"] > self.cfg.deadline + 1e-12
            self.dropped += int(late.sum())
        dev = self.fleet.device
        rows = self.fleet.params[torch.as_tensor(nodes, device=dev)]
        weights = self.fleet.data.available(nodes, payload["trained_from"])
        self._arrive(t, nodes[~late], rows[torch.as_tensor(~late, device=dev)], weights[~late],
                     payload["version"][~late])
        self._free(t, nodes)
        self._prune()

    def _prune(self) -> None:
        """Drop the global models no client trains from any more."""
        live = set(self.from_version[self.busy].tolist()) | {self.version}
        self.snapshots = {v: m for v, m in self.snapshots.items() if v in live}

    def _weights(self, versions: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        return staleness_weight(self.version - versions, cfg.staleness, cfg.staleness_a, cfg.staleness_b)

    def _arrive(self, t: float, nodes: np.ndarray, rows: torch.Tensor, weights: np.ndarray,
                versions: np.ndarray) -> None:
        """FedBuff: buffer the updates (in node order), a server step at every K-th."""
        done = 0
        while done < len(nodes) and not self.engine.stopped:
            take = min(len(nodes) - done, self.cfg.buffer - sum(len(b[0]) for b in self.buffer))
            part = slice(done, done + take)
            base = torch.stack([self.snapshots[v] for v in versions[part].tolist()]).double()
            s = torch.as_tensor(self._weights(versions[part]), dtype=torch.float64, device=base.device)
            self.buffer.append((nodes[part], (rows[part].double() - base) * s.view(-1, 1), weights[part],
                                self.version - versions[part]))
            done += take
            if sum(len(b[0]) for b in self.buffer) >= self.cfg.buffer:
                self._step(t)

    def _step(self, t: float) -> None:
        nodes = np.concatenate([b[0] for b in self.buffer])
        order = np.argsort(nodes, kind="stable")
        g = self.global_model.double()
        idx = torch.as_tensor(order, device=g.device)
        rows = torch.cat([b[1] for b in self.buffer])[idx] + g
        w = torch.as_tensor(np.concatenate([b[2] for b in self.buffer])[order], dtype=torch.float64, device=g.device)
        self.last_staleness = np.concatenate([b[3] for b in self.buffer])[order].astype(np.float64)
        self.buffer = []
        rows = self.world.attacked(rows, nodes[order], g, self.version + 1)
        target = robust_aggregate(self.cfg, rows, w, g)
        self._advance((g + self.cfg.server_lr * (target.double() - g)).to(self.global_model.dtype), t)

    def _advance(self, model: torch.Tensor, t: float) -> None:
        self.global_model = model
        self.version += 1
        self.on_round(self.version, t)


class FedAsync(FedBuff):
    name = "fedasync"
    config = FedAsyncConfig

    def _arrive(self, t: float, nodes: np.ndarray, rows: torch.Tensor, weights: np.ndarray,
                versions: np.ndarray) -> None:
        """FedAsync: every update is a server step of its own, in node order."""
        for i in range(len(nodes)):
            if self.engine.stopped:
                break
            a = self.cfg.alpha * float(self._weights(versions[i:i + 1])[0])
            g = self.global_model.double()
            x = self.world.attacked(rows[i:i + 1].double(), nodes[i:i + 1], g, self.version + 1)
            if self.cfg.aggregator == "centered_clip":  # the update clipped to clip_tau around g
                x = robust_aggregate(self.cfg, x, torch.ones(1, dtype=torch.float64), g).double().unsqueeze(0)
            self.last_staleness = np.array([float(self.version - versions[i])])
            self._advance(((1 - a) * g + a * x[0]).to(self.global_model.dtype), t)
