"""Bit-packing and per-tensor formats: every encoding decodes exactly, and the smallest wins."""

import math

import pytest
import torch

from spikecompress.export import codec
from spikecompress.export.packing import (
    bit_view,
    pack_bitmap,
    pack_positions,
    pack_uint,
    packed_bytes,
    rice_k,
    unpack_bitmap,
    unpack_positions,
    unpack_uint,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (4, 3, 3, 3), (33, 17)]


def _random_tensor(gen, shape, dtype, density, levels):
    """Random values (``levels`` distinct ones if given), a ``density`` fraction non-zero."""
    n = math.prod(shape)
    if levels:
        grid = torch.randn(levels, generator=gen).to(dtype)
        t = grid[torch.randint(levels, (n,), generator=gen)]
    else:
        t = torch.randn(n, generator=gen).to(dtype) * 100
    keep = torch.rand(n, generator=gen) < density
    return torch.where(keep, t, torch.zeros_like(t)).reshape(shape)


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bit_view(a), bit_view(b))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 13, 31, 33, 63, 64])
def test_pack_uint_round_trip(bits):
    gen = torch.Generator().manual_seed(bits)
    for n in [0, 1, 9, 1000]:
        hi = 2 ** min(bits, 62)
        v = torch.randint(0, hi, (n,), generator=gen, dtype=torch.int64)
        if bits == 64 and n:
            v[0] = -1  # all 64 bits set
        packed = pack_uint(v, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == packed_bytes(n, bits)
        assert torch.equal(unpack_uint(packed, n, bits), v)


def test_pack_layout_is_lsb_first():
    assert pack_uint(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack_bitmap(torch.tensor([True, False, False, True, False, False, False, False,
                                     True])).tolist() == [0b00001001, 1]
    assert unpack_bitmap(torch.tensor([0b101], dtype=torch.uint8), 3).tolist() == [True, False,
                                                                                   True]


@pytest.mark.parametrize("density", [0.0, 0.001, 0.03, 0.2, 0.7, 1.0])
def test_rice_positions_round_trip(density):
    gen = torch.Generator().manual_seed(int(density * 1000))
    mask = torch.rand(20000, generator=gen) < density
    positions = torch.nonzero(mask).reshape(-1)
    k = rice_k(positions)
    low, high = pack_positions(positions, k)
    assert torch.equal(unpack_positions(low, high, positions.numel(), k), positions)
    with pytest.raises(ValueError):
        unpack_positions(low, high, positions.numel() + 1, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_format_decodes_exactly(dtype):
    """Property test: random shapes, densities and value counts, every applicable format."""
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        for density in [0.0, 0.05, 0.5, 1.0]:
            for levels in [None, 1, 2, 5, 16, 200]:
                t = _random_tensor(gen, shape, dtype, density, levels)
                distinct = torch.unique(bit_view(t)).numel()
                for fmt, (_, values) in codec.FORMATS.items():
                    if values == "codebook" and (distinct > 256 or t.numel() == 0):
                        continue
                    pieces, entry = codec.encode("w", t, fmt)
                    assert _same_bits(codec.decode("w", entry, pieces), t), (fmt, shape)
                pieces, entry = codec.encode("w", t)
                assert _same_bits(codec.decode("w", entry, pieces), t)


def test_chosen_format_is_the_smallest_encoding():
    gen = torch.Generator().manual_seed(1)
    for density in [0.0, 0.01, 0.1, 0.5, 1.0]:
        for levels in [None, 3, 16, 256]:
            t = _random_tensor(gen, (64, 32, 3, 3), torch.float32, density, levels)
            sizes = {}
            for fmt in codec.FORMATS:
                try:
                    pieces, _ = codec.encode("w", t, fmt)
                except ValueError:  # more than 256 distinct values for a codebook
                    continue
                sizes[fmt] = sum(p.numel() * p.element_size() for p in pieces.values())
            chosen = codec.choose_format("w", t)
            # the choice also weighs ~60 bytes of header per piece; payloads are exact
            assert sizes[chosen] <= min(sizes.values()) + 200, (density, levels, sizes)


def test_special_values_and_signed_zero():
    t = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, -1.0] * 40)
    t[0] = torch.tensor(0x7FC01234, dtype=torch.int32).view(torch.float32)  # NaN payload
    for fmt in codec.FORMATS:
        pieces, entry = codec.encode("w", t, fmt)
        out = codec.decode("w", entry, pieces)
        nonzero = t != 0
        assert torch.equal(bit_view(out)[nonzero], bit_view(t)[nonzero]), fmt
        assert (bit_view(out)[~nonzero] == 0).all(), fmt  # -0.0 stored as +0.0
    # pruning with w * mask leaves -0.0; it must not cost storage
    w = torch.randn(4096) * (torch.rand(4096) < 0.1)
    assert codec.choose_format("w", w) == codec.choose_format("w", w.abs())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_and_bool_tensors_stay_dense(dtype):
    t = torch.zeros(1000, dtype=dtype)
    pieces, entry = codec.encode("b", t)
    assert entry["format"] == "dense" and torch.equal(codec.decode("b", entry, pieces), t)


def test_decode_rejects_inconsistent_entries():
    t = torch.round(torch.randn(100) * (torch.rand(100) < 0.5))
    for fmt in codec.FORMATS:
        pieces, entry = codec.encode("w", t, fmt)
        bads = [{"dtype": "float16"}, {"format": "nope"}]
        # index lists do not bound n; a wrong shape there is caught by the model's shapes
        bads += [] if fmt.startswith("coo") else [{"shape": [10, 10, 10]}]
        bads += [{key: entry[key] + 1} for key in ("nnz", "bits") if key in entry]
        bads += [{"rice_k": -1}] if "rice_k" in entry else []
        for bad in bads:
            with pytest.raises(ValueError, match="'w"):
                codec.decode("w", {**entry, **bad}, pieces)
        piece = next(iter(pieces))
        with pytest.raises(ValueError, match="missing"):
            codec.decode("w", entry, {k: v for k, v in pieces.items() if k != piece})
