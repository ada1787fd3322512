"""SOPs-aware unstructured weight + neuron pruning (Shi, Ding, Hao, Yu, ICLR 2024, OpenReview
eoSeaK4QJo; official code ``xyshi2000/Unstructured-Pruning``).

Every selected conv / linear weight gets a learnable logit tensor α_w of its shape, and every
selected neuron layer a logit tensor α_n of one sample's shape ([C, H, W], [C, L] or [F]: single
neurons, shared by all samples and time steps). The stage is split at ``search`` (a fraction of
its optimizer steps, S = max(1, round(search · total_steps))):

* search (steps t < S): soft masks, W_eff = W · σ(β α_w) and spikes_out = spikes · σ(β α_n) (after
  the neuron: the membrane runs as usual), weights and logits trained jointly, loss += λ · E with
  E = Σ_layers e_w · Σ σ(β α_w) + Σ_neurons e_n · σ(β α_n) (``sops_geometry``: e_w output
  positions per weight, e_n fan-out per neuron), the relaxed number of synaptic connections;
* fine-tune (t ≥ S): hard masks H(α) = 1[α > 0] (``where(α > 0, ·, 0)``), logits frozen (their
  gradients are None, so the optimizer skips them), no penalty;
* finalize: weights W · H(α_w) (baked by the Session), neurons ``set_spike_mask_(neuron, α_n > 0)``.

β(t) = β₀ · (β_T/β₀)^(min(t, S)/S) per optimizer step (official ``TemperatureScheduler`` with
T0 = 0 and Tmax = the search steps): β(0) = β₀ = 5, β(S) = β_T = 1000.

Knobs (ours; the paper's only knob is λ). ``sparsity`` (default 0.8): the fraction of the
selected weights the finalized model has removed; ``neuron_sparsity`` (default None): the same
for the selected neurons; ``penalty``: the paper's fixed λ for both terms instead, as the official
code (with a target: an error). A target is reached per group (weights with λ_w, neurons with
λ_n; loss += λ_w E_w + λ_n E_n) in three parts:

* calibration (a quantile at start): step 1 runs with λ = 0, so the logits' gradients g are the
  task's alone; as ∂(λE)/∂α = λ e β σ'(βα), the penalty outweighs the task's pull on a logit
  exactly when λ > r = −g / (e β σ'(βα)): λ₀ = the target-quantile of r over the group;
* controller (during the search): after every step log λ += GAIN · (target − #(α ≤ 0)/n, what
  the hard masks would remove now), GAIN = 1, λ within λ₀ · 10^±3 (anti-windup: once β has
  frozen the logits a persistent miss would drive λ without bound). It keeps the soft masks near
  the target so that they end close to the hard masks they turn into (digits CNN: the hard count
  overshoots 0.8 to ~0.87 in a dozen steps, Adam lagging ~10 steps, then λ falls back). The first
  Adam step moves every logit from 0 by ±lr, so about half are ≤ 0 after it: lower targets are
  reached by the adjustment alone (λ stays at its floor);
* exact adjustment (when the masks turn hard at S, or at finalize if the stage ends first): the
  hard masks keep exactly round((1 − target)·n) entries, the largest logits (weights already 0
  and neurons already masked drop first; ties to the lower index): a kept logit ≤ 0 moves just
  above 0, a dropped one > 0 to 0. Fine-tuning then trains the final masks.

Neuron masks come with ``penalty`` or a ``neuron_sparsity``: one λ for both, set by a weight
target, removed 82 % of the neurons of the digits CNN ([16, 32, 64], 2 epochs) at 80 % of its
weights (accuracy 0.889 vs 0.964 without neuron masks, dense 0.972; ``neuron_sparsity=0.2``:
0.961). ``search`` defaults to the official 0.8 (800 + 200 epochs) with ``penalty`` and to 0.5
with a target: a short fine-tune of a trained net needs the longer hard phase (0.964 vs 0.947).
The penalty weighs weights by e_w, so a high target empties the layers applied at many positions
first (digits CNN at 0.9: 98 % of both hidden convs, 17 % of the read-out; accuracy 0.83).

Choices where the paper and the official code leave room:
* α starts at 0 (σ = 0.5), as the official ``--mask-init-factor 0 0 0 0``: every masked weight and
  spike is halved when search starts. The official code does not compensate (it trains from
  scratch); neither do we. BN after a conv absorbs the factor in training mode; the read-out
  layer's logits shrink until the weights adapt.
* Default selection, as the official CIFAR net: weight masks on every conv and linear layer
  (``include`` / ``exclude``: ``select`` regexes); neuron masks on the feature extractor's neurons
  but the first layer's (``neuron_include`` / ``neuron_exclude``, ``re.fullmatch`` on module
  names): on our conv nets every hidden conv layer's neurons, on an MLP every hidden layer but the
  first. Neurons whose spikes reach no conv / linear layer are skipped (e_n = 0: no SOPs to save).
* Neuron masks live in a child module ``sops_gate`` of each neuron applied by a forward hook on
  the neuron's multi-step ``forward`` (not in ``single_step``) until finalize.
* ``penalty`` (λ, paper mode): the official default 1e-11 is for CIFAR nets of ~10⁹ connections
  per sample; ours have ~10⁵ (MNIST-1D conv1d_net width 64: 1.9 · 10⁵): λ must be sized to our
  per-weight saliencies (a mask is pushed up while −∂L/∂W_eff · W exceeds λ · e_w). Measured on
  that net (30-epoch stage, Adam lr 1e-3 cosine, from a 60-epoch dense net at 96.8 %, seed 0,
  mask_lr_scale 10, search 0.8): λ = 1e-6, 3e-6, 5e-6, 1e-5, 3e-5 → 23.9, 13.6, 10.2, 6.5, 3.0 %
  connectivity at 95.3, 92.8, 92.8, 89.0, 76.0 % accuracy (SOPs per sample 43.5k dense → 4.1k
  at 5e-6). The target mode finds λ itself.
* ``mask_lr_scale`` (default 10): the logits' learning rate relative to the stage's (the official
  ``prune_lr``, equal to the weights' lr on CIFAR; the group has weight decay 0 as the official
  default). Official runs let α travel lr × steps ≈ 17 (DVS) to 250 (CIFAR) logit units; a
  30-epoch MNIST-1D stage (1.9k steps at lr 1e-3) gives ~1, so the logits stay where σ(βα) is
  soft, BN (scale-invariant) lets the penalty shrink a whole layer's masks together, and the net
  collapses when they turn hard (measured with 1.0 and λ = 3e-6: every neuron of
  ``features.1`` pruned, 9.8 % accuracy). 10 gives DVS-like travel (92.8 % at the same λ).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context, zero_loss
from spikecompress.compress.prune.masks import topk_mask
from spikecompress.compress.prune.sops_gates import (
    NeuronGate,
    WeightGate,
    _Gate,
    _positive,
    beta_at,
)
from spikecompress.compress.prune.sops_geometry import NEURON_TYPES, probe_geometry
from spikecompress.compress.targets import select
from spikecompress.snn.neuron import set_spike_mask_

log = logging.getLogger("spikecompress.sops_aware")

GATE = "sops_gate"  # the child module of a gated neuron
DEFAULT_SPARSITY = 0.8
# log λ moves by GAIN × (target − current weight sparsity) per search step: a 10-point miss
# changes λ by 10 % a step, fast enough for a 40-step search, slow against Adam's ~10-step lag
GAIN = 1.0
WINDUP = 1e3  # λ stays within λ₀ / WINDUP … λ₀ · WINDUP
LAMBDA_FLOOR = 1e-12  # λ₀ when the task alone already pushes the target fraction down


def _gate_spikes(neuron: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
    return getattr(neuron, GATE)(out)


@dataclass
class SOPsAwarePruning:
    """Learn unstructured weight and neuron masks under a connection-count (SOPs) penalty.

    Targets ``sparsity`` (weights) and ``neuron_sparsity`` (None: no neuron masks) reached by
    controlling λ, or the paper's fixed λ ``penalty``. Loss += λ · E during the first ``search``
    fraction of the stage (soft masks, β from ``beta[0]`` to ``beta[1]``), then hard masks while
    the weights fine-tune; the module docstring has the formulas, the calibration and the choices.
    Distributed: the logits are the method's own parameters (``param_groups``), whose gradients the
    loop averages over the ranks, so λ's calibration and controller read the same values on every
    rank; the rest follows the weights: it agrees by itself.
    """

    NAME: ClassVar[str] = "sops_aware"
    PAPER: ClassVar[str] = "Shi et al., ICLR 2024"
    KIND: ClassVar[str] = "masks"

    sparsity: float | None = None
    penalty: float | None = None
    neuron_sparsity: float | None = None
    beta: list[float] = field(default_factory=lambda: [5.0, 1000.0])
    search: float | None = None
    mask_lr_scale: float = 10.0
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    neuron_include: list[str] = field(default_factory=lambda: [r"features\..*"])
    neuron_exclude: list[str] = field(default_factory=lambda: [r"features\.(0|stem)\.act"])
    weights_: list = field(default_factory=list, init=False, repr=False, compare=False)
    neurons_: list = field(default_factory=list, init=False, repr=False, compare=False)
    hooks_: list = field(default_factory=list, init=False, repr=False, compare=False)
    layers_: list = field(default_factory=list, init=False, repr=False, compare=False)
    lam_: float | None = field(default=None, init=False, repr=False, compare=False)
    lam_neurons_: float | None = field(default=None, init=False, repr=False, compare=False)
    lam_start_: float | None = field(default=None, init=False, repr=False, compare=False)
    lam_neurons_start_: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.penalty is not None:
            raise ValueError("set sparsity or penalty, not both")
        if self.neuron_sparsity is not None and self.penalty is not None:
            raise ValueError("set neuron_sparsity or penalty, not both")
        if self.sparsity is None and self.penalty is None:
            self.sparsity = DEFAULT_SPARSITY
        if self.penalty is not None and not self.penalty >= 0:
            raise ValueError(f"penalty must be >= 0, got {self.penalty}")
        for name in ("sparsity", "neuron_sparsity"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 0 <= value < 1):
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        beta = list(self.beta) if isinstance(self.beta, (list, tuple)) else None
        if beta is None or len(beta) != 2 or not 0 < beta[0] <= beta[1]:
            raise ValueError(f"beta must be [beta_0, beta_T] with 0 < beta_0 <= beta_T, "
                             f"got {self.beta}")
        self.beta = [float(b) for b in beta]
        if self.search is None:  # the official 800 + 200 epochs; a target fine-tunes longer
            self.search = 0.8 if self.penalty is not None else 0.5
        if not 0 < self.search <= 1:
            raise ValueError(f"search must be in (0, 1], got {self.search}")
        if not self.mask_lr_scale > 0:
            raise ValueError(f"mask_lr_scale must be > 0, got {self.mask_lr_scale}")

    # -- hooks -----------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: Context) -> None:
        geo = probe_geometry(model)
        self.weights_, self.neurons_, self.hooks_, self.layers_ = [], [], [], []
        # penalty mode: the paper's one fixed λ; sparsity mode: None until step 1 calibrates it
        self.lam_ = self.lam_neurons_ = self.penalty
        self.lam_start_ = self.lam_neurons_start_ = self.penalty
        for name, m in select(model, self.include, self.exclude):
            if m not in geo.weight_cost:
                raise ValueError(f"sops_aware: {name} is not used by the model's forward")
            w = m.weight
            gate = WeightGate(tuple(w.shape), geo.weight_cost[m], self.beta[0], w.device)
            parametrize.register_parametrization(m, "weight", gate)
            self.weights_.append(gate)
            self.layers_.append(m)
        if self.penalty is None and self.neuron_sparsity is None:
            return  # a weight target alone: neuron masks would prune with no target of their own
        for name, n in self._selected_neurons(model):
            cost = geo.neuron_cost.get(n, 0.0)
            if cost == 0:
                log.info("sops_aware: %s feeds no conv / linear layer; no neuron mask", name)
                continue
            gate = NeuronGate(geo.neuron_shape[n], cost, self.beta[0], n.v_threshold.device)
            n.add_module(GATE, gate)
            self.hooks_.append(n.register_forward_hook(_gate_spikes))
            self.neurons_.append((n, gate))

    def param_groups(self, model: nn.Module, ctx: Context) -> list[dict]:
        alphas = [g.alpha for g in self.gates()]
        return [{"params": alphas, "lr_scale": self.mask_lr_scale, "weight_decay": 0.0}]

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        """λ_w · E_w + λ_n · E_n during the search (one λ = ``penalty`` in the paper's mode)."""
        if ctx.step >= self.search_steps(ctx):
            return zero_loss(out_seq)
        terms = [(lam, gates) for lam, gates in self._terms() if lam]
        if not terms:
            return zero_loss(out_seq)
        total = sum(lam * _energy(gates) for lam, gates in terms)  # in fp32, then cast
        return total.to(out_seq.dtype)

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        search = self.search_steps(ctx)
        if ctx.step <= search:  # the controllers run during the search only
            self.lam_, self.lam_start_ = _control(
                self.weights_, self.sparsity, self.lam_, self.lam_start_)
            self.lam_neurons_, self.lam_neurons_start_ = _control(
                self._neuron_gates(), self.neuron_sparsity, self.lam_neurons_,
                self.lam_neurons_start_)
        beta, hard = beta_at(ctx.step, search, self.beta), ctx.step >= search
        if hard and not self._is_hard():
            self._hit_targets_()  # the masks freeze now: fine-tuning trains the final ones
        for gate in self.gates():
            gate.set_phase(beta, hard)

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        if not self._is_hard():
            self._hit_targets_()  # the stage ended inside the search
        for gate in self.weights_:  # the Session's bake_ then keeps where(α > 0, W, 0)
            gate.set_phase(self.beta[1], True)
        for h in self.hooks_:
            h.remove()
        for neuron, gate in self.neurons_:
            keep = gate.alpha > 0
            if neuron.spike_mask is not None:
                keep = keep & (neuron.spike_mask != 0)
            delattr(neuron, GATE)
            set_spike_mask_(neuron, keep)
        self.weights_, self.neurons_, self.hooks_, self.layers_ = [], [], [], []
        return model

    # -- helpers ---------------------------------------------------------------------------------
    def gates(self) -> list[_Gate]:
        """Every gate: the weight gates in layer order, then the neuron gates."""
        return [*self.weights_, *self._neuron_gates()]

    def energy(self) -> torch.Tensor:
        """E = Σ e · Σ σ(β α) over all gates: the relaxed connections per sample and step."""
        return _energy(self.gates())

    def search_steps(self, ctx: Context) -> int:
        """S = max(1, round(search · total_steps)): the optimizer steps of the search phase."""
        if ctx.total_steps is None:
            raise RuntimeError("sops_aware schedules β over the stage's steps: call "
                               "session.bind(optimizer, lr_at, total_steps) before training")
        return max(1, round(self.search * ctx.total_steps))

    def kept(self) -> dict[str, float]:
        """Fractions of weight and neuron logits > 0 (what the hard masks keep)."""
        return {"weights": _positive(self.weights_), "neurons": _positive(self._neuron_gates())}

    def _neuron_gates(self) -> list[_Gate]:
        return [g for _, g in self.neurons_]

    def _terms(self) -> list[tuple[float | None, list[_Gate]]]:
        return [(self.lam_, self.weights_), (self.lam_neurons_, self._neuron_gates())]

    def _is_hard(self) -> bool:
        return bool(self.weights_[0].hard) if self.weights_ else True

    @torch.no_grad()
    def _hit_targets_(self) -> None:
        """Sparsity mode: the hard masks remove exactly the targets' counts (``_keep_top_``);
        weights that are already 0 and neurons already masked are removed first."""
        if self.sparsity is not None:
            live = [_original(m) != 0 for m in self.layers_]
            _keep_top_(self.weights_, self.sparsity, live)
        if self.neuron_sparsity is not None and self.neurons_:
            live = [torch.ones_like(g.alpha, dtype=torch.bool) if n.spike_mask is None
                    else n.spike_mask != 0 for n, g in self.neurons_]
            _keep_top_(self._neuron_gates(), self.neuron_sparsity, live)

    def _selected_neurons(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        try:
            return select(model, self.neuron_include, self.neuron_exclude, types=NEURON_TYPES)
        except ValueError as e:
            if not str(e).startswith("no layer selected"):
                raise
            log.info("sops_aware: no neuron layer selected; weight masks only")
            return []


# -- the λ controller (sparsity mode) --------------------------------------------------------------
def _energy(gates: list[_Gate]) -> torch.Tensor:
    """Σ e · Σ σ(β α) over ``gates`` (fp32; 0 without gates)."""
    zero = torch.zeros((), device=gates[0].alpha.device) if gates else torch.zeros(())
    return sum((g.cost * g.soft().sum() for g in gates), zero)


def _control(
    gates: list[_Gate], target: float | None, lam: float | None, lam0: float | None
) -> tuple[float | None, float | None]:
    """One controller step for the λ of ``gates``, returns (λ, λ₀): the first call calibrates
    λ₀ (``_calibrate``), later ones move log λ by GAIN × (target − the fraction the hard masks
    remove now), within λ₀ · WINDUP^±1 (once β has frozen the logits, a miss the masks cannot
    follow any more would otherwise wind λ up without bound)."""
    if target is None or not gates:
        return lam, lam0
    if lam is None:
        lam0 = _calibrate(gates, target)
        return lam0, lam0
    lam = lam * math.exp(GAIN * (target - (1.0 - _positive(gates))))
    return min(max(lam, lam0 / WINDUP), lam0 * WINDUP), lam0


@torch.no_grad()
def _calibrate(gates: list[_Gate], target: float) -> float | None:
    """λ₀ = the ``target``-quantile of r = −g / (e · β σ'(β α)) over the gates' logits, g their
    gradient of the first step (taken with λ = 0, so g is the task's alone): as ∂(λE)/∂α =
    λ e β σ'(β α), the penalty then outweighs the task's pull on that fraction of the logits.
    None (try again next step) when the logits have no gradient."""
    if any(g.alpha.grad is None for g in gates):
        log.warning("sops_aware: no mask gradient after the step; λ is calibrated next step")
        return None
    ratios = []
    for g in gates:
        s = g.soft()  # ≈ σ(0) after the first step: α has moved by one Adam step only
        slope = (g.cost * g.beta * s * (1 - s)).flatten()
        movable = slope > 0  # a saturated σ (late calibration) is beyond the penalty's reach
        ratios.append((-g.alpha.grad.flatten()[movable] / slope[movable]).float().cpu())
    r = torch.cat(ratios)
    if r.numel() == 0:
        return LAMBDA_FLOOR
    k = min(r.numel(), max(1, math.ceil(target * r.numel())))
    return max(float(torch.kthvalue(r, k).values), LAMBDA_FLOOR)


@torch.no_grad()
def _keep_top_(gates: list[_Gate], sparsity: float, live: list[torch.Tensor]) -> None:
    """Make the hard masks of ``gates`` keep exactly round((1 − sparsity)·n) entries, the largest
    logits among the ``live`` ones (ties: lower index): a kept logit ≤ 0 moves just above 0, a
    dropped logit > 0 to 0; every other logit keeps its value."""
    alphas = [g.alpha.detach() for g in gates]
    score = torch.cat([torch.where(z, a, -math.inf).flatten()
                       for a, z in zip(alphas, live, strict=True)])
    keep = topk_mask(score, round((1 - sparsity) * score.numel()))
    for a, k in zip(alphas, keep.split([a.numel() for a in alphas]), strict=True):
        k = k.view_as(a)
        a.copy_(torch.where(k, a.clamp_min(torch.finfo(a.dtype).tiny), a.clamp_max(0.0)))


def _original(m: nn.Module) -> torch.Tensor:
    """The trained tensor under ``m.weight``'s parametrization."""
    return m.parametrizations.weight.original
