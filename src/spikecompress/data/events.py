"""Event digits: DVS-style event streams generated from scikit-learn's digits.

A software re-enactment of how N-MNIST was recorded (Orchard et al. 2015, "Converting static image
datasets to spiking neuromorphic datasets using saccades", Front. Neurosci. 9:437): the digit stays
still while the sensor makes three 100 ms saccades tracing a triangle, and an ideal DVS pixel emits
an event each time its log-luminance moves by one contrast threshold. It is not N-MNIST, only its
method applied to 8x8 digits (upsampled to 16x16 on a 22x22 sensor, motion amplitude 4 px, the
ratio of N-MNIST's 7 px for a 28 px digit).

Events use tonic's NMNIST dtype ``[("x", int), ("y", int), ("t", int), ("p", int)]`` with ``t`` in
microseconds and ``p`` 1 for ON, 0 for OFF, so tonic transforms apply to them directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spikecompress.data.common import (
    Arrays,
    cache_dir,
    load_npz_cache,
    save_npz_atomic,
    stratified_split,
)
from spikecompress.data.embedded import DIGITS_TEST_SIZE, digits_images

NMNIST_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
SENSOR_SIZE = (22, 22, 2)  # tonic order: (W, H, P)
DIGIT_PX = 16  # the 8x8 digit upsampled x2
MARGIN_PX = 1  # 22 = 1 + 16 + 4 (motion) + 1
AMPLITUDE_PX = 4.0  # digit size / 4, as N-MNIST's 7 px for its 28 px digits
LEG_US = 100_000  # each of the three saccades lasts 100 ms
DURATION_US = 3 * LEG_US
BLACK_LEVEL = 0.05  # monitor black: keeps log-luminance finite on the dark canvas
THRESHOLD_MEAN, THRESHOLD_STD, THRESHOLD_MIN = 0.25, 0.03, 0.05
NOISE_HZ = 1.0  # background activity per pixel (either polarity)
FORMAT_VERSION = 1  # bump when the generator changes, so old cache files are not reused
CHUNK = 128  # digits rendered at once; bounds memory at ~30 MB per chunk at dt = 5 ms
EVENT_KEYS = ("x", "y", "t", "p", "offsets", "labels")


@dataclass(frozen=True)
class PackedEvents:
    """Events of N samples concatenated (sample i is ``[offsets[i], offsets[i+1])``), each sample
    sorted by time: ``x``, ``y``, ``p`` [E] uint8, ``t`` [E] int32 in µs, ``offsets`` [N + 1]
    int64."""

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        """Events per sample, [N] int64."""
        return np.diff(self.offsets)

    def to_list(self) -> list[np.ndarray]:
        """One structured array per sample in tonic's NMNIST dtype."""
        ev = np.empty(len(self.t), dtype=NMNIST_DTYPE)
        for name in ("x", "y", "t", "p"):
            ev[name] = getattr(self, name)
        return np.split(ev, self.offsets[1:-1])


def saccade_path(times_us: np.ndarray) -> np.ndarray:
    """Sensor-motion offsets (dx, dy) in px at ``times_us`` [S]: [S, 2]. The N-MNIST triangle
    (0, 0) -> (A/2, A) -> (A, 0) -> (0, 0), one straight 100 ms leg each, A = 4 px."""
    knots_t = np.arange(4) * LEG_US
    knots = AMPLITUDE_PX * np.array([[0.0, 0.0], [0.5, 1.0], [1.0, 0.0], [0.0, 0.0]])
    return np.stack([np.interp(times_us, knots_t, knots[:, i]) for i in range(2)], axis=1)


def render_log_luminance(digits: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Log-luminance seen by the sensor: digits [n, 16, 16] in [0, 1] on a dark canvas, shifted by
    ``shifts`` [S, 2] px with bilinear sub-pixel resampling: [S, n, H, W] float64,
    ``L = log(black + (1 - black) I)``."""
    W, H, _ = SENSOR_SIZE
    u = np.arange(W, dtype=np.float64)[None, :] - MARGIN_PX - shifts[:, :1]  # [S, W] digit x
    v = np.arange(H, dtype=np.float64)[None, :] - MARGIN_PX - shifts[:, 1:]  # [S, H] digit y
    scale = 2.0 / (DIGIT_PX - 1)  # pixel coordinate -> [-1, 1] with align_corners=True
    gx = np.broadcast_to((u * scale - 1)[:, None, :], (len(shifts), H, W))  # [S, H, W]
    gy = np.broadcast_to((v * scale - 1)[:, :, None], (len(shifts), H, W))  # [S, H, W]
    grid = torch.from_numpy(np.stack([gx, gy], axis=-1))  # [S, H, W, 2]
    # time as the batch and the digits as channels: one translation per step for every digit
    img = torch.from_numpy(digits)[None].expand(len(shifts), *digits.shape)  # [S, n, 16, 16]
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return np.log(BLACK_LEVEL + (1 - BLACK_LEVEL) * out.numpy())  # [S, n, H, W]


def dvs_events(
    L: np.ndarray, c_on: np.ndarray, c_off: np.ndarray, dt_us: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ideal DVS pixels over log-luminance frames L [S + 1, n, H, W] sampled every ``dt_us``.

    Each pixel keeps a reference level; when ``L - ref`` reaches k thresholds (``c_on`` / ``c_off``
    [H, W]) it emits k events of that polarity and moves ref by k thresholds. Luminance is linear
    between frames, so each event's time is interpolated to its exact level crossing. Returns
    (flat pixel index into [n, H, W] [E] int64, time in µs [E] float64, polarity [E] bool).
    """
    ref = L[0].copy()  # [n, H, W]
    ref_flat = ref.reshape(-1)
    out_idx, out_t, out_p = [], [], []
    for k in range(1, len(L)):
        prev, cur = L[k - 1].reshape(-1), L[k].reshape(-1)  # [n*H*W]
        d = cur - ref_flat
        up = d > 0
        c = np.where(up.reshape(ref.shape), c_on, c_off).reshape(-1)  # threshold per pixel
        count = np.floor(np.abs(d) / c).astype(np.int64)
        hit = np.flatnonzero(count)
        if hit.size == 0:
            continue
        cnt, step, start = count[hit], np.where(up[hit], c[hit], -c[hit]), ref_flat[hit]
        ref_flat[hit] = start + cnt * step
        owner = np.repeat(np.arange(hit.size), cnt)  # [e] which hit pixel each event belongs to
        j = np.arange(owner.size) - np.repeat(np.cumsum(cnt) - cnt, cnt) + 1  # 1..cnt per pixel
        level = start[owner] + j * step[owner]  # the level each event crosses
        p0, p1 = prev[hit][owner], cur[hit][owner]
        span = np.where(p1 != p0, p1 - p0, 1.0)
        frac = np.clip((level - p0) / span, 0.0, 1.0)
        out_idx.append(hit[owner])
        out_t.append((k - 1 + frac) * dt_us)
        out_p.append(up[hit][owner])
    if not out_idx:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
    return np.concatenate(out_idx), np.concatenate(out_t), np.concatenate(out_p)


def _draw_noise(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Uniform background activity at NOISE_HZ per pixel for n samples: per-sample ``counts`` [n]
    and the events' ``x``, ``y``, ``t`` (µs), ``p`` [E_noise]."""
    W, H, _ = SENSOR_SIZE
    counts = rng.poisson(NOISE_HZ * W * H * DURATION_US * 1e-6, size=n)
    total = int(counts.sum())
    return {
        "counts": counts,
        "x": rng.integers(0, W, total),
        "y": rng.integers(0, H, total),
        "t": rng.integers(0, DURATION_US, total),
        "p": rng.integers(0, 2, total),
    }


def _check_dt(dt_ms: float) -> int:
    dt_us = int(round(dt_ms * 1000))
    if dt_us < 1 or LEG_US % dt_us:
        raise ValueError(f"dt_ms must divide the 100 ms saccade (e.g. 1, 2, 5, 10), got {dt_ms}")
    return dt_us


def generate_events(images: np.ndarray, seed: int = 0, dt_ms: float = 5.0) -> PackedEvents:
    """Record event streams of ``images`` [N, 8, 8] in [0, 1] (no cache): every sample lasts
    300 ms on a 22x22 sensor. The same seed gives the same events bit for bit.

    The seed fixes the sensor (per-pixel, per-polarity thresholds ``C ~ N(0.25, 0.03)``, one
    sensor for the whole set, as one camera recorded N-MNIST) and the 1 Hz background noise
    (drawn for all N samples up front, so a sample's events also depend on N).
    """
    dt_us = _check_dt(dt_ms)
    if np.ndim(images) != 3 or np.shape(images)[1:] != (8, 8) or len(images) == 0:
        raise ValueError(f"images must be [N >= 1, 8, 8], got shape {np.shape(images)}")
    W, H, _ = SENSOR_SIZE
    rng = np.random.default_rng(seed)
    c_on, c_off = rng.normal(THRESHOLD_MEAN, THRESHOLD_STD, (2, H, W)).clip(THRESHOLD_MIN)
    noise = _draw_noise(rng, len(images))
    noise_off = np.concatenate([[0], np.cumsum(noise["counts"])])
    small = torch.from_numpy(np.asarray(images, dtype=np.float64))[:, None]  # [N, 1, 8, 8]
    digits = F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)[:, 0]
    shifts = saccade_path(np.arange(0, DURATION_US + 1, dt_us))  # [S + 1, 2]
    parts = []
    for a in range(0, len(images), CHUNK):
        b = min(a + CHUNK, len(images))
        L = render_log_luminance(digits[a:b].numpy(), shifts)  # [S + 1, b - a, H, W]
        idx, t, p = dvs_events(L, c_on, c_off, dt_us)
        sample, pix = np.divmod(idx, H * W)
        t_us = np.floor(t).astype(np.int64).clip(0, DURATION_US - 1)  # a final-frame crossing
        sl = slice(noise_off[a], noise_off[b])
        parts.append(_sort_chunk(
            sample=np.concatenate([sample + a, np.repeat(np.arange(a, b), noise["counts"][a:b])]),
            x=np.concatenate([pix % W, noise["x"][sl]]),
            y=np.concatenate([pix // W, noise["y"][sl]]),
            t=np.concatenate([t_us, noise["t"][sl]]),
            p=np.concatenate([p, noise["p"][sl]]),
        ))
    return _join(parts, len(images))


def _sort_chunk(sample, x, y, t, p) -> dict[str, np.ndarray]:
    """Sort one chunk's events by (sample, t), stably, and pack them into compact dtypes."""
    order = np.lexsort((t, sample))
    return {
        "sample": sample[order], "x": x[order].astype(np.uint8), "y": y[order].astype(np.uint8),
        "t": t[order].astype(np.int32), "p": p[order].astype(np.uint8),
    }


def _join(parts: list[dict[str, np.ndarray]], n: int) -> PackedEvents:
    cat = {k: np.concatenate([part[k] for part in parts]) for k in ("sample", "x", "y", "t", "p")}
    offsets = np.concatenate([[0], np.cumsum(np.bincount(cat["sample"], minlength=n))])
    return PackedEvents(cat["x"], cat["y"], cat["t"], cat["p"], offsets.astype(np.int64))


def event_digits_packed(
    seed: int = 0,
    root: str | os.PathLike | None = None,
    dt_ms: float = 5.0,
    num_digits: int | None = None,
) -> tuple[PackedEvents, np.ndarray]:
    """Event digits for all 1,797 scikit-learn digits (or the first ``num_digits``, for quick
    tests), generated once and cached in ``cache_dir(root)``: (events, labels [N] int64)."""
    dt_us = _check_dt(dt_ms)
    images, labels = digits_images()
    if num_digits is not None:
        images, labels = images[:num_digits], labels[:num_digits]
    name = f"event_digits_v{FORMAT_VERSION}_seed{seed}_dt{dt_us}us_n{len(images)}.npz"
    path = cache_dir(root) / name
    data = load_npz_cache(path, EVENT_KEYS)
    if data is not None and np.array_equal(data["labels"], labels):
        ev = PackedEvents(data["x"], data["y"], data["t"], data["p"], data["offsets"])
        return ev, labels
    ev = generate_events(images, seed, dt_ms)
    arrays = {k: getattr(ev, k) for k in ("x", "y", "t", "p", "offsets")}
    save_npz_atomic(path, {**arrays, "labels": labels})
    return ev, labels


def event_digits_events(
    seed: int = 0,
    root: str | os.PathLike | None = None,
    dt_ms: float = 5.0,
    num_digits: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Event digits as one NMNIST-dtype structured array per sample (for tonic transforms) and
    labels [N] int64. Cached like :func:`event_digits_packed`."""
    ev, labels = event_digits_packed(seed, root, dt_ms, num_digits)
    return ev.to_list(), labels


def to_frames(
    events: list[np.ndarray] | PackedEvents,
    T: int,
    sensor_size: tuple[int, int, int] = SENSOR_SIZE,
    duration_us: int = DURATION_US,
) -> np.ndarray:
    """Bin each sample's events into T equal time windows over ``[0, duration_us)`` and count
    them per polarity and pixel: [N, T, P, H, W] int32 (sensor_size is tonic's (W, H, P)).

    Window k holds ``k * duration / T <= t < (k + 1) * duration / T``; events outside
    ``[0, duration)`` are dropped. This equals tonic's ``ToFrame(sensor_size,
    time_window=duration / T, start_time=0, end_time=duration)`` per sample (bit-identical when
    duration / T is a whole number of µs), for all samples at once with one ``np.bincount``.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if isinstance(events, PackedEvents):
        x, y, t, p, counts = events.x, events.y, events.t, events.p, events.counts()
    else:
        cat = np.concatenate(events) if events else np.zeros(0, NMNIST_DTYPE)
        x, y, t, p = cat["x"], cat["y"], cat["t"], cat["p"]
        counts = np.array([len(e) for e in events], dtype=np.int64)
    W, H, P = sensor_size
    n = len(counts)
    for name, v, size in (("x", x, W), ("y", y, H), ("p", p, P if P > 1 else 2)):
        if v.size and (v.min() < 0 or v.max() >= size):
            raise ValueError(f"event field {name!r} outside the sensor size {sensor_size}")
    cells = n * T * P * H * W
    # int32 index arithmetic when it cannot overflow: half the memory traffic of int64
    idx_t = np.int32 if max(cells, T * int(duration_us)) < 2**31 else np.int64
    keep = (t >= 0) & (t < duration_us)
    if not keep.all():  # events outside [0, duration) fall in no window
        x, y, t, p = x[keep], y[keep], t[keep], p[keep]
        counts = np.bincount(np.repeat(np.arange(n), counts)[keep], minlength=n)
    t = t.astype(idx_t)  # safe now: 0 <= t < duration
    flat = np.repeat(np.arange(n, dtype=idx_t) * T, counts)  # [E] sample * T
    flat += t * T // duration_us  # time bin, exact integer arithmetic
    flat *= P
    if P > 1:
        flat += p.astype(idx_t)
    flat *= H
    flat += y.astype(idx_t)
    flat *= W
    flat += x.astype(idx_t)  # [E] index into [N, T, P, H, W]
    counts_flat = np.bincount(flat, minlength=cells)
    return counts_flat.astype(np.int32).reshape(n, T, P, H, W)


def event_digits_arrays(
    T: int, seed: int = 0, root: str | os.PathLike | None = None, dt_ms: float = 5.0
) -> Arrays:
    """Event digits as frames [N, T, 2, 22, 22] float32 (event counts), with the same stratified
    1,437 / 360 split as ``digits`` for the same seed."""
    ev, labels = event_digits_packed(seed, root, dt_ms)
    frames = to_frames(ev, T).astype(np.float32)  # [N, T, 2, H, W]
    tr, te = stratified_split(labels, DIGITS_TEST_SIZE, seed)
    return Arrays(frames[tr], labels[tr], frames[te], labels[te], classes=10)
