"""MINT: multiplier-less integer quantization, one scale shared by weights and membrane.

Yin, Li, Moitra & Panda, "MINT: Multiplier-less INTeger Quantization for Energy Efficient Spiking
Neural Networks", ASP-DAC 2024 (arXiv 2305.09850; code RuokaiYin/MINT_Quantization). Per layer
one learnable scale s quantizes the weights, Ŵ = s · clamp(round(tanh(W) / s), ±qmax_w), and the
membrane, U = s · clamp(round(U / s), ±qmax_u). With both on the same grid the charge is
``U_int + Σ S·W_int`` in integers, the threshold is the integer ceil(V_th / s) and the leak a
shift: no multiplier rescales the accumulator into the membrane's units (a separate membrane
scale needs one per update, ``uniform_quant`` with ``membrane_bits``). s is initialised as the
code does, 2·mean|tanh W| / sqrt(qmax_w) (LSQ's rule), and learned with LSQ's gradient from both
the weight and the membrane path.

Here the network goes on the integer grid of ``integer_mode`` with ``membrane_range=None`` (the
neuron's membrane unit is its layer's grid s · input_scale), so the finalized model lowers to an
integer SNN (``sc.to_integer``) with identical spikes. Differences from the code, and why:

* the code keeps the first (direct-input) conv and the last FC in float; an integer SNN cannot,
  so they are quantized too, at ``edge_bits`` (8 by default) with the input at ``input_bits``;
* BatchNorm is folded into the convs before quantization (the code keeps a float BN, which the
  spec flags: the integer claim would be false);
* the neuron is our LIF (leak before the charge, ``H = k·U + a·X``); the code leaks after the
  reset. Both are shifts for k = 1/2.
* the threshold comparison fires on ties (H >= θ), as our float neurons; the code uses ``>``.

Recipe: ``{name: mint, weight_bits: 4, membrane_bits: 4}`` (the code's VGG-16 setting; its VGG-9
uses 2 / 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.quant import integer_mode
from spikecompress.compress.quant.quantizers import check_bits


@dataclass
class MINT:
    """Weights and membrane of every layer on one learned scale (see the module docstring).
    Distributed: the scales are model parameters trained through DDP; the input scale, which
    each rank calibrates on its own first batch, is made the largest over the ranks in
    ``reduce_`` (``integer_mode.agree_input_scale_``)."""

    NAME: ClassVar[str] = "mint"
    PAPER: ClassVar[str] = "Yin et al., ASP-DAC 2024 (arXiv 2305.09850)"
    KIND: ClassVar[str] = "quant"
    REFUSES: ClassVar[tuple[str, ...]] = ("resnet", "sew_resnet")  # residual: no integer form

    weight_bits: int = 4
    membrane_bits: int = 4
    edge_bits: int | None = 8
    input_bits: int = 8
    tanh: bool = False
    layers_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits", 1, 8)
        integer_mode.check_membrane(self.membrane_bits, 1.0)
        if self.edge_bits is not None:
            check_bits(self.edge_bits, "edge_bits", 1, 8)
        check_bits(self.input_bits, "input_bits", 2, 16)
        if not isinstance(self.tanh, bool):
            raise ValueError(f"tanh must be true or false, got {self.tanh!r}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.layers_ = integer_mode.install_(
            model, self.weight_bits, False, "lsq", self.membrane_bits, None, self.input_bits,
            edge_bits=self.edge_bits, tanh=self.tanh, lsq_init="paper")

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """Agree on the input scale calibrated on every rank's first batch."""
        integer_mode.agree_input_scale_(self.layers_, ctx.comm)

    def shared_scales(self) -> list[nn.Parameter]:
        """The one scale Parameter per layer that its weights and its neuron's membrane use."""
        return [layer.weight_quant.scale for layer in self.layers_]

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        return integer_mode.bake_(model)
