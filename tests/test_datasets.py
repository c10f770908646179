import numpy as np
import pytest

from clients.datasets import DATASETS, Dataset, DataError, load_dataset, load_digits, load_npz, load_synthetic


def test_digits_shapes_and_range():
    d = load_digits()
    assert d.X_train.shape == (1437, 64) and d.X_test.shape == (360, 64)
    assert d.y_train.shape == (1437,) and d.y_test.shape == (360,)
    assert d.X_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.n_features == 64 and d.n_classes == 10 and d.image_shape == (1, 8, 8)
    assert d.X_train.min() >= 0.0 and d.X_train.max() == 1.0
    assert set(np.unique(d.y_train)) == set(range(10)) == set(np.unique(d.y_test))


def test_digits_split_depends_on_seed():
    a, b = load_digits(seed=0), load_digits(seed=1)
    np.testing.assert_array_equal(a.X_test, load_digits(seed=0).X_test)
    assert not np.array_equal(a.X_test, b.X_test)


def test_synthetic_sizes_dtypes_and_scaling():
    d = load_synthetic(n_samples=5000, n_features=20, n_classes=4, test_fraction=0.2, seed=3)
    assert d.X_train.shape == (4000, 20) and d.X_test.shape == (1000, 20)
    assert d.X_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.n_classes == 4 and d.image_shape is None
    assert set(np.unique(d.y_train)) == {0, 1, 2, 3}
    np.testing.assert_allclose(d.X_train.mean(axis=0), 0.0, atol=0.06)
    np.testing.assert_allclose(d.X_train.std(axis=0), 1.0, atol=0.06)


def test_synthetic_is_deterministic_by_seed():
    a = load_synthetic(n_samples=500, seed=7)
    b = load_synthetic(n_samples=500, seed=7)
    c = load_synthetic(n_samples=500, seed=8)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.X_train, c.X_train)


def test_synthetic_is_learnable():
    from sklearn.linear_model import LogisticRegression

    d = load_synthetic(n_samples=3000, n_features=16, n_classes=3, class_sep=2.0)
    accuracy = LogisticRegression(max_iter=500).fit(d.X_train, d.y_train).score(d.X_test, d.y_test)
    assert accuracy > 0.8


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n_samples=15, n_classes=10), "n_samples"),
        (dict(n_features=1), "n_features"),
        (dict(test_fraction=0.0), "test_fraction"),
        (dict(test_fraction=1.5), "test_fraction"),
        (dict(n_classes=10, n_informative=3), "n_informative"),
    ],
)
def test_synthetic_validation(kwargs, field):
    with pytest.raises(DataError, match=field):
        load_synthetic(**kwargs)


def test_npz_tabular_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    X_tr, X_te = rng.normal(size=(30, 5)), rng.normal(size=(10, 5))
    y_tr, y_te = rng.integers(0, 3, 30), np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    path = tmp_path / "table.npz"
    np.savez(path, X_train=X_tr, y_train=y_tr, X_test=X_te, y_test=y_te)
    d = load_npz(str(path))
    assert isinstance(d, Dataset) and d.name == "table"
    assert d.X_train.dtype == np.float32 and d.y_test.dtype == np.int64
    np.testing.assert_allclose(d.X_train, X_tr, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train, y_tr)
    assert d.n_classes == 4  # the largest label is only in the test split
    assert d.image_shape is None and d.n_features == 5


def test_npz_uint8_images_are_scaled_and_flattened(tmp_path):
    rng = np.random.default_rng(0)
    X_tr = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    X_tr[0, 0, 0] = 255
    X_te = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    path = tmp_path / "imgs.npz"
    np.savez(path, X_train=X_tr, y_train=np.arange(12) % 2, X_test=X_te, y_test=np.zeros(4, dtype=np.int32))
    d = load_dataset("npz", path=str(path))
    assert d.image_shape == (1, 28, 28) and d.n_features == 784
    assert d.X_train.shape == (12, 784) and d.X_train.max() == 1.0
    np.testing.assert_allclose(d.X_test.reshape(4, 28, 28), X_te / 255.0, rtol=1e-6)


def test_npz_channel_images_keep_shape(tmp_path):
    X = np.random.default_rng(0).random((6, 3, 4, 4)).astype(np.float32)
    path = tmp_path / "rgb.npz"
    np.savez(path, X_train=X, y_train=np.arange(6), X_test=X[:2], y_test=np.arange(2))
    d = load_npz(str(path))
    assert d.image_shape == (3, 4, 4) and d.X_train.shape == (6, 48)
    np.testing.assert_array_equal(d.X_train, X.reshape(6, 48))  # float data is not rescaled


def test_npz_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(DataError, match="npz file not found: .*nope.npz"):
        load_npz(str(path))


def test_npz_missing_keys(tmp_path):
    path = tmp_path / "half.npz"
    np.savez(path, X_train=np.zeros((2, 2)), y_train=np.zeros(2, dtype=int))
    with pytest.raises(DataError, match="lacks X_test, y_test; it needs arrays X_train, y_train, X_test, y_test"):
        load_npz(str(path))


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(y_train=np.zeros(3, dtype=int)), "X_train has 4 rows but y_train has 3"),
        (dict(X_test=np.zeros((2, 5))), r"X_train samples have shape \(3,\) but X_test samples \(5,\)"),
        (dict(y_test=np.array([0, -1])), "negative labels"),
    ],
)
def test_npz_inconsistent_arrays(tmp_path, arrays, message):
    base = dict(X_train=np.zeros((4, 3)), y_train=np.zeros(4, dtype=int), X_test=np.zeros((2, 3)), y_test=np.zeros(2, dtype=int))
    path = tmp_path / "bad.npz"
    np.savez(path, **{**base, **arrays})
    with pytest.raises(DataError, match=message):
        load_npz(str(path))


def test_load_dataset_dispatch():
    assert DATASETS == ("digits", "synthetic", "synthetic_multilabel", "npz")
    d = load_dataset("synthetic", seed=4, n_samples=200, n_features=8, n_classes=2)
    np.testing.assert_array_equal(d.X_train, load_synthetic(n_samples=200, n_features=8, n_classes=2, seed=4).X_train)
    assert load_dataset("digits", test_fraction=0.5).X_test.shape == (899, 64)


def test_load_dataset_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'mnist'; choose one of digits, synthetic, synthetic_multilabel, npz"):
        load_dataset("mnist")


def test_load_dataset_unknown_option():
    with pytest.raises(DataError, match="unknown option.*n_sample .*valid options: n_samples, n_features"):
        load_dataset("synthetic", n_sample=10)
    with pytest.raises(DataError, match="needs option.*path"):
        load_dataset("npz")


def test_synthetic_multilabel_and_npz_label_matrices(tmp_path):
    d = load_dataset("synthetic_multilabel", seed=1, n_samples=300, n_labels=5)
    assert d.task == "multilabel" and d.y_train.shape == (240, 5) and d.n_classes == 5
    assert set(np.unique(d.y_train)) <= {0, 1} and d.y_train.sum(1).mean() > 0.5
    path = tmp_path / "ml.npz"
    np.savez(path, X_train=d.X_train, y_train=d.y_train, X_test=d.X_test, y_test=d.y_test)
    assert load_npz(str(path)).task == "multilabel" and load_npz(str(path)).n_classes == 5
    np.savez(path, X_train=d.X_train, y_train=d.y_train * 2, X_test=d.X_test, y_test=d.y_test)
    with pytest.raises(DataError, match="0/1 label indicators"):
        load_npz(str(path))
    np.savez(path, X_train=d.X_train, y_train=d.y_train, X_test=d.X_test, y_test=d.y_test[:, 0])
    with pytest.raises(DataError, match="y_train has shape"):
        load_npz(str(path))
