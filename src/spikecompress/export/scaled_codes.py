"""The scaled-codes formats: a quantized tensor stored as integer codes times its scale.

``codes`` (the three ``*scaled_codes`` formats, ``SCALED_FORMATS``) store a quantized tensor as
integer codes times a scale that the state dict already holds as a tensor of its own: the entry's
``scale`` names it (``<key>_scale``, e.g. ``conv.weight_scale`` for ``conv.weight``), and it is
not stored again. The scale has the tensor's dtype, shape [] (per tensor) or [shape[0]] (per
output channel), is finite and > 0, and is itself stored in one of the first six formats, so it
is decoded first. Codes are integers in [−qmax, qmax], qmax = 2^(b−1) − 1, stored offset-binary
(code + qmax, so 2^b − 1 never occurs) at b bits, b the smallest width with qmax >= max|code|
(1..8: b = 1 holds only the code 0, b = 2 the codes −1, 0, 1, b = 4 −7..7, b = 8 −127..127).
The tensor is ``codes.to(dtype) * scale.reshape(-1, 1, ...)`` (scale broadcast over dim 0; all
codes, zeros included, so zeros decode as +0.0): the encoder offers these formats only when that
very expression reproduces the tensor bit for bit, and decoding evaluates it in the same order.
Per-channel quantized weights hold up to shape[0]·(2^b − 1) distinct values, beyond a codebook.

``codec`` offers these formats in its choice and writes their pieces; this module finds a
tensor's codes (``to_codes``), checks the scale and the spec entry, and decodes.
"""

from __future__ import annotations

import math

import torch

from spikecompress.export.formats import (
    FORMATS,
    SCALED_FORMATS,
    _is_int,
    _piece,
    _support,
    canonical,
    dtype_name,
)
from spikecompress.export.packing import bit_view, unpack_uint

SCALE_SUFFIX = "_scale"  # the scale of ``<key>`` is the state dict's ``<key>_scale``
MAX_CODE = 127  # codes fit b <= 8 bits: qmax = 2**(b - 1) - 1
Scale = tuple[str, torch.Tensor]  # (state dict key of the scale, the scale)


def scale_key(key: str) -> str:
    """The state dict key of ``key``'s scale: ``conv.weight`` → ``conv.weight_scale``."""
    return key + SCALE_SUFFIX


def code_bits(max_abs: int) -> int:
    """Width b of codes with |code| <= max_abs: the smallest b with 2**(b - 1) - 1 >= max_abs."""
    return max_abs.bit_length() + 1


def _per_row(scale: torch.Tensor, dims: int) -> torch.Tensor:
    """A scale [] or [C] shaped to broadcast over dim 0 of a ``dims``-dimensional tensor."""
    return scale.reshape(-1, *([1] * (dims - 1))) if scale.dim() else scale


def apply_scale(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes.to(dtype) * scale`` broadcast over dim 0: what the encoder checks and decoding
    computes (one expression, so both round alike)."""
    return codes.to(dtype) * _per_row(scale, codes.dim())


def _scale_mismatch(shape: list[int], dtype: torch.dtype, scale: object) -> str | None:
    """Why ``scale`` cannot scale a tensor of ``shape`` and ``dtype`` (None: it can)."""
    rows = f" or [{shape[0]}]" if shape else ""
    if not isinstance(scale, torch.Tensor):
        return "is missing"
    if scale.dtype != dtype or not (
        scale.dim() == 0 or (scale.dim() == 1 and shape and scale.shape[0] == shape[0])
    ):
        return f"is {dtype_name(scale.dtype)} {list(scale.shape)}, expected {dtype_name(dtype)} " \
               f"[]{rows}"
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        return "must be finite and > 0"
    return None


def to_codes(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor | None:
    """The int64 codes c (|c| <= ``MAX_CODE``) with ``apply_scale(c, scale, t.dtype)`` equal to
    ``canonical(t)`` bit for bit; None if there are none (or no usable scale)."""
    t = canonical(t)
    if not t.is_floating_point() or t.numel() == 0:
        return None
    if scale is None or _scale_mismatch(list(t.shape), t.dtype, scale) is not None:
        return None
    scale = scale.detach().cpu()
    q = t.to(torch.float64) / _per_row(scale, t.dim()).to(torch.float64)  # exact for c·s
    q = torch.where(torch.isfinite(q), torch.round(q), torch.zeros_like(q))
    if bool((q.abs() > MAX_CODE).any()):
        return None
    codes = q.to(torch.int64)
    if not torch.equal(bit_view(apply_scale(codes, scale, t.dtype)), bit_view(t)):
        return None
    return codes


def _codes_for(t: torch.Tensor, scale: Scale | None) -> torch.Tensor | None:
    if scale is None or not isinstance(scale[0], str) or not scale[0]:
        return None
    return to_codes(t, scale[1])


def is_scaled(entry: object) -> bool:
    """Whether a spec entry is in one of the ``SCALED_FORMATS``."""
    return isinstance(entry, dict) and isinstance(entry.get("format"), str) and \
        entry["format"] in SCALED_FORMATS


def scale_ref(entry: object) -> str | None:
    """The key of the scale a scaled entry names (None: not scaled, or no usable name)."""
    ref = entry.get("scale") if is_scaled(entry) else None
    return ref if isinstance(ref, str) and ref else None


def _scale_problem(entry: dict, entries: dict | None) -> tuple[str, str] | None:
    if not is_scaled(entry):
        if "scale" in entry:
            return "scale", f"is a field of the scaled formats only ({list(SCALED_FORMATS)})"
        return None
    ref = scale_ref(entry)
    if ref is None:
        return "scale", "must be the key of the tensor that holds the scale (a non-empty string)"
    if entries is None:
        return None
    other = entries.get(ref)
    if not isinstance(other, dict):
        return "scale", "must be the key of a tensor of this artifact (the scale)"
    if not isinstance(other.get("format"), str) or other["format"] not in FORMATS:
        return "scale", f"must name a tensor stored in one of {list(FORMATS)} (no scale of its own)"
    shape = entry["shape"]
    if other.get("dtype") != entry["dtype"] or other.get("shape") not in ([], shape[:1]):
        rows = f" or [{shape[0]}]" if shape else ""
        return "scale", f"must name a {entry['dtype']} tensor of shape []{rows} (per tensor or " \
            "per output channel)"
    return None


def _codes(key: str, entry: dict, pieces: dict, m: int) -> torch.Tensor:
    """The m stored codes (int64, in [-qmax, qmax]), in support order."""
    b = entry.get("bits")
    if not _is_int(b) or not 1 <= b <= 8:
        raise ValueError(f"tensor {key!r}: bad bits {b!r}")
    qmax = 2 ** (b - 1) - 1
    stored = unpack_uint(_piece(pieces, f"{key}::codes", torch.uint8), m, b)
    if m and int(stored.max()) > 2 * qmax:
        raise ValueError(f"tensor {key!r}: code {int(stored.max()) - qmax} beyond qmax {qmax} "
                         f"of {b}-bit codes")
    return stored - qmax


def _decode_scaled(key: str, entry: dict, pieces: dict, scale: torch.Tensor | None,
                   shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    ref = scale_ref(entry)
    if ref is None:
        raise ValueError(f"tensor {key!r}: bad scale {entry.get('scale')!r}")
    mismatch = _scale_mismatch(shape, dtype, scale)
    if mismatch is not None:
        raise ValueError(f"tensor {key!r}: its scale {ref!r} {mismatch}")
    n = math.prod(shape)
    positions = _support(key, entry, pieces, n)
    codes = _codes(key, entry, pieces, n if positions is None else positions.numel())
    if positions is not None:
        codes = torch.zeros(n, dtype=torch.int64).index_put_((positions,), codes)
    return apply_scale(codes.reshape(shape), scale, dtype)
