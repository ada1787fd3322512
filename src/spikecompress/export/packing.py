"""Vectorised bit-packing of small unsigned integers and bitmaps into uint8 (numpy, no loops
over elements), and exact bit-pattern views of floating tensors.

Bit order is LSB-first throughout: value ``i`` of width ``b`` occupies global bits
``i*b .. i*b+b-1`` (bit ``j`` of the value at global bit ``i*b+j``), and global bit ``g`` is bit
``g % 8`` of byte ``g // 8``. A bitmap is the same layout with ``b = 1``. Padding bits in the
last byte are zero.
"""

from __future__ import annotations

import numpy as np
import torch

_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_for(count: int) -> int:
    """Bits needed to index ``count`` distinct items (0 .. count-1), at least 1."""
    return max(1, (count - 1).bit_length())


def packed_bytes(n: int, bits: int) -> int:
    """Bytes taken by ``n`` values of ``bits`` bits each, packed."""
    return (n * bits + 7) // 8


def pack_uint(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers [n] (each < 2**bits, bits in 1..64) into uint8
    [packed_bytes(n, bits)]."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    v = values.detach().cpu().reshape(-1).to(torch.int64).numpy().view(np.uint64)
    shifts = np.arange(bits, dtype=np.uint64)
    planes = ((v[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)  # [n, bits]
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little").copy())


def unpack_uint(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Inverse of ``pack_uint``: uint8 [packed_bytes(n, bits)] → int64 [n]."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_bytes(n, bits):
        raise ValueError(
            f"expected uint8 [{packed_bytes(n, bits)}] for {n} values of {bits} bits, got "
            f"{packed.dtype} {list(packed.shape)}"
        )
    flat = np.unpackbits(packed.numpy(), count=n * bits, bitorder="little")
    planes = flat.reshape(n, bits).astype(np.uint64)  # [n, bits]
    shifts = np.arange(bits, dtype=np.uint64)
    out = (planes << shifts[None, :]).sum(axis=1, dtype=np.uint64)
    return torch.from_numpy(out.view(np.int64).copy())


def pack_bitmap(mask: torch.Tensor) -> torch.Tensor:
    """Bool mask (any shape, flattened row-major) → uint8 [ceil(n / 8)]."""
    m = mask.detach().cpu().reshape(-1).numpy().astype(np.uint8)
    return torch.from_numpy(np.packbits(m, bitorder="little").copy())


def unpack_bitmap(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_bitmap``: uint8 [ceil(n / 8)] → bool [n]."""
    return unpack_uint(packed, n, 1).to(torch.bool)


def bit_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bit patterns as a signed integer tensor of the same element width, so
    equality and uniqueness are exact (−0.0 ≠ 0.0, NaN payloads kept)."""
    if not t.is_floating_point():
        return t
    return t.contiguous().view(_INT_OF_WIDTH[t.element_size()])


def from_bit_view(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``bit_view``."""
    if not dtype.is_floating_point:
        return bits.to(dtype)
    return bits.contiguous().view(dtype)


def _gaps(positions: torch.Tensor) -> np.ndarray:
    """Ascending flat positions → gaps (zeros skipped before each non-zero), uint64."""
    p = positions.detach().cpu().reshape(-1).to(torch.int64).numpy()
    return np.diff(p, prepend=-1).astype(np.uint64) - np.uint64(1)


def rice_k(positions: torch.Tensor) -> int:
    """The Rice parameter k that makes ``pack_positions`` smallest for these positions."""
    gaps = _gaps(positions)
    if gaps.size == 0:
        return 0
    top = int(gaps.max()).bit_length()  # beyond this k every quotient is already 0
    costs = [gaps.size * k + int((gaps >> np.uint64(k)).sum()) for k in range(top + 1)]
    return int(np.argmin(costs))


def positions_bytes(positions: torch.Tensor, k: int) -> tuple[int, int]:
    """Bytes of ``pack_positions``'s two pieces (low, high) without building them."""
    gaps = _gaps(positions)
    high_bits = int((gaps >> np.uint64(k)).sum()) + gaps.size
    return packed_bytes(gaps.size, k), packed_bytes(high_bits, 1)


def pack_positions(positions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rice-code ascending flat positions [nnz] as gaps g = q·2^k + r → (low, high).

    ``low``: the remainders r at k bits each (``pack_uint``; empty when k = 0). ``high``: a
    bitstream of, per gap, q one-bits then a zero-bit (padded with one-bits), so decoding is a
    vectorised search for the zeros. Costs about log2(mean gap) + 1.5 bits per non-zero:
    smaller than a bitmap below ~1/8 density, and than fixed-width indices at any density.
    """
    gaps = _gaps(positions)
    low = pack_uint(torch.from_numpy((gaps & np.uint64((1 << k) - 1)).view(np.int64)), k) if k \
        else torch.zeros(0, dtype=torch.uint8)
    q = (gaps >> np.uint64(k)).astype(np.int64)
    stream = np.ones(packed_bytes(int(q.sum()) + q.size, 1) * 8, dtype=np.uint8)  # pad: ones
    stream[np.cumsum(q + 1) - 1] = 0  # each gap's terminating zero
    return low, torch.from_numpy(np.packbits(stream, bitorder="little").copy())


def unpack_positions(low: torch.Tensor, high: torch.Tensor, nnz: int, k: int) -> torch.Tensor:
    """Inverse of ``pack_positions`` → int64 [nnz]; ValueError if the pieces do not hold nnz."""
    if high.dtype != torch.uint8 or high.dim() != 1:
        raise ValueError(f"expected a uint8 bitstream, got {high.dtype} {list(high.shape)}")
    zeros = np.flatnonzero(np.unpackbits(high.numpy(), bitorder="little") == 0).astype(np.int64)
    if zeros.size != nnz or (nnz and packed_bytes(int(zeros[-1]) + 1, 1) != high.numel()):
        raise ValueError(f"Rice bitstream of {high.numel()} bytes does not hold {nnz} gaps")
    q = np.diff(zeros, prepend=-1) - 1
    r = unpack_uint(low, nnz, k).numpy() if k else np.zeros(nnz, dtype=np.int64)
    gaps = (q << k) + r
    return torch.from_numpy(np.cumsum(gaps + 1) - 1)
