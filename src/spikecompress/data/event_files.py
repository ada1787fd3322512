"""Event recordings the user already has on disk, binned to frames [T, 2, H, W] by our ``T``.

Three layouts, read by our own code (no tonic, no downloads, nothing unpickled):

``nmnist`` -- N-MNIST as distributed (Orchard et al. 2015, "Converting static image datasets to
spiking neuromorphic datasets using saccades", Front. Neurosci. 9:437), ``root`` the folder its
``Train.zip`` and ``Test.zip`` were extracted into (or tonic's ``save_to`` folder, which holds
them under ``NMNIST/``)::

    <root>/Train/<digit 0-9>/<id>.bin        60,000 recordings
    <root>/Test/<digit 0-9>/<id>.bin         10,000 recordings

Each ``.bin`` is a sequence of 5-byte (40-bit) events: byte 0 = x, byte 1 = y, bit 7 of byte 2 =
polarity (1 ON, 0 OFF), and the low 7 bits of byte 2, byte 3 and byte 4 = the timestamp in µs
(23 bits, most significant first). Sensor 34 x 34. (Orchard's ``read_dataset`` also drops
timestamp-overflow markers at x = 305, y = 240; x cannot be 305 in one byte, and 23 bits cover
8.4 s against N-MNIST's ~0.3 s, so no N-MNIST file holds one; a y beyond the sensor is an error.)

``dvs_gesture`` -- IBM DVS Gesture (Amir et al., CVPR 2017) in the preprocessed layout tonic's
``DVSGesture`` downloads and extracts (one gesture per file, time in ms), ``root`` the folder
holding ``ibmGestureTrain/`` and ``ibmGestureTest/`` (or tonic's ``save_to``, which holds them
under ``DVSGesture/``)::

    <root>/ibmGestureTrain/user<NN>_<lighting>/<label 0-10>.npy
    <root>/ibmGestureTest/user<NN>_<lighting>/<label 0-10>.npy

Each ``.npy`` is an [E, 4] numeric array with columns x, y, p, t (t in ms, turned into µs as
tonic does: ``t * 1000``, floored). Sensor 128 x 128, 11 classes (10 gestures + "other").
Files are read with ``allow_pickle=False``.

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

Binning (all three): each recording's own time span ``[t_first, t_last]`` is cut into T equal
windows and events are counted per window, polarity and pixel, as integers: event e of a recording
with first time t0 and span ``D = t_last - t0 + 1`` µs lands in window ``(t_e - t0) * T // D``
(every event lands in a window, the last one in window T - 1). The counting is
:func:`spikecompress.data.events.to_frames`, the code that bins ``event_digits``. A recording
without events gives all-zero frames. ``downsample`` (an integer d >= 1, ``DataConfig.downsample``)
sum-pools the counts over d x d pixel blocks (x // d, y // d; a sensor of W x H becomes
ceil(W / d) x ceil(H / d)), e.g. d = 4 turns DVS Gesture's 128 x 128 into 32 x 32 and its frames
into a sixteenth of the memory.

Bad input is refused with a one-line DataError naming the file and the field: the folder layout
and every file's size or array header are checked before any recording is read; coordinates,
polarities and times as each file is read, before its events are binned.

tonic (the optional ``events`` extra) is not used to read these layouts: tonic 1.7 imports
importRosbag and expelliarmus when imported, and its ``NMNIST`` / ``DVSGesture`` classes start a
download unless the original archive lies beside the extracted folders. The folders it prepares
are read here as they are (``root`` = tonic's ``save_to``).
"""

from __future__ import annotations

import os
import re
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
from spikecompress.data.events import PackedEvents, to_frames

NMNIST_SENSOR = (34, 34)  # (W, H)
NMNIST_CLASSES = 10
NMNIST_SPLITS = ("Train", "Test")
NMNIST_LAYOUT = "<root>/{Train,Test}/<digit 0-9>/<id>.bin (N-MNIST as distributed)"
NMNIST_EVENT_BYTES = 5
GESTURE_SENSOR = (128, 128)
GESTURE_CLASSES = 11
GESTURE_SPLITS = ("ibmGestureTrain", "ibmGestureTest")
GESTURE_LAYOUT = ("<root>/{ibmGestureTrain,ibmGestureTest}/user<NN>_<lighting>/<label 0-10>.npy "
                  "(tonic's DVSGesture folders)")
GESTURE_USER = re.compile(r"user(\d+)_(.+)")
GESTURE_FILE = re.compile(r"(\d+)\.npy")
EVENTS_NPZ_KEYS = ("x", "y", "t", "p", "offsets", "labels", "sensor")
EVENTS_NPZ_OPTIONAL = ("split", "classes")
EVENTS_NPZ_LAYOUT = ("an .npz with 'x', 'y', 't', 'p' [E], 'offsets' [N+1], 'labels' [N], "
                     "'sensor' (W, H), or a folder holding train.npz and test.npz")
EVENT_FILE_DATASETS = ("nmnist", "dvs_gesture", "events_npz")
MAX_SENSOR = 2**16  # a sensor side beyond this is a typo, not a camera
MAX_T_US = 2**53  # times beyond 285 years are a unit mistake (and lose float precision)
CHUNK_EVENTS = 1 << 22  # events read before they are binned: bounds the reader's memory
CHUNK_CELLS = 1 << 24  # frame values binned at once (np.bincount's int64 counts: 128 MB)


# -- binning ------------------------------------------------------------------------------------
def binned_sensor(sensor: tuple[int, int], downsample: int = 1) -> tuple[int, int]:
    """(W, H) of the frames of ``sensor`` (W, H) downsampled by d: ceil(W / d), ceil(H / d)."""
    return -(-sensor[0] // downsample), -(-sensor[1] // downsample)


def bin_recordings(ev: PackedEvents, T: int, sensor: tuple[int, int], downsample: int = 1,
                   source: str = "events") -> np.ndarray:
    """Frames of the recordings in ``ev`` (x, y, p, t in µs, per-sample ``offsets``): [N, T, 2,
    H', W'] int32 event counts, each recording's span ``[t_first, t_last]`` cut into T equal
    windows (see the module docstring), pixels sum-pooled over ``downsample`` x ``downsample``
    blocks. Coordinates must already lie on ``sensor`` (W, H) and p in {0, 1}."""
    counts = ev.counts()
    n = len(counts)
    t = np.asarray(ev.t, dtype=np.int64)
    t0, span = np.zeros(n, np.int64), np.ones(n, np.int64)
    full = counts > 0
    if full.any():
        starts = ev.offsets[:-1][full]  # nonempty samples only: reduceat's segments are theirs
        t0[full] = np.minimum.reduceat(t, starts)
        span[full] = np.maximum.reduceat(t, starts) - t0[full] + 1
    if int(span.max(initial=1)) > (2**63 - 1) // T:
        raise DataError(f"{source}: a recording spans {int(span.max())} µs, too long to cut into "
                        f"T={T} windows with exact integer arithmetic; lower data.T")
    window = (t - np.repeat(t0, counts)) * T // np.repeat(span, counts)  # [E] in [0, T)
    W, H = binned_sensor(sensor, downsample)
    x, y = np.asarray(ev.x), np.asarray(ev.y)
    if downsample > 1:
        x, y = x // downsample, y // downsample
    p = np.asarray(ev.p).astype(np.uint8)
    # time measured in windows: to_frames' window k * T // T = k, its counting unchanged
    return to_frames(PackedEvents(x, y, window, p, ev.offsets), T, (W, H, 2), duration_us=T)


def _chunk_size(T: int, sensor: tuple[int, int], downsample: int) -> int:
    """Recordings binned at once, so np.bincount's counts stay near CHUNK_CELLS values."""
    W, H = binned_sensor(sensor, downsample)
    return max(1, CHUNK_CELLS // (T * 2 * W * H))


def _take(ev: PackedEvents, idx: np.ndarray) -> PackedEvents:
    """The recordings ``idx`` of ``ev``, packed again in that order."""
    counts = ev.counts()[idx]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pick = np.repeat(ev.offsets[idx] - offsets[:-1], counts) + np.arange(offsets[-1])
    return PackedEvents(ev.x[pick], ev.y[pick], ev.t[pick], ev.p[pick], offsets)


def _pack(parts: list[tuple[np.ndarray, ...]]) -> PackedEvents:
    """Pack per-recording (x, y, t, p) arrays into one PackedEvents."""
    offsets = np.concatenate([[0], np.cumsum([len(part[0]) for part in parts])]).astype(np.int64)
    x, y, t, p = (np.concatenate([part[i] for part in parts]) for i in range(4))
    return PackedEvents(x, y, t, p, offsets)


# -- N-MNIST and DVS Gesture folders -------------------------------------------------------------
@dataclass(frozen=True)
class _Split:
    """One split of a folder dataset: its recordings' paths, labels [N] and event counts [N]."""

    paths: list[Path]
    labels: np.ndarray
    events: np.ndarray


def _base(root: str | os.PathLike | None, name: str, splits: tuple[str, str], tonic_folder: str,
          layout: str) -> Path:
    """The folder holding ``splits``: ``root`` itself, or tonic's ``root/<tonic_folder>``."""
    if root is None:
        raise DataError(f"{name}: DataConfig.root is required: the folder holding {layout}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: missing folder {root}; expected {layout}")
    for base in (root, root / tonic_folder):
        if any((base / s).is_dir() for s in splits):
            for s in splits:
                if not (base / s).is_dir():
                    raise DataError(f"{name}: missing folder {base / s}; expected {layout}")
            return base
    raise DataError(f"{name}: missing folder {root / splits[0]}; expected {layout}")


def _entries(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder``, hidden ones left out, sorted by name."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list {folder}: {e.strerror}") from None


def list_nmnist(root: str | os.PathLike | None) -> dict[str, _Split]:
    """The N-MNIST recordings under ``root`` by split ("train", "test"), after checking the layout
    (label folders 0-9) and that every .bin's size is a whole number of 5-byte events."""
    base = _base(root, "nmnist", NMNIST_SPLITS, "NMNIST", NMNIST_LAYOUT)
    out = {}
    for split, folder in zip(("train", "test"), NMNIST_SPLITS, strict=True):
        paths, labels, events = [], [], []
        for label_dir in _entries(base / folder):
            if not label_dir.is_dir():
                continue
            if label_dir.name not in {str(d) for d in range(NMNIST_CLASSES)}:
                raise DataError(f"{label_dir.path}: unknown label folder {label_dir.name!r}; "
                                f"N-MNIST label folders are 0..9 ({NMNIST_LAYOUT})")
            for f in _entries(Path(label_dir.path)):
                if not f.name.endswith(".bin") or not f.is_file():
                    continue
                size = f.stat().st_size
                if size % NMNIST_EVENT_BYTES:
                    raise DataError(f"{f.path}: {size} bytes is not a whole number of 5-byte "
                                    "N-MNIST events (truncated file?)")
                paths.append(Path(f.path))
                labels.append(int(label_dir.name))
                events.append(size // NMNIST_EVENT_BYTES)
        if not paths:
            raise DataError(f"nmnist: no .bin recordings under {base / folder}; expected "
                            f"{NMNIST_LAYOUT}")
        out[split] = _Split(paths, np.array(labels, np.int64), np.array(events, np.int64))
    return out


def read_nmnist_bin(path: str | os.PathLike,
                    sensor: tuple[int, int] = NMNIST_SENSOR) -> tuple[np.ndarray, ...]:
    """Decode one N-MNIST ``.bin`` (5-byte events, see the module docstring): (x, y, t, p) [E],
    x / y / p uint8, t int64 µs. DataError naming the file for a size that is not a multiple of
    5 bytes or a coordinate beyond ``sensor`` (W, H)."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if raw.size % NMNIST_EVENT_BYTES:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of 5-byte N-MNIST "
                        "events (truncated file?)")
    ev = raw.reshape(-1, NMNIST_EVENT_BYTES)
    x, y, p = ev[:, 0], ev[:, 1], ev[:, 2] >> 7
    t = ((ev[:, 2].astype(np.int64) & 0x7F) << 16) | (ev[:, 3].astype(np.int64) << 8) | ev[:, 4]
    _check_on_sensor(str(path), x, y, sensor)
    return x, y, t, p


def list_dvs_gesture(root: str | os.PathLike | None) -> dict[str, _Split]:
    """The DVS Gesture recordings under ``root`` by split, after checking the layout (user
    folders ``user<NN>_<lighting>``, files ``<label 0-10>.npy``) and every file's .npy header
    (a numeric [E, 4] array)."""
    base = _base(root, "dvs_gesture", GESTURE_SPLITS, "DVSGesture", GESTURE_LAYOUT)
    out = {}
    for split, folder in zip(("train", "test"), GESTURE_SPLITS, strict=True):
        paths, labels, events = [], [], []
        for user in _entries(base / folder):
            if not user.is_dir():
                continue
            if not GESTURE_USER.fullmatch(user.name):
                raise DataError(f"{user.path}: unknown folder {user.name!r}; expected "
                                f"user<NN>_<lighting> folders ({GESTURE_LAYOUT})")
            found = []
            for f in _entries(Path(user.path)):
                if not f.name.endswith(".npy") or not f.is_file():
                    continue
                match = GESTURE_FILE.fullmatch(f.name)
                if not match or int(match.group(1)) >= GESTURE_CLASSES:
                    raise DataError(f"{f.path}: unknown label file {f.name!r}; DVS Gesture files "
                                    f"are <label>.npy with label 0..{GESTURE_CLASSES - 1}")
                found.append((int(match.group(1)), Path(f.path)))
            for label, path in sorted(found):  # by label: 2.npy before 10.npy
                paths.append(path)
                labels.append(label)
                events.append(_npy_rows(path))
        if not paths:
            raise DataError(f"dvs_gesture: no .npy recordings under {base / folder}; expected "
                            f"{GESTURE_LAYOUT}")
        out[split] = _Split(paths, np.array(labels, np.int64), np.array(events, np.int64))
    return out


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy file's header, without reading its data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = read(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy file ({_first_line(e)})") from None
    return shape, dtype


def _npy_rows(path: Path) -> int:
    shape, dtype = _npy_header(path)
    if len(shape) != 2 or shape[1] != 4:
        raise DataError(f"{path}: expected an [E, 4] array of events (columns x, y, p, t), got "
                        f"shape {shape}")
    if dtype.kind not in "iub" and dtype.kind != "f":
        raise DataError(f"{path}: events must be numbers (int, uint or float), got {dtype}")
    return shape[0]


def read_gesture_npy(path: str | os.PathLike,
                     sensor: tuple[int, int] = GESTURE_SENSOR) -> tuple[np.ndarray, ...]:
    """Read one DVS Gesture ``.npy`` (columns x, y, p, t in ms; never unpickled): (x, y, t, p)
    [E], t in µs (``floor(t * 1000)``) int64. DataError naming the file and column for a bad
    shape or dtype, non-finite or fractional x / y / p, a coordinate beyond ``sensor``, p not 0/1
    or a negative time."""
    path = Path(path)
    _npy_rows(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({_first_line(e)})") from None
    src = str(path)
    cols = {}
    for i, name in enumerate(("x", "y", "p", "t")):
        col = arr[:, i]
        if col.dtype.kind == "f":
            if not np.isfinite(col).all():
                raise DataError(f"{src}: column {name!r} holds NaN or inf")
            if name != "t" and (col != np.floor(col)).any():
                raise DataError(f"{src}: column {name!r} must hold whole numbers")
        cols[name] = col
    t = cols["t"]
    if t.size and (t.min() < 0 or t.max() >= MAX_T_US // 1000):
        raise DataError(f"{src}: column 't' must hold times in [0, {MAX_T_US // 1000}) ms")
    t = np.floor(t * 1000.0) if t.dtype.kind == "f" else t.astype(np.int64) * 1000
    t = t.astype(np.int64)
    x, y, p = (cols[k].astype(np.int64) for k in ("x", "y", "p"))
    _check_on_sensor(src, x, y, sensor, "column ")
    _check_polarity(src, p, "column ")
    return x, y, t, p


def _check_on_sensor(src: str, x: np.ndarray, y: np.ndarray, sensor: tuple[int, int],
                     what: str = "") -> None:
    for name, v, size, side in (("x", x, sensor[0], "width"), ("y", y, sensor[1], "height")):
        if v.size and (v.min() < 0 or v.max() >= size):
            bad = int(np.flatnonzero((v < 0) | (v >= size))[0])
            raise DataError(f"{src}: {what}{name!r} is {int(v[bad])} at event {bad}, outside the "
                            f"sensor {side} {size} (0..{size - 1})")


def _check_polarity(src: str, p: np.ndarray, what: str = "") -> None:
    if p.size and (p.min() < 0 or p.max() > 1):
        bad = int(np.flatnonzero((p < 0) | (p > 1))[0])
        raise DataError(f"{src}: {what}'p' is {int(p[bad])} at event {bad}; polarity must be 0 "
                        "(OFF) or 1 (ON)")


def _frames_from_files(split: _Split, read, T: int, sensor: tuple[int, int],
                       downsample: int) -> np.ndarray:
    """Read ``split``'s files with ``read`` a chunk at a time and bin each chunk straight into
    the float32 frames [N, T, 2, H', W'] (the events of one chunk in memory at a time)."""
    W, H = binned_sensor(sensor, downsample)
    out = np.empty((len(split.paths), T, 2, H, W), np.float32)
    per_chunk = _chunk_size(T, sensor, downsample)
    a = 0
    while a < len(split.paths):
        b, events = a + 1, int(split.events[a])
        while b < len(split.paths) and b - a < per_chunk and events < CHUNK_EVENTS:
            events += int(split.events[b])
            b += 1
        parts = [read(path, sensor) for path in split.paths[a:b]]
        out[a:b] = bin_recordings(_pack(parts), T, sensor, downsample, str(split.paths[a]))
        a = b
    return out


def nmnist_arrays(T: int, root: str | os.PathLike | None, downsample: int = 1) -> Arrays:
    """N-MNIST from its folders (see the module docstring): frames [N, T, 2, H, W] float32 event
    counts (34 x 34, or ceil(34 / downsample)), labels int64, the official train / test split."""
    splits = list_nmnist(root)
    frames = {k: _frames_from_files(s, read_nmnist_bin, T, NMNIST_SENSOR, downsample)
              for k, s in splits.items()}
    return Arrays(frames["train"], splits["train"].labels, frames["test"], splits["test"].labels,
                  classes=NMNIST_CLASSES)


def dvs_gesture_arrays(T: int, root: str | os.PathLike | None, downsample: int = 1) -> Arrays:
    """DVS Gesture from tonic's folders (see the module docstring): frames [N, T, 2, H, W]
    float32 event counts (128 x 128, or ceil(128 / downsample)), labels int64 (11 classes), the
    official train / test split."""
    splits = list_dvs_gesture(root)
    frames = {k: _frames_from_files(s, read_gesture_npy, T, GESTURE_SENSOR, downsample)
              for k, s in splits.items()}
    return Arrays(frames["train"], splits["train"].labels, frames["test"], splits["test"].labels,
                  classes=GESTURE_CLASSES)


# -- plain .npz events ---------------------------------------------------------------------------
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
    sensor = _int_array(z["sensor"], src, "sensor")
    if sensor.shape != (2,) or sensor.min() < 1 or sensor.max() > MAX_SENSOR:
        raise DataError(f"{src}: 'sensor' must be (W, H), two integers in 1..{MAX_SENSOR}, got "
                        f"{z['sensor'].tolist()}")
    W, H = int(sensor[0]), int(sensor[1])
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
    N = len(offsets) - 1
    labels = check_labels(z["labels"], src, "labels")
    if len(labels) != N:
        raise DataError(f"{src}: 'labels' has {len(labels)} samples but 'offsets' describes {N}")
    x, y, t, p = fields["x"], fields["y"], fields["t"], fields["p"]
    _check_on_sensor(src, x, y, (W, H))
    _check_polarity(src, p.astype(np.int64))
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
    split = None
    if "split" in z:
        split = _int_array(z["split"], src, "split", allow_bool=True).astype(np.int64)
        if split.shape != (N,) or (split.size and (split.min() < 0 or split.max() > 1)):
            raise DataError(f"{src}: 'split' must be [N={N}] of 0 (train) and 1 (test)")
        if split.all() or not split.any():
            raise DataError(f"{src}: 'split' leaves no {'train' if split.all() else 'test'} "
                            "sample")
    classes = None
    if "classes" in z:
        c = z["classes"]
        if c.ndim != 0 or c.dtype.kind not in "iu" or not 1 <= int(c) <= 2**31:
            raise DataError(f"{src}: 'classes' must be one integer >= 1, got {c.tolist()!r}")
        classes = int(c)
    ev = PackedEvents(x, y, t, p.astype(np.uint8), offsets)
    return EventFile(src, ev, labels, (W, H), split, classes)


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


# -- sizes, for the memory check before loading --------------------------------------------------
def event_files_shape(name: str, root: str | os.PathLike | None,
                      downsample: int = 1) -> tuple[int, int, tuple[int, ...]] | None:
    """(training recordings, all recordings, one frame's shape (2, H, W)) of an event-file dataset,
    from its folder listing or .npz headers (no events read); None when the files cannot be
    read (the loader then names the problem)."""
    try:
        if name == "nmnist":
            splits, sensor = list_nmnist(root), NMNIST_SENSOR
        elif name == "dvs_gesture":
            splits, sensor = list_dvs_gesture(root), GESTURE_SENSOR
        elif name == "events_npz":
            return _events_npz_shape(root, downsample)
        else:
            raise ValueError(f"not an event-file dataset: {name!r}")
    except DataError:
        return None
    W, H = binned_sensor(sensor, downsample)
    n_train = len(splits["train"].paths)
    return n_train, n_train + len(splits["test"].paths), (2, H, W)


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
