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
