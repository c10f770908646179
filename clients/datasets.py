"""Datasets for simulated clients: bundled digits, generated tabular or multi-label data, or a
user npz file.

Every loader returns a `Dataset` with flattened float32 features and labels that name the task:
int64 class ids [M] (multiclass) or a 0/1 matrix [M, L] (multilabel), so the rest of the
simulator never cares where the data came from. Nothing here touches the network.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """Bad data request; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class Dataset:
    """A train/test split.

    X_* are float32 [samples, features] (images are flattened; `image_shape` says how to
    unflatten one row). y_* are int64 labels in 0..n_classes-1 [samples], or, for a multi-label
    dataset, uint8 0/1 indicators [samples, n_classes] (n_classes is then the number of labels).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    image_shape: tuple[int, ...] | None

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def task(self) -> str:
        """The task these labels call for: multiclass or multilabel (kernels.tasks)."""
        return "multilabel" if self.y_train.ndim == 2 else "multiclass"


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}; use e.g. 0.2")


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 samples), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    _check_fraction(test_fraction)
    digits = _sk_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=seed)
    return Dataset("digits", X_tr, y_tr, X_te, y_te, n_classes=10, image_shape=(1, 8, 8))


def load_synthetic(
    n_samples: int = 10_000,
    n_features: int = 64,
    n_classes: int = 10,
    n_informative: int | None = None,
    test_fraction: float = 0.2,
    class_sep: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """Gaussian class clusters from `make_classification`, standardized, float32.

    Only the informative features come from scikit-learn; the pure-noise features (listed last)
    are drawn here in float32 with numpy's fast generator, which keeps a million samples to a
    couple of seconds. n_informative defaults to a quarter of the features (at least enough for
    n_classes <= 2**n_informative), which leaves room for a nonlinear model to beat a linear one.
    """
    from sklearn.datasets import make_classification

    if n_classes < 2:
        raise DataError(f"n_classes must be at least 2, got {n_classes}")
    if n_samples < 2 * n_classes:
        raise DataError(
            f"n_samples must be at least 2 * n_classes = {2 * n_classes}, got {n_samples}; raise n_samples"
        )
    if n_features < 2:
        raise DataError(f"n_features must be at least 2, got {n_features}")
    _check_fraction(test_fraction)
    if class_sep <= 0:
        raise DataError(f"class_sep must be > 0, got {class_sep}")

    # Each class sits on its own hypercube vertex, so it needs n_classes <= 2**n_informative.
    min_informative = max(2, math.ceil(math.log2(n_classes)))
    if n_informative is None:
        n_informative = min(n_features, max(min_informative, n_features // 4))
    if not min_informative <= n_informative <= n_features:
        raise DataError(
            f"n_informative must be between {min_informative} (enough for {n_classes} classes) "
            f"and n_features={n_features}, got {n_informative}; raise n_features or change n_informative"
        )
    n_test = max(1, round(n_samples * test_fraction))
    if n_test >= n_samples:
        raise DataError(f"test_fraction={test_fraction} leaves no training samples; lower it")

    informative, y = make_classification(
        n_samples=n_samples,
        n_features=n_informative,
        n_informative=n_informative,
        n_redundant=0,
        n_repeated=0,
        n_classes=n_classes,
        n_clusters_per_class=1,
        class_sep=class_sep,
        shuffle=True,
        random_state=seed,
    )
    # Rows are already shuffled, so a plain cut is a random split; scale with train statistics only.
    train = informative[n_test:]
    informative -= train.mean(axis=0)
    informative /= train.std(axis=0)
    X = np.empty((n_samples, n_features), dtype=np.float32)
    X[:, :n_informative] = informative
    del informative, train
    if n_features > n_informative:
        # Pure noise is already standard normal, so it needs no scaling.
        rng = np.random.default_rng(seed)
        X[:, n_informative:] = rng.standard_normal((n_samples, n_features - n_informative), dtype=np.float32)
    X_tr, X_te = X[n_test:], X[:n_test]
    y = y.astype(np.int64)
    return Dataset("synthetic", X_tr, y[n_test:], X_te, y[:n_test], n_classes=n_classes, image_shape=None)


def load_synthetic_multilabel(
    n_samples: int = 2000,
    n_features: int = 32,
    n_labels: int = 8,
    mean_labels: int = 2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """scikit-learn's `make_multilabel_classification`: each sample draws about `mean_labels`
    of `n_labels` labels and word-count features from them; features standardized, float32."""
    from sklearn.datasets import make_multilabel_classification

    if n_labels < 2:
        raise DataError(f"n_labels must be at least 2, got {n_labels}")
    if n_features < 1:
        raise DataError(f"n_features must be at least 1, got {n_features}")
    if not 1 <= mean_labels <= n_labels:
        raise DataError(f"mean_labels must be an integer in 1..n_labels={n_labels}, got {mean_labels}")
    _check_fraction(test_fraction)
    n_test = max(1, round(n_samples * test_fraction))
    if n_samples < 2 or n_test >= n_samples:
        raise DataError(f"n_samples={n_samples} with test_fraction={test_fraction} leaves no training samples")
    X, Y = make_multilabel_classification(n_samples=n_samples, n_features=n_features, n_classes=n_labels,
                                          n_labels=mean_labels, allow_unlabeled=True, random_state=seed)
    train = X[n_test:]
    X = ((X - train.mean(0)) / np.maximum(train.std(0), 1e-12)).astype(np.float32)
    Y = Y.astype(np.uint8)
    return Dataset("synthetic_multilabel", X[n_test:], Y[n_test:], X[:n_test], Y[:n_test], n_classes=n_labels,
                   image_shape=None)


_NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")


def _npz_labels(y: np.ndarray, key: str, path: str) -> np.ndarray:
    if y.ndim == 2:  # multi-label: one 0/1 column per label
        if y.size and not np.isin(y, (0, 1)).all():
            raise DataError(f"{key} in {path} is 2-D, so it must hold 0/1 label indicators; found other values")
        return y.astype(np.uint8)
    if y.ndim != 1:
        raise DataError(f"{key} in {path} must be 1-D class ids or a 2-D 0/1 label matrix, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{key} in {path} must hold integer labels, got dtype {y.dtype}; map classes to 0..K-1")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{key} in {path} has negative labels (min {y.min()}); map classes to 0..K-1")
    return y


def load_npz(path: str) -> Dataset:
    """A user file with X_train, y_train, X_test, y_test.

    X may be [M, F] (tabular), [M, H, W] (gray images) or [M, C, H, W]; it is stored flattened
    as float32. Integer pixels with values above 1 (e.g. uint8) are scaled by 1/255.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"npz file not found: {path}")
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in _NPZ_KEYS if k not in archive.files]
        if missing:
            raise DataError(
                f"npz file {path} lacks {', '.join(missing)}; it needs arrays {', '.join(_NPZ_KEYS)}"
            )
        X_tr, y_tr, X_te, y_te = (archive[k] for k in _NPZ_KEYS)

    for xk, X, yk, y in (("X_train", X_tr, "y_train", y_tr), ("X_test", X_te, "y_test", y_te)):
        if X.ndim not in (2, 3, 4):
            raise DataError(f"{xk} in {path} must be [M, F], [M, H, W] or [M, C, H, W], got shape {X.shape}")
        if len(X) != len(y):
            raise DataError(f"{xk} has {len(X)} rows but {yk} has {len(y)} labels in {path}; they must match")
    if X_tr.shape[1:] != X_te.shape[1:]:
        raise DataError(
            f"X_train samples have shape {X_tr.shape[1:]} but X_test samples {X_te.shape[1:]} in {path}; they must match"
        )
    if len(X_tr) == 0:
        raise DataError(f"X_train in {path} is empty; store at least one training sample")
    if not (np.issubdtype(X_tr.dtype, np.number) and np.issubdtype(X_te.dtype, np.number)):
        raise DataError(f"X_train/X_test in {path} must be numeric, got {X_tr.dtype}/{X_te.dtype}")

    y_tr = _npz_labels(y_tr, "y_train", path)
    y_te = _npz_labels(y_te, "y_test", path)
    if y_tr.ndim != y_te.ndim or y_tr.shape[1:] != y_te.shape[1:]:
        raise DataError(f"y_train has shape {y_tr.shape} but y_test {y_te.shape} in {path}; "
                        "use class ids in both or label matrices with the same columns in both")

    sample_shape = X_tr.shape[1:]
    image_shape = None
    if len(sample_shape) == 2:
        image_shape = (1, *sample_shape)
    elif len(sample_shape) == 3:
        image_shape = tuple(sample_shape)

    # Decide the scale from both splits so train and test stay on the same footing.
    scale = 1.0
    if np.issubdtype(X_tr.dtype, np.integer) or np.issubdtype(X_te.dtype, np.integer):
        peak = max(X_tr.max(initial=0), X_te.max(initial=0))
        if peak > 1:
            scale = 1.0 / 255.0

    def flat(X: np.ndarray) -> np.ndarray:
        X = X.reshape(len(X), -1).astype(np.float32)
        if scale != 1.0:
            X *= np.float32(scale)
        return X

    n_classes = y_tr.shape[1] if y_tr.ndim == 2 else int(max(y_tr.max(), y_te.max(initial=0))) + 1
    name = os.path.splitext(os.path.basename(path))[0]
    return Dataset(name, flat(X_tr), y_tr, flat(X_te), y_te, n_classes=n_classes, image_shape=image_shape)


_LOADERS = {"digits": load_digits, "synthetic": load_synthetic, "synthetic_multilabel": load_synthetic_multilabel,
            "npz": load_npz}
DATASETS = tuple(_LOADERS)


def load_dataset(name: str, *, seed: int = 0, **options) -> Dataset:
    """Load a dataset by name; `options` are the loader's keyword arguments."""
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    loader = _LOADERS[name]
    params = inspect.signature(loader).parameters
    valid = [p for p in params if p != "seed"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DataError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; valid options: {', '.join(valid) or 'none'}"
        )
    missing = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise DataError(f"dataset {name!r} needs option(s) {', '.join(missing)}")
    if "seed" in params:
        options["seed"] = seed
    return loader(**options)
