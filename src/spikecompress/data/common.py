"""Shared pieces of the data package: the error type, the array bundle, splits, the disk cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikecompress.atomic import atomic_writer

CACHE_ENV = "SPIKECOMPRESS_CACHE"


class DataError(ValueError):
    """A missing, corrupt or malformed data file (or data setting); the message is one line.

    The CLI maps it to exit code 2, like every other error a user can cause.
    """


@dataclass(frozen=True)
class Arrays:
    """A dataset as in-memory numpy arrays, before batching.

    ``x_train`` [N, ...] and ``x_test`` [M, ...] hold one sample per row (static data: [C, H, W] or
    [C, L] float32; event data: frames [T, 2, H, W]); ``y_train`` [N] and ``y_test`` [M] are int64
    labels in ``[0, classes)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


MAX_ABS = 1e6  # default data.max_abs: a guess at what no sensible input value exceeds


def check_values(x: np.ndarray, source: str, key: str, max_abs: float) -> None:
    """Refuse input array ``x`` [N, ...] unless it is numeric, has at least one value per sample,
    holds no NaN or inf, and no value beyond ``max_abs`` (DataConfig.max_abs); one-line
    DataError naming ``source`` (the file) and ``key`` (the array). Copies nothing."""
    if x.dtype != np.bool_ and (not np.issubdtype(x.dtype, np.number)
                                or np.issubdtype(x.dtype, np.complexfloating)):
        raise DataError(f"{source}: {key!r} must hold numbers (int, uint or float), got {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"{source}: {key!r} must be [N, features...] (at least 2-D), got shape "
                        f"{x.shape}; add a feature axis, e.g. x[:, None]")
    if len(x) == 0:
        raise DataError(f"{source}: {key!r} holds no samples (shape {x.shape})")
    if x.size == 0:
        raise DataError(f"{source}: {key!r} has no values per sample (shape {x.shape})")
    low, high = x.min(), x.max()  # NaN propagates, inf shows: no temporary copy of x
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = ~np.isfinite(x.reshape(len(x), -1))
        first = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(f"{source}: {key!r} holds {int(bad.sum())} NaN or inf values (first in "
                        f"sample {first}); a model cannot learn from them: fix or drop them")
    peak = max(abs(float(low)), abs(float(high)))
    if peak > max_abs:
        raise DataError(f"{source}: {key!r} holds values up to {peak:.3g}, beyond data.max_abs "
                        f"{max_abs:.3g} (a guess at sane inputs: rescale the data, or raise "
                        "data.max_abs if the values are right)")


def check_labels(y: np.ndarray, source: str, key: str) -> np.ndarray:
    """``y`` as int64 labels [N]; one-line DataError unless 1-D non-negative integers."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise DataError(f"{source}: {key!r} must be 1-D non-negative integer labels, got "
                        f"{y.dtype} {y.shape}")
    if y.size and int(y.max()) >= 2**63:
        raise DataError(f"{source}: {key!r} holds a label of {int(y.max())}, beyond int64")
    return y.astype(np.int64)


def check_classes(y_train: np.ndarray, y_test: np.ndarray, source: str,
                  keys: tuple[str, str] = ("y", "y_test")) -> int:
    """The class count C implied by the training labels, after checking that every class 0..C-1
    occurs in ``y_train`` and that ``y_test`` holds no label ``y_train`` lacks."""
    seen = np.unique(y_train)
    if not seen.size:
        raise DataError(f"{source}: {keys[0]!r} holds no labels")
    classes = int(seen[-1]) + 1
    if seen.size != classes:
        missing = _first_missing(seen, 3)
        more = ", ..." if classes - seen.size > len(missing) else ""
        raise DataError(f"{source}: {keys[0]!r} labels imply {classes} classes (largest label "
                        f"{classes - 1}) but classes [{', '.join(map(str, missing))}{more}] "
                        f"never occur in it; relabel the classes as 0..{seen.size - 1}")
    extra = np.setdiff1d(np.unique(y_test), seen)
    if extra.size:
        shown = ", ".join(map(str, extra[:5].tolist())) + (", ..." if extra.size > 5 else "")
        raise DataError(f"{source}: {keys[1]!r} holds labels [{shown}] that {keys[0]!r} never "
                        f"has (training labels are 0..{classes - 1})")
    return classes


def _first_missing(seen: np.ndarray, count: int) -> list[int]:
    """The first ``count`` integers >= 0 absent from the sorted unique ``seen``."""
    out, expect = [], 0
    for value in seen.tolist():
        while expect < value and len(out) < count:
            out.append(expect)
            expect += 1
        if len(out) == count:
            break
        expect = value + 1
    return out


def check_arrays(arrays: Arrays, source: str, max_abs: float = MAX_ABS) -> None:
    """Check a whole dataset (values, labels, classes, matching shapes) as the loaders do; the
    embedded and generated sets pass it by construction."""
    pairs = (("x", arrays.x_train, "y", arrays.y_train),
             ("x_test", arrays.x_test, "y_test", arrays.y_test))
    for xkey, x, ykey, y in pairs:
        check_values(x, source, xkey, max_abs)
        check_labels(y, source, ykey)
        if len(x) != len(y):
            raise DataError(f"{source}: {xkey!r} has {len(x)} samples but {ykey!r} has {len(y)}")
    if arrays.x_test.shape[1:] != arrays.x_train.shape[1:]:
        raise DataError(f"{source}: 'x_test' samples are {arrays.x_test.shape[1:]}, 'x' samples "
                        f"{arrays.x_train.shape[1:]}")
    check_classes(arrays.y_train, arrays.y_test, source)


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """The cache folder for generated data: ``root``, else $SPIKECOMPRESS_CACHE, else
    ``~/.cache/spikecompress``; created if missing."""
    path = Path(root or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spikecompress")
    path = path.expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache folder {path}: {e.strerror}") from None
    return path


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """Write ``arrays`` to ``path`` as .npz through a temporary file in the same folder and
    ``os.replace``, so a reader never sees a half-written cache file, even with concurrent
    writers."""
    with atomic_writer(path) as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)


def load_npz_cache(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Read a cache file written by :func:`save_npz_atomic`; None when it is absent, unreadable or
    lacks one of ``keys`` (the caller then regenerates it). Never unpickles."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/test split of the indices of ``y`` [N]: (train_idx, test_idx), each
    sorted. Falls back to a plain seeded split when a class is too small to stratify."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    except ValueError:
        tr, te = train_test_split(idx, test_size=test_size, random_state=seed)
    return np.sort(tr), np.sort(te)


def stratified_head(y: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first ``limit`` samples taken class by class in turn (the 1st of every class,
    then the 2nd, ...), returned in their original order: a class-balanced, seed-free subset."""
    if limit >= len(y):
        return np.arange(len(y))
    order = np.argsort(y, kind="stable")  # [N] grouped by class, original order inside a class
    ys = y[order]
    first = np.searchsorted(ys, ys, side="left")  # position where each sample's class starts
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(len(y)) - first  # occurrence number of each sample within its class
    keep = np.lexsort((y, rank))[:limit]  # by occurrence number, ties by class
    return np.sort(keep)
