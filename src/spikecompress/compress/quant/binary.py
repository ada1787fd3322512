"""Binary-weight SNN by weight-threshold balancing (Wang, Xu, Yan, Tang, IEEE TCDS 13(3), 2020).

The paper converts a binary-weight ANN (BinaryConnect / BWN: forward ``α·sign(W)``) into an SNN
whose weights stay in {−1, +1}: every scale is moved into the firing thresholds instead of into the
weights, as the usual data-based weight normalisation would do (which destroys binarity). No code
of the paper was found; the balancing rule (``binary_fold``) is our reconstruction (spec
quant-kd.md §2.7, tagged [D]), written for an SNN trained directly with surrogate gradients (not
converted).

**Training (QAT).** Every selected conv / linear weight forwards as ``α·sign(W)`` (BinaryConnect,
Courbariaux et al. 2015; the scale α = mean |W| of the non-zero weights of BWN / XNOR-Net,
Rastegari et al. 2016), per output channel (``per_channel``, default) or per layer; zeros stay 0,
so a pruned layer is {−α, 0, +α}. The backward is the clipped straight-through estimator
``∂Ŵ/∂W = 1[|W| ≤ 1]`` (BinaryConnect's hard-tanh STE; α is not differentiated). There is no
ReLU: the spiking neurons are the nonlinearity.

**Finalize** stores the weights as ±1 and moves every scale into the thresholds and BN shifts
(weight-threshold balancing: ``binary_fold``, the rule and why the spikes are unchanged), as far
as each layer's wiring allows (``binary_roles``).

**How this differs from ``uniform_quant`` at 1 bit.** ``uniform_quant`` with ``weight_bits: 1``
trains the same ``s·sign(W)`` (identity STE) but finalizes to float weights ±s (codes times a
weight scale) with BN and thresholds untouched: the scale stays in the weights, every synaptic
event is a multiply (or the accumulator is rescaled before the neuron). ``binary`` stores the
weights as ±1 with no weight scale (a 2-value codebook: 1 bit per weight in the artifact, per
channel or not) and moves every scale into the thresholds and BN shifts, rebalanced so the spikes
match the trained model: a multiplier-free accumulate of ±1 and a per-channel compare, the
deployable form of the paper. ``naive_sign_`` is the control: sign(W) with nothing rebalanced.
benchmarks/binary_balance.py compares the three (docs/benchmarks_binary.md).

Recipe: ``{name: binary}`` (defaults: per-channel α; first layer and read-out full precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context
from spikecompress.compress.quant.binary_fold import (
    _apply,
    _fold,
    _per_channel_neurons_,
    naive_sign_,
)
from spikecompress.compress.quant.binary_roles import Role, _check_role, layer_roles
from spikecompress.compress.quant.fake_quant import quantize
from spikecompress.compress.targets import compile_patterns, select

__all__ = ["BinarySTE", "BinaryWeights", "Role", "layer_roles", "naive_sign_"]


class BinarySTE(nn.Module):
    """Parametrization ``W ↦ α·sign(W)`` (zeros stay 0; α the mean |W| of the non-zero weights,
    per output channel or per tensor), backward the clipped STE ``∂Ŵ/∂W = 1[|W| ≤ 1]``.

    ``q + (W − W.detach())·keep`` forwards exactly q (the second term is +0)."""

    def __init__(self, per_channel: bool) -> None:
        super().__init__()
        self.per_channel = bool(per_channel)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = quantize(w.detach(), 1, self.per_channel)
        keep = (w.detach().abs() <= 1).to(w.dtype)
        return q + (w - w.detach()) * keep


@dataclass
class BinaryWeights:
    """Binary weights trained with BinaryConnect's STE, finalized by weight-threshold balancing.

    ``per_channel``: one α per output channel (else per layer; the read-out always per layer).
    ``keep_first`` / ``keep_last``: leave the first layer (the first conv / linear of the forward,
    reading the analog input) / the read-out full precision, as most BNN papers do; the first
    layer is binarized anyway when it is the only one left (a one-hidden-layer MLP).
    ``include`` / ``exclude``: regexes, see ``targets.select``; the kept first / last layers are
    removed from what they select.
    Distributed: the signs and scales follow the weights, the folded BN the running statistics the
    loop synchronises before finalize: it agrees by itself under DDP.
    """

    NAME: ClassVar[str] = "binary"
    PAPER: ClassVar[str] = "Wang, Xu, Yan, Tang, IEEE TCDS 2020 (binary weights, balancing)"
    KIND: ClassVar[str] = "quant"

    per_channel: bool = True
    keep_first: bool = True
    keep_last: bool = True
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)
    roles_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("per_channel", "keep_first", "keep_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"{name} must be a list of regex strings, got {value!r}")
            compile_patterns(value, name)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        roles, order = layer_roles(model)
        picked = [n for n, _ in select(model, self.include, self.exclude)]
        drop = {n for n, r in roles.items() if r.kind == "readout"} if self.keep_last else set()
        if self.keep_first and order and any(n not in drop | {order[0]} for n in picked):
            drop.add(order[0])  # unless it is the only layer left (a one-hidden-layer MLP)
        self.targets_ = [n for n in picked if n not in drop]
        if not self.targets_:
            raise ValueError(f"binary: no layer left to binarize (selected {picked}; keep_first="
                             f"{self.keep_first}, keep_last={self.keep_last} keep {sorted(drop)})")
        modules = dict(model.named_modules())
        self.roles_ = {n: roles.get(n, Role("unsupported")) for n in self.targets_}
        for name, role in self.roles_.items():
            _check_role(name, role, modules)
        for name in self.targets_:
            per_channel = self.per_channel and self.roles_[name].kind != "readout"
            parametrize.register_parametrization(modules[name], "weight", BinarySTE(per_channel))

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        modules = dict(model.named_modules())
        plans = [(name, role, _fold(modules, name, role, self.per_channel))
                 for name, role in self.roles_.items()]
        if any(role.kind == "balanced" for _, role, _ in plans):
            _per_channel_neurons_(model)
            modules = dict(model.named_modules())
        for name, role, (codes, scale, shift) in plans:
            _apply(modules, name, role, codes, scale, shift)
        return model
