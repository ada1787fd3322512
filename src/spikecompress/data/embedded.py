"""Datasets that need no file from the user: scikit-learn's digits and the procedural MNIST-1D.

Neither touches the network. ``mnist1d`` is generated with the package's ``make_dataset`` (the
published 4,000/1,000 split) and cached as .npz; its ``get_dataset`` download path is never called.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np

from spikecompress.data.common import (
    Arrays,
    cache_dir,
    load_npz_cache,
    save_npz_atomic,
    stratified_split,
)

DIGITS_TEST_SIZE = 0.2
MNIST1D_KEYS = ("x", "y", "x_test", "y_test")
MNIST1D_PUBLISHED_ARGS = (
    ("num_samples", 5000), ("train_split", 0.8), ("template_len", 12), ("padding", (36, 60)),
    ("scale_coeff", 0.4), ("max_translation", 48), ("corr_noise_scale", 0.25),
    ("iid_noise_scale", 2e-2), ("shear_scale", 0.75), ("shuffle_seq", False),
    ("final_seq_length", 40), ("seed", 42),
)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits: images [N, 8, 8] float64 in [0, 1] (grey level / 16) and
    labels [N] int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images / 16.0, bunch.target.astype(np.int64)


def digits_arrays(seed: int = 0) -> Arrays:
    """scikit-learn digits as [N, 1, 8, 8] float32 in [0, 1], stratified seeded split 1,437 / 360
    (``test_size=0.2``). Writers mix across the split, so accuracies run near the ceiling."""
    images, labels = digits_images()
    tr, te = stratified_split(labels, DIGITS_TEST_SIZE, seed)
    x = images.astype(np.float32)[:, None]  # [N, 8, 8] -> [N, 1, 8, 8]
    return Arrays(x[tr], labels[tr], x[te], labels[te], classes=10)


def mnist1d_args(num_samples: int = 5000) -> dict:
    """The published MNIST-1D generation arguments (``mnist1d.data.get_dataset_args()`` without
    the download URL): seed 42, 80/20 split, length 40. Kept here so that a cache hit needs no
    import of ``mnist1d`` (0.75 s: it pulls in matplotlib and requests); ``num_samples`` may be
    lowered for quick tests."""
    args = dict(MNIST1D_PUBLISHED_ARGS)
    args["padding"] = list(args["padding"])
    args["num_samples"] = int(num_samples)
    return args


def _make_mnist1d(args: dict) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` offline. It reseeds Python's and numpy's global RNGs, so
    their states are saved and restored: loading data leaves the caller's randomness untouched."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }


def mnist1d_arrays(root: str | os.PathLike | None = None, num_samples: int = 5000) -> Arrays:
    """MNIST-1D (Greydanus 2020) as [N, 1, 40] float32: 4,000 train / 1,000 test by default.

    Values are left as ``make_dataset`` returns them: already standardised by the package over the
    whole set (mean 0, std 1), so they are not in [0, 1]; poisson/latency encoders clamp to [0, 1].
    The split and the samples are the published ones (seed 42 inside the args), independent of the
    run's seed. The generated arrays are cached in ``cache_dir(root)`` keyed by a hash of the args.
    """
    args = mnist1d_args(num_samples)
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir(root) / f"mnist1d_{key}.npz"
    data = load_npz_cache(path, MNIST1D_KEYS)
    if data is None:
        data = _make_mnist1d(args)
        save_npz_atomic(path, data)
    x, x_test = data["x"][:, None], data["x_test"][:, None]  # [N, 40] -> [N, 1, 40]
    return Arrays(x, data["y"], x_test, data["y_test"], classes=10)
