"""Soft-threshold re-parameterisation shared by STDS and LATS: w = sign(θ) · max(|θ| − d, 0).

The latent θ is the parametrization's ``original`` (the tensor the optimizer updates); the weight
the layer uses is the soft-thresholded θ, exactly zero in the dead zone |θ| ≤ d (the
"filopodium" state of STDS). d ≥ 0 is a scalar buffer of the parametrization (so it is in
``model.state_dict()``) that the methods move along their schedules.

Gradient (Chen et al.'s ``softThresholdmod`` / ``stmod``): the backward of max(·, 0) is replaced by
the identity, so ∂L/∂θ = ∂L/∂w everywhere, also for |θ| ≤ d: a silent synapse keeps receiving the
gradient it would get if it existed, and can grow back past d (regrowth). Our backward is the
identity even at θ = 0 exactly, where the official code's sign(θ)² factor gives 0 (that only
matters for a weight that is exactly zero when the parametrization is installed).
``straight_through=False`` is the code's unpublished ``'st'`` mode: plain autograd, gradient
0 in the dead zone, so a pruned synapse never comes back.

Installing maps the current weight w₀ to θ = sign(w₀)(|w₀| + d₀) (the parametrization's
``right_inverse``), so the effective weight is unchanged: exactly at d₀ = 0 (θ = w₀), up to one
float rounding of |w₀| + d₀ − d₀ for d₀ > 0 (the fixed-threshold variant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.targets import select


class _StraightThrough(torch.autograd.Function):
    """w = sign(θ)·relu(|θ| − d) forward; ∂L/∂θ = ∂L/∂w backward (the dead zone passes it)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.sign(theta) * torch.relu(theta.abs() - d)

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        return grad_w, None


def soft_threshold(
    theta: torch.Tensor, d: torch.Tensor | float, straight_through: bool = True
) -> torch.Tensor:
    """sign(θ) · max(|θ| − d, 0); straight-through gradient unless ``straight_through=False``."""
    d = torch.as_tensor(d, dtype=theta.dtype, device=theta.device)
    if straight_through:
        return _StraightThrough.apply(theta, d)
    return torch.sign(theta) * torch.relu(theta.abs() - d)


class SoftThreshold(nn.Module):
    """Parametrization θ ↦ sign(θ) · max(|θ| − d, 0) with a scalar threshold buffer ``d``."""

    def __init__(self, d: float = 0.0, straight_through: bool = True) -> None:
        super().__init__()
        if not d >= 0:
            raise ValueError(f"threshold d must be >= 0, got {d}")
        self.straight_through = straight_through
        self.register_buffer("d", torch.tensor(float(d)))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return soft_threshold(theta, self.d.to(theta.dtype), self.straight_through)

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """θ = sign(w)(|w| + d): the latent whose soft threshold is w (θ = w at d = 0)."""
        return torch.sign(w) * (w.abs() + self.d.to(w.dtype))

    @torch.no_grad()
    def set_(self, d: float) -> None:
        """Move the threshold (θ is untouched, so the effective weight changes)."""
        if not d >= 0:
            raise ValueError(f"threshold d must be >= 0, got {d}")
        self.d.fill_(d)

    def extra_repr(self) -> str:
        return f"d={float(self.d):.4g}, straight_through={self.straight_through}"


def soft_threshold_of(module: nn.Module, name: str = "weight") -> SoftThreshold | None:
    """The SoftThreshold parametrization on ``module.name``, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, SoftThreshold):
            return p
    return None


def install_soft_threshold_(
    module: nn.Module, d0: float = 0.0, straight_through: bool = True, name: str = "weight"
) -> SoftThreshold:
    """Re-parameterise ``module.name`` as the soft threshold of a latent θ (see module docstring).

    On a weight that already carries other parametrizations (a mask), the threshold is applied
    after them and θ is their output, so there the effective weight is kept only for d₀ = 0.
    """
    if soft_threshold_of(module, name) is not None:
        raise ValueError(f"{type(module).__name__}.{name} already has a soft threshold")
    st = SoftThreshold(d0, straight_through).to(getattr(module, name).device)
    parametrize.register_parametrization(module, name, st)
    return st


def install_all_(
    model: nn.Module,
    include: Sequence[str],
    exclude: Sequence[str],
    d0: float = 0.0,
    straight_through: bool = True,
) -> list[SoftThreshold]:
    """Install a soft threshold on every layer ``select(model, include, exclude)`` picks."""
    return [install_soft_threshold_(m, d0, straight_through) for _, m in select(model, include,
                                                                               exclude)]


def set_thresholds_(params: Sequence[SoftThreshold], d: float) -> None:
    """Set the same threshold d on every parametrization of ``params``."""
    for p in params:
        p.set_(d)


def find_all(model: nn.Module) -> list[SoftThreshold]:
    """Every SoftThreshold parametrization in ``model`` (in module order)."""
    return [p for m in model.modules() if (p := soft_threshold_of(m)) is not None]


@torch.no_grad()
def threshold_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the soft-thresholded weights of ``model`` (0 when none)."""
    zeros = total = 0
    for m in model.modules():
        if soft_threshold_of(m) is not None:
            zeros, total = zeros + int((m.weight == 0).sum()), total + m.weight.numel()
    return zeros / total if total else 0.0


def bake_soft_thresholds_(model: nn.Module) -> nn.Module:
    """Replace each weight that carries only a soft threshold by its effective value (exact zeros
    in the dead zone); weights stacked with other parametrizations are left to ``bake_``."""
    for m in model.modules():
        if soft_threshold_of(m) is not None and len(m.parametrizations["weight"]) == 1:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model
