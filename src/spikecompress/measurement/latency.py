"""CPU wall-clock latency of inference, per sample, at fixed batch sizes with pinned threads."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from spikecompress.snn.layers import reset_state


@torch.no_grad()
def latency_ms(
    model: nn.Module,
    x_seq: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 20,
    threads: int = 1,
) -> dict[str, float]:
    """Median wall-clock milliseconds per sample of ``model(x_seq[:, :b])`` for each batch size b.

    ``x_seq`` [T, B, ...] supplies the inputs; it is repeated along B when b > B. One warm-up run,
    then ``repeats`` timed runs per batch size, interleaved across batch sizes; torch's thread count
    is pinned to ``threads`` during the measurement and restored afterwards. Returns
    ``{"batch_1": ms, "batch_64": ms, ...}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    old_threads, was_training = torch.get_num_threads(), model.training
    torch.set_num_threads(threads)
    model.eval()
    try:
        inputs = {b: _batch(x_seq, b) for b in batch_sizes}
        times: dict[int, list[float]] = {b: [] for b in batch_sizes}
        for b in batch_sizes:  # warm-up
            model(inputs[b])
            reset_state(model)
        for _ in range(repeats):
            for b in batch_sizes:
                t0 = time.perf_counter()
                model(inputs[b])
                times[b].append((time.perf_counter() - t0) * 1e3 / b)
                reset_state(model)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return {f"batch_{b}": statistics.median(ts) for b, ts in times.items()}


def _batch(x_seq: torch.Tensor, b: int) -> torch.Tensor:
    """The first b samples of x_seq [T, B, ...], tiling along B when B < b: [T, b, ...]."""
    reps = -(-b // x_seq.shape[1])
    return x_seq.repeat(1, reps, *([1] * (x_seq.dim() - 2)))[:, :b].contiguous()
