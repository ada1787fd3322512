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

Two ways to set the sparsity (exactly one of them):
- ``sparsity`` s (the default, 0.7), calibrated while training. With the paper's settings μ lies
  far below every θ and the prior is a uniform pull (see the choices below), so under a target
  μ = −∞ and the pull's size is chosen at every step: the smallest q that leaves a fraction
  s*(n) of all selected θ at ≤ 0, where s*(n) = s · (1 − (1 − n/(until · N))³) (Zhu & Gupta's
  cubic, reaching s at ``until`` = 0.5 of the N steps and held after, so the second half
  recovers at the target). That is the prior step with α_n = q / step (``alpha_``). The prior
  never pushes up: where the task gradient already silenced more than s*(n), that step has no
  pull. Synapses regrow by the redefined gradient as in the paper and the next pull silences
  the weakest again, so the last step leaves exactly k = round(s · n_weights) θ ≤ 0 (more if
  the task gradient silenced more). Finalize then lands on k exactly: with τ the k-th smallest
  θ, the θ between 0 and τ move across zero by −τ (τ > 0: the weakest live synapses die; τ < 0:
  the least-dead ones regrow with |w| ≤ |τ|). ``topup_`` records the change (0 on every run
  below: the training already ended on the target).
- ``alpha`` (the paper's knob) with ``prior_sparsity`` (its s_target, default 0.95): the prior
  as published, uncalibrated; the sparsity is whatever the drift gives.

Default target, measured on a digits conv_net [16, 32, 64], T = 4, trained 4 epochs (97.2 %),
then Adam lr 1e-3 (28 steps an epoch): 2 epochs at sparsity 0.6 / 0.7 / 0.75 / 0.8 / 0.9 →
accuracy 97.2 / 96.9 / 95.3 / 93.3 / 20.8 %; 8 epochs at 0.8 / 0.9 → 98.6 / 95.8 %; each sparsity
on target within 0.001 (paper knob α = 0.3, 2 epochs: 0.262 at 98.6 %). The pull shrinks every
live θ by the same amount, which 56 Adam steps of ~1e-3 cannot win back above ~0.75 (magnitude
pruning, which keeps the survivors' values, keeps 97.8 % at 0.8 there).

Choices (the spec marks none of these as verified; each is ours):
- the prior's sign is taken at θ after the task update (the official code takes it at θ before);
  the two differ only for entries within one step of μ, where both oscillate around μ;
- zero initial weights get s = +1 (the official ``torch.sign`` gives 0, freezing them at 0);
- the optimizer's ``weight_decay`` acts on θ (official: on w); the recipes use none;
- the scale of ``alpha``: the official 1e-3 does not transfer. There, lr 1e-4 over ~6.4M
  CIFAR-10 steps (Σ step ≈ 640) lets the prior move θ by α·Σ step ≈ 0.64, ~30× the weights
  (~0.02), and μ = ln(0.1)/1e-3 ≈ −2303 lies so far below every θ that the prior is a constant
  pull: the drift budget α·Σ step, not ``prior_sparsity``, decides the sparsity. A fine-tuning
  stage of ~1,900 steps at lr 1e-3 cosine (Σ step ≈ 1) needs α of order 0.1-1 for weights of
  ~0.07; α is also the largest Adam-normalised mean gradient |m|/√v̂ the prior overpowers.
  Measured on MNIST-1D conv1d_net [64, 64, 64], T = 4, batch 64, after 60 dense epochs
  (96.8 %), 30 epochs Adam lr 1e-3 cosine, one seed:
  α = 0.03 / 0.1 / 0.3 / 0.4 / 0.45 / 1.0 → sparsity 0.21 / 0.56 / 0.85 / 0.91 / 0.92 / 0.99,
  accuracy 96.7 / 95.9 / 94.1 / 82.2 / 80.5 / 34.2 %. The pull is uniform in weight units, so
  layers of small weights (hidden convs) end much sparser than the first conv and the classifier
  (with a target too: the pull is global).

End: no mask; the zeros are exact. Connectivity = fraction of the selected |w| ≥ 1e-10 (like the
official logs; BN parameters and biases are never selected, first conv and classifier are). The
target counts the selected weights. Runtime state: θ and the sign in the model, the optimizer
step counts ``seen_`` in the method, so a resumed run pulls exactly as an uninterrupted one.
Recipe: ``{name: gradr, sparsity: 0.9}`` (or the paper's ``{name: gradr, alpha: 0.4,
prior_sparsity: 0.9}``) after a dense stage, optimizer Adam.
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
DEFAULT_SPARSITY = 0.7  # see the module docstring: keeps accuracy after a short fine-tuning
TARGET_UNTIL = 0.5  # a target's path ends at half the stage: the rest recovers at the target
DEFAULT_PRIOR_SPARSITY = 0.95  # the paper's s_target (its CIFAR-10 runs' ``-s``)


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


def _check_target(sparsity: float | None, alpha: float | None) -> float | None:
    """The sparsity target: the default when neither knob is set, None under ``alpha``."""
    if sparsity is not None and alpha is not None:
        raise ValueError("set sparsity or alpha, not both")
    if sparsity is None:
        return DEFAULT_SPARSITY if alpha is None else None
    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    return sparsity


@torch.no_grad()
def land_on_target_(thetas: list[torch.Tensor], sparsity: float) -> None:
    """Leave exactly k = round(s · n) (at least 1) of the n entries of ``thetas`` at θ ≤ 0 (more
    only on ties): with τ the k-th smallest θ, move the θ between 0 and τ across 0 by −τ (τ > 0:
    the smallest live synapses die; τ < 0: the least-dead ones regrow with |w| ≤ |τ|)."""
    flat = torch.cat([t.detach().flatten() for t in thetas])
    k = min(max(round(sparsity * flat.numel()), 1), flat.numel())
    tau = float(torch.kthvalue(flat, k).values)
    low, high = min(tau, 0.0), max(tau, 0.0)
    for t in thetas:
        between = (t > low) & (t <= high)
        t[between] -= tau


@dataclass
class GradR:
    """Gradient rewiring of the selected conv / linear weights (see the module docstring).

    Set ``sparsity`` (the prior's strength follows a target path and the end lands on it; the
    default, 0.7) or ``alpha`` (the paper's prior strength α, uncalibrated; 0 switches the prior
    off: pure rewiring), not both. ``prior_sparsity`` is the paper's s_target of the prior
    (μ = ln(2(1 − s_target))/α, s_target ≥ 0.5; 0.95 when unset), used with ``alpha`` only;
    ``until``: the fraction of the stage at which a target's path reaches it. Read the sparsity
    with ``current_sparsity()``.
    Distributed: θ and the signs are model tensors, and the prior's pull follows θ and the
    optimizer's step counts, the same on every rank: it agrees by itself under DDP.
    """

    NAME: ClassVar[str] = "gradr"
    PAPER: ClassVar[str] = "Chen et al., IJCAI 2021 (arXiv 2105.04916)"
    KIND: ClassVar[str] = "masks"

    sparsity: float | None = None
    alpha: float | None = None
    prior_sparsity: float | None = None
    until: float | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)
    # the optimizer's step count of each θ when its prior was last applied
    seen_: torch.Tensor = field(
        default_factory=lambda: torch.zeros(0, dtype=torch.long),
        init=False, repr=False, compare=False,
    )
    # under a target: the α of the last prior step (its pull / step size), for inspection
    alpha_: float = field(default=0.0, init=False, repr=False, compare=False)
    # the sparsity change finalize's exact last adjustment made (0 when training reached it)
    topup_: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sparsity = _check_target(self.sparsity, self.alpha)
        if self.alpha is not None:
            if not (self.alpha >= 0 and math.isfinite(self.alpha)):
                raise ValueError(f"alpha must be >= 0 (0: no prior), got {self.alpha}")
            if self.prior_sparsity is None:
                self.prior_sparsity = DEFAULT_PRIOR_SPARSITY
            if not 0.5 <= self.prior_sparsity < 1:
                raise ValueError(
                    f"prior_sparsity must be in [0.5, 1) (μ = ln(2(1 − prior_sparsity))/alpha "
                    f"≤ 0), got {self.prior_sparsity}"
                )
            if self.until is not None:
                raise ValueError("until shapes a sparsity target's path: it needs sparsity, "
                                 "not alpha")
        else:
            if self.prior_sparsity is not None:
                raise ValueError("prior_sparsity sets the paper's prior: it needs alpha, "
                                 "not sparsity")
            self.until = TARGET_UNTIL if self.until is None else self.until
            if not 0 < self.until <= 1:
                raise ValueError(f"until must be in (0, 1], got {self.until}")

    @property
    def mu(self) -> float:
        """Centre of the Laplace prior: μ = ln(2 (1 − prior_sparsity)) / alpha; −inf when alpha
        is 0 or under a sparsity target (a uniform pull)."""
        if self.alpha is None or self.alpha == 0:
            return -math.inf
        return math.log(2 * (1 - self.prior_sparsity)) / self.alpha

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
        """The prior: θ ← θ − step · α · sign(θ − μ), outside the optimizer's normalisation
        (under a target: the pull ``_pull_to_path`` sizes)."""
        steps = self._steps(ctx)
        if self.sparsity is not None:
            self._pull_to_path(ctx, steps)
            return
        for m, step in zip(self.targets_, steps, strict=True):
            if step and self.alpha:
                theta = theta_of(m)
                theta.sub_(torch.sign(theta - self.mu), alpha=step * self.alpha)

    def _steps(self, ctx: Context) -> list[float]:
        """The step size of every target's θ in this optimizer step (0: not stepped)."""
        if ctx.optimizer is None:
            raise RuntimeError(
                "gradr applies its prior with the optimizer's step size: call "
                "session.bind(optimizer, ...) before training"
            )
        groups = {id(p): g for g in ctx.optimizer.param_groups for p in g["params"]}
        steps = []
        for i, m in enumerate(self.targets_):
            theta = theta_of(m)
            if id(theta) not in groups:
                raise RuntimeError(
                    f"gradr: θ of {type(m).__name__} ({tuple(theta.shape)}) is not in the "
                    f"bound optimizer; build the optimizer after attach"
                )
            steps.append(self._step_size(ctx.optimizer, groups[id(theta)], theta, i))
        return steps

    def path_at(self, ctx: Context) -> float:
        """The target's sparsity after ``ctx.step`` steps: Zhu & Gupta's cubic from 0 to
        ``sparsity`` at ``until`` of the stage (n/N from the bound total, else ``progress``)."""
        fraction = ctx.step / ctx.total_steps if ctx.total_steps else ctx.progress
        x = min(max(fraction / self.until, 0.0), 1.0)
        return self.sparsity * (1 - (1 - x) ** 3)

    def _pull_to_path(self, ctx: Context, steps: list[float]) -> None:
        """The prior under a target: the uniform pull (μ = −inf) of the smallest size q that
        leaves a fraction ``path_at(ctx)`` of θ ≤ 0, i.e. α = q / step this step."""
        stepped = [m for m, step in zip(self.targets_, steps, strict=True) if step]
        self.alpha_ = 0.0
        if not stepped:
            return
        thetas = torch.cat([theta_of(m).detach().flatten() for m in self.targets_])
        k = round(self.path_at(ctx) * thetas.numel())
        if k == 0 or int((thetas <= 0).sum()) >= k:
            return  # on or ahead of the path: no pull (the prior never pushes up)
        q = float(torch.kthvalue(thetas, k).values)  # > 0: fewer than k are ≤ 0
        for m in stepped:
            theta_of(m).sub_(q)
        self.alpha_ = q / max(steps)

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

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Under a target, land on it exactly (``land_on_target_``); the Session's ``bake_``
        then keeps w = s · max(θ, 0) as the plain weight."""
        if self.sparsity is not None:
            before = self.current_sparsity()
            land_on_target_([theta_of(m) for m in self.targets_], self.sparsity)
            self.topup_ = self.current_sparsity() - before
        return model

    def current_sparsity(self) -> float:
        """Fraction of the selected weights with |w| < 1e-10 (1 − connectivity)."""
        with torch.no_grad():
            zeros = sum(int((m.weight.abs() < CONNECTED).sum()) for m in self.targets_)
        return zeros / sum(m.weight.numel() for m in self.targets_)
