"""M2N2: model merging of natural niches (Abrantes, Lange, Tang, GECCO 2025, arXiv 2508.16204).

An archive of models competes for the examples of a fixed evaluation set: an example that
few models get right is worth more to each of them (shared fitness, exponent `alpha`). Parent A
is drawn by shared fitness, parent B by its attraction to A (how much B gets right of what A
gets wrong), the child is their split-point SLERP (kernels.merging), and the child replaces
the archive member of lowest shared fitness over the archive plus the child, if that is not
the child itself. The math is in kernels.merging; this file is who computes it, when.

Three modes (protocol.mode):
  central        the paper's algorithm: the archive (protocol.archive slots, protocol.seeds
                 models drawn first) at one coordinator, scored on every training row; one child
                 per iteration, each step sees the last replacement; a round is
                 protocol.evaluations_per_round children.
  federated      the archive at a coordinator, the data at the nodes: each round a fraction of
                 the clients each train a child (local SGD is the mutation) and upload it; every
                 node scores the new children on its fixed validation split and sends only
                 partial fitness and attraction sums, which the coordinator adds up to insert
                 the children one by one, exactly as the central rule would on the pooled
                 validation data.
  decentralized  every node keeps its own model and the last model from each neighbour; in
                 each synchronous round it trains, sends its model to its neighbours, then
                 picks a partner among what it received by attraction on its own validation
                 split, builds a child by split-point SLERP, and keeps the child unless its
                 own model has the higher shared fitness among everything it holds.

The evaluated model (metrics.csv) is the archive member with the best raw accuracy on the
selection set (central, federated; the paper's logging), or every node's model
(decentralized). Ablations: alpha=0 (a plain GA), crossover=whole (no split point),
crossover=none (the child is parent A, mutated), matchmaker=false (B drawn by fitness too).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kernels.merging import (Scorer, attraction, correctness, niche_weights, partial_attraction, partial_fitness,
                             shared_fitness, slerp, slerp_pair)
from kernels import full_batch_adam, init_stack
from kernels.random import counter_normal, counter_uniform, derive_seed
from protocols.base import Priority, Protocol, ProtocolConfig
from protocols.gossip import Gossip
from protocols.registry import ProtocolError

MODES = ("federated", "decentralized", "central")
CROSSOVERS = ("split", "whole", "none")
INITS = ("default", "normal", "specialists")


@dataclass
class M2N2Config(ProtocolConfig):
    mode: str = "federated"         # federated | decentralized | central
    archive: int = 20               # archive slots (central, federated)
    alpha: float = 1.0              # competition exponent: 0 is a plain GA
    crossover: str = "split"        # split (split-point SLERP) | whole (SLERP of whole vectors) | none
    matchmaker: bool = True         # B drawn by attraction to A (false: by fitness, like A)
    mutation: float = 0.01          # std of the Gaussian noise added to every child (0: none)
    init: str = "default"           # default: torch's layer init (one shared draw: federated) | normal:
    #                                 N(0, init_std^2) per parameter (the paper's seeds) | specialists
    #                                 (central): seed k trained on the k-th block of classes
    init_std: float = 0.01
    seeds: int = 2                  # central: models drawn (and inserted) before the first child
    pretrain_steps: int = 10        # specialists: full-batch Adam steps per seed
    pretrain_lr: float = 3e-3       # specialists: Adam's learning rate
    grid: int = 0                   # central, > 0: no evolution; the best of this many whole-vector
    #                                 SLERPs of the two seeds (the brute-force baseline)
    evaluations_per_round: int = 1000  # central: children scored per round
    capacity: str = "one"           # one: c_j = 1 | node: c_j = 1 / (the owner's validation rows)
    fraction: float = 0.1           # federated: share of clients that train a child each round

    def __post_init__(self):
        for key, choices in (("mode", MODES), ("crossover", CROSSOVERS), ("init", INITS),
                             ("capacity", ("one", "node"))):
            if getattr(self, key) not in choices:
                raise ValueError(f"protocol.{key} must be one of {', '.join(choices)}; got {getattr(self, key)!r}")
        if not 2 <= self.archive <= 10**5:
            raise ValueError(f"protocol.archive must be an integer from 2 to 10^5, got {self.archive}")
        for key in ("alpha", "mutation", "init_std"):
            if not 0 <= getattr(self, key) < math.inf:
                raise ValueError(f"protocol.{key} must be a finite number >= 0, got {getattr(self, key)}")
        if not 1 <= self.seeds <= self.archive:
            raise ValueError(f"protocol.seeds must be from 1 to protocol.archive ({self.archive}), got {self.seeds}")
        if not 1 <= self.evaluations_per_round <= 10**7:
            raise ValueError(f"protocol.evaluations_per_round must be from 1 to 10^7, got {self.evaluations_per_round}")
        if not 0 <= self.pretrain_steps <= 10**6:
            raise ValueError(f"protocol.pretrain_steps must be from 0 to 10^6, got {self.pretrain_steps}")
        if not 0 < self.pretrain_lr < math.inf:
            raise ValueError(f"protocol.pretrain_lr must be a finite number > 0, got {self.pretrain_lr}")
        if not 0 <= self.grid <= 10**7:
            raise ValueError(f"protocol.grid must be from 0 to 10^7, got {self.grid}")
        if self.grid and self.seeds != 2:
            raise ValueError(f"protocol.grid interpolates two seeds; set protocol.seeds=2 (got {self.seeds})")
        if self.mode != "central" and (self.grid or self.init == "specialists"):
            raise ValueError("protocol.grid and protocol.init=specialists are options of protocol.mode=central")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"protocol.fraction must be in (0, 1], got {self.fraction}")


def pick(weights: np.ndarray, u: float, allowed: np.ndarray) -> int:
    """Index i drawn with probability weights[i] / sum(weights) from the uniform u in [0, 1);
    uniform over `allowed` (bool) when the weights sum to 0 (the guards for sum f = 0 and
    sum g = 0). -1 when nothing is allowed."""
    c = np.cumsum(weights)
    if not c[-1] > 0:
        c = np.cumsum(allowed.astype(np.float64))
        if c[-1] == 0:
            return -1
    i = min(int(np.searchsorted(c, u * c[-1], side="right")), len(c) - 1)
    while c[i] == (c[i - 1] if i else 0.0):  # rounding put u on a zero weight: take the one before
        i -= 1
    return i


def draw_parents(fitness: np.ndarray, attraction_of, occupied: np.ndarray, u: np.ndarray,
                 matchmaker: bool) -> tuple[int, int]:
    """(A, B) from two uniforms: A by shared fitness; B by attraction to A (`attraction_of(a)`:
    g(a, b) for every slot b), uniform over the other models when A dominates them all and A
    itself when there is none; or, without the matchmaker, B by fitness like A."""
    a = pick(fitness, u[0], occupied)
    if not matchmaker:
        return a, pick(fitness, u[1], occupied)
    others = occupied.copy()
    others[a] = False
    b = pick(attraction_of(a), u[1], others)
    return a, (a if b < 0 else b)


class Archive:
    """Models [P, D] (torch, on the run's device) with their scores on one evaluation set.

    The bookkeeping is P x N numbers (scores 0/1, per-example counts z, shared fitness): it
    lives on the host in numpy float64, where each of the few small operations per child
    costs microseconds; it is the same math as kernels.merging (a test holds them equal).
    An empty slot holds zeros and scores nothing.
    """

    def __init__(self, slots: int, dim: int, n_examples: int, device, alpha: float,
                 capacity: np.ndarray | None = None):
        self.params = torch.zeros(slots, dim, device=device)
        self.scores = np.zeros((slots, n_examples))
        self.z = np.zeros(n_examples)
        self.occupied = np.zeros(slots, dtype=bool)
        self.alpha = alpha
        self.capacity = capacity
        self.inserted = 0  # children that took a slot
        self.replaced = 0  # of which replaced a model (not an empty slot)
        self._refresh()

    def weights(self, z: np.ndarray) -> np.ndarray:
        """w_j = c_j / max(z_j, 1)^alpha."""
        z = np.maximum(z, 1.0)
        w = 1.0 / z if self.alpha == 1 else z ** -self.alpha
        return w if self.capacity is None else w * self.capacity

    def _refresh(self) -> None:
        self.w = self.weights(self.z)
        self.fitness = self.scores @ self.w

    def attraction(self, a: int) -> np.ndarray:
        """g(a, b) for every slot b."""
        return self.scores @ ((1.0 - self.scores[a]) * self.w)

    def insert(self, child: torch.Tensor, score: np.ndarray) -> int:
        """The replacement rule: over the slots plus the child, the lowest shared fitness goes
        (ties: the lowest index, so a tied slot goes before the child). Returns the slot the
        child took, or -1 if it was the one to go."""
        score = np.asarray(score, dtype=np.float64)
        z = self.z + score
        w = self.weights(z)
        f = self.scores @ w
        worst = int(np.argmin(f))
        if f[worst] > score @ w:
            return -1
        self.z = z - self.scores[worst]
        self.scores[worst] = score
        self.params[worst] = child
        self.replaced += bool(self.occupied[worst])
        self.occupied[worst] = True
        self.inserted += 1
        self._refresh()
        return worst

    def best(self) -> int:
        """The slot with the best raw accuracy on the evaluation set (ties: the lowest)."""
        return int(np.argmax(self.scores.sum(1)))

    def parents(self, u: np.ndarray, matchmaker: bool) -> tuple[int, int]:
        """(A, B) drawn from this archive (draw_parents)."""
        return draw_parents(self.fitness, self.attraction, self.occupied, u, matchmaker)


class M2N2(Protocol):
    name = "m2n2"
    config = M2N2Config
    columns = ("evaluations", "archive_best_accuracy", "archive_mean_accuracy", "replacements")

    def __new__(cls, cfg, world):
        impl = {"central": Central, "federated": Federated, "decentralized": Decentralized}[cfg.mode]
        return super().__new__(impl if cls is M2N2 else cls)

    @classmethod
    def needs_graph(cls, cfg) -> bool:
        return cfg.mode == "decentralized"

    def __init__(self, cfg, world):
        super().__init__(cfg, world)
        if cfg.init == "specialists" and world.task.name != "multiclass":
            raise ProtocolError("protocol.init=specialists needs class labels to split among the seeds; this data "
                                f"is {world.task.name} (use protocol.init=normal or default)")
        self.evaluations = 0
        self._seed = derive_seed(world.seed, "m2n2")

    def draw_models(self, k: int, stream: str) -> torch.Tensor:
        """k first models: N(0, init_std^2) per parameter, or torch's layer init (independent)."""
        if self.cfg.init == "default":
            return init_stack(self.world.model.module, self.world.layout, k, derive_seed(self.world.seed, stream),
                              independent=True, device=self.world.device)
        g = torch.Generator(device=self.world.device).manual_seed(derive_seed(self.world.seed, stream))
        return torch.randn(k, self.world.layout.size, generator=g, device=self.world.device) * self.cfg.init_std


class Central(M2N2):
    """The paper's algorithm at one coordinator (see the module docstring)."""

    def init_state(self):
        w, cfg = self.world, self.cfg
        keep = w.owner >= 0
        self.x = torch.as_tensor(w.data.X_train[keep], dtype=torch.float32, device=w.device)
        self.y = torch.as_tensor(w.data.y_train[keep], dtype=w.task.label_dtype, device=w.device)
        self.archive = Archive(cfg.archive, w.layout.size, len(self.x), w.device, cfg.alpha)
        self.rng = np.random.default_rng(self._seed)
        self.noise = torch.Generator(device=w.device).manual_seed(derive_seed(w.seed, "m2n2-mutation"))
        self._child = torch.empty(w.layout.size, device=w.device)
        self._eps = torch.empty(w.layout.size, device=w.device)
        self.seconds_per_eval = len(self.x) / float(w.speeds[0])
        self._scorer = Scorer(w.model, self.x, self.y)
        seeds = self.draw_models(cfg.seeds, "m2n2-seeds")
        if cfg.init == "specialists":
            seeds = self.specialists(seeds)
        for row in seeds:
            self.archive.insert(row, self.score(row))
        if cfg.grid:
            self.interpolate(seeds[0], seeds[1], cfg.grid)
        self.round = 0

    def specialists(self, seeds: torch.Tensor) -> torch.Tensor:
        """Seed k trained with full-batch Adam (protocol.pretrain_steps steps, protocol.pretrain_lr)
        on the evaluation rows of the k-th contiguous block of classes (2 seeds, 10 classes:
        digits 0-4 and 5-9), as the paper's pre-trained experiment."""
        w, cfg = self.world, self.cfg
        n_classes = w.data.n_classes
        out = seeds.clone()
        for k in range(len(seeds)):
            mine = (self.y * len(seeds)) // n_classes == k
            if not bool(mine.any()):
                continue
            out[k:k + 1] = full_batch_adam(w.model, out[k:k + 1], self.x[mine], self.y[mine], cfg.pretrain_steps,
                                           cfg.pretrain_lr)
        return out

    def interpolate(self, a: torch.Tensor, b: torch.Tensor, points: int) -> None:
        """The brute-force baseline: whole-vector SLERP of a and b at `points` weights evenly
        spaced over [0, 1]; the first with the best raw accuracy takes an archive slot."""
        best, best_acc = None, -1
        for t in np.linspace(0.0, 1.0, points).tolist():
            child = slerp_pair(a, b, t, out=self._child)
            acc = int(self._scorer(child).sum())
            if acc > best_acc:
                best, best_acc = child.clone(), acc
        self.evaluations += points
        self.archive.insert(best, self.score(best))

    def score(self, row: torch.Tensor) -> np.ndarray:
        """Which evaluation examples one model [D] gets right (bool [N], on the host)."""
        return self._scorer(row).cpu().numpy()

    def bind(self):
        self.engine.on("evolve", self._evolve, Priority.ROUND)

    def start(self):
        self.engine.schedule("evolve", 0.0, -1)

    def models(self):
        return self.archive.params[self.archive.best()].unsqueeze(0)

    def train_loss(self):
        return math.nan

    def extra_metrics(self):
        a = self.archive
        acc = a.scores[a.occupied].mean(1)
        return {"evaluations": float(self.evaluations), "archive_best_accuracy": float(acc.max()),
                "archive_mean_accuracy": float(acc.mean()), "replacements": float(a.replaced)}

    def _evolve(self, t, nodes, payload):
        self.round += 1
        if not self.cfg.grid:  # the brute-force baseline did its work at the start
            for _ in range(self.cfg.evaluations_per_round):
                self.step()
            t += self.cfg.evaluations_per_round * self.seconds_per_eval
        self.on_round(self.round, t)
        self.engine.schedule("evolve", t, -1)

    def step(self) -> int:
        """One iteration: parents, child, its score, the replacement. Returns the child's slot
        (-1: it did not enter)."""
        a, cfg = self.archive, self.cfg
        i, j = a.parents(self.rng.random(2), cfg.matchmaker)
        child = self._child
        if cfg.crossover == "none":
            child.copy_(a.params[i])
        else:
            split = int(self.rng.integers(0, child.shape[0])) if cfg.crossover == "split" else None
            slerp_pair(a.params[i], a.params[j], float(self.rng.random()), split, out=child)
        if cfg.mutation:
            child.add_(torch.randn(child.shape, generator=self.noise, out=self._eps, device=child.device),
                       alpha=cfg.mutation)
        self.evaluations += 1
        return a.insert(child, self.score(child))


def selection_set(data) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Every node's fixed selection rows: its validation split when the scenario holds one out
    (data.validation > 0), else its training rows (the paper selects on the training split).
    Returns X, y (sorted by node) and the rows per node."""
    if data.X_val is not None and data.val_sizes_np.sum() > 0:
        return data.X_val, data.y_val, data.val_sizes_np
    return data.X, data.y, data.sizes_np


class Federated(M2N2):
    """The archive at a coordinator, the selection data at the nodes (see the module docstring).

    A round: `fraction` of the clients each get a child of two archive members (split-point
    SLERP plus mutation), train it locally and upload it; the coordinator sends the new children
    to every node holding selection rows, each scores them on its own rows and returns partial
    sums (fitness over the archive plus one child, P + 1 numbers per child inserted; the
    attraction matrix, P x P numbers, once the archive is settled); the coordinator adds them up
    and inserts the children one by one. Bytes count the models sent both ways.
    """

    def init_state(self):
        super().init_state()  # the Fleet: the clients' rows that train the children
        w, cfg = self.world, self.cfg
        d = self.fleet.data
        self.x_sel, self.y_sel, sizes = selection_set(d)
        self.sel_sizes = sizes
        self.owner = torch.repeat_interleave(torch.arange(w.n, device=w.device),
                                             torch.as_tensor(sizes, device=w.device))
        self.capacity = None
        if cfg.capacity == "node":  # c_j = 1 / |V_k|: every node's rows weigh 1 in all
            self.capacity = 1.0 / torch.as_tensor(sizes, dtype=torch.float64, device=w.device)[self.owner]
        self.params = torch.zeros(cfg.archive, w.layout.size, device=w.device)
        self.scores = torch.zeros(cfg.archive, len(self.y_sel), dtype=torch.bool, device=w.device)
        self.occupied = np.zeros(cfg.archive, dtype=bool)
        self.replaced = 0
        self.round = 0
        first = self.draw_models(1, "m2n2-seeds") if cfg.init == "normal" else self.fleet.params[:1].clone()
        self.fleet.set_params(np.arange(w.n), first.expand(w.n, -1), reset_momentum=True)
        self.insert(first[0], self.score(first)[0])
        self.settle_nodes()

    @classmethod
    def independent_init(cls, cfg) -> bool:
        return False

    def score(self, rows: torch.Tensor) -> torch.Tensor:
        """Every node scores rows [k, D] on its own selection rows: bool [k, N_sel]."""
        return correctness(self.world.model, rows, self.x_sel, self.y_sel)

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        return niche_weights(scores, self.cfg.alpha, self.capacity)

    def partial_fitness(self, scores: torch.Tensor) -> torch.Tensor:
        """What each node sends: its share of the shared fitness of these rows [n, K] (z over
        the same rows, counted on its own examples)."""
        return partial_fitness(scores, self.weights(scores), self.owner, self.world.n)

    # the coordinator's side: it sees models and summed partial numbers, never a score
    def decide(self, f_sum: torch.Tensor) -> int:
        """The replacement rule on the summed partial fitness [P + 1] of the archive plus one
        child: the slot of lowest fitness (ties: the lowest index), or -1 if it is the child's."""
        worst = int(torch.argmin(f_sum))
        return -1 if worst == len(f_sum) - 1 else worst

    def place(self, slot: int, child: torch.Tensor) -> None:
        """The coordinator's archive takes the child in `slot`."""
        self.params[slot] = child
        self.replaced += bool(self.occupied[slot])
        self.occupied[slot] = True

    def settle(self, f_sum: torch.Tensor, g_sum: torch.Tensor) -> None:
        """The coordinator's view of the archive for drawing parents: fitness [P] and the
        attraction matrix [P, P], each the sum of the nodes' parts."""
        self.fitness = f_sum.cpu().numpy()
        self.attract = g_sum.cpu().numpy()

    # the nodes' side, all nodes at once (the bridge runs the same functions on one node's rows)
    def insert(self, child: torch.Tensor, score: torch.Tensor) -> int:
        """One child through a node query and the coordinator's decision."""
        f = self.partial_fitness(torch.cat([self.scores, score.unsqueeze(0)])).sum(0)
        slot = self.decide(f)
        if slot >= 0:
            self.scores[slot] = score  # every node keeps the child's scores on its own rows
            self.place(slot, child)
        return slot

    def parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What each node sends once the archive is settled: partial fitness [n, P] and
        partial attraction [n, P, P]."""
        w = self.weights(self.scores)
        return self.partial_fitness(self.scores), partial_attraction(self.scores, w, self.owner, self.world.n)

    def settle_nodes(self) -> None:
        f, g = self.parts()
        self.settle(f.sum(0), g.sum(0))

    def bind(self):
        e = self.engine
        e.on("round_start", self._round_start, Priority.ROUND)
        e.on("download", self._download, Priority.DISPATCH)
        e.on("train_done", self._train_done, Priority.TRAINED)
        e.on("upload", self._upload, Priority.RECEIVE)
        e.on("scored", self._scored, Priority.RECEIVE)

    def start(self):
        self.engine.schedule("round_start", 0.0, -1)

    def models(self):
        best = int(torch.argmax(self.scores.sum(1)))  # each node sends its count of correct rows
        return self.params[best].unsqueeze(0)

    def extra_metrics(self):
        acc = self.scores[torch.as_tensor(self.occupied, device=self.scores.device)].double().mean(1)
        return {"evaluations": float(self.evaluations), "archive_best_accuracy": float(acc.max()),
                "archive_mean_accuracy": float(acc.mean()), "replacements": float(self.replaced)}

    def children(self, k: int, rng: np.random.Generator, noise: torch.Generator) -> torch.Tensor:
        """k children of parents drawn from the settled archive."""
        cfg = self.cfg
        pairs = np.array([draw_parents(self.fitness, self.attract.__getitem__, self.occupied, rng.random(2),
                                       cfg.matchmaker) for _ in range(k)])
        A = self.params[torch.as_tensor(pairs[:, 0], device=self.params.device)]
        B = self.params[torch.as_tensor(pairs[:, 1], device=self.params.device)]
        d = A.shape[1]
        split = torch.as_tensor(rng.integers(0, d, size=k), device=A.device)
        w = torch.as_tensor(rng.random(k), device=A.device)
        if cfg.crossover == "none":
            child = A.clone()
        else:
            child = slerp(A, B, w, split if cfg.crossover == "split" else None)
        if cfg.mutation:
            child += torch.randn(child.shape, generator=noise, device=child.device) * cfg.mutation
        return child

    def draw_round(self, r: int) -> tuple[np.ndarray, torch.Tensor]:
        """Round r's clients (a `fraction` of the nodes, sorted) and their children [k, D], drawn
        from the settled archive with the round's own random streams."""
        n = self.world.n
        k = max(1, int(round(self.cfg.fraction * n)))
        rng = np.random.default_rng(derive_seed(self.world.seed, "m2n2-round", r))
        selected = np.sort(rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)
        noise = torch.Generator(device=self.world.device).manual_seed(derive_seed(self.world.seed, "m2n2-noise", r))
        return selected, self.children(len(selected), rng, noise)

    def _round_start(self, t, nodes, payload):
        self.round += 1
        self.selected, children = self.draw_round(self.round)
        self.fleet.set_params(self.selected, children, reset_momentum=True)
        self.arrived = 0
        self.bytes_sent += len(self.selected) * self.model_bytes
        self.engine.schedule("download", t + self.world.server_delay(self.selected, self.model_bytes), self.selected)

    def _download(self, t, nodes, payload):
        self.engine.schedule("train_done", t + self.fleet.train_time(nodes, t), nodes, start=t)

    def _train_done(self, t, nodes, payload):
        self.fleet.train(nodes, payload["start"])
        self.bytes_sent += len(nodes) * self.model_bytes
        self.engine.schedule("upload", t + self.world.server_delay(nodes, self.model_bytes), nodes)

    def _upload(self, t, nodes, payload):
        self.arrived += len(nodes)
        if self.arrived < len(self.selected):
            return
        # every node with selection rows gets the k children, scores them, and answers with its
        # partial sums; the insertions then ask each node for P + 1 numbers per child
        k, w = len(self.selected), self.world
        scorers = np.flatnonzero(self.sel_sizes > 0)
        busy = k * self.sel_sizes[scorers] / w.speeds[scorers]
        down = self.world.server_delay(scorers, k * self.model_bytes)
        back = k * 2 * w.server_latency[scorers]
        self.bytes_sent += k * len(scorers) * self.model_bytes
        self.engine.schedule("scored", t + float((down + busy + back).max(initial=0.0)), -1)

    def _scored(self, t, nodes, payload):
        rows = self.fleet.params[torch.as_tensor(self.selected, device=self.fleet.device)]
        scores = self.score(rows)
        for c in range(len(rows)):
            self.insert(rows[c], scores[c])
        self.evaluations += len(rows)
        self.settle_nodes()
        self.on_round(self.round, t)
        self.engine.schedule("round_start", t, -1)


class Decentralized(M2N2, Gossip):
    """Gossip whose merge is M2N2's, per node (see the module docstring): synchronous rounds;
    the inbox keeps each neighbour's model (the gossip mailbox in "models" mode: one snapshot
    per send in flight, one slot per neighbour at the receiver). Draws are keyed by (node, its
    merge count), so a batched wave equals the same merges one node at a time."""
    receives = "models"
    columns = ("evaluations", "merges", "children_kept")

    @classmethod
    def supports_attack(cls, cfg) -> bool:
        return False

    @classmethod
    def supports_faults(cls, cfg) -> bool:
        return False

    def init_state(self):
        super().init_state()
        w = self.world
        d = self.fleet.data
        self.x_sel, self.y_sel, self.sel_sizes = selection_set(d)
        self.sel_offsets = np.concatenate([[0], np.cumsum(self.sel_sizes)[:-1]])
        self.fleet.set_params(np.arange(w.n), self.first_models(), reset_momentum=True)
        self.merge_count = np.zeros(w.n, dtype=np.int64)
        self.kept = 0

    def first_models(self) -> torch.Tensor:
        if self.cfg.init == "normal":
            return self.draw_models(self.world.n, "m2n2-seeds")
        return self.fleet.params.clone()

    def extra_metrics(self):
        return {"evaluations": float(self.evaluations), "merges": float(self.merges),
                "children_kept": float(self.kept)}

    def relay_problem(self):
        return "the bridge runs M2N2's federated mode; decentralized M2N2 runs in the simulator"

    def _selection(self, nodes: np.ndarray):
        """The nodes' selection rows, padded: X [n, V, F], y [n, V], mask [n, V]."""
        if len(self.x_sel) == 0:
            return None
        dev = self.x_sel.device
        width = max(1, int(self.sel_sizes[nodes].max(initial=0)))
        slot = torch.arange(width, device=dev).view(1, -1)
        size = torch.as_tensor(self.sel_sizes[nodes], device=dev).view(-1, 1)
        first = torch.as_tensor(self.sel_offsets[nodes], device=dev).view(-1, 1)
        idx = (first + torch.minimum(slot, (size - 1).clamp(min=0))).clamp(max=len(self.x_sel) - 1)
        return self.x_sel[idx], self.y_sel[idx], slot < size

    def _scores(self, rows: torch.Tensor, sel) -> torch.Tensor:
        """rows [n, m, D] on each node's own selection rows -> bool [n, m, V]."""
        n, m, d = rows.shape
        x, y, mask = sel
        x = x.repeat_interleave(m, 0)
        y = y.repeat_interleave(m, 0)
        logits = self.world.model.logits(rows.reshape(n * m, d), x)
        return (self.world.task.correct(logits, y).view(n, m, -1)) & mask.unsqueeze(1)

    def merge_nodes(self, nodes: np.ndarray) -> None:
        received, count = self.mailbox.take(nodes)
        idx = torch.as_tensor(nodes, device=self.fleet.device)
        own = self.fleet.params[idx]
        child, keep = self.merge_m2n2(nodes, own, received, count)
        keep_np = keep.cpu().numpy()
        if keep_np.any():
            self.fleet.set_params(nodes[keep_np], child[keep])
        self.kept += int(keep_np.sum())
        self.merges += len(nodes)
        self.evaluations += int(count.sum()) + 2 * len(nodes)

    def merge_m2n2(self, nodes: np.ndarray, own: torch.Tensor, received: torch.Tensor, count: torch.Tensor):
        """Each node's M2N2 step on what it holds: own [n, D], received [n, k, D] (NaN beyond
        count). Returns the children [n, D] and whether each node keeps its child [n]."""
        cfg, dev = self.cfg, own.device
        n, k, d = received.shape
        valid = torch.arange(k, device=dev).view(1, -1) < count.view(-1, 1)
        held = torch.cat([own.unsqueeze(1), torch.nan_to_num(received, nan=0.0)], dim=1)  # [n, 1 + k, D]
        sel = self._selection(nodes)
        key = (torch.as_tensor(nodes, device=dev), torch.as_tensor(self.merge_count[nodes], device=dev))
        u = [counter_uniform(self._seed, *key, torch.tensor(i, device=dev)) for i in range(3)]
        present = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=dev), valid], dim=1)
        if sel is None:
            scores = torch.zeros(n, 1 + k, 1, dtype=torch.bool, device=dev)
            mask = torch.zeros(n, 1, dtype=torch.bool, device=dev)
        else:
            scores = self._scores(held, sel) & present.unsqueeze(2)
            mask = sel[2]
        w = niche_weights(scores, cfg.alpha) * mask
        if cfg.matchmaker:
            g = attraction(scores, torch.zeros(n, dtype=torch.long, device=dev), w)
        else:
            g = shared_fitness(scores, w)
        g = torch.where(valid, g[:, 1:], torch.zeros_like(g[:, 1:]))
        partner = _pick_rows(g, u[0], valid)
        B = received[torch.arange(n, device=dev), partner]
        if cfg.crossover == "none":
            child = own.clone()
        else:
            split = (u[1] * d).long().clamp(max=d - 1) if cfg.crossover == "split" else None
            child = slerp(own, B, u[2], split)
        if cfg.mutation:
            coord = torch.arange(d, device=dev).view(1, -1)
            noise = counter_normal(self._seed, key[0].view(-1, 1), key[1].view(-1, 1), coord)
            child += noise.to(child.dtype) * cfg.mutation
        self.merge_count[nodes] += 1
        if sel is None:
            return child, torch.ones(n, dtype=torch.bool, device=dev)
        # competition over everything the node holds plus the child: the child stays unless
        # the node's own model has the higher shared fitness (a tie goes to the child, as the
        # archive's argmin drops the lower index)
        ext = torch.cat([scores, self._scores(child.unsqueeze(1), sel)], dim=1)
        f = shared_fitness(ext, niche_weights(ext, cfg.alpha) * mask)
        return child, f[:, -1] >= f[:, 0]


def _pick_rows(weights: torch.Tensor, u: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per row, an index drawn with probability weights / row sum from the uniform u (uniform
    over `allowed` where a row's weights sum to 0)."""
    w = weights.to(torch.float64)
    zero = w.sum(1) <= 0
    w = torch.where(zero.view(-1, 1), allowed.to(torch.float64), w)
    c = torch.cumsum(w, 1)
    target = (u.to(torch.float64) * c[:, -1]).view(-1, 1)
    i = torch.searchsorted(c, target, right=True).view(-1).clamp(max=w.shape[1] - 1)
    # rounding may land on a zero weight at the end: step back to the last positive one
    last = (torch.arange(w.shape[1], device=w.device).view(1, -1) * (w > 0)).max(1).values
    return torch.minimum(i, last)
