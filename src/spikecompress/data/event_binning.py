"""Binning event recordings into frames, shared by the event-file readers of
``spikecompress.data.event_recordings`` and ``spikecompress.data.events_npz``, and the checks
each reader makes on a recording's events (coordinates on the sensor, polarity) before it bins them.

Binning (nmnist, dvs_gesture and events_npz alike): each recording's own time span
``[t_first, t_last]`` is cut into T equal windows and events are counted per window, polarity and
pixel, as integers: event e of a recording with first time t0 and span ``D = t_last - t0 + 1``
µs lands in window ``(t_e - t0) * T // D`` (every event lands in a window, the last one in window
T - 1). The counting is :func:`spikecompress.data.events.to_frames`, the code that bins
``event_digits``. A recording without events gives all-zero frames. ``downsample`` (an integer
d >= 1, ``DataConfig.downsample``) sum-pools the counts over d x d pixel blocks (x // d, y // d; a
sensor of W x H becomes ceil(W / d) x ceil(H / d)), e.g. d = 4 turns DVS Gesture's 128 x 128 into
32 x 32 and its frames into a sixteenth of the memory.
"""

from __future__ import annotations

import numpy as np

from spikecompress.data.common import DataError
from spikecompress.data.events import PackedEvents, to_frames

MAX_T_US = 2**53  # times beyond 285 years are a unit mistake (and lose float precision)
CHUNK_CELLS = 1 << 24  # frame values binned at once (np.bincount's int64 counts: 128 MB)


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


# -- checks and messages the readers share ---------------------------------------------
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
