"""Exact (bit-for-bit) storage formats for one tensor, and the choice of the smallest.

A tensor is stored as a *support* (which elements are non-zero) times its *values*:

=======================  =========  ========  ====================================================
format                   support    values    pieces (``<key>::<piece>`` in the tensor file)
=======================  =========  ========  ====================================================
``dense``                all        raw       ``<key>``: the tensor as is (shape, dtype)
``sparse``               bitmap     raw       ``bitmap`` u8 [ceil(n/8)], ``values`` dtype [nnz]
``codebook``             all        codebook  ``codebook`` dtype [k], ``indices`` u8 packed n×b
``sparse_codebook``      bitmap     codebook  ``bitmap``, ``codebook`` [k], ``indices`` nnz×b
``coo``                  positions  raw       ``positions_low``, ``positions_high``, ``values``
``coo_codebook``         positions  codebook  ``positions_low``, ``positions_high``,
                                              ``codebook`` [k], ``indices`` nnz×b
``scaled_codes``         all        codes     ``codes`` u8 packed n×b
``sparse_scaled_codes``  bitmap     codes     ``bitmap``, ``codes`` nnz×b
``coo_scaled_codes``     positions  codes     ``positions_low``, ``positions_high``,
                                              ``codes`` nnz×b
=======================  =========  ========  ====================================================

n = numel, elements in row-major order. Decoding is exact bit for bit (NaN payloads included)
except for the sign of zero: −0.0 is stored as +0.0. The two are equal under ``==`` and
``torch.equal`` and in every forward pass, but baking a mask (``w * mask``) or rounding to a
grid leaves −0.0 in about half the zeros, which would otherwise count as values and cost a
codebook level.

``bitmap`` has bit i set iff element i is non-zero; ``positions_*`` Rice-code the gaps between
the ascending flat indices of the non-zeros (``packing.pack_positions``, parameter ``rice_k`` in
the entry), which beats the bitmap below ~1/8 density; ``codebook`` holds the k <= 256 distinct
bit patterns (of all elements, or of the non-zeros only) in the tensor's dtype, ``indices``
index it at b = ceil(log2 k) bits (1..8). Packing is LSB-first (see ``packing``). Only floating
tensors get the compressed formats; bool and integer tensors stay dense. The spec entry records
format, shape, dtype and, where they apply, nnz, bits, rice_k and scale.

The three ``*scaled_codes`` formats (``codes``: integer codes times a scale the state dict holds)
are described in ``scaled_codes``; the format table and what every format shares are in
``formats``.
"""

from __future__ import annotations

import math

import torch

from spikecompress.export.formats import (
    ALL_FORMATS,
    FORMATS,
    SCALED_FORMATS,
    _is_int,
    _piece,
    _support,
    canonical,
    dtype_name,
    parse_dtype,
)
from spikecompress.export.packing import (
    bit_view,
    bits_for,
    from_bit_view,
    pack_bitmap,
    pack_positions,
    pack_uint,
    packed_bytes,
    positions_bytes,
    rice_k,
    unpack_uint,
)
from spikecompress.export.scaled_codes import (
    MAX_CODE,
    Scale,
    _codes_for,
    _decode_scaled,
    _scale_problem,
    code_bits,
    is_scaled,
    scale_key,
    scale_ref,
)

__all__ = [
    "ENTRY_FIELDS", "FORMATS", "MAX_CODEBOOK", "MAX_NUMEL", "SCALED_FORMATS", "canonical",
    "choose_format", "decode", "encode", "entry_problem", "is_scaled", "scale_key", "scale_ref",
]

MAX_CODEBOOK = 256
_PIECES = {"raw": ("values",), "codebook": ("codebook", "indices"), "codes": ("codes",),
           "bitmap": ("bitmap",), "positions": ("positions_low", "positions_high"), "all": ()}
# Each stored piece also costs a safetensors header entry ({"dtype", "shape", "data_offsets"})
# of about this many bytes plus its name; it tips the choice for tiny tensors towards dense.
_PIECE_OVERHEAD = 56


def _sizes(key: str, t: torch.Tensor, nz: torch.Tensor, k_all: int, k_nz: int,
           codes: torch.Tensor | None = None, scale: str = "") -> dict[str, int]:
    """Encoded bytes of every applicable format (payload plus per-piece header overhead); the
    scaled formats only with ``codes`` (scaled by the tensor named ``scale``)."""
    n, es, nnz = t.numel(), t.element_size(), int(nz.sum())
    positions = torch.nonzero(nz).reshape(-1)
    support = {"all": 0, "bitmap": packed_bytes(n, 1),
               "positions": sum(positions_bytes(positions, rice_k(positions)))}
    b_codes = code_bits(int(codes.abs().max())) if codes is not None else 0
    sizes = {}
    for name, (sup, val) in ALL_FORMATS.items():
        m, k = (n, k_all) if sup == "all" else (nnz, k_nz)
        if val == "raw":
            payload = m * es
        elif val == "codes":
            if codes is None:
                continue
            # the scale is its own tensor, stored anyway; the entry names it in spec.json
            payload = packed_bytes(m, b_codes) + len(scale) + 12
        elif 1 <= k <= MAX_CODEBOOK:
            payload = k * es + packed_bytes(m, bits_for(k))
        else:
            continue
        pieces = _PIECES[sup] + _PIECES[val] if name != "dense" else ("",)
        overhead = sum(_PIECE_OVERHEAD + len(key) + len(p) + 2 for p in pieces)
        sizes[name] = support[sup] + payload + overhead
    return sizes


def _choose(key: str, t: torch.Tensor, codes: torch.Tensor | None, scale: str) -> str:
    if not t.is_floating_point() or t.numel() == 0:
        return "dense"
    flat = bit_view(t).reshape(-1)
    uniq = torch.unique(flat)
    has_zero = bool((uniq == 0).any())
    sizes = _sizes(key, t, flat != 0, uniq.numel(), uniq.numel() - int(has_zero), codes, scale)
    return min(sizes, key=lambda f: (sizes[f], list(ALL_FORMATS).index(f)))


def choose_format(key: str, t: torch.Tensor, scale: Scale | None = None) -> str:
    """The format with the fewest encoded bytes (ties: the earlier in ``ALL_FORMATS``); the
    scaled formats are candidates only where ``scale`` = (its key, the tensor) scales integer
    codes to ``t`` exactly (``to_codes``)."""
    t = canonical(t)
    return _choose(key, t, _codes_for(t, scale), scale[0] if scale else "")


def encode(key: str, t: torch.Tensor, fmt: str | None = None, *,
           scale: Scale | None = None) -> tuple[dict, dict]:
    """Encode ``t`` in ``fmt`` (None: ``choose_format``) → (pieces by name, spec entry).

    ``scale`` = (key, tensor) of the state dict's scale for ``t`` (``scale_key``): the scaled
    formats need it, and need ``t`` to be integer codes times it bit for bit (ValueError if not).
    """
    t = canonical(t)
    codes = _codes_for(t, scale)
    fmt = _choose(key, t, codes, scale[0] if scale else "") if fmt is None else fmt
    entry: dict = {"format": fmt, "shape": list(t.shape), "dtype": dtype_name(t.dtype)}
    if fmt == "dense":
        return {key: t}, entry
    support, values = ALL_FORMATS[fmt]
    if values == "codes" and codes is None:
        why = "has no scale" if scale is None else f"is not integer codes (|code| <= " \
            f"{MAX_CODE}) times the scale {scale[0]!r} bit for bit"
        raise ValueError(f"tensor {key!r} {why}: format {fmt!r} does not apply")
    flat = bit_view(t).reshape(-1)
    nz = flat != 0
    pieces: dict[str, torch.Tensor] = {}
    if support != "all":
        entry["nnz"] = int(nz.sum())
        flat = flat[nz]
        codes = None if codes is None else codes.reshape(-1)[nz]
    if support == "bitmap":
        pieces[f"{key}::bitmap"] = pack_bitmap(nz)
    elif support == "positions":
        positions = torch.nonzero(nz).reshape(-1)
        entry["rice_k"] = rice_k(positions)
        low, high = pack_positions(positions, entry["rice_k"])
        pieces[f"{key}::positions_low"], pieces[f"{key}::positions_high"] = low, high
    if values == "raw":
        pieces[f"{key}::values"] = from_bit_view(flat, t.dtype).clone()
    elif values == "codes":
        entry["bits"] = code_bits(int(codes.abs().max()) if codes.numel() else 0)
        entry["scale"] = scale[0]
        qmax = 2 ** (entry["bits"] - 1) - 1
        pieces[f"{key}::codes"] = pack_uint(codes.reshape(-1) + qmax, entry["bits"])
    else:
        codebook, inverse = torch.unique(flat, return_inverse=True)
        if codebook.numel() > MAX_CODEBOOK:
            raise ValueError(f"tensor {key!r} has {codebook.numel()} distinct values, "
                             f"more than a codebook holds ({MAX_CODEBOOK})")
        entry["bits"] = bits_for(codebook.numel())
        pieces[f"{key}::codebook"] = from_bit_view(codebook, t.dtype).clone()
        pieces[f"{key}::indices"] = pack_uint(inverse, entry["bits"])
    return pieces, entry


ENTRY_FIELDS = ("format", "shape", "dtype", "nnz", "bits", "rice_k", "scale")
MAX_NUMEL = 2**40  # elements one tensor may declare (a shape beyond is corrupt, not a model)


def entry_problem(entry: object, entries: dict | None = None) -> tuple[str, str] | None:
    """The first field of a spec entry whose type or value is wrong, as (field, what it must be);
    None for a well-formed entry. Checks types and ranges only, not the tensors; with the other
    ``entries`` of the artifact (key → entry) also that a scaled entry's ``scale`` names one of
    them of the right shape and dtype, stored without a scale of its own."""
    if not isinstance(entry, dict):
        return "", "must be an object"
    unknown = [k for k in entry if k not in ENTRY_FIELDS]
    if unknown:
        return str(unknown[0]), f"is not a field of a tensor entry (one of {list(ENTRY_FIELDS)})"
    if not isinstance(entry.get("format"), str) or entry["format"] not in ALL_FORMATS:
        return "format", f"must be one of {list(ALL_FORMATS)}"
    shape = entry.get("shape")
    if not isinstance(shape, list) or len(shape) > 16 or not all(
        _is_int(d) and d >= 0 for d in shape
    ) or math.prod(shape) > MAX_NUMEL:
        return "shape", f"must be a list of integers >= 0 of at most {MAX_NUMEL} elements"
    try:
        parse_dtype(entry.get("dtype"))
    except ValueError:
        return "dtype", "must be a torch dtype name (e.g. 'float32')"
    support, values = ALL_FORMATS[entry["format"]]
    checks = (("nnz", support != "all", lambda v: 0 <= v <= math.prod(shape),
               f"in [0, {math.prod(shape)}] (the tensor's elements)"),
              ("bits", values != "raw", lambda v: 1 <= v <= 8, "in [1, 8]"),
              ("rice_k", support == "positions", lambda v: 0 <= v < 63, "in [0, 62]"))
    for name, needed, in_range, span in checks:
        if (needed or name in entry) and not (_is_int(entry.get(name)) and in_range(entry[name])):
            return name, f"must be an integer {span}"
    return _scale_problem(entry, entries)


def _values(key: str, entry: dict, pieces: dict, m: int, dtype: torch.dtype) -> torch.Tensor:
    """The m stored values' bit patterns, in support order."""
    if ALL_FORMATS[entry["format"]][1] == "raw":
        values = _piece(pieces, f"{key}::values", dtype)
        if values.numel() != m:
            raise ValueError(f"tensor {key!r}: {values.numel()} values, expected {m}")
        return bit_view(values)
    codebook = _piece(pieces, f"{key}::codebook", dtype)
    k, b = codebook.numel(), entry.get("bits")
    if not min(m, 1) <= k <= MAX_CODEBOOK or b != bits_for(k):  # empty only with no values
        raise ValueError(f"tensor {key!r}: codebook of {k} values with bits {b!r}")
    indices = unpack_uint(_piece(pieces, f"{key}::indices", torch.uint8), m, b)
    if m and int(indices.max()) >= k:
        raise ValueError(f"tensor {key!r}: codebook index out of range")
    return bit_view(codebook)[indices]


def decode(key: str, entry: dict, pieces: dict,
           scale: torch.Tensor | None = None) -> torch.Tensor:
    """Rebuild the tensor stored under ``key`` from its spec entry and the file's tensors; a
    scaled format needs ``scale``, the decoded tensor its entry names (``scale_ref``)."""
    try:
        fmt, shape, dtype = entry["format"], entry["shape"], parse_dtype(entry["dtype"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"tensor {key!r}: bad spec entry ({e!r})") from None
    if fmt not in ALL_FORMATS or not isinstance(shape, list) or not all(
        isinstance(s, int) and s >= 0 for s in shape
    ):
        raise ValueError(f"tensor {key!r}: bad format {fmt!r} or shape {shape!r}")
    if fmt == "dense":
        t = _piece(pieces, key)
        if t.dtype != dtype or list(t.shape) != shape:
            raise ValueError(f"tensor {key!r} is {t.dtype} {list(t.shape)}, spec says "
                             f"{dtype} {shape}")
        return t
    if not dtype.is_floating_point:
        raise ValueError(f"tensor {key!r}: format {fmt!r} needs a floating dtype, not {dtype}")
    n = math.prod(shape)
    try:
        if is_scaled(entry):
            return _decode_scaled(key, entry, pieces, scale, shape, dtype)
        positions = _support(key, entry, pieces, n)
        values = _values(key, entry, pieces, n if positions is None else positions.numel(), dtype)
    except ValueError as e:  # the packing helpers do not know the key
        msg = str(e) if str(e).startswith("tensor") else f"tensor {key!r}: {e}"
        raise ValueError(msg) from None
    if positions is None:
        out = values
    else:
        out = torch.zeros(n, dtype=values.dtype)
        out[positions] = values
    return from_bit_view(out, dtype).reshape(shape)
