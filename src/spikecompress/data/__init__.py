"""Datasets, offline: embedded (digits, MNIST-1D), generated (event digits) and local files
(MNIST-family IDX, CIFAR pickles, .npz), batched time-major as (x_seq [T, B, ...], y [B]).

    data = load_data(DataConfig("digits", T=4, batch_size=64))
    for x_seq, y in data.train: ...   # x_seq [4, 64, 1, 8, 8] float32, y [64] int64
"""

from spikecompress.data.api import (
    DATASETS,
    EVENT_DATASETS,
    Data,
    DataConfig,
    check_data,
    check_memory,
    check_shards,
    load_data,
)
from spikecompress.data.common import Arrays, DataError, cache_dir
from spikecompress.data.embedded import digits_arrays, mnist1d_arrays
from spikecompress.data.events import (
    NMNIST_DTYPE,
    SENSOR_SIZE,
    PackedEvents,
    event_digits_arrays,
    event_digits_events,
    event_digits_packed,
    generate_events,
    to_frames,
)
from spikecompress.data.loader import Loader
from spikecompress.data.local import cifar_arrays, mnist_family_arrays, npz_arrays, read_idx

__all__ = [
    "DATASETS", "EVENT_DATASETS", "NMNIST_DTYPE", "SENSOR_SIZE", "Arrays", "Data", "DataConfig",
    "check_data", "check_memory", "check_shards",
    "DataError", "Loader", "PackedEvents", "cache_dir", "cifar_arrays", "digits_arrays",
    "event_digits_arrays", "event_digits_events", "event_digits_packed", "generate_events",
    "load_data", "mnist1d_arrays", "mnist_family_arrays", "npz_arrays", "read_idx", "to_frames",
]
