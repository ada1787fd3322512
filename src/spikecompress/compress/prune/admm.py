"""ADMM pruning: train towards a k-sparse copy Z with a scaled dual U, then hard-prune (Deng et al).

Problem: min L(W) s.t. W_l ∈ S_l = {tensors with at most k_l non-zeros}, k_l = round((1 − p_l)·n_l).
The scaled-form ADMM loop is ``compress/admm_core.py``'s (shared with ADMM quantization): for the
first ``admm_until`` fraction of the stage (the ADMM phase) the loss gets the coupling
"squared" (default, paper form) (ρ/2) Σ_l ‖W_l − Z_l + U_l‖²_F or "norm" (official MNIST script)
ρ Σ_l ‖W_l − Z_l + U_l‖_F, and every ``update_every`` optimizer steps (0: once per epoch):

    Z-step  Z_l ← Proj_Sl(W_l + U_l)   keep the k_l largest |·| exactly (ties: lower flat index)
    U-step  U_l ← U_l + W_l − Z_l

with Z_l = Proj_Sl(W_l), U_l = 0 at attach. When ``ctx.progress`` reaches ``admm_until`` (or at
finalize, whichever comes first): hard prune W_l ← Proj_Sl(W_l) and fix the mask M_l = [W_l ≠ 0].
The mask is a ``Mask`` parametrization installed (all ones) at attach, so W_eff = W ⊙ M in every
forward: pruned weights stay exactly 0 through retraining with Adam (no "zombie" weights), and the
checkpoint layout is the same before and after the hard prune. ``activity`` = λ_act adds the
spike-rate penalty of ``compress/activity/penalty.py`` (per neuron per time step) in every phase:
λ_act · Σ_l r_l, the ``activity`` method's penalty (``compress/activity/activity.py``, the same
function) with uniform weighting times the number of spiking layers; for its other options
(fan-out weighting, a target rate) attach that method beside ADMM with ``activity: 0``.

Choices where the paper and the official script are unverified or silent:
* ``scope`` (default: ``"global"`` for one ``sparsity`` number, ``"layer"`` for a mapping):
  ``"global"`` keeps one k = round((1 − p)·Σ n_l) over all selected weights, so ``sparsity`` is
  the fraction of the selected weights the finalized model has removed, exactly. ``"layer"``
  prunes each layer to its own p_l, as the official script does (its threshold is the p_l-th
  percentile of |W_l| over all elements of the layer, ``|w| < t`` pruned, which keeps every tie;
  we keep exactly k_l). Global is the default because one p for every layer starves the small
  ones: on a trained digits CNN ([16, 32, 64], 2 epochs, Adam lr 1e-3) 80 % per layer leaves the
  first conv 29 of its 144 weights and gave 0.789 test accuracy, 80 % global 0.961 (dense 0.972).
* ``sparsity`` is one p for every layer, or a mapping regex → p: a layer takes the value of the
  one pattern its name fullmatches (two matches: an error), else the key ``"default"``; e.g. the
  official MNIST CNN ``{conv1: 0.83, conv2: 0.92, fc1: 0.991, default: 0.93}``.
* ρ = 0.1 by default (the paper's ρ is not known here; the official script uses 1e-4 with the
  "norm" coupling). With Adam (lr 1e-3) on MNIST-1D, 90 % global, ρ = 0.01 / 0.1 / 1 gave
  0.82 / 0.83 / 0.69 test accuracy after the stage (one seed). The script's extra 5e-5 · Σ‖W_l‖
  term is not included (use weight decay). ``update_every=0`` (Z/U once per epoch) is the
  script's schedule; every 16 steps gave 0.89 in the same run.
* One optimizer over the stage (the script starts a fresh Adam for retraining; ours keeps its
  moments, harmless because masked weights get no forward effect).
Recipe: ``{name: admm, sparsity: 0.9, admm_until: 0.5}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.activity.penalty import SpikeRecorder, spike_rate_penalty
from spikecompress.compress.admm_core import ADMMLoop
from spikecompress.compress.method import Context, zero_loss
from spikecompress.compress.prune.masks import set_mask_, topk_mask
from spikecompress.compress.targets import select


def project(t: torch.Tensor, k: int) -> torch.Tensor:
    """Euclidean projection of ``t`` onto {at most k non-zeros}: ``t`` where ``topk_mask(|t|)``."""
    return t * topk_mask(t.abs(), k)


@dataclass
class ADMMPruning(ADMMLoop):
    """ADMM towards per-layer (or global) k-sparse weights, then hard pruning and masked retraining.

    See the module docstring for the iteration, the coupling forms and the defaults' sources; the
    Z / U loop and the coupling loss are ``ADMMLoop``'s, with the top-k projection ``_project``.
    Distributed: Z, U and the masks follow the weights alone and the activity term is a loss: they
    agree by themselves under DDP.
    """

    NAME: ClassVar[str] = "admm"
    PAPER: ClassVar[str] = "Deng et al., IEEE TNNLS 2021 (arXiv 1911.00822)"
    KIND: ClassVar[str] = "masks"

    sparsity: float | dict[str, float] = 0.8
    scope: str | None = None
    rho: float = 0.1
    coupling: str = "squared"
    admm_until: float = 0.5
    update_every: int = 0
    activity: float = 0.0
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    targets_: list = field(default_factory=list, init=False, repr=False, compare=False)
    ks_: list = field(default_factory=list, init=False, repr=False, compare=False)
    z_: list = field(default_factory=list, init=False, repr=False, compare=False)
    u_: list = field(default_factory=list, init=False, repr=False, compare=False)
    pruned_: bool = field(default=False, init=False, repr=False, compare=False)
    recorder_: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_sparsity(self.sparsity)
        if self.scope is None:  # a mapping is per layer by nature; one number is one budget
            self.scope = "layer" if isinstance(self.sparsity, dict) else "global"
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        if self.scope == "global" and isinstance(self.sparsity, dict):
            raise ValueError("sparsity: a per-layer mapping needs scope='layer'")
        self._check_admm_knobs()
        if not 0 <= self.activity < float("inf"):
            raise ValueError(f"activity must be >= 0, got {self.activity}")

    # -- hooks -------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: Context) -> None:
        picked = select(model, self.include, self.exclude)
        self.targets_ = [m for _, m in picked]
        self.ks_ = [round((1 - self.layer_sparsity(n)) * m.weight.numel()) for n, m in picked]
        for m in self.targets_:
            set_mask_(m, torch.ones_like(m.weight))
        self._admm_start()
        self.pruned_ = False
        self.recorder_ = SpikeRecorder(model) if self.activity > 0 else None

    def loss(
        self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor, ctx: Context
    ) -> torch.Tensor:
        """Coupling term in the ADMM phase (0 after the hard prune) + λ_act · spike rate."""
        total = zero_loss(out_seq)
        if not self.pruned_ and self.rho > 0:
            total = total + self.coupling_loss()
        if self.recorder_ is not None:
            total = total + spike_rate_penalty(self.recorder_.take(), self.activity)
        return total

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """Hard prune once ``ctx.progress ≥ admm_until``; before that, Z/U steps on schedule."""
        if not self.pruned_:
            self._admm_advance(ctx, self.hard_prune)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Hard prune if the stage ended inside the ADMM phase; drop the spike hooks. The Session
        bakes the masks (W ⊙ M) into plain weights afterwards."""
        if not self.pruned_:
            self.hard_prune()
        if self.recorder_ is not None:
            self.recorder_.remove()
            self.recorder_ = None
        return model

    # -- the ADMM pieces ---------------------------------------------------------------------
    def layer_sparsity(self, name: str) -> float:
        """p_l of the layer called ``name``: the value of the one regex of a mapping it fullmatches,
        else the mapping's ``"default"`` (order-free: YAML may reorder the keys)."""
        if not isinstance(self.sparsity, dict):
            return float(self.sparsity)
        hits = [k for k in self.sparsity if k != "default" and re.fullmatch(k, name)]
        if len(hits) > 1:
            raise ValueError(f"sparsity: layer {name!r} matches several patterns: {hits}")
        if not hits and "default" not in self.sparsity:
            raise ValueError(f"sparsity: no pattern matches layer {name!r}; add a 'default'")
        return float(self.sparsity[hits[0] if hits else "default"])

    @torch.no_grad()
    def hard_prune(self) -> None:
        """W ← Proj(W) and M ← [kept]: the mask is fixed for the rest of the stage."""
        ws = [m.weight.detach() for m in self.targets_]
        for m, keep in zip(self.targets_, self._keep(ws), strict=True):
            m.parametrizations.weight.original.mul_(keep)
            set_mask_(m, keep.to(m.weight.dtype))
        self.pruned_ = True

    def _project(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Proj_S of the targets' tensors (``ADMMLoop``'s Z-step): each where its keep-mask is."""
        return [t * k for t, k in zip(tensors, self._keep(tensors), strict=True)]

    def _keep(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Bool keep-masks of the projection of each tensor (per layer, or one global top-k)."""
        if self.scope == "layer":
            return [topk_mask(t.abs(), k) for t, k in zip(tensors, self.ks_, strict=True)]
        flat = torch.cat([t.abs().flatten() for t in tensors])  # [Σ n_l]
        keep = topk_mask(flat, round((1 - self.sparsity) * flat.numel()))
        return [
            k.view_as(t)
            for k, t in zip(keep.split([t.numel() for t in tensors]), tensors, strict=True)
        ]


def _check_sparsity(sparsity: object) -> None:
    values = sparsity.values() if isinstance(sparsity, dict) else [sparsity]
    if isinstance(sparsity, dict):
        if not sparsity:
            raise ValueError("sparsity: a per-layer mapping needs at least one pattern")
        for pattern in sparsity:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(f"sparsity: invalid regex {pattern!r}: {e}") from None
    for p in values:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {p!r}")
