import os
import sys
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import clients.datasets as datasets
from clients.datasets import (DATASETS, MAX_CLASSES, Dataset, DataError, available_memory_bytes, load_dataset,
                              load_digits, load_npz, load_synthetic, load_synthetic_multilabel)
from messages import one_line


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
    assert DATASETS == ("digits", "synthetic", "synthetic_multilabel", "yeast", "label_blocks", "npz")
    d = load_dataset("synthetic", seed=4, n_samples=200, n_features=8, n_classes=2)
    np.testing.assert_array_equal(d.X_train, load_synthetic(n_samples=200, n_features=8, n_classes=2, seed=4).X_train)
    assert load_dataset("digits", test_fraction=0.5).X_test.shape == (899, 64)


def test_load_dataset_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'mnist'; choose one of digits, synthetic, synthetic_multilabel, yeast, label_blocks, npz"):
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


# ---- every bad file or option is one DataError line naming the array or option ----

KEYS = ("X_train", "y_train", "X_test", "y_test")


def valid_arrays():
    rng = np.random.default_rng(0)
    return dict(X_train=rng.normal(size=(8, 3)), y_train=np.arange(8) % 3,
                X_test=rng.normal(size=(4, 3)), y_test=np.arange(4) % 3)


def write_npz(tmp_path, name="bad.npz", **overrides):
    arrays = {**valid_arrays(), **overrides}
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def with_value(key, index, value, base=None):
    a = (valid_arrays()[key] if base is None else base).astype(np.float64)
    a[index] = value
    return a


@pytest.mark.parametrize(
    "overrides, needles",
    [
        # non-finite features: the array and its first bad index
        (dict(X_train=with_value("X_train", (5, 2), np.nan)), ["bad.npz: X_train[5, 2] is nan", "finite"]),
        (dict(X_test=with_value("X_test", (1, 0), -np.inf)), ["X_test[1, 0]", "is -inf"]),
        (dict(X_train=with_value("X_train", (0, 1), 1e300)), ["X_train[0, 1]", "float32"]),
        (dict(X_train=with_value("X_train", (2, 0), np.nan, base=with_value("X_train", (6, 2), np.inf))),
         ["X_train[2, 0]", "is nan"]),  # the first in row-major order, not the first found
        (dict(X_train=with_value("X_train", (2, 1, 3), np.nan, base=np.zeros((8, 4, 5)).astype(np.float32)),
              X_test=np.zeros((4, 4, 5))), ["X_train[2, 1, 3]", "is nan"]),
        # bad class ids
        (dict(y_train=with_value("y_train", 2, np.nan)), ["y_train[2]", "is nan"]),
        (dict(y_test=with_value("y_test", 3, np.inf)), ["y_test[3]", "is inf"]),
        (dict(y_train=with_value("y_train", 4, 1.5)), ["y_train[4]", "is 1.5", "whole-number"]),
        (dict(y_test=np.array([0, -1, 1, 2])), ["y_test[1]", "is -1", "negative labels"]),
        (dict(y_test=np.array([0, 1, MAX_CLASSES, 2])), ["y_test[2]", f"below {MAX_CLASSES}"]),
        (dict(y_train=np.full(8, 2**63, dtype=np.uint64)), ["y_train[0]", "below"]),
        (dict(y_train=np.zeros(8, int), y_test=np.zeros(4, int)), ["y_train and y_test", "at least 2 classes"]),
        # multi-label matrices hold 0/1 only
        (dict(y_train=np.eye(8, 3) * 2, y_test=np.eye(4, 3)), ["y_train[0, 0]", "is 2.0", "0/1"]),
        (dict(y_train=np.eye(8, 3), y_test=with_value("y_test", (1, 2), np.nan, base=np.eye(4, 3))),
         ["y_test[1, 2]", "is nan", "0/1"]),
        (dict(y_train=np.eye(8, 3), y_test=np.eye(4, 3) - 2 * np.eye(4, 3)), ["y_test[0, 0]", "is -1.0"]),
        (dict(y_train=np.zeros((8, 0)), y_test=np.zeros((4, 0))), ["y_train", "0 columns"]),
        (dict(y_test=np.eye(4, 3)), ["y_train has shape (8,) but y_test (4, 3)"]),
        # empty splits
        (dict(X_test=np.zeros((0, 3)), y_test=np.zeros(0, int)), ["X_test", "empty (0 samples)", "test sample"]),
        (dict(X_train=np.zeros((0, 3)), y_train=np.zeros(0, int)), ["X_train", "empty (0 samples)"]),
        (dict(X_train=np.zeros((8, 0)), X_test=np.zeros((4, 0))), ["X_train", "no features"]),
        # dtypes that are not real numbers
        (dict(X_train=np.array([[1, "a", None]] * 8, dtype=object)), ["X_train", "dtype object", "never unpickled"]),
        (dict(y_test=np.array([0, 1, 2, None], dtype=object)), ["y_test", "dtype object"]),
        (dict(y_train=np.array(list("abcabcab"))), ["y_train", "strings", "<U1"]),
        (dict(X_test=np.zeros((4, 3), "S3")), ["X_test", "strings"]),
        (dict(X_train=np.zeros((8, 3), complex)), ["X_train", "complex"]),
        (dict(y_test=np.zeros(4, np.complex64)), ["y_test", "complex"]),
        (dict(X_train=np.zeros((8, 3), "M8[s]")), ["X_train", "datetime64"]),
        (dict(X_train=np.zeros((8, 3), [("a", "f4"), ("b", "i4")])), ["X_train", "structured"]),
        # missing arrays, mismatched lengths and shapes
        (dict(X_test=None, y_test=None, extra=np.zeros(2)),
         ["lacks X_test, y_test", "it holds X_train, y_train, extra"]),
        (dict(y_train=np.zeros(7, int)), ["X_train has 8 rows but y_train has 7"]),
        (dict(y_test=np.array([0, 1, 2, 0, 1])), ["X_test has 4 rows but y_test has 5"]),
        (dict(X_test=np.zeros((4, 5))), ["X_train samples have shape (3,) but X_test samples (5,)"]),
        (dict(X_test=np.zeros((4, 3, 1))), ["X_train samples have shape (3,) but X_test samples (3, 1)"]),
        (dict(X_train=np.zeros(8)), ["X_train", "[M, F]", "shape (8,)"]),
        (dict(X_train=np.array(1.0)), ["X_train", "shape ()"]),
        (dict(X_train=np.zeros((8, 1, 1, 1, 3))), ["X_train", "shape (8, 1, 1, 1, 3)"]),
        (dict(y_train=np.array(3)), ["y_train", "shape ()"]),
        (dict(y_train=np.zeros((8, 2, 2))), ["y_train", "shape (8, 2, 2)"]),
    ],
)
def test_npz_bad_arrays_are_one_line_errors(tmp_path, overrides, needles):
    path = write_npz(tmp_path, **overrides)
    with pytest.raises(DataError) as info:
        load_npz(path)
    one_line(info, "npz file", *needles)


def test_npz_test_only_class_widens_n_classes(tmp_path):
    # A class only the test split holds is a class the model never saw, not an error.
    d = load_npz(write_npz(tmp_path, y_test=np.array([0, 1, 2, 7])))
    assert d.n_classes == 8 and d.y_test.max() == 7 and d.y_train.max() == 2


def test_npz_accepts_bool_features_and_whole_float_or_bool_labels(tmp_path):
    d = load_npz(write_npz(tmp_path, X_train=np.ones((8, 3), bool), X_test=np.zeros((4, 3), bool),
                           y_train=(np.arange(8) % 3).astype(np.float32), y_test=np.array([True, False, True, True])))
    assert d.X_train.dtype == np.float32 and d.X_train.max() == 1.0  # bools are not rescaled
    assert d.y_train.dtype == np.int64 and d.n_classes == 3
    d = load_npz(write_npz(tmp_path, y_train=np.eye(8, 3, dtype=bool), y_test=np.eye(4, 3).astype(np.float16)))
    assert d.task == "multilabel" and d.y_test.dtype == np.uint8 and d.n_classes == 3


def test_npz_file_is_never_unpickled(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("a user file was unpickled"))
    path = write_npz(tmp_path, y_train=np.array([0, 1, 2, 0, 1, 2, 0, {"x": 1}], dtype=object))
    with pytest.raises(DataError) as info:
        load_npz(path)
    one_line(info, "y_train", "dtype object")


def corrupt_member(path):
    """Overwrite bytes inside the stored data of X_train (after its .npy header)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("X_train.npy")
    data = bytearray(open(path, "rb").read())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 130
    data[start:start + 16] = b"\xff" * 16
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda p: open(p, "wb").close(), ["is empty (0 bytes)", "numpy.savez"]),
        (lambda p: open(p, "w").write("X_train,y_train\n1,2\n"), ["is a text file", "numpy.savez"]),
        (lambda p: open(p, "wb").write(bytes(range(256)) * 4), ["is not an npz (zip) archive"]),
        (lambda p: np.save(open(p, "wb"), np.zeros(3)), ["single .npy array"]),
        (lambda p: open(p, "wb").write(open(write_npz(p.parent, "ok.npz"), "rb").read()[:300]),
         ["truncated or corrupt zip"]),
        (lambda p: (os.replace(write_npz(p.parent, "ok.npz"), p), corrupt_member(p)),
         ["X_train", "could not be read", "CRC"]),
        (lambda p: (np.savez_compressed(p, **valid_arrays()), corrupt_member(p)), ["X_train", "could not be"]),
        (lambda p: zipfile.ZipFile(p, "w").__exit__(None, None, None), ["lacks X_train", "no arrays"]),
        (lambda p: write_zip(p, {k + ".npy": b"not an array" for k in KEYS}), ["X_train", "could not be read as a .npy array"]),
        (lambda p: write_zip(p, {k: b"raw" for k in KEYS}), ["X_train", "could not be read as a .npy array"]),
    ],
    ids=["empty", "text", "binary", "npy", "truncated", "crc", "compressed", "empty-zip", "garbage", "no-suffix"],
)
def test_npz_unreadable_files_are_one_line_errors(tmp_path, make, needles):
    path = tmp_path / "data.npz"
    make(path)
    with pytest.raises(DataError) as info:
        load_npz(str(path))
    one_line(info, f"npz file {path}", *needles)


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_npz_directory_and_missing_file(tmp_path):
    with pytest.raises(DataError) as info:
        load_npz(str(tmp_path))
    one_line(info, str(tmp_path), "is a directory", "data.path")
    with pytest.raises(DataError) as info:
        load_dataset("npz", path=str(tmp_path / "nope.npz"))
    one_line(info, "npz file not found", "nope.npz")


def test_npz_path_with_a_newline_stays_one_line(tmp_path):
    with pytest.raises(DataError) as info:
        load_npz(str(tmp_path / "two\nlines.npz"))
    one_line(info, "not found", "two\\nlines.npz")


def test_npz_without_read_permission(tmp_path, monkeypatch):
    path = write_npz(tmp_path)
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads anything: make open() refuse as it would for others
        def refuse(file, *args, **kwargs):
            raise PermissionError(13, "Permission denied", file)
        monkeypatch.setattr(datasets, "open", refuse, raising=False)
    with pytest.raises(DataError) as info:
        load_npz(path)
    one_line(info, path, "not readable (permission denied)")


def test_npz_too_large_for_memory_is_refused_unread(tmp_path, monkeypatch):
    path = write_npz(tmp_path)
    monkeypatch.setattr(datasets, "available_memory_bytes", lambda: 100)
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("read before the size check"))
    with pytest.raises(DataError) as info:
        load_npz(path)
    one_line(info, path, "needs about", "GB", "available")


@pytest.mark.parametrize(
    "loader, kwargs, option",
    [
        (load_synthetic, dict(n_features=0), "data.n_features"),
        (load_synthetic, dict(n_features=2.5), "data.n_features"),
        (load_synthetic, dict(n_classes=1), "data.n_classes"),
        (load_synthetic, dict(n_classes=0), "data.n_classes"),
        (load_synthetic, dict(n_samples=0), "data.n_samples"),
        (load_synthetic, dict(n_samples=-5, n_classes=2), "data.n_samples"),
        (load_synthetic, dict(n_features=4, n_informative=5), "data.n_informative"),
        (load_synthetic, dict(n_features=4, n_informative=1), "data.n_informative"),
        (load_synthetic, dict(n_samples=20, n_classes=2, test_fraction=0.99), "data.test_fraction"),
        (load_synthetic, dict(test_fraction=float("nan")), "data.test_fraction"),
        (load_synthetic, dict(class_sep=0.0), "data.class_sep"),
        (load_synthetic, dict(class_sep=float("nan")), "data.class_sep"),
        (load_synthetic, dict(class_sep=float("inf")), "data.class_sep"),
        (load_synthetic_multilabel, dict(n_features=0), "data.n_features"),
        (load_synthetic_multilabel, dict(n_labels=1), "data.n_labels"),
        (load_synthetic_multilabel, dict(mean_labels=0), "data.mean_labels"),
        (load_synthetic_multilabel, dict(n_labels=3, mean_labels=4), "data.mean_labels"),
        (load_synthetic_multilabel, dict(n_samples=1), "data.n_samples"),
        (load_synthetic_multilabel, dict(n_samples=2, test_fraction=0.9), "data.test_fraction"),
        (load_synthetic_multilabel, dict(test_fraction=1.0), "data.test_fraction"),
        (load_digits, dict(test_fraction=0.001), "data.test_fraction"),
        (load_digits, dict(test_fraction=0.999), "data.test_fraction"),
    ],
)
def test_extreme_loader_options_name_the_option(loader, kwargs, option):
    with pytest.raises(DataError) as info:
        loader(**kwargs)
    one_line(info, option)


def test_digits_split_edges_still_load():
    assert len(load_digits(test_fraction=0.006).X_test) >= 10
    assert len(load_digits(test_fraction=0.994).X_train) >= 10


@pytest.mark.parametrize("loader", [load_synthetic, load_synthetic_multilabel])
def test_synthetic_size_guard_gives_estimate_and_available_memory(loader, monkeypatch):
    monkeypatch.setattr(datasets, "available_memory_bytes", lambda: 2 * 10**9)
    with pytest.raises(DataError) as info:
        loader(n_samples=10**8, n_features=64)
    one_line(info, "data.n_samples=100000000", "data.n_features=64", "needs about", "2 GB of memory is available")
    loader(n_samples=1000, n_features=8)  # small requests pass


def test_synthetic_size_guard_on_this_machine():
    if available_memory_bytes() is None:
        pytest.skip("this machine does not say how much memory is available")
    with pytest.raises(DataError) as info:  # 10^9 x 10^5 floats: far beyond any machine, refused unallocated
        load_dataset("synthetic", n_samples=10**9, n_features=10**5)
    one_line(info, "data.n_samples", "GB")


def test_available_memory_reads_meminfo_and_cgroup(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000 kB\nMemFree:  1000 kB\nMemAvailable:   4000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    monkeypatch.setattr(datasets, "_MEMINFO", str(meminfo))
    monkeypatch.setattr(datasets, "_CGROUP", str(cgroup))
    assert available_memory_bytes() == 4000 * 1024  # no cgroup files: MemAvailable alone
    (cgroup / "memory.max").write_text("max\n")
    assert available_memory_bytes() == 4000 * 1024  # no limit
    (cgroup / "memory.max").write_text("3000000\n")
    (cgroup / "memory.current").write_text("2500000\n")
    (cgroup / "memory.stat").write_text("anon 2000000\ninactive_file 500000\n")
    assert available_memory_bytes() == 1_000_000  # the container's room, cache counted as free
    monkeypatch.setattr(datasets, "_MEMINFO", str(tmp_path / "absent"))
    assert available_memory_bytes() == 1_000_000


def test_available_memory_falls_back_to_psutil_then_none(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_MEMINFO", str(tmp_path / "absent"))
    monkeypatch.setattr(datasets, "_CGROUP", str(tmp_path / "absent"))
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    assert available_memory_bytes() is None
    load_synthetic(n_samples=200, n_features=4, n_classes=2)  # unknown memory: no check, still loads

    class FakePsutil:
        @staticmethod
        def virtual_memory():
            return type("vm", (), {"available": 123456})()

    monkeypatch.setitem(sys.modules, "psutil", FakePsutil)
    assert available_memory_bytes() == 123456


# Hypothesis: any npz, however broken, loads to a sound Dataset or fails with one DataError line.

DTYPES = ["float32", "float64", "float16", "int8", "int64", "uint8", "uint64", "bool", "complex64",
          "object", "<U2", "S2", "M8[s]"]
ACTIONS = ["keep"] * 20 + ["dtype", "shape", "nan", "inf", "drop", "empty", "half", "negative", "scalar", "huge"]


def _mutate(draw, key, a, rng):
    action = draw(st.sampled_from(ACTIONS))
    if action == "dtype":
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        try:
            return a.astype(dtype)
        except (TypeError, ValueError):
            return np.zeros(a.shape, dtype)
    if action == "shape":
        return rng.normal(size=draw(st.lists(st.integers(0, 3), max_size=4)))
    if action in ("nan", "inf", "half", "negative", "huge") and a.size:
        a = a.astype(np.float64)
        value = {"nan": np.nan, "inf": draw(st.sampled_from([np.inf, -np.inf])), "half": 0.5, "negative": -1.0,
                 "huge": 1e300}[action]
        a.flat[draw(st.integers(0, a.size - 1))] = value
        return a
    if action == "drop":
        return None
    if action == "empty":
        return a[:0]
    if action == "scalar":
        return np.array(draw(st.floats(allow_nan=True, allow_infinity=True)))
    return a


@st.composite
def npz_files(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_train, n_test, n_features = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    if draw(st.booleans()):  # multi-label
        labels = lambda m: rng.integers(0, 2, (m, 3))  # noqa: E731
    else:
        labels = lambda m: rng.integers(0, 4, m)  # noqa: E731
    arrays = dict(X_train=rng.normal(size=(n_train, n_features)), y_train=labels(n_train),
                  X_test=rng.normal(size=(n_test, n_features)), y_test=labels(n_test))
    arrays = {k: _mutate(draw, k, a, rng) for k, a in arrays.items()}
    arrays = {k: a for k, a in arrays.items() if a is not None}
    if draw(st.booleans()):
        arrays["extra"] = np.zeros(2)
    damage = draw(st.sampled_from([None] * 6 + ["truncate", "flip", "nothing"]))
    return arrays, damage, draw(st.integers(0, 10**6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=npz_files())
def test_any_npz_loads_soundly_or_is_one_data_error(case):
    arrays, damage, where = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "drawn.npz")
        np.savez(path, **arrays)
        data = open(path, "rb").read()
        if damage == "truncate":
            data = data[: where % len(data)]
        elif damage == "flip":
            i = where % len(data)
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        elif damage == "nothing":
            data = b""
        open(path, "wb").write(data)
        try:
            d = load_npz(path)
        except DataError as err:
            assert str(err) and "\n" not in str(err) and "npz" in str(err), str(err)
            return
    for X, y in ((d.X_train, d.y_train), (d.X_test, d.y_test)):
        assert X.dtype == np.float32 and X.ndim == 2 and len(X) == len(y) > 0
        assert np.isfinite(X).all()
    assert d.X_train.shape[1] == d.X_test.shape[1] == d.n_features > 0
    if d.task == "multiclass":
        assert d.n_classes >= 2
        for y in (d.y_train, d.y_test):
            assert y.dtype == np.int64 and y.ndim == 1 and 0 <= y.min() and y.max() < d.n_classes
    else:
        for y in (d.y_train, d.y_test):
            assert y.dtype == np.uint8 and y.shape[1] == d.n_classes and set(np.unique(y)) <= {0, 1}


def test_bundled_digits_are_scikit_learns_and_so_is_the_split():
    """The digits load from a bundled array file and split without importing scikit-learn at
    start-up; both equal scikit-learn's (its copy of the data, train_test_split with stratify)."""
    import math

    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    from clients.datasets import load_digits, stratified_split

    ref = sk_digits()
    ours = load_digits(0.2, seed=0, split="ordered", pixels="raw")
    np.testing.assert_array_equal(np.concatenate([ours.X_train, ours.X_test]), ref.data.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([ours.y_train, ours.y_test]), ref.target)
    idx = np.arange(len(ref.target))
    for seed in (0, 1, 7, 12345):
        for frac in (0.006, 0.2, 0.5, 0.994):
            tr, te = train_test_split(idx, test_size=frac, stratify=ref.target, random_state=seed)
            got = stratified_split(ref.target, math.ceil(frac * len(idx)), seed)
            np.testing.assert_array_equal(got[0], tr)
            np.testing.assert_array_equal(got[1], te)


def test_digits_without_the_bundled_file_are_the_same(monkeypatch):
    """A Flower app bundle ships no .npz: the devices read scikit-learn's copy, the same rows."""
    a = load_digits(0.2, seed=5)
    real = os.path.exists
    monkeypatch.setattr(datasets.os.path, "exists", lambda p: False if str(p).endswith("digits.npz") else real(p))
    b = load_digits(0.2, seed=5)
    for k in ("X_train", "y_train", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
