"""The data entry point: ``load_data(DataConfig(...))`` -> train / test Loaders for a model."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from spikecompress.data.common import Arrays, stratified_head
from spikecompress.data.embedded import digits_arrays, mnist1d_arrays
from spikecompress.data.events import event_digits_arrays
from spikecompress.data.loader import Loader
from spikecompress.data.local import cifar_arrays, mnist_family_arrays, npz_arrays
from spikecompress.snn.encoding import ENCODERS

STATIC_ENCODINGS = tuple(sorted(ENCODERS))  # direct, latency, poisson
EVENT_ENCODINGS = ("events", "direct")  # "direct" on event data means: feed the frames as they are


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class DataConfig:
    """Which dataset to load and how to batch it.

    ``name``: digits | mnist1d | event_digits | mnist | fashion_mnist | kmnist | cifar10 |
    cifar100 | npz. ``encoding``: direct | poisson | latency for static data; events (or direct,
    the same) for event data, whose T frames bin each 300 ms recording into T windows.
    ``root``: the local data folder (mnist family, cifar), the .npz file path (npz), or the cache
    folder for generated sets (default $SPIKECOMPRESS_CACHE, else ~/.cache/spikecompress).
    ``seed``: split, event generation, shuffling and Poisson spikes. ``limit``: keep a
    class-balanced subset of the first ``limit`` training samples (test set untouched).
    ``holdout``: the fraction of those training samples set aside as ``Data.holdout`` (the train
    split keeps a class-balanced subset, the holdout the rest; never in ``Data.train``): data a
    later stage can learn from that the model was not trained on (SEENN-II's exit rewards; a
    recipe stage's ``train_on: holdout``).
    """

    name: str
    T: int = 4
    batch_size: int = 64
    encoding: str = "direct"
    root: str | None = None
    seed: int = 0
    limit: int | None = None
    holdout: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"data.name: unknown dataset {self.name!r}; one of {sorted(DATASETS)}")
        for field in ("T", "batch_size"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise ValueError(f"data.{field} must be an integer >= 1, got {value!r}")
        allowed = EVENT_ENCODINGS if self.is_events else STATIC_ENCODINGS
        if self.encoding not in allowed:
            raise ValueError(f"data.encoding must be one of {allowed} for {self.name!r}, "
                             f"got {self.encoding!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"data.seed must be an integer >= 0, got {self.seed!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            raise ValueError(f"data.limit must be None or an integer >= 1, got {self.limit!r}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, int | float) or not (
            0 <= self.holdout < 1
        ):
            raise ValueError(f"data.holdout must be a fraction in [0, 1), got {self.holdout!r}")
        self.holdout = float(self.holdout)
        if isinstance(self.root, os.PathLike):
            self.root = os.fspath(self.root)
        if self.root is not None and not isinstance(self.root, str):
            raise ValueError(f"data.root must be a path string or None, got {self.root!r}")

    @property
    def is_events(self) -> bool:
        """True for event datasets, whose samples are frames [T, 2, H, W]."""
        return self.name in EVENT_DATASETS


@dataclass
class Data:
    """Loaders plus what a model builder needs: ``input_shape`` is one time step of one sample,
    e.g. (1, 8, 8), (1, 40), (2, 22, 22), (3, 32, 32). ``holdout``: the training samples set
    aside by ``DataConfig.holdout`` (shuffled like ``train``), None without."""

    train: Loader
    test: Loader
    input_shape: tuple[int, ...]
    classes: int
    name: str
    holdout: Loader | None = None


def _digits(cfg: DataConfig) -> Arrays:
    return digits_arrays(cfg.seed)


def _mnist1d(cfg: DataConfig) -> Arrays:
    return mnist1d_arrays(cfg.root)


def _event_digits(cfg: DataConfig) -> Arrays:
    return event_digits_arrays(cfg.T, cfg.seed, cfg.root)


def _mnist(cfg: DataConfig) -> Arrays:
    return mnist_family_arrays("mnist", cfg.root)


def _fashion_mnist(cfg: DataConfig) -> Arrays:
    return mnist_family_arrays("fashion_mnist", cfg.root)


def _kmnist(cfg: DataConfig) -> Arrays:
    return mnist_family_arrays("kmnist", cfg.root)


def _cifar10(cfg: DataConfig) -> Arrays:
    return cifar_arrays("cifar10", cfg.root)


def _cifar100(cfg: DataConfig) -> Arrays:
    return cifar_arrays("cifar100", cfg.root)


def _npz(cfg: DataConfig) -> Arrays:
    return npz_arrays(cfg.root, cfg.seed)


DATASETS = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "event_digits": _event_digits,
    "mnist": _mnist,
    "fashion_mnist": _fashion_mnist,
    "kmnist": _kmnist,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "npz": _npz,
}
EVENT_DATASETS = frozenset({"event_digits"})


def load_data(cfg: DataConfig) -> Data:
    """Load ``cfg.name`` (offline: generated, cached or read from local files) and wrap it in a
    shuffling train Loader and an ordered test Loader yielding (x_seq [T, B, ...] float32,
    y [B] int64). Raises DataError (one line, naming the file) for missing or corrupt data."""
    arrays = DATASETS[cfg.name](cfg)
    x_train, y_train = arrays.x_train, arrays.y_train
    if cfg.limit is not None:
        keep = stratified_head(y_train, cfg.limit)
        x_train, y_train = x_train[keep], y_train[keep]
    held = None
    if cfg.holdout > 0:
        keep = stratified_head(y_train, round(len(y_train) * (1 - cfg.holdout)))
        out = np.setdiff1d(np.arange(len(y_train)), keep)  # [H] the rest, in order
        if not len(out) or not len(keep):
            raise ValueError(f"data.holdout {cfg.holdout} leaves an empty split of "
                             f"{len(y_train)} training samples")
        held = (x_train[out], y_train[out])
        x_train, y_train = x_train[keep], y_train[keep]
    encoding = "events" if cfg.is_events else cfg.encoding

    def loader(x: np.ndarray, y: np.ndarray, train: bool) -> Loader:
        x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y_t = torch.from_numpy(np.asarray(y, dtype=np.int64))
        return Loader(x_t, y_t, cfg.T, cfg.batch_size, shuffle=train, encoding=encoding,
                      seed=cfg.seed)

    sample_shape = tuple(x_train.shape[2:] if cfg.is_events else x_train.shape[1:])
    return Data(
        train=loader(x_train, y_train, train=True),
        test=loader(arrays.x_test, arrays.y_test, train=False),
        input_shape=sample_shape,
        classes=arrays.classes,
        name=cfg.name,
        holdout=None if held is None else loader(*held, train=True),
    )
