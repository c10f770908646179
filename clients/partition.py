"""Split a training set among nodes: every sample goes to exactly one node.

All schemes are vectorized (sorts, bincounts and repeats, no loop over samples), so 10,000
nodes over a million samples take well under a second, and all randomness comes from the
caller's generator, so the same generator state gives the same split.
"""

from __future__ import annotations

import numpy as np


class PartitionError(ValueError):
    """Bad partition request; the message is one line naming the problem and how to fix it."""


PARTITIONERS = ("iid", "dirichlet", "shards", "quantity")


def partition(
    y: np.ndarray,
    n_nodes: int,
    scheme: str,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    classes_per_node: int = 2,
    exponent: float = 1.5,
) -> np.ndarray:
    """Return `owner`, an int64 array with owner[i] = the node (0..n_nodes-1) holding sample i.

    Schemes:
      iid        random equal split; node sizes differ by at most one.
      dirichlet  per class, node shares ~ Dir(alpha) (Hsu et al. 2019); smaller alpha, more label skew.
      shards     sort by label, cut n_nodes * classes_per_node shards, deal classes_per_node
                 random shards to each node (McMahan et al. 2017).
      quantity   node sizes follow power-law weights pareto(exponent) + 1 (smaller exponent,
                 heavier tail), at least one sample each; labels stay IID.

    Multi-label data (y a 2-D 0/1 label matrix [M, L]): iid and quantity ignore labels;
    dirichlet and shards treat each row's rarest positive label as its class (`rarest_label`;
    rows with no label form class L), so a node holds the rows of a few rare labels.
    Raises PartitionError if any node would end up with no data rather than patching it.
    """
    y = np.asarray(y)
    n_samples = len(y)
    if y.ndim == 2 and scheme in ("dirichlet", "shards"):
        y = rarest_label(y)
    if y.ndim not in (1, 2) or (y.ndim == 1 and not np.issubdtype(y.dtype, np.integer)):
        raise PartitionError(f"labels must be 1-D integer class ids or a 2-D 0/1 label matrix, got shape {y.shape} "
                             f"dtype {y.dtype}")
    if y.ndim == 1 and n_samples and y.min() < 0:
        raise PartitionError(f"labels must be >= 0, got {y.min()}; map classes to 0..K-1")
    if n_nodes < 1:
        raise PartitionError(f"n_nodes must be at least 1, got {n_nodes}")
    if n_nodes > n_samples:
        raise PartitionError(
            f"{n_nodes} nodes but only {n_samples} training samples; use fewer nodes or more data "
            f"(e.g. data=synthetic data.n_samples={n_nodes * 10})"
        )
    if scheme not in PARTITIONERS:
        raise PartitionError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(PARTITIONERS)}")

    if scheme == "iid":
        owner = _iid(n_samples, n_nodes, rng)
        hint = "use fewer nodes or more data"
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise PartitionError(f"dirichlet alpha must be > 0, got {alpha}; try 0.5 (lower = more skew)")
        owner = _dirichlet(y, n_nodes, alpha, rng)
        hint = f"raise alpha (now {alpha}), use fewer nodes, more data, or partition=iid"
    elif scheme == "shards":
        if classes_per_node < 1:
            raise PartitionError(f"classes_per_node must be at least 1, got {classes_per_node}")
        owner = _shards(y, n_nodes, classes_per_node, rng)
        hint = f"lower classes_per_node (now {classes_per_node}), use fewer nodes, more data, or partition=iid"
    else:
        if not exponent > 0:
            raise PartitionError(f"quantity exponent must be > 0, got {exponent}; try 1.5 (lower = more unequal)")
        owner = _quantity(n_samples, n_nodes, exponent, rng)
        hint = "use fewer nodes, more data, or partition=iid"

    empty = int(np.count_nonzero(node_sizes(owner, n_nodes) == 0))
    if empty:
        raise PartitionError(f"{scheme} partition left {empty} of {n_nodes} nodes with no data; {hint}")
    return owner


def rarest_label(Y: np.ndarray) -> np.ndarray:
    """One class key per row of a 0/1 label matrix [M, L]: its positive label with the fewest
    positives in Y (ties: the lowest index), or L for a row with no label. Keying by the rarest
    label keeps the rows of a rare label together, where the most frequent one would swallow
    them; int64 [M] in 0..L."""
    Y = np.asarray(Y) > 0
    if Y.shape[1] == 0:
        return np.zeros(len(Y), dtype=np.int64)
    freq = Y.sum(0)
    rank = np.argsort(np.argsort(freq, kind="stable"), kind="stable")  # 0: the rarest label
    score = np.where(Y, rank[None, :], len(freq))
    key = np.argmin(score, axis=1)
    return np.where(Y.any(1), key, len(freq)).astype(np.int64)


def _iid(n_samples: int, n_nodes: int, rng: np.random.Generator) -> np.ndarray:
    owner = np.empty(n_samples, dtype=np.int64)
    owner[rng.permutation(n_samples)] = np.arange(n_samples, dtype=np.int64) % n_nodes
    return owner


def _split_counts(weights: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Integer counts per row summing exactly to `totals`, proportional to each row of `weights`."""
    cum = np.cumsum(weights, axis=-1)
    cum /= cum[..., -1:]
    cum[..., -1] = 1.0  # guard against rounding so every sample gets a node
    edges = np.rint(cum * totals[..., None]).astype(np.int64)
    return np.diff(edges, axis=-1, prepend=0)


def _dirichlet(y: np.ndarray, n_nodes: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    n_classes = int(y.max()) + 1
    shares = rng.dirichlet(np.full(n_nodes, alpha), size=n_classes)  # [classes, nodes]
    counts = _split_counts(shares, np.bincount(y, minlength=n_classes))
    # Samples grouped by class in random order within each class; deal each class's run by its counts.
    order = _shuffled_by_label(y, rng)
    owner = np.empty(len(y), dtype=np.int64)
    owner[order] = np.repeat(np.tile(np.arange(n_nodes, dtype=np.int64), n_classes), counts.ravel())
    return owner


def _shards(y: np.ndarray, n_nodes: int, per_node: int, rng: np.random.Generator) -> np.ndarray:
    n_shards = n_nodes * per_node
    order = _shuffled_by_label(y, rng)
    # Near-equal contiguous shards of the label-sorted samples.
    shard_of_position = np.arange(len(y), dtype=np.int64) * n_shards // len(y)
    shard_owner = np.empty(n_shards, dtype=np.int64)
    shard_owner[rng.permutation(n_shards)] = np.arange(n_shards, dtype=np.int64) // per_node
    owner = np.empty(len(y), dtype=np.int64)
    owner[order] = shard_owner[shard_of_position]
    return owner


def _quantity(n_samples: int, n_nodes: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = rng.pareto(exponent, n_nodes) + 1.0
    # One sample each up front, the rest in proportion to the weights.
    sizes = 1 + _split_counts(weights, np.asarray(n_samples - n_nodes))
    owner = np.empty(n_samples, dtype=np.int64)
    owner[rng.permutation(n_samples)] = np.repeat(np.arange(n_nodes, dtype=np.int64), sizes)
    return owner


def _shuffled_by_label(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample indices sorted by label, in random order within each label."""
    perm = rng.permutation(len(y))
    return perm[np.argsort(y[perm], kind="stable")]


def node_sizes(owner: np.ndarray, n_nodes: int) -> np.ndarray:
    """Number of samples held by each node, int64 [n_nodes]."""
    return np.bincount(owner, minlength=n_nodes).astype(np.int64)


def label_skew(owner: np.ndarray, y: np.ndarray, n_nodes: int, n_classes: int) -> float:
    """Mean over non-empty nodes of the total-variation distance between the node's label
    distribution and the global one: 0 when every node mirrors the global mix, near 1 when
    each node holds one rare class."""
    counts = np.bincount(owner * n_classes + y, minlength=n_nodes * n_classes).reshape(n_nodes, n_classes)
    sizes = counts.sum(axis=1)
    held = sizes > 0
    local = counts[held] / sizes[held, None]
    overall = np.bincount(y, minlength=n_classes) / len(y)
    return float(0.5 * np.abs(local - overall).sum(axis=1).mean())
