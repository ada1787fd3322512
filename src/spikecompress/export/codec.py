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
"""

from __future__ import annotations

import math

import torch

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
    unpack_bitmap,
    unpack_positions,
    unpack_uint,
)

MAX_CODEBOOK = 256
FORMATS = {  # name -> (support, values)
    "dense": ("all", "raw"),
    "sparse": ("bitmap", "raw"),
    "codebook": ("all", "codebook"),
    "sparse_codebook": ("bitmap", "codebook"),
    "coo": ("positions", "raw"),
    "coo_codebook": ("positions", "codebook"),
}
SCALED_FORMATS = {  # name -> (support, values): integer codes times a scale stored under its key
    "scaled_codes": ("all", "codes"),
    "sparse_scaled_codes": ("bitmap", "codes"),
    "coo_scaled_codes": ("positions", "codes"),
}
ALL_FORMATS = FORMATS | SCALED_FORMATS
SCALE_SUFFIX = "_scale"  # the scale of ``<key>`` is the state dict's ``<key>_scale``
MAX_CODE = 127  # codes fit b <= 8 bits: qmax = 2**(b - 1) - 1
_PIECES = {"raw": ("values",), "codebook": ("codebook", "indices"), "codes": ("codes",),
           "bitmap": ("bitmap",), "positions": ("positions_low", "positions_high"), "all": ()}
# Each stored piece also costs a safetensors header entry ({"dtype", "shape", "data_offsets"})
# of about this many bytes plus its name; it tips the choice for tiny tensors towards dense.
_PIECE_OVERHEAD = 56


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: object) -> torch.dtype:
    """Inverse of ``dtype_name``; ValueError for anything that is not a torch dtype name."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


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


def canonical(t: torch.Tensor) -> torch.Tensor:
    """Detached, contiguous CPU copy with −0.0 replaced by +0.0 (floating dtypes)."""
    t = t.detach().cpu().contiguous()
    return torch.where(t == 0, torch.zeros_like(t), t) if t.is_floating_point() else t.clone()


Scale = tuple[str, torch.Tensor]  # (state dict key of the scale, the scale)


def _choose(key: str, t: torch.Tensor, codes: torch.Tensor | None, scale: str) -> str:
    if not t.is_floating_point() or t.numel() == 0:
        return "dense"
    flat = bit_view(t).reshape(-1)
    uniq = torch.unique(flat)
    has_zero = bool((uniq == 0).any())
    sizes = _sizes(key, t, flat != 0, uniq.numel(), uniq.numel() - int(has_zero), codes, scale)
    return min(sizes, key=lambda f: (sizes[f], list(ALL_FORMATS).index(f)))


def _codes_for(t: torch.Tensor, scale: Scale | None) -> torch.Tensor | None:
    if scale is None or not isinstance(scale[0], str) or not scale[0]:
        return None
    return to_codes(t, scale[1])


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


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_scaled(entry: object) -> bool:
    """Whether a spec entry is in one of the ``SCALED_FORMATS``."""
    return isinstance(entry, dict) and isinstance(entry.get("format"), str) and \
        entry["format"] in SCALED_FORMATS


def scale_ref(entry: object) -> str | None:
    """The key of the scale a scaled entry names (None: not scaled, or no usable name)."""
    ref = entry.get("scale") if is_scaled(entry) else None
    return ref if isinstance(ref, str) and ref else None


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


def _piece(pieces: dict, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    if name not in pieces:
        raise ValueError(f"missing tensor {name!r}")
    p = pieces[name]
    if dtype is not None and (p.dtype != dtype or p.dim() != 1):
        raise ValueError(f"tensor {name!r} is {p.dtype} {list(p.shape)}, expected 1-D {dtype}")
    return p


def _support(key: str, entry: dict, pieces: dict, n: int) -> torch.Tensor | None:
    """Flat positions of the stored values (None: all n elements)."""
    support = ALL_FORMATS[entry["format"]][0]
    if support == "all":
        return None
    nnz = entry.get("nnz")
    if not isinstance(nnz, int) or not 0 <= nnz <= n:
        raise ValueError(f"tensor {key!r}: bad nnz {nnz!r}")
    if support == "bitmap":
        mask = unpack_bitmap(_piece(pieces, f"{key}::bitmap", torch.uint8), n)
        positions = torch.nonzero(mask).reshape(-1)
        if positions.numel() != nnz:
            raise ValueError(f"tensor {key!r}: bitmap has {positions.numel()} bits set, not {nnz}")
        return positions
    k = entry.get("rice_k")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < 63:
        raise ValueError(f"tensor {key!r}: bad rice_k {k!r}")
    low = _piece(pieces, f"{key}::positions_low", torch.uint8)
    positions = unpack_positions(low, _piece(pieces, f"{key}::positions_high", torch.uint8), nnz, k)
    if nnz and int(positions[-1]) >= n:
        raise ValueError(f"tensor {key!r}: positions beyond {n} elements")
    return positions


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
