"""Events of any sensor in a plain ``.npz`` (``events_npz``), checked and binned to frames
[T, 2, H, W] by our ``T`` (as ``spikecompress.data.event_binning`` describes).

``events_npz`` -- any events, in an ``.npz`` (``root`` the file), or a folder holding
``train.npz`` and ``test.npz`` (``root`` the folder). Each file holds:

    ``x``, ``y``, ``t``, ``p``  [E] integers: all events of all samples, concatenated; x in
                               [0, W), y in [0, H), t in µs (>= 0, non-decreasing within a
                               sample), p in {0, 1} (OFF, ON; bool also accepted)
    ``offsets``                [N + 1] integers: sample i's events are ``offsets[i]:offsets[i+1]``
                               (offsets[0] = 0, offsets[N] = E, non-decreasing)
    ``labels``                 [N] integers >= 0
    ``sensor``                 [2] integers (W, H)
    ``split`` (optional)       [N] 0 (train) or 1 (test); single file only. Without it (and
                               without ``test.npz``), a seeded stratified 80/20 split.
    ``classes`` (optional)     the class count C (every label < C); without it C is the largest
                               training label + 1 and every class 0..C-1 must occur in training.

    e.g. ``np.savez("ev.npz", x=x, y=y, t=t, p=p, offsets=offsets, labels=labels,
    sensor=np.array([W, H]))``

"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spikecompress.data.common import (
    Arrays,
    DataError,
    check_classes,
    check_labels,
    stratified_split,
)
from spikecompress.data.event_binning import (
    MAX_T_US,
    _check_on_sensor,
    _check_polarity,
    _chunk_size,
    _first_line,
    bin_recordings,
    binned_sensor,
)
from spikecompress.data.events import PackedEvents

EVENTS_NPZ_KEYS = ("x", "y", "t", "p", "offsets", "labels", "sensor")
EVENTS_NPZ_OPTIONAL = ("split", "classes")
EVENTS_NPZ_LAYOUT = ("an .npz with 'x', 'y', 't', 'p' [E], 'offsets' [N+1], 'labels' [N], "
                     "'sensor' (W, H), or a folder holding train.npz and test.npz")
MAX_SENSOR = 2**16  # a sensor side beyond this is a typo, not a camera


def _take(ev: PackedEvents, idx: np.ndarray) -> PackedEvents:
    """The recordings ``idx`` of ``ev``, packed again in that order."""
    counts = ev.counts()[idx]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pick = np.repeat(ev.offsets[idx] - offsets[:-1], counts) + np.arange(offsets[-1])
    return PackedEvents(ev.x[pick], ev.y[pick], ev.t[pick], ev.p[pick], offsets)



@dataclass(frozen=True)
class EventFile:
    """One checked events .npz: its events, labels [N] int64, sensor (W, H), optional split [N]
    (0 train, 1 test) and declared class count."""

    path: str
    events: PackedEvents
    labels: np.ndarray
    sensor: tuple[int, int]
    split: np.ndarray | None
    classes: int | None


def _events_npz_files(root: str | os.PathLike | None) -> list[Path]:
    """[file] for an .npz ``root``, [train.npz, test.npz] for a folder; DataError if missing."""
    if root is None:
        raise DataError(f"events_npz: DataConfig.root must be the path of {EVENTS_NPZ_LAYOUT}")
    root = Path(root).expanduser()
    if root.is_dir():
        files = [root / "train.npz", root / "test.npz"]
        for f in files:
            if not f.is_file():
                raise DataError(f"events_npz: missing {f}; a folder root holds train.npz and "
                                "test.npz")
        return files
    if not root.is_file():
        raise DataError(f"events_npz: missing {root}; expected {EVENTS_NPZ_LAYOUT}")
    return [root]


def _load_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (all when None) of the .npz at ``path``, never unpickling."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataError(f"{path} is a single .npy array, not {EVENTS_NPZ_LAYOUT}")
            names = z.files if keys is None else [k for k in keys if k in z.files]
            return {k: z[k] for k in names}
    except DataError:
        raise
    except Exception as e:  # zip, zlib, numpy-header and object-array errors alike
        raise DataError(f"cannot read {path} as {EVENTS_NPZ_LAYOUT}: {_first_line(e)}") from None


def read_events_npz(path: str | os.PathLike, allow_split: bool = True) -> EventFile:
    """Read and check one events .npz (see the module docstring). Every field is checked before
    anything is binned; DataError naming the file and the field."""
    path = Path(path)
    src = str(path)
    z = _load_npz(path)
    _check_keys(z, src, allow_split)
    W, H = _read_sensor(z, src)
    x, y, t, p = _read_events(z, src)
    offsets = _read_offsets(z, src, len(x))
    N = len(offsets) - 1
    labels = check_labels(z["labels"], src, "labels")
    if len(labels) != N:
        raise DataError(f"{src}: 'labels' has {len(labels)} samples but 'offsets' describes {N}")
    _check_on_sensor(src, x, y, (W, H))
    _check_polarity(src, p.astype(np.int64))
    t = _check_times(src, t, offsets)
    split = _read_split(z, src, N) if "split" in z else None
    classes = _read_classes(z, src) if "classes" in z else None
    ev = PackedEvents(x, y, t, p.astype(np.uint8), offsets)
    return EventFile(src, ev, labels, (W, H), split, classes)


def _check_keys(z: dict[str, np.ndarray], src: str, allow_split: bool) -> None:
    """Every required array present, no unknown one, and 'split' only where ``allow_split``."""
    for key in EVENTS_NPZ_KEYS:
        if key not in z:
            raise DataError(f"{src}: missing array {key!r}; expected {EVENTS_NPZ_LAYOUT}")
    unknown = sorted(set(z) - set(EVENTS_NPZ_KEYS) - set(EVENTS_NPZ_OPTIONAL))
    if unknown:
        raise DataError(f"{src}: unexpected array {unknown[0]!r}; expected {EVENTS_NPZ_LAYOUT} "
                        f"(optionally {' and '.join(map(repr, EVENTS_NPZ_OPTIONAL))})")
    if "split" in z and not allow_split:
        raise DataError(f"{src}: 'split' is for a single file; train.npz and test.npz are the "
                        "split already")


def _read_sensor(z: dict[str, np.ndarray], src: str) -> tuple[int, int]:
    """The file's sensor (W, H), each side in 1..MAX_SENSOR."""
    sensor = _int_array(z["sensor"], src, "sensor")
    if sensor.shape != (2,) or sensor.min() < 1 or sensor.max() > MAX_SENSOR:
        raise DataError(f"{src}: 'sensor' must be (W, H), two integers in 1..{MAX_SENSOR}, got "
                        f"{z['sensor'].tolist()}")
    return int(sensor[0]), int(sensor[1])


def _read_events(z: dict[str, np.ndarray], src: str) -> tuple[np.ndarray, ...]:
    """(x, y, t, p): 1-D integer arrays (p may be bool) of one length E, as the file holds them."""
    fields = {}
    for key in ("x", "y", "t", "p"):
        v = _int_array(z[key], src, key, allow_bool=key == "p")
        if v.ndim != 1:
            raise DataError(f"{src}: {key!r} must be 1-D [E] (all events concatenated), got "
                            f"shape {v.shape}")
        fields[key] = v
    E = len(fields["x"])
    for key in ("y", "t", "p"):
        if len(fields[key]) != E:
            raise DataError(f"{src}: {key!r} has {len(fields[key])} events but 'x' has {E}")
    return fields["x"], fields["y"], fields["t"], fields["p"]


def _read_offsets(z: dict[str, np.ndarray], src: str, E: int) -> np.ndarray:
    """'offsets' [N + 1] as int64: N >= 1, from 0 to the event count ``E``, non-decreasing."""
    offsets = _int_array(z["offsets"], src, "offsets")
    if offsets.ndim != 1 or len(offsets) < 2:
        raise DataError(f"{src}: 'offsets' must be 1-D [N + 1] with N >= 1, got shape "
                        f"{offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != E:
        raise DataError(f"{src}: 'offsets' must start at 0 and end at the event count {E}, got "
                        f"{int(offsets[0])} .. {int(offsets[-1])}")
    if offsets.min() < 0 or offsets.max() > E:
        raise DataError(f"{src}: 'offsets' must lie in 0..{E} (the event count), got "
                        f"{int(offsets.min())} .. {int(offsets.max())}")
    offsets = offsets.astype(np.int64)  # signed from here: np.diff of unsigned wraps around
    if (np.diff(offsets) < 0).any():
        bad = int(np.flatnonzero(np.diff(offsets) < 0)[0])
        raise DataError(f"{src}: 'offsets' must be non-decreasing, but offsets[{bad + 1}] "
                        f"{int(offsets[bad + 1])} < offsets[{bad}] {int(offsets[bad])}")
    return offsets


def _check_times(src: str, t: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``t`` as int64 µs, after checking it lies in [0, 2**53) and is non-decreasing within each
    sample of ``offsets`` (a sample's first event may go back)."""
    E = len(t)
    if E and (t.min() < 0 or t.max() >= MAX_T_US):
        bad = int(np.flatnonzero((t < 0) | (t >= MAX_T_US))[0])
        raise DataError(f"{src}: 't' is {int(t[bad])} at event {bad}; times are µs in "
                        f"[0, 2**53)")
    t = t.astype(np.int64)
    step = np.diff(t)
    within = np.ones(max(E - 1, 0), bool)
    cuts = offsets[1:-1]
    within[cuts[(cuts > 0) & (cuts < E)] - 1] = False  # a sample's first event may go back
    back = np.flatnonzero((step < 0) & within)
    if back.size:
        e = int(back[0]) + 1
        sample = int(np.searchsorted(offsets, e, side="right")) - 1
        raise DataError(f"{src}: 't' goes back in time at event {e} (sample {sample}: "
                        f"{int(t[e - 1])} -> {int(t[e])}); each sample's times must be "
                        "non-decreasing")
    return t


def _read_split(z: dict[str, np.ndarray], src: str, N: int) -> np.ndarray:
    """The optional 'split' [N] as int64: 0 (train) and 1 (test), each occurring."""
    split = _int_array(z["split"], src, "split", allow_bool=True).astype(np.int64)
    if split.shape != (N,) or (split.size and (split.min() < 0 or split.max() > 1)):
        raise DataError(f"{src}: 'split' must be [N={N}] of 0 (train) and 1 (test)")
    if split.all() or not split.any():
        raise DataError(f"{src}: 'split' leaves no {'train' if split.all() else 'test'} "
                        "sample")
    return split


def _read_classes(z: dict[str, np.ndarray], src: str) -> int:
    """The optional 'classes': one integer in 1..2**31."""
    c = z["classes"]
    if c.ndim != 0 or c.dtype.kind not in "iu" or not 1 <= int(c) <= 2**31:
        raise DataError(f"{src}: 'classes' must be one integer >= 1, got {c.tolist()!r}")
    return int(c)


def _int_array(v: np.ndarray, src: str, key: str, allow_bool: bool = False) -> np.ndarray:
    if v.dtype.kind in "iu" or (allow_bool and v.dtype.kind == "b"):
        return v
    raise DataError(f"{src}: {key!r} must hold integers, got {v.dtype}")


def events_npz_arrays(T: int, root: str | os.PathLike | None, seed: int = 0,
                      downsample: int = 1) -> Arrays:
    """Events from an .npz, or a folder's train.npz and test.npz (see the module docstring):
    frames [N, T, 2, H, W] float32 event counts, labels int64. A single file's split is its
    ``split`` array, else a seeded stratified 80/20 split."""
    files = _events_npz_files(root)
    if len(files) == 2:
        train, test = (read_events_npz(f, allow_split=False) for f in files)
        if test.sensor != train.sensor:
            raise DataError(f"{test.path}: 'sensor' {test.sensor} differs from train.npz's "
                            f"{train.sensor}")
        if None not in (train.classes, test.classes) and test.classes != train.classes:
            raise DataError(f"{test.path}: 'classes' {test.classes} differs from train.npz's "
                            f"{train.classes}")
        declared = train.classes if train.classes is not None else test.classes
        parts = [(train, np.arange(len(train.labels))), (test, np.arange(len(test.labels)))]
        classes = _classes(declared, train.labels, test.labels, str(Path(root).expanduser()),
                           ("train.npz labels", "test.npz labels"))
    else:
        ev = read_events_npz(files[0])
        src = ev.path
        if ev.split is not None:
            tr, te = np.flatnonzero(ev.split == 0), np.flatnonzero(ev.split == 1)
            classes = _classes(ev.classes, ev.labels[tr], ev.labels[te], src,
                               ("labels[split == 0]", "labels[split == 1]"))
        else:
            classes = _classes(ev.classes, ev.labels, ev.labels[:0], src, ("labels", "labels"))
            if len(ev.labels) < 2:
                raise DataError(f"{src}: 1 sample cannot be split 80/20 into train and test; add "
                                "samples or a 'split' array")
            tr, te = stratified_split(ev.labels, 0.2, seed)
        parts = [(ev, tr), (ev, te)]
    out = []
    for f, idx in parts:
        out += [_frames_from_npz(f, idx, T, downsample), f.labels[idx]]
    return Arrays(*out, classes=classes)


def _classes(declared: int | None, y_train: np.ndarray, y_test: np.ndarray, src: str,
             keys: tuple[str, str]) -> int:
    """``declared`` (the file's 'classes', labels already checked below it), else the count the
    training labels imply, every class occurring in them and no test label beyond them."""
    if declared is None:
        return check_classes(y_train, y_test, src, keys=keys)
    for y, key in ((y_train, keys[0]), (y_test, keys[1])):
        if y.size and int(y.max()) >= declared:
            bad = int(np.flatnonzero(y >= declared)[0])
            raise DataError(f"{src}: {key!r} holds {int(y[bad])} (sample {bad}), out of range "
                            f"for 'classes' {declared} (labels 0..{declared - 1})")
    return declared


def _frames_from_npz(f: EventFile, idx: np.ndarray, T: int, downsample: int) -> np.ndarray:
    W, H = binned_sensor(f.sensor, downsample)
    out = np.empty((len(idx), T, 2, H, W), np.float32)
    per_chunk = _chunk_size(T, f.sensor, downsample)
    for a in range(0, len(idx), per_chunk):
        chunk = _take(f.events, idx[a : a + per_chunk])
        out[a : a + per_chunk] = bin_recordings(chunk, T, f.sensor, downsample, f.path)
    return out


def _events_npz_shape(root, downsample: int) -> tuple[int, int, tuple[int, ...]] | None:
    files = _events_npz_files(root)
    heads = [_load_npz(f, ("labels", "sensor", "split")) for f in files]
    if any("labels" not in h or "sensor" not in h for h in heads):
        return None
    sensor = heads[0]["sensor"]
    if sensor.shape != (2,) or sensor.dtype.kind not in "iu" or not (
        1 <= sensor.min() and sensor.max() <= MAX_SENSOR
    ):
        return None
    W, H = binned_sensor((int(sensor[0]), int(sensor[1])), downsample)
    sizes = [len(h["labels"]) for h in heads]
    n_train = sizes[0]
    if len(files) == 1 and "split" in heads[0] and heads[0]["split"].shape == (sizes[0],):
        n_train = int((heads[0]["split"] == 0).sum())
    return n_train, sum(sizes), (2, H, W)
