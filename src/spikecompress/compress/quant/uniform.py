"""Uniform symmetric weight quantization: QAT with a straight-through estimator, or PTQ.

The quantizer is ``fake_quant.quantize`` : ``Ŵ = s · clamp(round(W / s),
−qmax, qmax)``, ``qmax = 2^{b−1} − 1``, ``s = max|W| / qmax``; 1 bit is ``s · sign(W)``,
``s = mean|W|``. QAT trains through the quantizer with the identity STE (Bengio et al. 2013;
the weight-QAT baseline of the SNN quantization papers in the survey, e.g. Deng et al. TNNLS 2021
fine-tune with the weights kept on the grid); PTQ rounds the trained weights once (the
post-training control of ST-Quant, Chowdhury et al. IJCNN 2021, spec §2.3).
Recipe: ``{name: uniform_quant, weight_bits: 4}``.

Bytes: the artifact stores a tensor with k <= 256 distinct values as a codebook plus
ceil(log2 k)-bit indices. Per tensor, a b-bit layer has at most 2^b − 1 values and packs at
b bits. Per channel, every output channel has its own grid, so a tensor holds up to
C_out · (2^b − 1) values and packs at more bits, or not at all (dense float32), until the artifact
gains a per-channel (codes + scale per row) format; hence ``per_channel=False`` by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context
from spikecompress.compress.quant.fake_quant import FakeQuant, bake_weight_, check_bits, quantize
from spikecompress.compress.targets import select

MODES = ("qat", "ptq")


@dataclass
class UniformQuantization:
    """Quantize the weights of the selected conv / linear layers to ``weight_bits`` bits.

    ``mode="qat"``: a ``FakeQuant`` parametrization on ``weight`` from attach on, so every forward
    sees Q(W) and the gradient reaches W straight through; the user's optimizer keeps training the
    float W. ``mode="ptq"``: nothing changes during training; finalize rounds the final weights.
    After finalize every selected ``weight`` is exactly Q(W): at most 2^b − 1 distinct values per
    tensor (per channel with ``per_channel``), zeros kept (so it composes with pruning masks,
    which the Session finalizes first). ``include`` / ``exclude``: regexes, see ``targets.select``.
    """

    NAME: ClassVar[str] = "uniform_quant"
    PAPER: ClassVar[str] = "QAT with a straight-through estimator (Bengio et al. 2013)"
    KIND: ClassVar[str] = "quant"

    weight_bits: int = 4
    per_channel: bool = False
    mode: str = "qat"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel must be true or false, got {self.per_channel!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.targets_ = [m for _, m in select(model, self.include, self.exclude)]
        if self.mode == "qat":
            for m in self.targets_:
                parametrize.register_parametrization(
                    m, "weight", FakeQuant(self.weight_bits, self.per_channel)
                )

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        for m in self.targets_:
            w = m.weight  # effective: masks applied, and Q(W) already in QAT
            bake_weight_(m, w if self.mode == "qat" else quantize(w, self.weight_bits,
                                                                  self.per_channel))
        return model
