"""Online divisive-agglomerative clustering (ODAC, Rodrigues, Gama and Pedroso 2008) of LABELS,
run on additive co-occurrence counts: iHOMER's label-space partitioner.

Everything the Jaccard distance needs is counts: instances n, label occurrences n_a and pair
co-occurrences n_ab. Counts from many sources add up, so a coordinator that sums the nodes'
count deltas runs exactly the partitioner a single stream of the same instances runs. Pure
numpy (float64 counts hold integers exactly up to 2^53), no notion of a node or of time.

The tree: every cluster is a set of labels; its active leaves always form a partition of the
labels. Each check (when at least `n_min` instances arrived since the last one) tests every
active leaf on the statistics gathered since it became active:

  d0, d1, d2   smallest, largest (the diameter) and second-largest Jaccard distance over its pairs
  mean         the mean over its PAIRS
  eps          the Hoeffding bound sqrt(R^2 ln(1/delta) / (2 n)), R = 1 (distances lie in [0, 1])

  split   (d1 - d2 > eps or tau > eps) and (d1 - d0) * |d1 + d0 - 2 mean| > eps: the farthest
          pair become pivots and every other label joins the nearer one (ties: the first pivot);
  merge   (ODAC's own test) the leaf's diameter exceeds its parent's diameter at the split by
          more than max(eps_parent, eps_leaf): the parent is active again, with fresh statistics;
  drift   the leaf's mean distance on the last window (the instances since the previous check)
          exceeds its mean at its first check by more than the two windows' bounds: the label
          structure changed, so the whole tree is rebuilt from the root with fresh statistics
          (it re-splits within a few checks). ODAC's merge alone cannot see this change when the
          distances saturate (labels of different blocks never co-occur: every diameter is ~1).

A proposal takes effect only when the same one (same kind, same cluster) holds at `confirm`
consecutive checks (hysteresis). The published partition is the active leaves after iHOMER's
refinement: a cluster smaller than `min_size` (default: the modal labelset cardinality) joins
its closest relative in the tree (a sibling, then a cousin, ...) as long as the result stays
within `max_size`. Each change of the published partition increments `version`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class LabelCounts:
    """Additive label statistics of a set of instances: n, n_a [L], n_ab [L, L] (n_aa = n_a) and
    the histogram of labelset cardinalities card [L + 1]."""
    n: float
    n_a: np.ndarray
    n_ab: np.ndarray
    card: np.ndarray

    @classmethod
    def zeros(cls, n_labels: int) -> "LabelCounts":
        return cls(0.0, np.zeros(n_labels), np.zeros((n_labels, n_labels)), np.zeros(n_labels + 1))

    @classmethod
    def of(cls, Y: np.ndarray) -> "LabelCounts":
        """The counts of a 0/1 label matrix [m, L]."""
        Y = np.asarray(Y, dtype=np.float64)
        L = Y.shape[1]
        return cls(float(len(Y)), Y.sum(0), Y.T @ Y, np.bincount(Y.sum(1).astype(np.int64), minlength=L + 1)
                   .astype(np.float64))

    @property
    def n_labels(self) -> int:
        return len(self.n_a)

    def __add__(self, other: "LabelCounts") -> "LabelCounts":
        return LabelCounts(self.n + other.n, self.n_a + other.n_a, self.n_ab + other.n_ab, self.card + other.card)

    def __sub__(self, other: "LabelCounts") -> "LabelCounts":
        return LabelCounts(self.n - other.n, self.n_a - other.n_a, self.n_ab - other.n_ab, self.card - other.card)

    def pack(self) -> np.ndarray:
        """One float64 vector (what a node sends): n, n_a, the upper triangle of n_ab, card."""
        iu = np.triu_indices(self.n_labels, 1)
        return np.concatenate([[self.n], self.n_a, self.n_ab[iu], self.card])

    @classmethod
    def unpack(cls, vec: np.ndarray, n_labels: int) -> "LabelCounts":
        L = n_labels
        vec = np.asarray(vec, dtype=np.float64)
        m = L * (L - 1) // 2
        if vec.shape != (1 + L + m + L + 1,):
            raise ValueError(f"label counts for {L} labels need {2 * L + m + 2} values, got {vec.shape}")
        n_ab = np.zeros((L, L))
        n_ab[np.triu_indices(L, 1)] = vec[1 + L:1 + L + m]
        n_ab = n_ab + n_ab.T
        n_ab[np.diag_indices(L)] = vec[1:1 + L]
        return cls(float(vec[0]), vec[1:1 + L].copy(), n_ab, vec[1 + L + m:].copy())


def jaccard_distance(counts: LabelCounts, labels: np.ndarray | None = None) -> np.ndarray:
    """1 - n_ab / (n_a + n_b - n_ab) over the given labels (all by default) [k, k]. Two labels
    that never occurred are identical (distance 0); one that occurred and one that did not are
    as far apart as can be (distance 1)."""
    idx = np.arange(counts.n_labels) if labels is None else np.asarray(labels)
    n_ab = counts.n_ab[np.ix_(idx, idx)]
    n_a = counts.n_a[idx]
    union = n_a[:, None] + n_a[None, :] - n_ab
    sim = np.where(union > 0, n_ab / np.where(union > 0, union, 1.0), 1.0)
    return 1.0 - sim


def hoeffding(n: float, delta: float, spread: float = 1.0) -> float:
    """The Hoeffding bound sqrt(R^2 ln(1/delta) / (2n)) (inf before any instance)."""
    return math.sqrt(spread ** 2 * math.log(1.0 / delta) / (2.0 * n)) if n > 0 else math.inf


@dataclass
class Stats:
    """A leaf's distance statistics: d0, d1, d2, mean over pairs, the farthest pair, n, eps."""
    d0: float
    d1: float
    d2: float
    mean: float
    pivots: tuple[int, int]
    n: float
    eps: float
    dist: np.ndarray


def leaf_stats(counts: LabelCounts, labels: np.ndarray, delta: float) -> Stats | None:
    """The ODAC statistics of a cluster of >= 2 labels on `counts` (None: fewer labels)."""
    if len(labels) < 2:
        return None
    D = jaccard_distance(counts, labels)
    iu = np.triu_indices(len(labels), 1)
    d = D[iu]
    order = np.argsort(-d, kind="stable")  # farthest first; ties: the first pair in row order
    d1 = float(d[order[0]])
    d2 = float(d[order[1]]) if len(d) > 1 else d1
    far = order[0]
    return Stats(float(d.min()), d1, d2, float(d.mean()), (int(iu[0][far]), int(iu[1][far])), counts.n,
                 hoeffding(counts.n, delta), D)


def assign(dist: np.ndarray, a: int, b: int) -> np.ndarray:
    """Split a cluster around pivots a and b: side [k] (0: a's group, 1: b's). Labels join one
    at a time, the one closest to a group first, each the group to which its MEAN distance is
    smaller (ties: a's). ODAC compares each label with the two pivots only; with noisy,
    near-saturated distances that tears blocks of related labels apart at the first split."""
    k = len(dist)
    side = np.full(k, -1)
    side[a], side[b] = 0, 1
    total = np.stack([dist[:, a], dist[:, b]], 1)  # summed distance to each group
    size = np.array([1.0, 1.0])
    for _ in range(k - 2):
        mean = total / size
        mean[side >= 0] = np.inf
        r = int(np.argmin(mean.min(1)))
        g = int(mean[r, 1] < mean[r, 0])
        side[r] = g
        total[:, g] += dist[:, r]
        size[g] += 1
    return side


@dataclass(eq=False)
class Cluster:
    labels: np.ndarray                      # sorted label ids
    parent: "Cluster | None" = None
    children: list = field(default_factory=list)
    base: LabelCounts | None = None         # the counts when it became active (statistics start there)
    split_d1: float = math.nan              # its diameter and bound when it split (for the merge test)
    split_eps: float = math.nan
    ref_mean: float | None = None           # its mean distance at its first check (for the drift test)
    ref_n: float = 0.0
    key: int = 0                            # a stable id (for hysteresis)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1


class LabelODAC:
    """ODAC over labels on pooled counts; see the module docstring."""

    def __init__(self, n_labels: int, *, n_min: int = 200, delta: float = 0.05, tau: float = 0.1,
                 confirm: int = 2, min_size: int | None = None, max_size: int | None = None, drift: bool = True):
        self.n_labels = n_labels
        self.n_min, self.delta, self.tau, self.confirm = n_min, delta, tau, confirm
        self.min_size, self.max_size, self.drift = min_size, max_size, drift
        self.counts = LabelCounts.zeros(n_labels)
        self._last = self.counts
        self._keys = 0
        self.root = self._new(np.arange(n_labels), None)
        self.leaves = [self.root]
        self.pending: dict[tuple, int] = {}     # proposal -> consecutive checks it held
        self.version = 0
        self.partition = np.zeros(n_labels, dtype=np.int64)  # published: cluster id per label
        self.checks = self.splits = self.merges = self.rebuilds = 0

    def _new(self, labels: np.ndarray, parent: Cluster | None) -> Cluster:
        self._keys += 1
        return Cluster(np.sort(np.asarray(labels, dtype=np.int64)), parent, base=self.counts, key=self._keys)

    def update(self, delta: LabelCounts) -> bool:
        """Add a count delta (from one node or summed over many); run a check when n_min
        instances arrived since the last. Returns whether the published partition changed."""
        self.counts = self.counts + delta
        if self.counts.n - self._last.n >= self.n_min:
            return self.check()
        return False

    def check(self) -> bool:
        """Test every active leaf, apply the proposals confirmed by hysteresis, publish."""
        self.checks += 1
        window = self.counts - self._last
        self._last = self.counts
        proposals: dict[tuple, tuple] = {}
        for leaf in self.leaves:
            s = leaf_stats(self.counts - leaf.base, leaf.labels, self.delta)
            if s is None or s.n <= 0:
                continue
            if self.drift:
                w = leaf_stats(window, leaf.labels, self.delta)
                if leaf.ref_mean is None:
                    leaf.ref_mean, leaf.ref_n = s.mean, s.n
                elif w.mean - leaf.ref_mean > w.eps + hoeffding(leaf.ref_n, self.delta):
                    proposals[("rebuild", self.root.key)] = ()
            p = leaf.parent
            if p is not None and s.d1 - p.split_d1 > max(p.split_eps, s.eps):
                proposals[("merge", p.key)] = (p,)
            if len(leaf.labels) >= 3 and (s.d1 - s.d2 > s.eps or self.tau > s.eps) \
                    and (s.d1 - s.d0) * abs(s.d1 + s.d0 - 2 * s.mean) > s.eps:
                side = assign(s.dist, *s.pivots)
                groups = (leaf.labels[side == 0], leaf.labels[side == 1])
                proposals[("split", leaf.key)] = (leaf, groups, s)  # applied with the latest groups
        held = {k: self.pending.get(k, 0) + 1 for k in proposals}
        self.pending = held
        ready = [k for k, c in held.items() if c >= self.confirm]
        if any(k[0] == "rebuild" for k in ready):
            self._rebuild()
        else:
            gone: set[int] = set()
            for k in ready:
                if k[0] == "merge":
                    self._merge(proposals[k][0], gone)
            for k in ready:
                if k[0] == "split" and proposals[k][0].key not in gone:
                    self._split(*proposals[k])
        for k in ready:
            self.pending.pop(k, None)
        return self._publish()

    def _rebuild(self) -> None:
        self.rebuilds += 1
        self.root = self._new(np.arange(self.n_labels), None)
        self.leaves = [self.root]
        self.pending = {}

    def _merge(self, parent: Cluster, gone: set[int]) -> None:
        if parent.key in gone or not parent.children:
            return
        self.merges += 1
        stack = list(parent.children)
        while stack:
            c = stack.pop()
            gone.add(c.key)
            stack += c.children
        parent.children = []
        parent.base, parent.ref_mean = self.counts, None
        self.leaves = [c for c in self.leaves if c.key not in gone] + [parent]
        self.leaves.sort(key=lambda c: int(c.labels[0]))

    def _split(self, leaf: Cluster, groups, s: Stats) -> None:
        self.splits += 1
        leaf.split_d1, leaf.split_eps = s.d1, s.eps
        leaf.children = [self._new(g, leaf) for g in groups]
        self.leaves = [c for c in self.leaves if c is not leaf] + leaf.children
        self.leaves.sort(key=lambda c: int(c.labels[0]))

    # the published partition
    def modal_cardinality(self) -> int:
        """The most common number of labels per instance (at least 1)."""
        return max(1, int(np.argmax(self.counts.card))) if self.counts.n > 0 else 1

    def clusters(self) -> list[np.ndarray]:
        """The refined partition: label groups, each sorted, ordered by their smallest label."""
        min_size = self.modal_cardinality() if self.min_size is None else self.min_size
        cap = self.n_labels if self.max_size is None else self.max_size
        groups = [[c] for c in self.leaves]
        size = lambda g: sum(len(c.labels) for c in g)  # noqa: E731
        for _ in range(self.n_labels):  # bounded: each merge removes a group
            small = [g for g in groups if size(g) < min_size]
            best = None
            for g in sorted(small, key=lambda g: (size(g), min(int(c.labels[0]) for c in g))):
                options = [(-_lca_depth(g + h), size(h), min(int(c.labels[0]) for c in h), i)
                           for i, h in enumerate(groups) if h is not g and size(g) + size(h) <= cap]
                if options:
                    best = (g, groups[min(options)[3]])
                    break
            if best is None:
                break
            g, h = best
            groups = [x for x in groups if x is not g and x is not h] + [g + h]
        out = [np.sort(np.concatenate([c.labels for c in g])) for g in groups]
        return sorted(out, key=lambda a: int(a[0]))

    def _publish(self) -> bool:
        part = labels_to_partition(self.clusters(), self.n_labels)
        if np.array_equal(part, self.partition):
            return False
        self.partition = part
        self.version += 1
        return True


def _lca_depth(group: list[Cluster]) -> int:
    """Depth of the lowest common ancestor of the clusters (deeper: closer relatives)."""
    paths = []
    for c in group:
        path = []
        while c is not None:
            path.append(c.key)
            c = c.parent
        paths.append(path[::-1])
    depth = 0
    for level in zip(*paths):
        if len(set(level)) > 1:
            break
        depth += 1
    return depth


def labels_to_partition(groups, n_labels: int) -> np.ndarray:
    """Cluster id per label [L] from label groups, canonical: clusters numbered by their
    smallest label, so two equal partitions give equal arrays."""
    part = np.full(n_labels, -1, dtype=np.int64)
    if sum(len(g) for g in groups) != n_labels:
        raise ValueError(f"the groups hold {sum(len(g) for g in groups)} labels, not each of {n_labels} once")
    for i, g in enumerate(sorted((np.sort(np.asarray(g)) for g in groups), key=lambda a: int(a[0]))):
        part[g] = i
    if (part < 0).any():
        raise ValueError(f"labels {np.flatnonzero(part < 0).tolist()} are in no cluster")
    return part


def partition_groups(part: np.ndarray) -> list[np.ndarray]:
    """The inverse of labels_to_partition: label groups ordered by cluster id."""
    return [np.flatnonzero(part == c) for c in range(int(part.max()) + 1)]
