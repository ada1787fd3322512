"""Batch Normalization Through Time (BNTT; Kim & Panda, "Revisiting Batch Normalization for
Training Low-latency Deep Spiking Neural Networks from Scratch", Frontiers in Neuroscience 2021).

A BNTT layer holds one BatchNorm per time step: ``steps`` independent sets of γ and running
statistics, stored as rows of ``weight``, ``running_mean`` and ``running_var`` [steps, C]. Step t of
x_seq [T, B, C, ...] is normalised with its own batch statistics in training (over B and the
spatial positions of that step only; row t of the running statistics moves, momentum 0.1) and with
row t's running statistics in eval. As in the authors' code: eps 1e-4, momentum 0.1, no β (the
BN bias is off: γ only), and the layer sits between the synaptic layer and the neuron, so the
membrane update is U_t = leak·U_{t-1} + BNTT_t(conv(x_t)).

The T of the input must equal ``steps`` (a one-line ValueError naming the layer otherwise): each
step has its own statistics, so the layer is built for one T.

Implementation: step t, channel c is channel t·C + c of one ``F.batch_norm`` over [B, T·C, ...]
(the parameters and statistics are views of the [steps, C] rows), so each (t, c) gets exactly the
normalisation a standard BN gives that step's channel.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.snn.layers import check_x_seq


def _positive_int(cls: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: {name} must be an int >= 1, got {value!r}")
    return int(value)


class BNTT(nn.Module):
    """One BatchNorm per time step over x_seq [T, B, C, ...] (T = ``steps``); γ only, no β.

    Parameters ``weight`` [steps, C] (γ, initialised to 1); buffers ``running_mean`` (zeros),
    ``running_var`` (ones) [steps, C] and ``num_batches_tracked``. ``bias`` is None (no β).
    Use ``BNTT1d`` ([T, B, C] or [T, B, C, L]) or ``BNTT2d`` ([T, B, C, H, W]).
    """

    EXPECTED: ClassVar[str] = "[T, B, C, ...]"
    DIMS: ClassVar[tuple[int, int | None]] = (3, None)

    def __init__(self, num_features: int, steps: int, eps: float = 1e-4,
                 momentum: float = 0.1) -> None:
        super().__init__()
        cls = type(self).__name__
        self.num_features = _positive_int(cls, "num_features", num_features)
        self.steps = _positive_int(cls, "steps", steps)
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
            raise ValueError(f"{cls}: eps must be a number > 0, got {eps!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not (
                0 < momentum <= 1):
            raise ValueError(f"{cls}: momentum must be a number in (0, 1], got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(self.steps, self.num_features))
        self.register_parameter("bias", None)  # no β (the authors' BN has its bias off)
        self.register_buffer("running_mean", torch.zeros(self.steps, self.num_features))
        self.register_buffer("running_var", torch.ones(self.steps, self.num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        """Running means 0, variances 1, no batch tracked (every step)."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_x_seq(x_seq, self.EXPECTED, *self.DIMS)
        T, B, C = x_seq.shape[:3]
        if T != self.steps:
            raise ValueError(f"{type(self).__name__}: x_seq has T = {T} time steps but the layer "
                             f"was built for steps = {self.steps} (one BatchNorm per step)")
        if C != self.num_features:
            raise ValueError(f"{type(self).__name__}: x_seq has {C} channels but the layer has "
                             f"num_features = {self.num_features}")
        for name in ("running_mean", "running_var"):  # rows are viewed flat below
            if not getattr(self, name).is_contiguous():
                setattr(self, name, getattr(self, name).contiguous())
        rest = x_seq.shape[3:]
        x = x_seq.transpose(0, 1).reshape(B, T * C, *rest)  # step t, channel c -> channel t·C + c
        y = F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1),
                         self.weight.reshape(-1), None, self.training, self.momentum, self.eps)
        if self.training:
            self.num_batches_tracked.add_(1)
        return y.view(B, T, C, *rest).transpose(0, 1).contiguous()

    @torch.no_grad()
    def keep_channels_(self, keep: torch.Tensor) -> None:
        """Keep channels ``keep`` (indices) of every step: γ and the running statistics are sliced
        along dim 1 (channel surgery); γ stays a Parameter with its ``requires_grad``."""
        keep = keep.to(self.weight.device, torch.long)
        w = self.weight
        self.weight = nn.Parameter(w.detach().index_select(1, keep).clone(),
                                   requires_grad=w.requires_grad)
        self.running_mean = self.running_mean.index_select(1, keep).clone()
        self.running_var = self.running_var.index_select(1, keep).clone()
        self.num_features = int(keep.numel())

    def extra_repr(self) -> str:
        return (f"{self.num_features}, steps={self.steps}, eps={self.eps:g}, "
                f"momentum={self.momentum:g}")


class BNTT1d(BNTT):
    """BNTT over [T, B, C] or [T, B, C, L] (the place of ``BatchNorm1d``)."""

    EXPECTED = "[T, B, C] or [T, B, C, L]"
    DIMS = (3, 4)


class BNTT2d(BNTT):
    """BNTT over [T, B, C, H, W] (the place of ``BatchNorm2d``)."""

    EXPECTED = "[T, B, C, H, W]"
    DIMS = (5, 5)
