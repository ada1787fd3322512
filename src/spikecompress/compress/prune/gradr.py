"""Grad R: gradient rewiring, pruning and regrowth of synapses by a sign-fixed re-parameterisation.

Chen, Yu, Fang, Huang, Tian, "Pruning of Deep Spiking Neural Networks through Gradient Rewiring",
IJCAI 2021 (arXiv 2105.04916); official code ``Yanqi-Chen/Gradient-Rewiring`` (``gradrewire.py``).

Every selected weight becomes ``w = s · max(θ, 0)`` with a fixed sign ``s`` (the sign of the
weight at attach, zeros counted as +1) and a latent strength ``θ`` (initialised to ``|w₀|``). A
synapse with θ ≤ 0 is absent (w = 0, exactly) but θ keeps learning, so it can come back:

    ∂L/∂θ := s · ∂L/∂w      for every synapse (no ReLU derivative: the redefined gradient)
    θ ← θ − step · α · sign(θ − μ)      after each optimizer step (the Laplace prior)
    μ = ln(2 (1 − s_target)) / α        (prior mass below 0 = s_target; needs s_target ≥ 0.5)
    step = lr / (1 − β1^t) for Adam-type optimizers (t: the optimizer's step count of θ), lr for SGD

θ is the parametrization's ``original`` parameter (``parametrizations.weight.original``), so it is
trained by the user's optimizer and saved in ``model.state_dict()`` with the sign buffer; the
official code keeps θ in its optimizer's state, where a model checkpoint loses it. With Adam on θ
the task update equals the official one: Adam's moments of s·g are s times the moments of g and
its second moment is unchanged, so θ ← θ − step · s · m / (√v̂ + ε) as in ``gradrewire.py``.

The prior is decoupled from Adam (not a gradient term: it is never normalised by √v̂) and is
applied only when the optimizer really stepped θ (its step count grew; an AMP step skipped for
inf gradients, or a θ without a gradient, gets no prior, as the official optimizer skips
a parameter without a gradient).

Choices (the spec marks none of these as verified; each is ours):
- the prior's sign is taken at θ after the task update (the official code takes it at θ before);
  the two differ only for entries within one step of μ, where both oscillate around μ;
- zero initial weights get s = +1 (the official ``torch.sign`` gives 0, freezing them at 0);
- the optimizer's ``weight_decay`` acts on θ (official: on w); the recipes use none;
- default ``alpha`` = 0.3, not the official 1e-3. There, lr 1e-4 over ~6.4M CIFAR-10 steps
  (Σ step ≈ 640) lets the prior move θ by α·Σ step ≈ 0.64, ~30× the weights (~0.02), and
  μ = ln(0.1)/1e-3 ≈ −2303 lies so far below every θ that the prior is a constant pull: the drift
  budget α·Σ step, not ``sparsity``, decides the sparsity. A fine-tuning stage of ~1,900 steps at
  lr 1e-3 cosine (Σ step ≈ 1) needs α of order 0.1-1 for weights of ~0.07; α is also the largest
  Adam-normalised mean gradient |m|/√v̂ the prior overpowers. Measured on MNIST-1D conv1d_net
  [64, 64, 64], T = 4, batch 64, after 60 dense epochs (96.8 %), 30 epochs Adam lr 1e-3 cosine,
  one seed:
  α = 0.03 / 0.1 / 0.3 / 0.4 / 0.45 / 1.0 → sparsity 0.21 / 0.56 / 0.85 / 0.91 / 0.92 / 0.99,
  accuracy 96.7 / 95.9 / 94.1 / 82.2 / 80.5 / 34.2 %. The pull is uniform in weight units, so
  layers of small weights (hidden convs) end much sparser than the first conv and the classifier.

End: no mask; the zeros are exact. Connectivity = fraction of the selected |w| ≥ 1e-10 (like the
official logs; BN parameters and biases are never selected, first conv and classifier are).
Recipe: ``{name: gradr, sparsity: 0.9, alpha: 0.4}`` after a dense stage, optimizer Adam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context
from spikecompress.compress.targets import select

CONNECTED = 1e-10  # |w| at or above this counts as a connection (the official logs' threshold)


class _Rewire(torch.autograd.Function):
    """w = s · max(θ, 0) forward; ∂L/∂θ = s · ∂L/∂w backward (the ReLU derivative dropped)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(sign)
        return sign * theta.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        (sign,) = ctx.saved_tensors
        return sign * grad_w, None


class SignedStrength(nn.Module):
    """Parametrization θ ↦ w = s · max(θ, 0) with the fixed sign s as a buffer.

    ``right_inverse(w) = s · w`` (= |w₀| at registration, since s = sign(w₀))."""

    def __init__(self, w0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("sign", torch.where(w0 < 0, -1.0, 1.0).to(w0.dtype))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return _Rewire.apply(theta, self.sign)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return self.sign * w


def rewiring_of(module: nn.Module) -> SignedStrength | None:
    """The Grad R parametrization on ``module.weight``, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    first = module.parametrizations["weight"][0]
    return first if isinstance(first, SignedStrength) else None


def theta_of(module: nn.Module) -> nn.Parameter:
    """The latent strength θ of a rewired ``module.weight`` (a model parameter)."""
    if rewiring_of(module) is None:
        raise ValueError(f"{type(module).__name__}.weight is not rewired by gradr")
    return module.parametrizations["weight"].original


@dataclass
class GradR:
    """Gradient rewiring of the selected conv / linear weights (see the module docstring).

    ``sparsity`` is the target s_target of the prior (μ = ln(2(1 − s_target))/α, s_target ≥ 0.5);
    ``alpha`` the prior's strength α (0 switches the prior off: pure rewiring). The resulting
    sparsity is not enforced: read it with ``current_sparsity()``.
    """

    NAME: ClassVar[str] = "gradr"
    PAPER: ClassVar[str] = "Chen et al., IJCAI 2021 (arXiv 2105.04916)"
    KIND: ClassVar[str] = "masks"

    sparsity: float = 0.95
    alpha: float = 0.3
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)
    # the optimizer's step count of each θ when its prior was last applied
    seen_: torch.Tensor = field(
        default_factory=lambda: torch.zeros(0, dtype=torch.long),
        init=False, repr=False, compare=False,
    )

    def __post_init__(self) -> None:
        if not 0.5 <= self.sparsity < 1:
            raise ValueError(
                f"sparsity must be in [0.5, 1) (μ = ln(2(1 − sparsity))/alpha ≤ 0), "
                f"got {self.sparsity}"
            )
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be >= 0 (0: no prior), got {self.alpha}")

    @property
    def mu(self) -> float:
        """Centre of the Laplace prior: μ = ln(2 (1 − sparsity)) / alpha (−inf when alpha = 0)."""
        if self.alpha == 0:
            return -math.inf
        return math.log(2 * (1 - self.sparsity)) / self.alpha

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.targets_ = []
        for name, m in select(model, self.include, self.exclude):
            if rewiring_of(m) is None:
                if parametrize.is_parametrized(m, "weight"):
                    raise ValueError(
                        f"gradr: {name}.weight already has a parametrization; list gradr "
                        f"before the other methods of the stage"
                    )
                parametrize.register_parametrization(m, "weight", SignedStrength(m.weight))
            self.targets_.append(m)
        self.seen_ = torch.zeros(len(self.targets_), dtype=torch.long)

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """The prior: θ ← θ − step · α · sign(θ − μ), outside the optimizer's normalisation."""
        if ctx.optimizer is None:
            raise RuntimeError(
                "gradr applies its prior with the optimizer's step size: call "
                "session.bind(optimizer, ...) before training"
            )
        groups = {id(p): g for g in ctx.optimizer.param_groups for p in g["params"]}
        for i, m in enumerate(self.targets_):
            theta = theta_of(m)
            if id(theta) not in groups:
                raise RuntimeError(
                    f"gradr: θ of {type(m).__name__} ({tuple(theta.shape)}) is not in the "
                    f"bound optimizer; build the optimizer after attach"
                )
            step = self._step_size(ctx.optimizer, groups[id(theta)], theta, i)
            if step and self.alpha:
                theta.sub_(torch.sign(theta - self.mu), alpha=step * self.alpha)

    def _step_size(self, optimizer, group: dict, theta: torch.Tensor, i: int) -> float:
        """lr / (1 − β1^t) for an optimizer with ``betas`` and a step count, else lr; 0 when the
        optimizer did not step θ since the last call (no gradient, or a skipped AMP step)."""
        state = optimizer.state.get(theta, {})
        if "step" in state and "betas" in group:
            t = int(state["step"])
            if t == int(self.seen_[i]):
                return 0.0
            self.seen_[i] = t
            return float(group["lr"]) / (1 - group["betas"][0] ** t)
        return float(group["lr"]) if theta.grad is not None else 0.0

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Nothing to do: the Session's ``bake_`` keeps w = s · max(θ, 0) as the plain weight."""
        return model

    def current_sparsity(self) -> float:
        """Fraction of the selected weights with |w| < 1e-10 (1 − connectivity)."""
        with torch.no_grad():
            zeros = sum(int((m.weight.abs() < CONNECTED).sum()) for m in self.targets_)
        return zeros / sum(m.weight.numel() for m in self.targets_)
