"""Seeding and thread pinning in one place (also where a distributed run would offset by rank)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed + rank``."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads (None: env ``THREADS``, else leave torch's default)."""
    if threads is None and os.environ.get("THREADS"):
        threads = int(os.environ["THREADS"])
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def rng_state() -> dict[str, torch.Tensor]:
    """torch's RNG states as tensors (CPU, and CUDA when present) for a checkpoint."""
    state = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng.cuda.{i}"] = s
    return state


def set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    """Restore the states saved by ``rng_state``."""
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
