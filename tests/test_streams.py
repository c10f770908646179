"""Multi-label streams: Yeast from river in river's order, the planted-block generator and its
structure swap, and their one-line errors."""
import itertools

import numpy as np
import pytest

from clients.datasets import DataError, load_dataset, planted_blocks
from scenarios import ConfigError, resolve


def test_yeast_is_rivers_in_rivers_order():
    from river.datasets import Yeast

    d = load_dataset("yeast")
    assert d.task == "multilabel" and d.n_classes == 14 and d.X_train.dtype == np.float32
    assert d.X_train.shape == (1934, 103) and d.X_test.shape == (483, 103) and d.y_train.dtype == np.uint8
    Y = np.concatenate([d.y_train, d.y_test])
    assert Y.sum(1).mean() == pytest.approx(4.237, abs=1e-3)  # the published label cardinality
    for i, (x, y) in enumerate(itertools.islice(Yeast(), 3)):
        np.testing.assert_allclose(d.X_train[i], [x[f"Att{k}"] for k in range(1, 104)], rtol=1e-6)
        assert d.y_train[i].tolist() == [int(y[f"Class{k}"]) for k in range(1, 15)]


def test_label_blocks_plant_the_blocks_and_swap_them():
    d = load_dataset("label_blocks", seed=2, n_samples=4000, swap_at=0.5)
    before, after = planted_blocks(50, 5, seed=2), planted_blocks(50, 5, seed=2, swap=True)
    assert not np.array_equal(before, after)

    def together(Y, block):  # mean co-occurrence of labels in one block vs in different blocks
        C = (Y.T.astype(float) @ Y) / len(Y)
        same = block[:, None] == block[None, :]
        np.fill_diagonal(same, False)
        other = block[:, None] != block[None, :]
        return C[same].mean() / C[other].mean()

    assert together(d.y_train[:2000], before) > 5 > together(d.y_train[:2000], after)
    assert together(d.y_train[2000:], after) > 5 > together(d.y_train[2000:], before)
    assert together(d.y_test, after) > 5  # the test rows follow the final concept
    again = load_dataset("label_blocks", seed=2, n_samples=4000, swap_at=0.5)
    np.testing.assert_array_equal(d.X_train, again.X_train)
    assert not np.array_equal(d.y_train, load_dataset("label_blocks", seed=3, n_samples=4000).y_train)


@pytest.mark.parametrize("override, key", [
    ("data.block_size=0", "data.block_size"), ("data.block_size=60", "data.block_size"),
    ("data.swap_at=1.5", "data.swap_at"), ("data.noise=nan", "data.noise"), ("data.noise=0.7", "data.noise"),
    ("data.blocks_per_sample=11", "data.blocks_per_sample"), ("data.n_labels=1", "data.n_labels")])
def test_label_blocks_errors_name_the_key(override, key):
    with pytest.raises((ConfigError, DataError), match=key):
        load_dataset("label_blocks", **resolve(overrides=["data=label_blocks", override]).data.options())


def test_yeast_errors_are_one_line():
    with pytest.raises(DataError, match="data.test_fraction"):
        load_dataset("yeast", test_fraction=0.0001)
