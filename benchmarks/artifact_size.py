"""Bytes on disk of the artifact for dense, sparse and low-bit weights (issue 4).

    python benchmarks/artifact_size.py

Conv and linear weights are rounded to a symmetric uniform grid of 2^b levels ("b-bit") and/or a
random share set to zero ("sparse"); the artifact picks each tensor's smallest exact format. Sizes
are ``os.path.getsize`` of the saved files (spec.json included).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from spikecompress.export import save, size_bytes
from spikecompress.models import build

VARIANTS = {"dense fp32": (None, 0.0), "50% sparse": (None, 0.5), "4-bit": (4, 0.0),
            "2-bit": (2, 0.0), "4-bit + 90% sparse": (4, 0.9)}


@torch.no_grad()
def variant(widths: list[int], bits: int | None, sparsity: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=widths)
    for name, p in model.named_parameters():
        if not name.endswith("weight") or p.dim() < 2:
            continue
        if bits is not None:
            step = p.abs().max() / (2 ** (bits - 1) - 1)
            p.copy_((p / step).round().clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * step)
        if sparsity:
            p[torch.rand_like(p) < sparsity] = 0
    return model


def main() -> None:
    print("`python benchmarks/artifact_size.py` — conv_net on 1×8×8, 10 classes\n")
    print("| widths | params | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for widths in ([16, 32, 64], [64, 128, 128], [128, 256, 256]):
        sizes = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, (bits, sparsity) in enumerate(VARIANTS.values()):
                sizes.append(size_bytes(save(variant(widths, bits, sparsity), Path(tmp) / str(i))))
        params = sum(p.numel() for p in variant(widths, None, 0).parameters())
        cells = [f"{s:,} ({sizes[0] / s:.1f}×)" for s in sizes]
        print(f"| {widths} | {params:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
