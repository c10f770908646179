"""Datasets for simulated clients: bundled digits, generated tabular or multi-label data, Yeast
from river's bundled copy, a multi-label stream with planted label blocks, or a user npz file.

Every loader returns a `Dataset` with flattened float32 features and labels that name the task:
int64 class ids [M] (multiclass) or a 0/1 matrix [M, L] (multilabel), so the rest of the
simulator never cares where the data came from. Nothing here touches the network. A bad option,
file or value is a one-line DataError naming the option (data.<option>), the file, the array and,
for a bad value, its first index; user files are never unpickled.
"""

from __future__ import annotations

import inspect
import math
import os
import zipfile
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


# ---- memory ---------------------------------------------------------------------------------

_MEMINFO = "/proc/meminfo"
_CGROUP = "/sys/fs/cgroup"  # cgroup v2: a container's own memory limit


def _meminfo_available() -> int | None:
    try:
        with open(_MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (reclaimable page cache counted
    as free), or None where there is no limit or no cgroup v2."""
    try:
        with open(os.path.join(_CGROUP, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(_CGROUP, "memory.current")) as f:
            used = int(f.read())
        cache = 0
        try:
            with open(os.path.join(_CGROUP, "memory.stat")) as f:
                for line in f:
                    if line.startswith("inactive_file "):
                        cache = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return max(0, int(limit) - used + cache)
    except (OSError, ValueError):
        return None


def available_memory_bytes() -> int | None:
    """Bytes of memory a new allocation can still get, or None where that is unknown.

    The smaller of the kernel's MemAvailable (/proc/meminfo, Linux) and the room left under a
    cgroup v2 memory limit (a container's); elsewhere psutil's figure when psutil is installed.
    None means "don't know": callers then skip their size check rather than guess.
    """
    known = [b for b in (_meminfo_available(), _cgroup_room()) if b is not None]
    if not known:
        try:
            import psutil  # optional; not a dependency
        except ImportError:
            return None
        try:
            known.append(int(psutil.virtual_memory().available))
        except Exception:  # psutil cannot tell on this platform
            return None
    return min(known)


def _gb(n_bytes: float) -> str:
    gb = n_bytes / 1e9
    return f"{gb:,.0f} GB" if gb >= 1000 else f"{gb:.3g} GB"


def _check_memory(needed: int, what: str, fix: str) -> None:
    """DataError when `needed` bytes exceed the memory available (no check where unknown)."""
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise DataError(f"{what} needs about {_gb(needed)} but only {_gb(available)} of memory is available; {fix}")


# ---- option checks --------------------------------------------------------------------------

def _check_int(value, option: str, minimum: int) -> None:
    """A whole-number option (`data.<option>`) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"data.{option} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise DataError(f"data.{option} must be at least {minimum}, got {value}")


def _check_fraction(test_fraction: float) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.number)) \
            or not 0.0 < test_fraction < 1.0:
        raise DataError(
            f"data.test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}; use e.g. 0.2"
        )


def _test_size(n_samples: int, test_fraction: float) -> int:
    """Rows in the test split of the synthetic loaders; DataError when a split would be empty."""
    n_test = max(1, round(n_samples * test_fraction))
    if n_test >= n_samples:
        raise DataError(
            f"data.test_fraction={test_fraction} with data.n_samples={n_samples} leaves no training samples; "
            "lower data.test_fraction or raise data.n_samples"
        )
    return n_test


_DIGITS_SAMPLES, _DIGITS_CLASSES = 1797, 10


def load_digits(test_fraction: float = 0.2, seed: int = 0, split: str = "stratified",
                pixels: str = "unit") -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 samples).

    split: `stratified` (shuffled by the seed, each side holding at least one sample per class,
    so test_fraction must lie in about 0.006..0.994) or `ordered` (the first rows train, the
    rest test, unshuffled: the M2N2 paper's split). pixels: `unit` (scaled to [0, 1]) or `raw`
    (the values 0..16 as stored).
    """
    _check_fraction(test_fraction)
    n_test = math.ceil(test_fraction * _DIGITS_SAMPLES)  # how scikit-learn rounds
    too_few = (f"data.test_fraction={test_fraction} leaves fewer than {_DIGITS_CLASSES} digits on one side of "
               f"the split (it needs one per class); use a value between 0.006 and 0.994")
    if min(n_test, _DIGITS_SAMPLES - n_test) < _DIGITS_CLASSES:
        raise DataError(too_few)
    if split not in ("stratified", "ordered"):
        raise DataError(f"data.split must be stratified or ordered, got {split!r}")
    if pixels not in ("unit", "raw"):
        raise DataError(f"data.pixels must be unit or raw, got {pixels!r}")
    X, y = _digits_arrays()
    X = (X / (16.0 if pixels == "unit" else 1.0)).astype(np.float32)
    if split == "ordered":
        n_train = _DIGITS_SAMPLES - n_test
        return Dataset("digits", X[:n_train], y[:n_train], X[n_train:], y[n_train:], n_classes=_DIGITS_CLASSES,
                       image_shape=(1, 8, 8))
    train, test = stratified_split(y, n_test, seed)
    if min(len(np.unique(y[train])), len(np.unique(y[test]))) < _DIGITS_CLASSES:  # a rounding edge
        raise DataError(too_few)
    return Dataset("digits", X[train], y[train], X[test], y[test], n_classes=_DIGITS_CLASSES, image_shape=(1, 8, 8))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' pixels (0..16) and labels: the bundled copy of scikit-learn's array (a test
    checks they are equal), or scikit-learn's own where the file is not shipped (a Flower app
    bundle carries code and text only)."""
    path = os.path.join(os.path.dirname(__file__), "digits.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return f["pixels"], f["labels"].astype(np.int64)
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return d.data, d.target.astype(np.int64)


def _share_out(counts: np.ndarray, total: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `total` draws each class gets: its proportional share rounded down, the rest
    one each to the classes with the largest remainders (ties drawn at random)."""
    exact = counts / counts.sum() * total
    out = np.floor(exact)
    left = int(total - out.sum())
    rest = exact - out
    for r in np.sort(np.unique(rest))[::-1]:
        if left <= 0:
            break
        tied = np.flatnonzero(rest == r)
        pick = rng.choice(tied, size=min(len(tied), left), replace=False)
        out[pick] += 1
        left -= len(pick)
    return out.astype(int)


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of a shuffled split that keeps each class's share on both sides:
    the same indices as scikit-learn's train_test_split(..., stratify=y, random_state=seed) with
    test_size=n_test (a test checks it), without importing scikit-learn at start-up."""
    rng = np.random.RandomState(seed)
    _, of_class, counts = np.unique(y, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(of_class, kind="stable"), np.cumsum(counts)[:-1])
    to_train = _share_out(counts, len(y) - n_test, rng)
    to_test = _share_out(counts - to_train, n_test, rng)
    train, test = [], []
    for rows, a, b in zip(members, to_train, to_test):
        rows = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(rows[:a])
        test.extend(rows[a:a + b])
    return rng.permutation(train), rng.permutation(test)


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
    A request that would not fit in the memory available (see `available_memory_bytes`) is a
    DataError before anything is allocated.
    """
    from sklearn.datasets import make_classification

    _check_int(n_classes, "n_classes", 2)
    _check_int(n_samples, "n_samples", 1)
    if n_samples < 2 * n_classes:
        raise DataError(
            f"data.n_samples must be at least 2 * data.n_classes = {2 * n_classes}, got {n_samples}; "
            "raise data.n_samples"
        )
    _check_int(n_features, "n_features", 2)
    _check_fraction(test_fraction)
    if isinstance(class_sep, bool) or not isinstance(class_sep, (int, float, np.number)) \
            or not 0 < class_sep < math.inf:
        raise DataError(f"data.class_sep must be a finite number > 0, got {class_sep!r}")

    # Each class sits on its own hypercube vertex, so it needs n_classes <= 2**n_informative.
    min_informative = max(2, math.ceil(math.log2(n_classes)))
    if n_informative is None:
        n_informative = min(n_features, max(min_informative, n_features // 4))
    if isinstance(n_informative, bool) or not isinstance(n_informative, (int, np.integer)) \
            or not min_informative <= n_informative <= n_features:
        raise DataError(
            f"data.n_informative must be an integer between {min_informative} (enough for {n_classes} classes) "
            f"and data.n_features={n_features}, got {n_informative!r}; raise data.n_features or change "
            "data.n_informative"
        )
    n_samples, n_features, n_informative = int(n_samples), int(n_features), int(n_informative)
    n_test = _test_size(n_samples, test_fraction)
    # float32 features plus the noise block, and scikit-learn's float64 informative block and its copies.
    _check_memory(n_samples * (n_features * 4 * 2 + n_informative * 8 * 2),
                  f"data.n_samples={n_samples} x data.n_features={n_features}",
                  "lower data.n_samples or data.n_features")

    try:
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
    except MemoryError:
        raise DataError(f"out of memory generating data.n_samples={n_samples} x data.n_features={n_features}; "
                        "lower data.n_samples or data.n_features") from None
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
    of `n_labels` labels and word-count features from them; features standardized, float32.
    A request that would not fit in the memory available is a DataError before generating."""
    from sklearn.datasets import make_multilabel_classification

    _check_int(n_labels, "n_labels", 2)
    _check_int(n_features, "n_features", 1)
    if isinstance(mean_labels, bool) or not isinstance(mean_labels, (int, np.integer)) \
            or not 1 <= mean_labels <= n_labels:
        raise DataError(
            f"data.mean_labels must be an integer in 1..data.n_labels={n_labels}, got {mean_labels!r}"
        )
    _check_int(n_samples, "n_samples", 2)
    _check_fraction(test_fraction)
    n_samples, n_features, n_labels = int(n_samples), int(n_features), int(n_labels)
    n_test = _test_size(n_samples, test_fraction)
    # scikit-learn's float64 features, two float64 temporaries while standardizing, the labels.
    _check_memory(n_samples * (n_features * 8 * 3 + n_labels * 8 * 2),
                  f"data.n_samples={n_samples} x data.n_features={n_features}",
                  "lower data.n_samples or data.n_features")
    try:
        X, Y = make_multilabel_classification(n_samples=n_samples, n_features=n_features, n_classes=n_labels,
                                              n_labels=mean_labels, allow_unlabeled=True, random_state=seed)
        train = X[n_test:]
        X = ((X - train.mean(0)) / np.maximum(train.std(0), 1e-12)).astype(np.float32)
    except MemoryError:
        raise DataError(f"out of memory generating data.n_samples={n_samples} x data.n_features={n_features}; "
                        "lower data.n_samples or data.n_features") from None
    Y = Y.astype(np.uint8)
    return Dataset("synthetic_multilabel", X[n_test:], Y[n_test:], X[:n_test], Y[:n_test], n_classes=n_labels,
                   image_shape=None)


_YEAST_ROWS, _YEAST_FEATURES, _YEAST_LABELS = 2417, 103, 14


def _river_file(name: str) -> str:
    """The path of a data file river bundles, found without importing river (which takes
    seconds); DataError when river is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("river")
    except (ImportError, ValueError):  # a broken install
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data=yeast reads river's bundled {name} and river is not installed; pip install river")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", name)


def load_yeast(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Yeast (Elisseeff and Weston 2001) as river bundles it: 2,417 genes, 103 features (each row
    scaled to unit norm, used as stored), 14 functional classes as labels (cardinality 4.24).

    The rows keep river's order, which is the stream order; the LAST round(test_fraction * 2417)
    rows are the test split and the first ones the training stream (`seed` shuffles nothing).
    Read with numpy from river's csv.gz (river's own row-by-row reader takes seconds).
    """
    import gzip

    _check_fraction(test_fraction)
    n_test = round(test_fraction * _YEAST_ROWS)
    if not 1 <= n_test < _YEAST_ROWS:
        raise DataError(f"data.test_fraction={test_fraction} leaves an empty side of Yeast's 2,417 rows; "
                        "use a value between 0.0005 and 0.9995")
    path = _river_file("yeast.csv.gz")
    columns = [f"Att{i}" for i in range(1, _YEAST_FEATURES + 1)] + [f"Class{i}" for i in range(1, _YEAST_LABELS + 1)]
    try:
        with gzip.open(path, "rt") as f:
            header = f.readline().strip().split(",")
            table = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
    except FileNotFoundError:
        raise DataError(f"river's Yeast file {_show(path)} is missing; pip install river (>= 0.26)") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"river's Yeast file {_show(path)} could not be read ({_reason(exc)}); "
                        "pip install --force-reinstall river") from None
    if header != columns or table.shape != (_YEAST_ROWS, len(columns)) \
            or not np.isin(table[:, _YEAST_FEATURES:], (0, 1)).all():
        raise DataError(f"river's Yeast file {_show(path)} is not 2,417 rows of Att1..Att103 and 0/1 "
                        "Class1..Class14; pip install --force-reinstall river")
    X = np.ascontiguousarray(table[:, :_YEAST_FEATURES])
    Y = table[:, _YEAST_FEATURES:].astype(np.uint8)
    cut = _YEAST_ROWS - n_test
    return Dataset("yeast", X[:cut], Y[:cut], X[cut:], Y[cut:], n_classes=_YEAST_LABELS, image_shape=None)


def planted_blocks(n_labels: int, block_size: int, seed: int, swap: bool = False) -> np.ndarray:
    """The planted label partition of `load_label_blocks` with the same arguments: the block of
    each label [n_labels] (int64, ids 0..ceil(n_labels / block_size) - 1, the last block smaller
    when block_size does not divide n_labels), before the structure swap, or after it when `swap`."""
    _check_int(n_labels, "n_labels", 2)
    _check_int(block_size, "block_size", 1)
    if block_size > n_labels:
        raise DataError(f"data.block_size must be at most data.n_labels={n_labels}, got {block_size}")
    perm = np.random.default_rng([seed, 1 if swap else 0, 7]).permutation(n_labels)
    block = np.empty(n_labels, dtype=np.int64)
    block[perm] = np.arange(n_labels) // block_size
    return block


def load_label_blocks(n_samples: int = 20000, n_features: int = 32, n_labels: int = 50, block_size: int = 5,
                      blocks_per_sample: int = 2, noise: float = 0.02, swap_at: float | None = None,
                      test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A multi-label stream with a planted label partition (the ground truth of a label
    clustering). Labels fall in blocks of `block_size` (`planted_blocks`); each instance turns
    on `blocks_per_sample` blocks drawn at random, every label of an active block on, then flips
    each label bit with probability `noise`. Features are x = y_clean A + 0.5 e with A a seeded
    Gaussian [n_labels, n_features] / sqrt(block_size) and e standard normal, so a linear model
    can learn the labels. With `swap_at` (a fraction of the stream) the blocks are re-drawn from
    that row on (concept drift; `planted_blocks(..., swap=True)`). The training rows are the
    stream in order; the test split is round(test_fraction * n_samples) (at least one) extra rows
    of the final concept, so held-out metrics score the current concept."""
    _check_int(n_labels, "n_labels", 2)
    _check_int(n_features, "n_features", 1)
    _check_int(n_samples, "n_samples", 1)
    _check_int(block_size, "block_size", 1)
    if block_size > n_labels:
        raise DataError(f"data.block_size must be at most data.n_labels={n_labels}, got {block_size}")
    n_blocks = -(-n_labels // block_size)
    _check_int(blocks_per_sample, "blocks_per_sample", 1)
    if blocks_per_sample > n_blocks:
        raise DataError(f"data.blocks_per_sample must be at most the number of blocks ({n_blocks}), "
                        f"got {blocks_per_sample}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.number)) or not 0 <= noise < 0.5:
        raise DataError(f"data.noise must be a number in [0, 0.5), got {noise!r}")
    if swap_at is not None and (isinstance(swap_at, bool) or not isinstance(swap_at, (int, float, np.number))
                                or not 0 < swap_at < 1):
        raise DataError(f"data.swap_at must be a fraction of the stream in (0, 1) or null, got {swap_at!r}")
    _check_fraction(test_fraction)
    n_samples, n_features, n_labels = int(n_samples), int(n_features), int(n_labels)
    n_test = max(1, round(test_fraction * n_samples))
    total = n_samples + n_test
    _check_memory(total * (n_features * 4 * 3 + n_labels * 8 * 3), f"data.n_samples={n_samples} x data.n_labels="
                  f"{n_labels}", "lower data.n_samples, data.n_labels or data.n_features")
    rng = np.random.default_rng([seed, 11])
    cut = n_samples if swap_at is None else int(round(swap_at * n_samples))  # the first row of the new concept
    try:
        A = (rng.standard_normal((n_labels, n_features)) / math.sqrt(block_size)).astype(np.float32)
        # which blocks each row turns on: the first blocks_per_sample of a random order
        active = np.argsort(rng.random((total, n_blocks)), axis=1)[:, :blocks_per_sample]
        on = np.zeros((total, n_blocks), dtype=bool)
        np.put_along_axis(on, active, True, axis=1)
        del active
        Y = np.empty((total, n_labels), dtype=np.uint8)
        for swapped, rows in ((False, slice(0, cut)), (True, slice(cut, total))):
            block = planted_blocks(n_labels, block_size, seed, swap=swapped and swap_at is not None)
            Y[rows] = on[rows][:, block]
        del on
        X = Y.astype(np.float32) @ A
        X += 0.5 * rng.standard_normal(X.shape, dtype=np.float32)
        Y ^= (rng.random(Y.shape) < noise).astype(np.uint8)
    except MemoryError:
        raise DataError(f"out of memory generating data.n_samples={n_samples} x data.n_labels={n_labels}; "
                        "lower data.n_samples, data.n_labels or data.n_features") from None
    return Dataset("label_blocks", X[:n_samples], Y[:n_samples], X[n_samples:], Y[n_samples:], n_classes=n_labels,
                   image_shape=None)


# ---- user npz files -------------------------------------------------------------------------

_NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")
_NPZ_HOWTO = "write it with numpy.savez(path, X_train=..., y_train=..., X_test=..., y_test=...)"
MAX_CLASSES = 100_000
"""Class ids of an npz file must be below this: a larger id is almost surely not a class id
(an unmapped code or a corrupt value) and would make a model with that many outputs."""


def _show(text: str) -> str:
    """Text fit for a one-line message: as is when printable, else its repr (escapes newlines)."""
    return text if text.isprintable() else repr(text)


def _reason(exc: BaseException) -> str:
    """An exception's message squeezed to one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _at(key: str, index) -> str:
    """`X_train[5, 2]`: an element of an array, for messages."""
    return f"{key}[{', '.join(str(int(i)) for i in np.atleast_1d(index))}]"


def _value(v) -> str:
    """One element as a message shows it: nan, inf, -inf, 1.5, 3, True."""
    if isinstance(v, (np.floating, float)):
        return repr(float(v))
    if isinstance(v, (np.integer, np.bool_)):
        return str(v.item())
    return repr(v)


def _dtype_problem(dtype: np.dtype) -> str | None:
    """Why a stored array of this dtype cannot hold features or labels (None: it can)."""
    kind = dtype.kind
    if kind in "biuf":
        return None
    if dtype.hasobject:
        return "holds Python objects (dtype object), which are never unpickled; store a numeric array"
    if kind == "c":
        return f"holds complex numbers (dtype {dtype}); store real numbers (float, int, uint or bool)"
    if kind in "US":
        return f"holds strings (dtype {dtype}); store numbers (float, int, uint or bool)"
    if kind == "V":
        return f"is a structured/raw array (dtype {dtype}); store a plain numeric array"
    return f"has dtype {dtype}; store numbers (float, int, uint or bool)"


def _open_npz(path: str, shown: str):
    """The open file of an npz archive, after checking it is a readable zip and not an npy,
    a text file or nothing at all."""
    if os.path.isdir(path):
        raise DataError(f"npz path {shown} is a directory; set data.path to an .npz file")
    if not os.path.exists(path):
        raise DataError(f"npz file not found: {shown}")
    try:
        f = open(path, "rb")
    except PermissionError:
        raise DataError(f"npz file {shown} is not readable (permission denied); make it readable") from None
    except OSError as exc:
        raise DataError(f"npz file {shown} could not be opened ({_reason(exc)})") from None
    try:
        head = f.read(512)
    except OSError as exc:
        f.close()
        raise DataError(f"npz file {shown} could not be read ({_reason(exc)})") from None
    problem = None
    if not head:
        problem = "is empty (0 bytes)"
    elif head.startswith(b"\x93NUMPY"):
        problem = "holds a single .npy array, not an npz archive of named arrays"
    elif not head.startswith(b"PK"):
        try:
            head.decode("utf-8")
            text = b"\0" not in head
        except UnicodeDecodeError as exc:  # only a character cut off at the end of the sample is fine
            text = b"\0" not in head and exc.start >= len(head) - 3
        problem = "is a text file, not an npz (zip) archive" if text else "is not an npz (zip) archive"
    if problem:
        f.close()
        raise DataError(f"npz file {shown} {problem}; {_NPZ_HOWTO}")
    f.seek(0)
    return f


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, shown: str):
    """(shape, dtype) from an archive member's .npy header, read without its data; None for a
    header version this numpy reads only with the data (checked after loading instead)."""
    try:
        with zf.open(info) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                return None
    except Exception as exc:  # anything wrong in the user's bytes
        raise DataError(f"{key} in npz file {shown} could not be read as a .npy array ({_reason(exc)}); "
                        f"{_NPZ_HOWTO}") from None
    return tuple(shape), dtype


def _read_npz(path: str, shown: str) -> dict[str, np.ndarray]:
    """The four arrays of an npz file. Never unpickles; every failure is a one-line DataError."""
    with _open_npz(path, shown) as f:
        try:
            zf = zipfile.ZipFile(f)
        except Exception as exc:  # truncated, corrupt, or not a zip after all
            raise DataError(f"npz file {shown} is a truncated or corrupt zip archive ({_reason(exc)}); "
                            f"{_NPZ_HOWTO}") from None
        with zf:
            members: dict[str, zipfile.ZipInfo] = {}
            for info in zf.infolist():
                name = info.filename
                members.setdefault(name[:-4] if name.endswith(".npy") else name, info)
            missing = [k for k in _NPZ_KEYS if k not in members]
            if missing:
                present = [_show(k) for k in members]
                held = ", ".join(present[:10]) + (f" and {len(present) - 10} more" if len(present) > 10 else "")
                raise DataError(f"npz file {shown} lacks {', '.join(missing)}; it needs arrays "
                                f"{', '.join(_NPZ_KEYS)} (it holds {held or 'no arrays'})")
            # Headers first: a bad dtype or an array too large for memory is refused unread.
            needed = 0
            for key in _NPZ_KEYS:
                header = _npy_header(zf, members[key], key, shown)
                if header is None:
                    continue
                shape, dtype = header
                problem = _dtype_problem(dtype)
                if problem:
                    raise DataError(f"{key} in npz file {shown} {problem}")
                size = math.prod(shape)
                needed += size * (dtype.itemsize + (4 if key.startswith("X") else 8))  # stored + converted
            _check_memory(needed, f"npz file {shown}", "use a smaller file or a machine with more memory")
            arrays = {}
            for key in _NPZ_KEYS:
                try:
                    with zf.open(members[key]) as fp:
                        arrays[key] = np.lib.format.read_array(fp, allow_pickle=False)
                except Exception as exc:  # corrupt data, CRC mismatch, pickled objects, out of memory
                    raise DataError(f"{key} in npz file {shown} could not be read as a .npy array "
                                    f"({_reason(exc)}); "
                                    f"{_NPZ_HOWTO}") from None
    for key, a in arrays.items():
        problem = _dtype_problem(a.dtype)
        if problem:
            raise DataError(f"{key} in npz file {shown} {problem}")
    return arrays


def _npz_labels(y: np.ndarray, key: str, path: str) -> np.ndarray:
    """Labels as the Dataset stores them: 1-D int64 class ids, or a 2-D uint8 0/1 matrix."""
    if y.ndim == 2:  # multi-label: one 0/1 column per label
        if y.shape[1] == 0:
            raise DataError(f"{key} in {path} is a 2-D label matrix with 0 columns; it needs one 0/1 column per label")
        bad = ~((y == 0) | (y == 1))  # NaN compares unequal to both, so it is bad too
        if bad.any():
            i = np.unravel_index(int(bad.argmax()), y.shape)
            raise DataError(f"{path}: {_at(key, i)} is {_value(y[i])}; a 2-D {key} holds 0/1 label "
                            "indicators (one column per label)")
        return y.astype(np.uint8)
    if y.ndim != 1:
        raise DataError(f"{key} in {path} must be 1-D class ids or a 2-D 0/1 label matrix, got shape {y.shape}")
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
        with np.errstate(invalid="ignore", over="ignore"):  # float16 labels vs MAX_CLASSES
            bad |= (y != np.floor(y)) | (y < 0) | (y >= MAX_CLASSES)
    else:
        bad = (y < 0) | (y >= MAX_CLASSES)
    if bad.any():
        i = int(bad.argmax())
        v = y[i]
        if not np.isfinite(v):
            why = "labels must be finite class ids 0..K-1"
        elif v != np.floor(v):
            why = "labels must be whole-number class ids 0..K-1 (a 2-D 0/1 matrix for multi-label data)"
        elif v < 0:
            why = "negative labels are not allowed; map classes to 0..K-1"
        else:
            why = f"class ids must be below {MAX_CLASSES}; map classes to 0..K-1"
        raise DataError(f"{path}: {_at(key, i)} is {_value(v)}; {why}")
    return y.astype(np.int64)


def _npz_features(X: np.ndarray, key: str, path: str, scale: float) -> np.ndarray:
    """X flattened to float32 [M, F]; DataError naming the first element that is not finite
    (NaN, inf, or a float64 beyond float32's range)."""
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
        flat = X.reshape(len(X), -1).astype(np.float32)
    if scale != 1.0:
        flat *= np.float32(scale)
    # A float64 sum of float32 values cannot overflow, so it is finite exactly when every value is.
    if X.dtype.kind == "f" and not np.isfinite(flat.sum(dtype=np.float64)):
        i = np.unravel_index(int((~np.isfinite(flat)).argmax()), X.shape)
        v = X[i]
        what = _value(v) if not np.isfinite(v) else f"{_value(v)}, beyond float32's range (about 3.4e38)"
        raise DataError(f"{path}: {_at(key, i)} is {what}; every feature must be a finite number "
                        "(replace or drop such rows)")
    return flat


def load_npz(path: str) -> Dataset:
    """A user file with X_train, y_train, X_test, y_test.

    X may be [M, F] (tabular), [M, H, W] (gray images) or [M, C, H, W], of any real numeric
    dtype (float, int, uint, bool); it is stored flattened as float32 and every value must be
    finite there. Integer pixels with values above 1 (e.g. uint8) are scaled by 1/255.

    y is either 1-D class ids (ints, bools, or floats holding whole numbers; 0 <= id <
    MAX_CLASSES) or a 2-D 0/1 matrix, one column per label (multi-label), the same kind in
    both splits. n_classes is the largest class id in either split plus one, so a class that
    only the test split holds is a class the model has never seen (its test rows count as
    errors), not an error; there must be at least two classes. Both splits need at least one
    sample, with as many labels as rows and the same sample shape.

    Every problem with the file (missing, unreadable, not an npz, corrupt, a missing array,
    pickled objects, which are never loaded, bad values) is a one-line DataError naming the file,
    the array and, for a bad value, its first index.
    """
    path = os.path.expanduser(os.fspath(path))
    shown = _show(path)
    arrays = _read_npz(path, shown)
    X_tr, y_tr, X_te, y_te = (arrays[k] for k in _NPZ_KEYS)
    where = f"npz file {shown}"

    for xk, X, yk, y in (("X_train", X_tr, "y_train", y_tr), ("X_test", X_te, "y_test", y_te)):
        if X.ndim not in (2, 3, 4):
            raise DataError(f"{xk} in {where} must be [M, F], [M, H, W] or [M, C, H, W], got shape {X.shape}")
        if y.ndim not in (1, 2):
            raise DataError(f"{yk} in {where} must be 1-D class ids or a 2-D 0/1 label matrix, got shape {y.shape}")
        if len(X) != len(y):
            raise DataError(f"{xk} has {len(X)} rows but {yk} has {len(y)} labels in {where}; they must match")
        if len(X) == 0:
            raise DataError(f"{xk} in {where} is empty (0 samples); store at least one "
                            f"{'training' if xk == 'X_train' else 'test'} sample")
    if X_tr.shape[1:] != X_te.shape[1:]:
        raise DataError(
            f"X_train samples have shape {X_tr.shape[1:]} but X_test samples {X_te.shape[1:]} in {where}; "
            "they must match"
        )
    if math.prod(X_tr.shape[1:]) == 0:
        raise DataError(f"X_train in {where} has samples of shape {X_tr.shape[1:]}, with no features")

    y_tr = _npz_labels(y_tr, "y_train", where)
    y_te = _npz_labels(y_te, "y_test", where)
    if y_tr.ndim != y_te.ndim or y_tr.shape[1:] != y_te.shape[1:]:
        raise DataError(f"y_train has shape {y_tr.shape} but y_test {y_te.shape} in {where}; "
                        "use class ids in both or label matrices with the same columns in both")
    if y_tr.ndim == 2:
        n_classes = y_tr.shape[1]
    else:
        n_classes = int(max(y_tr.max(), y_te.max())) + 1
        if n_classes < 2:
            raise DataError(f"y_train and y_test in {where} hold only class 0; a classifier needs at least "
                            "2 classes (ids 0..K-1)")

    sample_shape = X_tr.shape[1:]
    image_shape = None
    if len(sample_shape) == 2:
        image_shape = (1, *sample_shape)
    elif len(sample_shape) == 3:
        image_shape = tuple(sample_shape)

    # Decide the scale from both splits so train and test stay on the same footing.
    scale = 1.0
    if np.issubdtype(X_tr.dtype, np.integer) or np.issubdtype(X_te.dtype, np.integer):
        with np.errstate(invalid="ignore"):
            peak = max(X_tr.max(), X_te.max())
        if peak > 1:
            scale = 1.0 / 255.0

    X_tr = _npz_features(X_tr, "X_train", where, scale)
    X_te = _npz_features(X_te, "X_test", where, scale)
    name = os.path.splitext(os.path.basename(path))[0]
    return Dataset(name, X_tr, y_tr, X_te, y_te, n_classes=n_classes, image_shape=image_shape)


_LOADERS = {"digits": load_digits, "synthetic": load_synthetic, "synthetic_multilabel": load_synthetic_multilabel,
            "yeast": load_yeast, "label_blocks": load_label_blocks, "npz": load_npz}
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
