"""Channel masks during training, applied after BN, and the dense γ-gradient they expose.

Masking a conv output *before* BN does not silence the channel: BN maps an all-zero channel to β
(and −γμ/σ + β in eval), which keeps firing downstream (the BN leak). So a channel mask
gates BN's γ and β together — BN(x)_c = γ_c·m_c·x̂_c + β_c·m_c is exactly 0 for m_c = 0, in
training and eval alike — and, for a group without BN, the producers' weight rows and biases.

``ChannelGate`` records the gradient of the *gated* γ, ∂L/∂(γ⊙m) = Σ ∂L/∂z·x̂, at every backward:
it is the gradient the channel's γ would get if it were switched on (the "dense" γ-gradient),
non-zero for masked channels too, which is what gradient-based regrowth needs (∂L/∂γ itself is
m ⊙ that, zero for every masked channel).

    gate_channels_(model, group, mask)       # install or update; mask [group.size] of {0, 1}
    dense_gamma_grad(model, group)          # [group.size] from the last backward
    ungate_(model)                           # remove the gates, keeping γ⊙m, β⊙m
    zero_channels_(model, group, mask)       # the other way: zero filters, γ, β in place once

A BNTT (``snn.BNTT``: one BN per time step, γ only) keeps its channels in dim 1 of γ [steps, C]:
its gate masks that dim (every step of a channel together), and a value read per channel (the
dense γ-gradient, a score) sums or averages its steps as if each step were one BN of the group
(``channel_rows``). With no β, gating γ alone makes a gated channel exactly 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.prune.groups import ChannelGroup
from spikecompress.snn.bntt import BNTT


def channel_dim(module: nn.Module) -> int:
    """The channel dimension of ``module``'s per-channel tensors: 1 for a BNTT's [steps, C],
    else 0 (conv / Linear rows, BN vectors)."""
    return 1 if isinstance(module, BNTT) else 0


def channel_rows(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``t`` (one of ``module``'s per-channel tensors, or its gradient) as rows [R, C]: a BNTT's
    [steps, C] as it is (one row per step), a BN's [C] as one row."""
    return t if isinstance(module, BNTT) else t.reshape(1, -1)


def _along(mask: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
    """``mask`` [C] shaped to broadcast along dim ``dim`` of ``t``."""
    shape = [1] * t.dim()
    shape[dim] = -1
    return mask.to(t.device, t.dtype).view(shape)


class ChannelGate(nn.Module):
    """Parametrization ``w ↦ w ⊙ mask`` along dim ``dim`` (0; 1 for a BNTT's [steps, C]); keeps
    the gated tensor's last gradient."""

    def __init__(self, mask: torch.Tensor, dim: int = 0) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().float())
        self.dim = dim
        self.grad: torch.Tensor | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out = w * _along(self.mask, w, self.dim)  # [C] -> [C, 1, ...] (dim 0) or [1, C] (dim 1)
        if out.requires_grad:
            out.register_hook(self._capture)
        return out

    def _capture(self, grad: torch.Tensor) -> None:
        self.grad = grad.detach().clone()


def _targets(model: nn.Module, group: ChannelGroup) -> list[tuple[nn.Module, str]]:
    """(module, tensor name) pairs a mask of ``group`` gates: BN γ and β, else producer rows."""
    modules = dict(model.named_modules())
    owners = group.bns or group.producers
    return [(modules[n], t) for n in owners for t in ("weight", "bias")
            if getattr(modules[n], t, None) is not None]


def gate_of(module: nn.Module, name: str) -> ChannelGate | None:
    """The ChannelGate on ``module.name``, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    return next((p for p in module.parametrizations[name] if isinstance(p, ChannelGate)), None)


def gate_channels_(model: nn.Module, group: ChannelGroup, mask: torch.Tensor) -> None:
    """Switch ``group``'s channels on (1) and off (0) after BN; ``mask`` [group.size]."""
    if mask.shape != (group.size,):
        raise ValueError(f"mask for group {group.name!r} must have shape ({group.size},), "
                         f"got {tuple(mask.shape)}")
    for module, name in _targets(model, group):
        gate = gate_of(module, name)
        if gate is None:
            gate = ChannelGate(mask.to(getattr(module, name).device), channel_dim(module))
            parametrize.register_parametrization(module, name, gate)
        else:
            gate.mask.copy_(mask)


def channel_mask(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """The group's current mask [size] (all ones when it has no gate)."""
    module, name = _targets(model, group)[0]
    gate = gate_of(module, name)
    return torch.ones(group.size) if gate is None else gate.mask.detach().cpu().clone()


def dense_gamma_grad(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Σ over the group's BNs (a BNTT's steps each count as one) of ∂L/∂(γ⊙m) from the last
    backward, [size] (zeros before one)."""
    total = torch.zeros(group.size)
    modules = dict(model.named_modules())
    for n in group.bns:
        gate = gate_of(modules[n], "weight")
        if gate is not None and gate.grad is not None:
            total += channel_rows(modules[n], gate.grad.detach()).sum(0).cpu()
    return total


def ungate_(model: nn.Module) -> None:
    """Remove every ChannelGate, leaving the gated values (masked channels' γ, β = 0) in place."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations):
            gates = list(module.parametrizations[name])
            if len(gates) == 1 and isinstance(gates[0], ChannelGate):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)


@torch.no_grad()
def zero_channels_(model: nn.Module, group: ChannelGroup, mask: torch.Tensor) -> None:
    """Multiply the producer filter rows (and biases), BN γ and β of channels with mask 0 by zero
    in place (the optimized tensors under any parametrization): the masking of SCA's released
    code, once per update; an optimizer's momentum can move them again afterwards."""
    modules = dict(model.named_modules())
    for n in group.producers + group.bns:
        for t in ("weight", "bias"):
            p = raw_tensor(modules[n], t)
            if p is not None:
                p.mul_(_along(mask, p, channel_dim(modules[n])))  # [C] -> [C, 1, ...] or [1, C]


def raw_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """The optimized tensor behind ``module.name`` (under its parametrizations), or None."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name, None)
