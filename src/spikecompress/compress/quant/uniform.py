"""Uniform symmetric quantization of weights, and of the membrane: QAT with a straight-through
estimator, or PTQ.

Weights: ``Ŵ = s · clamp(round(W / s), −qmax, qmax)``, ``qmax = 2^{b−1} − 1``; 1 bit is
``s · sign(W)``. The scale s is per tensor or per output channel (``per_channel``) and is
``scale="max"`` (max|W| / qmax), ``"lsq"`` (a learned step size, Esser et al., ICLR 2020) or
``"least_squares"`` (the s minimising ‖W − Ŵ‖², alternating), see ``quantizers``. At 2–3 bits the
max-|W| step rounds most weights to 0; the learned or least-squares step keeps them.
QAT trains through the quantizer with the identity STE (Bengio et al. 2013; the weight-QAT
baseline of the survey's SNN quantization papers); PTQ rounds the trained weights once (the
post-training control of ST-Quant, Chowdhury et al. IJCNN 2021).

Membrane (``membrane_bits``, QAT only): the network goes on the integer grid
(``integer_mode``): BatchNorm is folded into the layers, the network's input is quantized to
``input_bits``, and each neuron keeps an integer membrane of ``membrane_bits`` bits on a uniform
grid of step ``membrane_range · V_th / qmax_u`` (the membrane, the threshold and the reset on one
grid, as snnTorch's ``state_quant`` and SQUAT, Venkatesh et al. 2024, do with float levels). The
layer's integer accumulator reaches the membrane through an integer gain (a multiplier and a
shift, ``snn.integer``), so the model lowers to an integer SNN (``sc.to_integer``) that gives the
same spikes bit for bit. MINT (``mint``) instead shares one scale between weights and membrane,
which removes that multiplier.

``edge_bits``: weight bits of the network's first and last conv / linear layer (None: all at
``weight_bits``). The LSQ paper keeps them at 8 bits; on MNIST-1D this is what makes 2 bits train
(docs/benchmarks_quantization.md). Their bytes are a small share of the model.

One quantization method per stage: weights and membrane of one stage are this method's knobs (or
``mint``'s), never two methods fighting over the same layers.

Recipe: ``{name: uniform_quant, weight_bits: 4}``, ``{name: uniform_quant, weight_bits: 4,
membrane_bits: 4, scale: lsq, per_channel: true}``.

Bytes: the finalized layer keeps a ``weight_scale`` buffer ([] or [C_out]) beside
``weight = weight_scale · codes``; the artifact stores such a weight as b-bit codes (per channel)
or as a codebook (per tensor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context
from spikecompress.compress.quant import integer_mode
from spikecompress.compress.quant.fake_quant import bake_weight_
from spikecompress.compress.quant.quantizers import SCALES, WeightQuantizer, check_bits
from spikecompress.compress.targets import select

MODES = ("qat", "ptq")


@dataclass
class UniformQuantization:
    """Quantize the weights of the selected conv / linear layers to ``weight_bits`` bits and,
    with ``membrane_bits``, every neuron's membrane (the whole network on the integer grid).

    ``mode="qat"``: the forward sees Q(W) from attach on and the gradient reaches W straight
    through. ``mode="ptq"``: nothing changes during training; finalize rounds the final weights.
    After finalize every selected ``weight`` is exactly Q(W), zeros kept (so it composes with
    pruning masks, which the Session finalizes first). ``include`` / ``exclude``: regexes (see
    ``targets.select``; with ``membrane_bits`` every layer is quantized). ``membrane_range``:
    the membrane grid spans ±membrane_range·V_th (>= 1: it must hold the threshold).
    ``input_bits``: bits of the network's quantized input (membrane mode). ``edge_bits``: bits of
    the first and last layer (None: ``weight_bits``). Distributed: the scales follow the weights
    or are model parameters (LSQ) trained through DDP; in membrane mode the input scale, which
    each rank calibrates on its own first batch, is made the largest over the ranks in
    ``reduce_`` (``integer_mode.agree_input_scale_``).
    """

    NAME: ClassVar[str] = "uniform_quant"
    PAPER: ClassVar[str] = "QAT with a straight-through estimator (Bengio et al. 2013)"
    KIND: ClassVar[str] = "quant"

    weight_bits: int = 4
    per_channel: bool = True
    scale: str = "least_squares"
    mode: str = "qat"
    membrane_bits: int | None = None
    membrane_range: float = 1.0
    input_bits: int = 8
    edge_bits: int | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits", 1, 8)
        if self.edge_bits is not None:
            check_bits(self.edge_bits, "edge_bits", 1, 8)
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel must be true or false, got {self.per_channel!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {list(SCALES)}, got {self.scale!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.membrane_bits is not None:
            integer_mode.check_membrane(self.membrane_bits, self.membrane_range)
            check_bits(self.input_bits, "input_bits", 2, 16)
            if self.mode != "qat":
                raise ValueError("membrane_bits needs mode qat (the membrane grid is trained)")
            if self.include or self.exclude:
                raise ValueError("membrane_bits quantizes every layer; include / exclude do not "
                                 "apply")
        elif self.mode == "ptq" and self.scale == "lsq":
            raise ValueError("scale lsq is learned: it needs mode qat")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        if self.membrane_bits is not None:
            self.targets_ = integer_mode.install_(
                model, self.weight_bits, self.per_channel, self.scale, self.membrane_bits,
                float(self.membrane_range), self.input_bits, edge_bits=self.edge_bits)
            return
        self.targets_ = [m for _, m in select(model, self.include, self.exclude)]
        if self.mode == "qat":
            bits = self._bits(model)
            for m in self.targets_:
                parametrize.register_parametrization(
                    m, "weight", WeightQuantizer(m.weight, bits[m], self.per_channel, self.scale))

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """Membrane mode: agree on the input scale calibrated on every rank's first batch."""
        if self.membrane_bits is not None:
            integer_mode.agree_input_scale_(self.targets_, ctx.comm)

    def _bits(self, model: nn.Module) -> dict[nn.Module, int]:
        """Bits per target: ``edge_bits`` for the network's first and last conv / linear layer."""
        bits = dict.fromkeys(self.targets_, self.weight_bits)
        if self.edge_bits is not None:
            layers = [m for _, m in select(model)]
            for edge in (layers[0], layers[-1]):
                if edge in bits:
                    bits[edge] = self.edge_bits
        return bits

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.membrane_bits is not None:
            return integer_mode.bake_(model)
        bits = self._bits(model)
        for m in self.targets_:
            value, scale = self._quantized(m, bits[m])
            bake_weight_(m, value)
            m.register_buffer("weight_scale", scale)
        return model

    def _quantized(self, m: nn.Module, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the effective weight on the grid, its scale): the parametrization chain of ``weight``
        with our quantizer in it (QAT; masks before or after it), or Q(effective W) (PTQ)."""
        if self.mode == "ptq":
            quant = WeightQuantizer(m.weight, bits, self.per_channel, self.scale)
            codes, s = quant.codes(m.weight)
            return _scaled(codes, s), s.clone()
        chain = m.parametrizations.weight
        w, scale = chain.original, None
        for p in chain:
            if isinstance(p, WeightQuantizer):
                codes, scale = p.codes(w)
                w = _scaled(codes, scale)
            else:
                w = p(w)  # a mask: zeros stay on the grid
        return w + 0.0, scale.clone()


def _scaled(codes: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """codes · s with a scalar or per-output-channel [C] scale (+0.0: no −0.0)."""
    return codes * (s.view(-1, *([1] * (codes.dim() - 1))) if s.dim() else s) + 0.0
