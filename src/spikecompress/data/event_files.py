"""Event recordings the user already has on disk, binned to frames [T, 2, H, W] by our ``T``.

Three layouts, read by our own code (no tonic, no downloads, nothing unpickled): ``nmnist``
(N-MNIST as distributed) and ``dvs_gesture`` (IBM DVS Gesture in the folders tonic prepares), read
by ``spikecompress.data.event_recordings``, and ``events_npz`` (any events in an ``.npz``), read by
``spikecompress.data.events_npz``; each module's docstring gives its layouts. All three are binned
as ``spikecompress.data.event_binning`` describes: each recording's own span cut into T windows,
``downsample`` sum-pooling the pixels.

Bad input is refused with a one-line DataError naming the file and the field: the folder layout
and every file's size or array header are checked before any recording is read; coordinates,
polarities and times as each file is read, before its events are binned.

This module: the names of these datasets and their sizes before loading.
"""

from __future__ import annotations

import os

from spikecompress.data.common import DataError
from spikecompress.data.event_binning import binned_sensor
from spikecompress.data.event_recordings import (
    GESTURE_SENSOR,
    NMNIST_SENSOR,
    list_dvs_gesture,
    list_nmnist,
)
from spikecompress.data.events_npz import _events_npz_shape

EVENT_FILE_DATASETS = ("nmnist", "dvs_gesture", "events_npz")


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
