"""N-MNIST and DVS Gesture recordings from the folders they are distributed in, binned to frames
[T, 2, H, W] by our ``T`` (as ``spikecompress.data.event_binning`` describes).

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

from spikecompress.data.common import Arrays, DataError
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
CHUNK_EVENTS = 1 << 22  # events read before they are binned: bounds the reader's memory


def _pack(parts: list[tuple[np.ndarray, ...]]) -> PackedEvents:
    """Pack per-recording (x, y, t, p) arrays into one PackedEvents."""
    offsets = np.concatenate([[0], np.cumsum([len(part[0]) for part in parts])]).astype(np.int64)
    x, y, t, p = (np.concatenate([part[i] for part in parts]) for i in range(4))
    return PackedEvents(x, y, t, p, offsets)



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
