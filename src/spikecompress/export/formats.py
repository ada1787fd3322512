"""The names of the tensor storage formats (support × values) and what every format shares: dtype
names, the canonical form of a tensor, the stored pieces and the decoded support.

The formats themselves: ``codec`` (the choice, encoding and decoding) and ``scaled_codes``
(integer codes times a scale the state dict holds).
"""

from __future__ import annotations

import torch

from spikecompress.export.packing import unpack_bitmap, unpack_positions

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


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: object) -> torch.dtype:
    """Inverse of ``dtype_name``; ValueError for anything that is not a torch dtype name."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def canonical(t: torch.Tensor) -> torch.Tensor:
    """Detached, contiguous CPU copy with −0.0 replaced by +0.0 (floating dtypes)."""
    t = t.detach().cpu().contiguous()
    return torch.where(t == 0, torch.zeros_like(t), t) if t.is_floating_point() else t.clone()


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
