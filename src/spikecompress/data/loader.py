"""A batch iterator over in-memory tensors that yields model-ready, time-major batches."""

from __future__ import annotations

import math

import numpy as np
import torch

from spikecompress.snn.encoding import ENCODERS, encode

LOADER_ENCODINGS = (*sorted(ENCODERS), "events")
_SHUFFLE_STREAM, _ENCODE_STREAM = 0, 1


def _seed_of(*keys: int) -> int:
    """A 64-bit seed from non-negative integer keys (numpy's SeedSequence mixing), so every
    (seed, epoch, rank, batch) gets its own independent random stream without shared state."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


class Loader:
    """Iterates (x_seq [T, B, ...] float32, y [B] int64) over in-memory tensors.

    ``x`` [N, ...] holds static samples ([C, H, W] or [C, L]), encoded per batch with ``encoding``
    ("direct", "poisson", "latency"), or with ``encoding="events"`` frames [N, T, ...] that are
    only moved to time-major order. Shuffling is a function of (seed, epoch) alone and Poisson
    spikes of (seed, epoch, rank, batch index), so a run resumed mid-epoch after
    :meth:`set_epoch` sees the same batches. ``rank`` / ``world_size`` give each rank a disjoint,
    equal-sized shard of the (shuffled) indices, padded by wrapping around when N is not
    divisible, as ``torch.utils.data.DistributedSampler`` does; ``drop_last`` drops an incomplete
    last batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        T: int,
        batch_size: int,
        shuffle: bool,
        encoding: str,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y).long()
        _check_args(self.x, self.y, T, batch_size, encoding, seed, rank, world_size)
        self.T, self.batch_size, self.shuffle, self.encoding = T, batch_size, shuffle, encoding
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch: ceil(N / world_size) (padding included)."""
        return math.ceil(len(self.x) / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffling permutation and Poisson spikes the next pass uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, [num_samples] int64."""
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed_of(self.seed, self.epoch, _SHUFFLE_STREAM))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:  # wrap around so every rank gets the same count
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank : total : self.world_size]

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self):
        idx = self.indices()
        for b in range(len(self)):
            yield self._batch(idx[b * self.batch_size : (b + 1) * self.batch_size], b)

    def _batch(self, idx: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[idx].float()  # [B, ...] static, or [B, T, ...] event frames
        if self.encoding == "events":
            x_seq = x.transpose(0, 1).contiguous()  # [B, T, ...] -> [T, B, ...]
        else:
            g = None
            if self.encoding == "poisson":
                seed = _seed_of(self.seed, self.epoch, _ENCODE_STREAM, self.rank, b)
                g = torch.Generator().manual_seed(seed)
            x_seq = encode(x, self.T, self.encoding, generator=g)  # [B, ...] -> [T, B, ...]
        return x_seq, self.y[idx]

    def __repr__(self) -> str:
        return (f"Loader(N={len(self.x)}, T={self.T}, batch_size={self.batch_size}, "
                f"encoding={self.encoding!r}, shuffle={self.shuffle}, rank={self.rank}/"
                f"{self.world_size})")


def _check_args(x, y, T, batch_size, encoding, seed, rank, world_size) -> None:
    """One-line ValueErrors naming the argument."""
    if x.dim() < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty [N, ...] tensor, got shape {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
    if T < 1 or batch_size < 1:
        raise ValueError(f"T and batch_size must be >= 1, got T={T}, batch_size={batch_size}")
    if encoding not in LOADER_ENCODINGS:
        raise ValueError(f"encoding must be one of {LOADER_ENCODINGS}, got {encoding!r}")
    if encoding == "events" and (x.dim() < 3 or x.shape[1] != T):
        raise ValueError(f"encoding 'events' needs frames [N, T={T}, ...], got {tuple(x.shape)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
