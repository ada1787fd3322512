"""Exact (bit-for-bit) storage formats for one tensor, and the choice of the smallest.

A tensor is stored as a *support* (which elements are non-zero) times its *values*:

===================  ===========  ==========  ===============================================
format               support      values      pieces (``<key>::<piece>`` in the tensor file)
===================  ===========  ==========  ===============================================
``dense``            all          raw         ``<key>``: the tensor as is (shape, dtype)
``sparse``           bitmap       raw         ``bitmap`` u8 [ceil(n/8)], ``values`` dtype [nnz]
``codebook``         all          codebook    ``codebook`` dtype [k], ``indices`` u8 packed n×b
``sparse_codebook``  bitmap       codebook    ``bitmap``, ``codebook`` [k], ``indices`` nnz×b
``coo``              positions    raw         ``positions_low``, ``positions_high``, ``values``
``coo_codebook``     positions    codebook    ``positions_low``, ``positions_high``,
                                              ``codebook`` [k], ``indices`` nnz×b
===================  ===========  ==========  ===============================================

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
format, shape, dtype and, where they apply, nnz, bits and rice_k.
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
_PIECES = {"raw": ("values",), "codebook": ("codebook", "indices"), "bitmap": ("bitmap",),
           "positions": ("positions_low", "positions_high"), "all": ()}
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


def _sizes(key: str, t: torch.Tensor, nz: torch.Tensor, k_all: int, k_nz: int) -> dict[str, int]:
    """Encoded bytes of every applicable format (payload plus per-piece header overhead)."""
    n, es, nnz = t.numel(), t.element_size(), int(nz.sum())
    positions = torch.nonzero(nz).reshape(-1)
    support = {"all": 0, "bitmap": packed_bytes(n, 1),
               "positions": sum(positions_bytes(positions, rice_k(positions)))}
    sizes = {}
    for name, (sup, val) in FORMATS.items():
        m, k = (n, k_all) if sup == "all" else (nnz, k_nz)
        if val == "raw":
            payload = m * es
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


def choose_format(key: str, t: torch.Tensor) -> str:
    """The format with the fewest encoded bytes (ties: the earlier in ``FORMATS``)."""
    if not t.is_floating_point() or t.numel() == 0:
        return "dense"
    t = canonical(t)
    flat = bit_view(t).reshape(-1)
    uniq = torch.unique(flat)
    has_zero = bool((uniq == 0).any())
    sizes = _sizes(key, t, flat != 0, uniq.numel(), uniq.numel() - int(has_zero))
    return min(sizes, key=lambda f: (sizes[f], list(FORMATS).index(f)))


def encode(key: str, t: torch.Tensor, fmt: str | None = None) -> tuple[dict, dict]:
    """Encode ``t`` in ``fmt`` (None: ``choose_format``) → (pieces by name, spec entry)."""
    t = canonical(t)
    fmt = choose_format(key, t) if fmt is None else fmt
    entry: dict = {"format": fmt, "shape": list(t.shape), "dtype": dtype_name(t.dtype)}
    if fmt == "dense":
        return {key: t}, entry
    support, values = FORMATS[fmt]
    flat = bit_view(t).reshape(-1)
    nz = flat != 0
    pieces: dict[str, torch.Tensor] = {}
    if support != "all":
        entry["nnz"] = int(nz.sum())
        flat = flat[nz]
    if support == "bitmap":
        pieces[f"{key}::bitmap"] = pack_bitmap(nz)
    elif support == "positions":
        positions = torch.nonzero(nz).reshape(-1)
        entry["rice_k"] = rice_k(positions)
        low, high = pack_positions(positions, entry["rice_k"])
        pieces[f"{key}::positions_low"], pieces[f"{key}::positions_high"] = low, high
    if values == "raw":
        pieces[f"{key}::values"] = from_bit_view(flat, t.dtype).clone()
    else:
        codebook, inverse = torch.unique(flat, return_inverse=True)
        if codebook.numel() > MAX_CODEBOOK:
            raise ValueError(f"tensor {key!r} has {codebook.numel()} distinct values, "
                             f"more than a codebook holds ({MAX_CODEBOOK})")
        entry["bits"] = bits_for(codebook.numel())
        pieces[f"{key}::codebook"] = from_bit_view(codebook, t.dtype).clone()
        pieces[f"{key}::indices"] = pack_uint(inverse, entry["bits"])
    return pieces, entry


ENTRY_FIELDS = ("format", "shape", "dtype", "nnz", "bits", "rice_k")
MAX_NUMEL = 2**40  # elements one tensor may declare (a shape beyond is corrupt, not a model)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def entry_problem(entry: object) -> tuple[str, str] | None:
    """The first field of a spec entry whose type or value is wrong, as (field, what it must be);
    None for a well-formed entry. Checks types and ranges only, not the tensors."""
    if not isinstance(entry, dict):
        return "", "must be an object"
    unknown = [k for k in entry if k not in ENTRY_FIELDS]
    if unknown:
        return str(unknown[0]), f"is not a field of a tensor entry (one of {list(ENTRY_FIELDS)})"
    if not isinstance(entry.get("format"), str) or entry["format"] not in FORMATS:
        return "format", f"must be one of {list(FORMATS)}"
    shape = entry.get("shape")
    if not isinstance(shape, list) or len(shape) > 16 or not all(
        _is_int(d) and d >= 0 for d in shape
    ) or math.prod(shape) > MAX_NUMEL:
        return "shape", f"must be a list of integers >= 0 of at most {MAX_NUMEL} elements"
    try:
        parse_dtype(entry.get("dtype"))
    except ValueError:
        return "dtype", "must be a torch dtype name (e.g. 'float32')"
    support, values = FORMATS[entry["format"]]
    checks = (("nnz", support != "all", lambda v: 0 <= v <= math.prod(shape),
               f"in [0, {math.prod(shape)}] (the tensor's elements)"),
              ("bits", values == "codebook", lambda v: 1 <= v <= 8, "in [1, 8]"),
              ("rice_k", support == "positions", lambda v: 0 <= v < 63, "in [0, 62]"))
    for name, needed, in_range, span in checks:
        if (needed or name in entry) and not (_is_int(entry.get(name)) and in_range(entry[name])):
            return name, f"must be an integer {span}"
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
    support = FORMATS[entry["format"]][0]
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


def _values(key: str, entry: dict, pieces: dict, m: int, dtype: torch.dtype) -> torch.Tensor:
    """The m stored values' bit patterns, in support order."""
    if FORMATS[entry["format"]][1] == "raw":
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


def decode(key: str, entry: dict, pieces: dict) -> torch.Tensor:
    """Rebuild the tensor stored under ``key`` from its spec entry and the file's tensors."""
    try:
        fmt, shape, dtype = entry["format"], entry["shape"], parse_dtype(entry["dtype"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"tensor {key!r}: bad spec entry ({e!r})") from None
    if fmt not in FORMATS or not isinstance(shape, list) or not all(
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
