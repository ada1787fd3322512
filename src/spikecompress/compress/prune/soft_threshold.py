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

Sparsity targets (``sparsity_threshold``): the soft threshold is one scalar d for every layer, so
the sparsity it gives is the fraction of latent |θ| ≤ d, and the d for a target s is an order
statistic: the k-th smallest |θ|, k = round(s · n) over the n selected weights. With that d exactly
k weights are silent (more only when several |θ| tie with it, or where a mask stacked under the
threshold zeroes more). STDS and LATS use it to calibrate
their final threshold D to a sparsity target.

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

# under a sparsity target the schedule ends at half the stage: the second half recovers at the
# target (a schedule that ends at the last step gives the network no steps to win back the
# accuracy of the last pruning; measured in the STDS and LATS docstrings)
TARGET_UNTIL = 0.5


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
) -> list[nn.Module]:
    """Install a soft threshold on every layer ``select(model, include, exclude)`` picks; returns
    those layers."""
    layers = [m for _, m in select(model, include, exclude)]
    for m in layers:
        install_soft_threshold_(m, d0, straight_through)
    return layers


def check_target(
    sparsity: float | None, knob: str, value: float | None, default: float
) -> float | None:
    """The sparsity target of a method whose paper knob ``knob`` is ``value``: ``default`` when
    neither is set, None when only the knob is; ValueError when both are or the target is not
    in (0, 1)."""
    if sparsity is not None and value is not None:
        raise ValueError(f"set sparsity or {knob}, not both")
    if sparsity is None:
        return default if value is None else None
    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    return sparsity


def check_until(until: float | None, sparsity: float | None) -> float:
    """The fraction of the stage at which the threshold schedule ends: 1 (the paper) under the
    paper's D, ``TARGET_UNTIL`` under a sparsity target, unless set; ValueError outside (0, 1]."""
    if until is None:
        return 1.0 if sparsity is None else TARGET_UNTIL
    if not 0 < until <= 1:
        raise ValueError(f"until must be in (0, 1], got {until}")
    return until


def target_count(sparsity: float, n: int) -> int:
    """How many of ``n`` weights a ``sparsity`` target silences: round(s · n), at least 1 (so a
    tiny target on a tiny net still prunes: within 1/n of it), at most n."""
    return min(max(round(sparsity * n), 1), n)


def latent_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The latent θ of a soft-thresholded ``module.name`` (the tensor the optimizer updates)."""
    return module.parametrizations[name].original


@torch.no_grad()
def sparsity_threshold(modules: Sequence[nn.Module], sparsity: float) -> float:
    """The d at which ``target_count(sparsity, n)`` of the latent |θ| of ``modules`` (n in all)
    lie in the dead zone |θ| ≤ d: the k-th smallest |θ| (see the module docstring)."""
    mags = torch.cat([latent_of(m).detach().abs().flatten() for m in modules])
    return float(torch.kthvalue(mags, target_count(sparsity, mags.numel())).values)


def set_thresholds_(layers: Sequence[nn.Module], d: float) -> None:
    """Set the same threshold d on the soft threshold of every layer of ``layers``."""
    for m in layers:
        soft_threshold_of(m).set_(d)


@torch.no_grad()
def finalize_to_target_(layers: Sequence[nn.Module], sparsity: float) -> float:
    """The exact last adjustment of a sparsity target: set d to ``sparsity_threshold`` on every
    layer; returns the change of their sparsity it made (0 when training already ended on d)."""
    before = zero_fraction(layers)
    set_thresholds_(layers, sparsity_threshold(layers, sparsity))
    return zero_fraction(layers) - before


def find_all(model: nn.Module) -> list[SoftThreshold]:
    """Every SoftThreshold parametrization in ``model`` (in module order)."""
    return [p for m in model.modules() if (p := soft_threshold_of(m)) is not None]


@torch.no_grad()
def zero_fraction(layers: Sequence[nn.Module]) -> float:
    """Fraction of exact zeros among the weights of ``layers`` (0 when there are none)."""
    total = sum(m.weight.numel() for m in layers)
    return sum(int((m.weight == 0).sum()) for m in layers) / total if total else 0.0


def threshold_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the soft-thresholded weights of ``model`` (0 when none)."""
    return zero_fraction([m for m in model.modules() if soft_threshold_of(m) is not None])


def bake_soft_thresholds_(model: nn.Module) -> nn.Module:
    """Replace each weight that carries only a soft threshold by its effective value (exact zeros
    in the dead zone); weights stacked with other parametrizations are left to ``bake_``."""
    for m in model.modules():
        if soft_threshold_of(m) is not None and len(m.parametrizations["weight"]) == 1:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model
