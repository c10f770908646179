"""Multi-label streams: Yeast from river in river's order, the planted-block generator and its
structure swap, label-skewed splits of multi-label rows, and their one-line errors."""
import itertools
import sys

import numpy as np
import pytest

from clients import datasets
from clients.datasets import DataError, load_dataset, planted_blocks
from clients.partition import label_skew, node_sizes, partition, rarest_label
from scenarios import ConfigError, resolve


@pytest.fixture(scope="module")
def yeast():
    return load_dataset("yeast")


def test_yeast_is_rivers_in_rivers_order(yeast):
    from river.datasets import Yeast

    d = yeast
    assert d.name == "yeast" and d.task == "multilabel" and d.n_classes == 14 and d.image_shape is None
    assert d.X_train.shape == (1934, 103) and d.X_test.shape == (483, 103)
    assert d.X_train.dtype == d.X_test.dtype == np.float32 and d.y_train.dtype == d.y_test.dtype == np.uint8
    assert d.y_train.shape == (1934, 14) and d.y_test.shape == (483, 14)
    Y = np.concatenate([d.y_train, d.y_test])
    assert set(np.unique(Y).tolist()) == {0, 1}
    assert Y.sum(1).mean() == pytest.approx(4.237, abs=1e-3)  # the published label cardinality
    X = np.concatenate([d.X_train, d.X_test])
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)  # used as stored: unit rows
    for i, (x, y) in enumerate(itertools.islice(Yeast(), 3)):
        np.testing.assert_allclose(d.X_train[i], [x[f"Att{k}"] for k in range(1, 104)], rtol=1e-6)
        assert d.y_train[i].tolist() == [int(y[f"Class{k}"]) for k in range(1, 15)]


def test_yeast_test_rows_are_the_last_and_the_seed_shuffles_nothing(yeast):
    d = load_dataset("yeast", test_fraction=0.5, seed=9)
    assert len(d.X_test) == round(0.5 * 2417) and len(d.X_train) + len(d.X_test) == 2417
    X = np.concatenate([yeast.X_train, yeast.X_test])
    np.testing.assert_array_equal(np.concatenate([d.X_train, d.X_test]), X)
    np.testing.assert_array_equal(d.X_test, X[-len(d.X_test):])


def test_yeast_without_river_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "river", None)  # find_spec: not installed
    with pytest.raises(DataError, match=r"^[^\n]*pip install river$"):
        load_dataset("yeast")


def test_yeast_missing_file_says_pip_install(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "_river_file", lambda name: str(tmp_path / name))
    with pytest.raises(DataError, match=r"^river's Yeast file .*yeast.csv.gz is missing; pip install river"):
        load_dataset("yeast")
    (tmp_path / "yeast.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"^river's Yeast file .* could not be read \(.*\); pip install"):
        load_dataset("yeast")


def together(Y, block):
    """Mean co-occurrence of two labels of one block over that of two labels of different blocks."""
    C = (Y.T.astype(float) @ Y) / len(Y)
    same = block[:, None] == block[None, :]
    np.fill_diagonal(same, False)
    return C[same].mean() / C[~same & ~np.eye(len(block), dtype=bool)].mean()


def test_planted_blocks_are_blocks_of_block_size():
    block = planted_blocks(12, 5, seed=0)
    assert block.dtype == np.int64 and block.shape == (12,)
    assert np.bincount(block).tolist() == [5, 5, 2]  # the last block is smaller
    assert not np.array_equal(block, planted_blocks(12, 5, seed=0, swap=True))
    assert np.bincount(planted_blocks(12, 5, seed=0, swap=True)).tolist() == [5, 5, 2]
    np.testing.assert_array_equal(block, planted_blocks(12, 5, seed=0))


def test_label_blocks_plant_the_blocks_and_swap_them():
    d = load_dataset("label_blocks", seed=2, n_samples=4000, swap_at=0.5)
    assert d.task == "multilabel" and d.n_classes == 50 and d.X_train.shape == (4000, 32)
    assert d.X_train.dtype == np.float32 and d.y_train.dtype == np.uint8 and d.X_test.shape == (800, 32)
    assert 0.3 < d.X_train.std() < 3  # features are O(1)
    before, after = planted_blocks(50, 5, seed=2), planted_blocks(50, 5, seed=2, swap=True)
    assert not np.array_equal(before, after)
    assert together(d.y_train[:2000], before) > 5 > together(d.y_train[:2000], after)
    assert together(d.y_train[2000:], after) > 5 > together(d.y_train[2000:], before)
    assert together(d.y_test, after) > 5 > together(d.y_test, before)  # the test rows follow the final concept
    # every block shows up often: each label is on in roughly blocks_per_sample / n_blocks of the rows
    assert d.y_train.mean(0).min() > 0.1


def test_label_blocks_without_a_swap_keep_one_partition():
    d = load_dataset("label_blocks", seed=4, n_samples=2000, n_labels=22, block_size=5, noise=0.0)
    block = planted_blocks(22, 5, seed=4)  # 5 blocks, the last of 2
    for Y in (d.y_train[:1000], d.y_train[1000:], d.y_test):
        assert together(Y, block) > 3  # 4 if exact: 2/5 against 1/10
        # noise 0: the labels of one block are all on or all off together
        for b in range(5):
            on = Y[:, block == b]
            assert (on.min(1) == on.max(1)).all()
    # labels are learnable from x by a linear model
    w, *_ = np.linalg.lstsq(np.c_[d.X_train, np.ones(len(d.X_train))], d.y_train.astype(float), rcond=None)
    pred = np.c_[d.X_test, np.ones(len(d.X_test))] @ w > 0.5
    assert (pred == d.y_test.astype(bool)).mean() > 0.9


def test_label_blocks_same_seed_same_arrays_other_seed_differs():
    kw = dict(n_samples=3000, swap_at=0.3, n_labels=20, block_size=4)
    a, b = load_dataset("label_blocks", seed=7, **kw), load_dataset("label_blocks", seed=7, **kw)
    for key in ("X_train", "y_train", "X_test", "y_test"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes()
    c = load_dataset("label_blocks", seed=8, **kw)
    assert not np.array_equal(a.X_train, c.X_train) and not np.array_equal(a.y_train, c.y_train)


def test_dirichlet_and_shards_split_multilabel_streams_with_skew(yeast):
    Y = yeast.y_train
    key = rarest_label(Y)
    skew = {}
    for scheme in ("iid", "dirichlet", "shards"):
        owner = partition(Y, 10, scheme, np.random.default_rng(0), alpha=0.3)
        assert (node_sizes(owner, 10) > 0).all() and node_sizes(owner, 10).sum() == len(Y)
        skew[scheme] = label_skew(owner, key, 10, 15)
        # the per-label positive rates of the nodes differ from each other more than under iid
        rates = np.stack([Y[owner == n].mean(0) for n in range(10)])
        skew[scheme + " rates"] = float(rates.std(0).mean())
    assert skew["dirichlet"] > 3 * skew["iid"] and skew["shards"] > 3 * skew["iid"]
    assert skew["dirichlet rates"] > 2 * skew["iid rates"]


@pytest.mark.parametrize("override, key", [
    ("data.block_size=0", "data.block_size"), ("data.block_size=60", "data.block_size"),
    ("data.swap_at=1.5", "data.swap_at"), ("data.swap_at=0", "data.swap_at"), ("data.swap_at=nan", "data.swap_at"),
    ("data.noise=nan", "data.noise"), ("data.noise=0.7", "data.noise"), ("data.noise=-0.1", "data.noise"),
    ("data.blocks_per_sample=11", "data.blocks_per_sample"), ("data.blocks_per_sample=0", "data.blocks_per_sample"),
    ("data.n_labels=1", "data.n_labels"), ("data.n_samples=0", "data.n_samples"),
    ("data.n_features=0", "data.n_features"), ("data.test_fraction=1", "data.test_fraction"),
    ("data.n_samples=1000000000001", "data.n_samples"), ("data.block_size=abc", "data.block_size")])
def test_label_blocks_errors_are_one_line_naming_the_key(override, key):
    with pytest.raises((ConfigError, DataError)) as err:
        load_dataset("label_blocks", **resolve(overrides=["data=label_blocks", override]).data.options())
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["0", "1", "0.0001", "nan", "-0.5"])
def test_yeast_errors_are_one_line(value):
    with pytest.raises((ConfigError, DataError)) as err:
        load_dataset("yeast", **resolve(overrides=["data=yeast", f"data.test_fraction={value}"]).data.options())
    assert "data.test_fraction" in str(err.value) and "\n" not in str(err.value)


def test_configs_compose():
    y = resolve(overrides=["data=yeast"]).data
    assert y.name == "yeast" and y.options() == {"test_fraction": 0.2} and y.stream_rate == 1.0
    b = resolve(overrides=["data=label_blocks", "data.swap_at=0.5"]).data
    assert b.options() == dict(n_samples=20000, n_features=32, n_labels=50, block_size=5, blocks_per_sample=2,
                               noise=0.02, swap_at=0.5, test_fraction=0.2)
