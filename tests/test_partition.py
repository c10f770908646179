import numpy as np
import pytest

from clients.partition import PARTITIONERS, PartitionError, label_skew, node_sizes, partition, rarest_label


def labels(n=2000, n_classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, n_classes, n)


@pytest.mark.parametrize("scheme", PARTITIONERS)
@pytest.mark.parametrize("n_nodes", [1, 7, 50])
def test_every_sample_assigned_exactly_once(scheme, n_nodes):
    y = labels()
    owner = partition(y, n_nodes, scheme, np.random.default_rng(3))
    assert owner.dtype == np.int64
    assert owner.shape == y.shape
    assert owner.min() >= 0 and owner.max() < n_nodes
    sizes = node_sizes(owner, n_nodes)
    assert sizes.shape == (n_nodes,)
    assert sizes.sum() == len(y)
    assert (sizes > 0).all()


@pytest.mark.parametrize("scheme", PARTITIONERS)
def test_same_seed_same_split_different_seed_different(scheme):
    y = labels()
    a = partition(y, 20, scheme, np.random.default_rng(11))
    b = partition(y, 20, scheme, np.random.default_rng(11))
    c = partition(y, 20, scheme, np.random.default_rng(12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_iid_sizes_differ_by_at_most_one():
    y = labels(n=1003)
    sizes = node_sizes(partition(y, 10, "iid", np.random.default_rng(0)), 10)
    assert sizes.max() - sizes.min() == 1


def test_dirichlet_skew_grows_as_alpha_shrinks():
    y = labels(n=5000)

    def skew(alpha):
        return np.mean(
            [
                label_skew(partition(y, 10, "dirichlet", np.random.default_rng(s), alpha=alpha), y, 10, 10)
                for s in range(4)
            ]
        )

    flat, medium, sharp = skew(100.0), skew(1.0), skew(0.05)
    assert flat < 0.1
    assert flat < medium < sharp
    assert sharp > 0.6


def test_label_skew_zero_when_nodes_mirror_global_mix():
    y = np.tile(np.arange(4), 25)  # 100 samples, 25 of each class
    owner = np.arange(100) // 4  # each node gets one of every class
    assert label_skew(owner, y, 25, 4) == 0.0
    assert label_skew(y.copy(), y, 4, 4) == pytest.approx(0.75)  # node k holds only class k


def test_shards_limit_labels_per_node():
    # 100 samples per class and shards of 20, 10 or 5 samples: shards never straddle two classes.
    y = np.repeat(np.arange(10), 100)
    for per_node in (1, 2, 4):
        owner = partition(y, 50, "shards", np.random.default_rng(per_node), classes_per_node=per_node)
        distinct = np.array([len(np.unique(y[owner == k])) for k in range(50)])
        assert distinct.max() <= per_node
    # Unaligned shards may straddle one class boundary each.
    y = labels()
    owner = partition(y, 40, "shards", np.random.default_rng(0), classes_per_node=2)
    distinct = np.array([len(np.unique(y[owner == k])) for k in range(40)])
    assert distinct.max() <= 4
    assert distinct.mean() <= 3


def test_quantity_sizes_are_unequal():
    y = labels(n=20000)
    sizes = node_sizes(partition(y, 100, "quantity", np.random.default_rng(0), exponent=1.5), 100)
    assert sizes.min() >= 1
    assert sizes.max() / sizes.min() > 10
    # Heavier tail with a smaller exponent.
    steep = node_sizes(partition(y, 100, "quantity", np.random.default_rng(0), exponent=0.8), 100)
    assert steep.max() > sizes.max()


def test_empty_nodes_raise_with_fix():
    y = labels(n=1000)
    with pytest.raises(PartitionError, match=r"left \d+ of 200 nodes with no data; raise alpha"):
        partition(y, 200, "dirichlet", np.random.default_rng(0), alpha=0.001)


def test_more_nodes_than_samples():
    with pytest.raises(PartitionError, match="500 nodes but only 100 training samples; use fewer nodes"):
        partition(labels(n=100), 500, "iid", np.random.default_rng(0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_nodes=0, scheme="iid"), "n_nodes must be at least 1"),
        (dict(n_nodes=5, scheme="pathological"), "choose one of iid, dirichlet, shards, quantity"),
        (dict(n_nodes=5, scheme="dirichlet", alpha=0.0), "alpha must be > 0"),
        (dict(n_nodes=5, scheme="shards", classes_per_node=0), "classes_per_node must be at least 1"),
        (dict(n_nodes=5, scheme="quantity", exponent=-1.0), "exponent must be > 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(PartitionError, match=message):
        partition(labels(), rng=np.random.default_rng(0), **kwargs)


def test_many_small_nodes():
    y = labels(n=200_000)
    owner = partition(y, 10_000, "dirichlet", np.random.default_rng(0), alpha=1.0)
    assert node_sizes(owner, 10_000).sum() == len(y)


def test_multilabel_matrices_split_by_every_scheme():
    Y = (np.random.default_rng(0).random((400, 6)) < 0.3).astype(np.uint8)
    for scheme in ("iid", "quantity", "dirichlet", "shards"):
        owner = partition(Y, 7, scheme, np.random.default_rng(1), alpha=0.3)
        assert owner.shape == (400,) and set(owner.tolist()) == set(range(7))
    # dirichlet and shards split by each row's rarest positive label: skewed, unlike iid
    key = rarest_label(Y)
    assert key.max() <= 6 and (key[Y.sum(1) == 0] == 6).all()
    skew = {s: label_skew(partition(Y, 7, s, np.random.default_rng(1), alpha=0.3), key, 7, 7)
            for s in ("iid", "dirichlet")}
    assert skew["dirichlet"] > 2 * skew["iid"]


def test_rarest_label_by_hand():
    Y = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    # frequencies 4, 2, 2: label 1 and 2 tie as rarest, the lower index wins
    assert rarest_label(Y).tolist() == [1, 2, 0, 3, 1]
