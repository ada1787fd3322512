"""The data entry point: ``load_data(DataConfig(...))`` -> train / test Loaders for a model."""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from spikecompress.data.common import MAX_ABS, Arrays, DataError, stratified_head
from spikecompress.data.embedded import digits_arrays, mnist1d_arrays
from spikecompress.data.event_files import EVENT_FILE_DATASETS, event_files_shape
from spikecompress.data.event_recordings import dvs_gesture_arrays, nmnist_arrays
from spikecompress.data.events import event_digits_arrays
from spikecompress.data.events_npz import events_npz_arrays
from spikecompress.data.loader import Loader
from spikecompress.data.local import cifar_arrays, mnist_family_arrays, npz_arrays
from spikecompress.snn.encoding import ENCODERS

STATIC_ENCODINGS = tuple(sorted(ENCODERS))  # direct, latency, poisson
EVENT_ENCODINGS = ("events", "direct")  # "direct" on event data means: feed the frames as they are


MAX_SIZE = 2**31 - 1  # T and batch_size become torch sizes and indices
MAX_SEED = 2**32 - 1  # the seed range scikit-learn's split and numpy accept
FLOAT32_MAX = float(np.finfo(np.float32).max)
MEMORY_SHARE = 0.5  # refuse a setting whose estimated memory exceeds this share of the machine's
ACTIVATION_FACTOR = 64  # activations BPTT keeps per encoded input value (a guess: widths 16-64)
FRAME_BYTES = 16  # event frames: int64 counts, int32 frames and the float32 copy, at the peak


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(field: str, value: object, low: int, high: int | None = None,
               none_ok: bool = False) -> None:
    if none_ok and value is None:
        return
    if not _is_int(value) or value < low or (high is not None and value > high):
        span = f" and <= {high}" if high is not None else ""
        head = "None or an integer" if none_ok else "an integer"
        raise ValueError(f"data.{field} must be {head} >= {low}{span}, got {value!r}")


@dataclass
class DataConfig:
    """Which dataset to load and how to batch it.

    ``name``: digits | mnist1d | event_digits | mnist | fashion_mnist | kmnist | cifar10 |
    cifar100 | npz | nmnist | dvs_gesture | events_npz. ``encoding``: direct | poisson | latency |
    tsc (values in [0, 1], T >= 2) | ttfs (the onset: x at step 0, 0 after) for static data;
    events (or direct, the same) for event data, whose T frames bin each recording into T
    windows (event_digits: its 300 ms; nmnist, dvs_gesture, events_npz: each recording's own
    span from its first to its last event, see :mod:`spikecompress.data.event_binning`).
    ``root``: the local data folder (mnist family, cifar; nmnist: the folder holding Train/ and
    Test/; dvs_gesture: the folder holding ibmGestureTrain/ and ibmGestureTest/), the .npz file
    path (npz; events_npz: the file, or a folder holding train.npz and test.npz), or the cache
    folder for generated sets (default $SPIKECOMPRESS_CACHE, else ~/.cache/spikecompress).
    ``downsample``: nmnist, dvs_gesture and events_npz only: sum-pool the event counts over
    d x d pixel blocks (e.g. 4: DVS Gesture's 128 x 128 becomes 32 x 32); default 1.
    ``seed``: split, event generation, shuffling and Poisson spikes. ``limit``: keep a
    class-balanced subset of the first ``limit`` training samples (test set untouched).
    ``holdout``: the fraction of those training samples set aside as ``Data.holdout`` (the train
    split keeps a class-balanced subset, the holdout the rest; never in ``Data.train``): data a
    later stage can learn from that the model was not trained on (SEENN-II's exit rewards; a
    recipe stage's ``train_on: holdout``). ``max_abs``: the largest magnitude an input value of
    an .npz may have (default 1e6, a guess at what sane inputs stay below: 1e30 in an input is a
    bug that trains to chance); raise it for data whose values are right but large.

    ``T`` and ``batch_size`` are also checked against the machine's memory before any data is
    encoded (:func:`check_data`).
    """

    name: str
    T: int = 4
    batch_size: int = 64
    encoding: str = "direct"
    root: str | None = None
    seed: int = 0
    limit: int | None = None
    holdout: float = 0.0
    max_abs: float = MAX_ABS
    downsample: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in DATASETS:
            raise ValueError(f"data.name: unknown dataset {self.name!r}; one of {sorted(DATASETS)}")
        _check_int("T", self.T, 1, MAX_SIZE)
        _check_int("batch_size", self.batch_size, 1, MAX_SIZE)
        allowed = EVENT_ENCODINGS if self.is_events else STATIC_ENCODINGS
        if not isinstance(self.encoding, str) or self.encoding not in allowed:
            raise ValueError(f"data.encoding must be one of {allowed} for {self.name!r}, "
                             f"got {self.encoding!r}")
        if self.encoding == "tsc" and self.T < 2:
            raise ValueError(f"data.T must be >= 2 for encoding tsc (its window is T - 1 steps), "
                             f"got {self.T}")
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("limit", self.limit, 1, none_ok=True)
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, int | float) or not (
            0 <= self.holdout < 1
        ):
            raise ValueError(f"data.holdout must be a fraction in [0, 1), got {self.holdout!r}")
        self.holdout = float(self.holdout)
        if isinstance(self.max_abs, bool) or not isinstance(self.max_abs, int | float) or not (
            0 < self.max_abs <= FLOAT32_MAX
        ):
            raise ValueError(f"data.max_abs must be a number in (0, {FLOAT32_MAX:.3g}], got "
                             f"{self.max_abs!r}")
        self.max_abs = float(self.max_abs)
        _check_int("downsample", self.downsample, 1, MAX_SIZE)
        if self.downsample != 1 and self.name not in EVENT_FILE_DATASETS:
            raise ValueError(f"data.downsample applies to {', '.join(EVENT_FILE_DATASETS)} only, "
                             f"not {self.name!r}; leave it at 1")
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
    return npz_arrays(cfg.root, cfg.seed, cfg.max_abs)


def _nmnist(cfg: DataConfig) -> Arrays:
    return nmnist_arrays(cfg.T, cfg.root, cfg.downsample)


def _dvs_gesture(cfg: DataConfig) -> Arrays:
    return dvs_gesture_arrays(cfg.T, cfg.root, cfg.downsample)


def _events_npz(cfg: DataConfig) -> Arrays:
    return events_npz_arrays(cfg.T, cfg.root, cfg.seed, cfg.downsample)


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
    "nmnist": _nmnist,
    "dvs_gesture": _dvs_gesture,
    "events_npz": _events_npz,
}
EVENT_DATASETS = frozenset({"event_digits", *EVENT_FILE_DATASETS})


# (training samples, all samples, one sample's shape at one time step) of the fixed datasets;
# nmnist, dvs_gesture and events_npz are sized from the user's files (event_files_shape)
KNOWN_SHAPES = {
    "digits": (1437, 1797, (1, 8, 8)), "mnist1d": (4000, 5000, (1, 40)),
    "event_digits": (1437, 1797, (2, 22, 22)), "mnist": (60000, 70000, (1, 28, 28)),
    "fashion_mnist": (60000, 70000, (1, 28, 28)), "kmnist": (60000, 70000, (1, 28, 28)),
    "cifar10": (50000, 60000, (3, 32, 32)), "cifar100": (50000, 60000, (3, 32, 32)),
}


def physical_memory() -> int | None:
    """Bytes of physical memory (``SC_PAGE_SIZE * SC_PHYS_PAGES``); None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_data(cfg: DataConfig) -> None:
    """Check before loading anything that the memory the encoded data will take (estimated from
    the dataset's known shapes, the .npz file's header, or an event dataset's file listing) fits
    in a share of this machine's memory; DataError naming ``data.T`` otherwise (a missing or
    corrupt file is the loader's to report). ``load_data`` calls it first; a runner calls it for
    every stage's T before the first stage starts."""
    if cfg.name in EVENT_FILE_DATASETS:
        shape = event_files_shape(cfg.name, cfg.root, cfg.downsample)
    else:
        shape = KNOWN_SHAPES.get(cfg.name) or _npz_shape(cfg.root)
    if shape is not None:
        check_memory(cfg, *shape)


def check_memory(cfg: DataConfig, n_train: int, n_total: int, sample: tuple[int, ...]) -> None:
    """Refuse a T / batch_size whose encoded data would not fit (see :func:`check_data`)."""
    memory = physical_memory()
    if not memory:
        return
    values = math.prod(sample)
    batch = min(cfg.batch_size, n_train if cfg.limit is None else min(n_train, cfg.limit))
    need = cfg.T * max(batch, 1) * values * 4 * ACTIVATION_FACTOR
    what = (f"one batch of {batch} samples x {values} values x T steps x 4 bytes, with the "
            f"activations training keeps for it (x{ACTIVATION_FACTOR}, a guess)")
    advice = "lower data.T (--T) or data.batch_size (--batch-size)"
    if cfg.is_events:
        frames = n_total * cfg.T * values * FRAME_BYTES
        if frames > need:
            need, advice = frames, "lower data.T (--T)"
            what = f"the event frames of {n_total} recordings x {values} values x T steps"
    if need > MEMORY_SHARE * memory:
        raise DataError(f"data.T {cfg.T}: {what} need about {need / 2**30:,.0f} GiB, more than "
                        f"{MEMORY_SHARE:.0%} of this machine's {memory / 2**30:,.0f} GiB; "
                        f"{advice}")


def _npz_shape(path: str | None) -> tuple[int, int, tuple[int, ...]] | None:
    """(N, N, sample shape) of the 'x' array from an .npz file's header; None if unreadable."""
    try:
        with zipfile.ZipFile(os.path.expanduser(path)) as zf, zf.open("x.npy") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            shape = read(f)[0] if read is not None else None
    except Exception:  # any unreadable file is the loader's to report, naming the problem
        return None
    if not shape or not all(isinstance(d, int) for d in shape):
        return None
    return shape[0], shape[0], tuple(shape[1:])


def _check_unit_range(cfg: DataConfig, *arrays: np.ndarray) -> None:
    """DataError naming the dataset unless every value lies in [0, 1] (``encoding: tsc``)."""
    lo = min(float(np.min(a)) for a in arrays if a.size)
    hi = max(float(np.max(a)) for a in arrays if a.size)
    if not (0 <= lo and hi <= 1):
        raise DataError(f"data.encoding tsc needs inputs in [0, 1]; {cfg.name!r} has values in "
                        f"[{lo:.4g}, {hi:.4g}] (rescale it, or use another encoding)")


def check_shards(cfg: DataConfig, rank: int, world_size: int) -> None:
    """The global batch must split evenly over the processes (one line naming both)."""
    if not (_is_int(world_size) and world_size >= 1 and _is_int(rank) and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, "
                         f"world_size={world_size!r}")
    if cfg.batch_size % world_size:
        raise ValueError(f"data.batch_size {cfg.batch_size} is not divisible by the "
                         f"{world_size} processes of this run: batch_size is the global batch, "
                         f"split evenly across processes (use a multiple of {world_size})")


def load_data(cfg: DataConfig, rank: int = 0, world_size: int = 1) -> Data:
    """Load ``cfg.name`` (offline: generated, cached or read from local files) and wrap it in a
    shuffling train Loader and an ordered test Loader yielding (x_seq [T, B, ...] float32,
    y [B] int64). Raises DataError (one line, naming the file or setting) for missing or corrupt
    data, and for a T or batch size the machine's memory cannot hold, before allocating.

    Distributed runs: ``cfg.batch_size`` is the *global* batch. Process ``rank`` of
    ``world_size`` trains on its own shard of every epoch's shuffled order (train and holdout
    loaders) in batches of ``batch_size / world_size``, so one optimizer step sees the same
    samples as a one-process step of ``batch_size`` (see ``Loader``); the test loader is whole on
    every rank. A batch size the processes cannot split evenly is refused by name."""
    check_shards(cfg, rank, world_size)
    check_data(cfg)
    arrays = DATASETS[cfg.name](cfg)
    x_train, y_train = arrays.x_train, arrays.y_train
    if not cfg.is_events:  # the estimate again, from the arrays as loaded
        check_memory(cfg, len(x_train), len(x_train) + len(arrays.x_test), x_train.shape[1:])
    if cfg.encoding == "tsc":  # temporal-switch coding encodes values in [0, 1] (no clamping)
        _check_unit_range(cfg, x_train, arrays.x_test)
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
        if not train:
            return Loader(x_t, y_t, cfg.T, cfg.batch_size, shuffle=False, encoding=encoding,
                          seed=cfg.seed)
        return Loader(x_t, y_t, cfg.T, cfg.batch_size // world_size, shuffle=True,
                      encoding=encoding, seed=cfg.seed, rank=rank, world_size=world_size)

    sample_shape = tuple(x_train.shape[2:] if cfg.is_events else x_train.shape[1:])
    return Data(
        train=loader(x_train, y_train, train=True),
        test=loader(arrays.x_test, arrays.y_test, train=False),
        input_shape=sample_shape,
        classes=arrays.classes,
        name=cfg.name,
        holdout=None if held is None else loader(*held, train=True),
    )
