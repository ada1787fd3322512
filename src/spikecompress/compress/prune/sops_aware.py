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

Choices where the spec leaves room:
* α starts at 0 (σ = 0.5), as the official ``--mask-init-factor 0 0 0 0``: every masked weight and
  spike is halved when search starts. The official code does not compensate (it trains from
  scratch); neither do we. BN after a conv absorbs the factor in training mode; the read-out
  layer's logits shrink until the weights adapt.
* Default selection, as the official CIFAR net: weight masks on every conv and linear layer,
  the first and the read-out included (``include`` / ``exclude``: ``select`` regexes); neuron
  masks on the feature extractor's neurons except the first layer's and none in the classifier
  (``neuron_include = [features\\..*]``, ``neuron_exclude = [features\\.(0|stem)\\.act]``, matched
  with ``re.fullmatch`` on module names). On our conv nets this is "every hidden conv layer's
  neurons"; on an MLP (whose features are linear) it is every hidden layer but the first. Selected
  neurons whose spikes reach no conv / linear layer are skipped (e_n = 0: no SOPs to save).
* Neuron masks live in a child module ``sops_gate`` of each neuron applied by a forward hook on
  the neuron's multi-step ``forward`` (not in ``single_step``) until finalize.
* ``penalty`` (λ): the official default 1e-11 is for CIFAR nets of ~10⁹ connections per sample;
  our nets have ~10⁵ (MNIST-1D conv1d_net width 64: 1.9 · 10⁵). Both terms of ∂L/∂α_w share the
  factor β σ'(βα), so a mask is pushed up while its saliency −∂L/∂W_eff · W exceeds λ · e_w: λ
  must be sized to our per-weight saliencies. Measured on that net (30-epoch stage, Adam lr 1e-3
  cosine, from a 60-epoch dense net at 96.8 %, seed 0, mask_lr_scale 10): λ = 1e-6, 3e-6, 5e-6,
  1e-5, 3e-5 → 23.9, 13.6, 10.2, 6.5, 3.0 % connectivity at 95.3, 92.8, 92.8, 89.0, 76.0 %
  accuracy (SOPs per sample 43.5k dense → 4.1k at 5e-6). The default 5e-6 is that ~10 % point;
  for other models it is an estimate to tune (width 128: 1e-6 already gives 8.0 % at 94.3 %).
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
from spikecompress.compress.prune.sops_geometry import NEURON_TYPES, probe_geometry
from spikecompress.compress.targets import select
from spikecompress.snn.neuron import set_spike_mask_

log = logging.getLogger("spikecompress.sops_aware")

GATE = "sops_gate"  # the child module of a gated neuron


def beta_at(step: int, search_steps: int, beta: list[float]) -> float:
    """β(t) = β₀ · (β_T/β₀)^(min(t, S)/S): exponential from β₀ at t = 0 to β_T at t = S."""
    b0, b_end = beta
    frac = min(max(step, 0), search_steps) / search_steps
    return b0 * math.exp(math.log(b_end / b0) * frac)


class _Gate(nn.Module):
    """Logits α (a parameter, 0 at start), temperature β and the phase (buffers, so they travel
    with ``model.state_dict``), and the geometry constant ``cost`` (e_w or e_n)."""

    def __init__(self, shape: tuple[int, ...], cost: float, beta: float, device) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(shape, device=device))
        self.register_buffer("beta", torch.tensor(float(beta), device=device))
        self.register_buffer("hard", torch.tensor(False, device=device))
        self.cost = float(cost)

    def soft(self) -> torch.Tensor:
        """σ(β α), the relaxed mask."""
        return torch.sigmoid(self.beta * self.alpha)

    def set_phase(self, beta: float, hard: bool) -> None:
        self.beta.fill_(beta)
        self.hard.fill_(hard)
        if hard:
            self.alpha.grad = None  # frozen: optimizers skip a parameter without gradient


class WeightGate(_Gate):
    """Parametrization W ↦ W · σ(β α) (search) or ``where(α > 0, W, 0)`` (fine-tune)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if bool(self.hard):
            return torch.where(self.alpha > 0, w, torch.zeros((), dtype=w.dtype, device=w.device))
        return w * self.soft().to(w.dtype)


class NeuronGate(_Gate):
    """Spikes [T, B, *shape] ↦ spikes · σ(β α) (search) or spikes · 1[α > 0] (fine-tune)."""

    def forward(self, s_seq: torch.Tensor) -> torch.Tensor:
        mask = (self.alpha > 0) if bool(self.hard) else self.soft()
        return s_seq * mask.to(s_seq.dtype)


def _positive(gates: list[_Gate]) -> float:
    """Fraction of the gates' logits that are > 0 (0 without gates)."""
    total = sum(g.alpha.numel() for g in gates)
    return sum(int((g.alpha > 0).sum()) for g in gates) / total if total else 0.0


def _gate_spikes(neuron: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
    return getattr(neuron, GATE)(out)


@dataclass
class SOPsAwarePruning:
    """Learn unstructured weight and neuron masks under a connection-count (SOPs) penalty.

    Loss += ``penalty`` · E during the first ``search`` fraction of the stage (soft masks, β from
    ``beta[0]`` to ``beta[1]``), then hard masks while the weights fine-tune; see the module
    docstring for the formulas, the defaults and the choices made.
    """

    NAME: ClassVar[str] = "sops_aware"
    PAPER: ClassVar[str] = "Shi et al., ICLR 2024"
    KIND: ClassVar[str] = "masks"

    penalty: float = 5e-6
    beta: list[float] = field(default_factory=lambda: [5.0, 1000.0])
    search: float = 0.8
    mask_lr_scale: float = 10.0
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    neuron_include: list[str] = field(default_factory=lambda: [r"features\..*"])
    neuron_exclude: list[str] = field(default_factory=lambda: [r"features\.(0|stem)\.act"])
    weights_: list = field(default_factory=list, init=False, repr=False, compare=False)
    neurons_: list = field(default_factory=list, init=False, repr=False, compare=False)
    hooks_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.penalty >= 0:
            raise ValueError(f"penalty must be >= 0, got {self.penalty}")
        beta = list(self.beta) if isinstance(self.beta, (list, tuple)) else None
        if beta is None or len(beta) != 2 or not 0 < beta[0] <= beta[1]:
            raise ValueError(f"beta must be [beta_0, beta_T] with 0 < beta_0 <= beta_T, "
                             f"got {self.beta}")
        self.beta = [float(b) for b in beta]
        if not 0 < self.search <= 1:
            raise ValueError(f"search must be in (0, 1], got {self.search}")
        if not self.mask_lr_scale > 0:
            raise ValueError(f"mask_lr_scale must be > 0, got {self.mask_lr_scale}")

    # -- hooks -----------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: Context) -> None:
        geo = probe_geometry(model)
        self.weights_, self.neurons_, self.hooks_ = [], [], []
        for name, m in select(model, self.include, self.exclude):
            if m not in geo.weight_cost:
                raise ValueError(f"sops_aware: {name} is not used by the model's forward")
            w = m.weight
            gate = WeightGate(tuple(w.shape), geo.weight_cost[m], self.beta[0], w.device)
            parametrize.register_parametrization(m, "weight", gate)
            self.weights_.append(gate)
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
        if ctx.step >= self.search_steps(ctx) or self.penalty == 0:
            return zero_loss(out_seq)
        return (self.penalty * self.energy()).to(out_seq.dtype)  # λ·E in fp32, then cast

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        search = self.search_steps(ctx)
        beta, hard = beta_at(ctx.step, search, self.beta), ctx.step >= search
        for gate in self.gates():
            gate.set_phase(beta, hard)

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
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
        self.weights_, self.neurons_, self.hooks_ = [], [], []
        return model

    # -- helpers ---------------------------------------------------------------------------------
    def gates(self) -> list[_Gate]:
        """Every gate: the weight gates in layer order, then the neuron gates."""
        return [*self.weights_, *(g for _, g in self.neurons_)]

    def energy(self) -> torch.Tensor:
        """E = Σ e · Σ σ(β α) over all gates: the relaxed connections per sample and step."""
        return sum((g.cost * g.soft().sum() for g in self.gates()),
                   torch.zeros((), device=self.gates()[0].alpha.device))

    def search_steps(self, ctx: Context) -> int:
        """S = max(1, round(search · total_steps)): the optimizer steps of the search phase."""
        if ctx.total_steps is None:
            raise RuntimeError("sops_aware schedules β over the stage's steps: call "
                               "session.bind(optimizer, lr_at, total_steps) before training")
        return max(1, round(self.search * ctx.total_steps))

    def kept(self) -> dict[str, float]:
        """Fractions of weight and neuron logits > 0 (what the hard masks keep)."""
        return {"weights": _positive(self.weights_),
                "neurons": _positive([g for _, g in self.neurons_])}

    def _selected_neurons(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        try:
            return select(model, self.neuron_include, self.neuron_exclude, types=NEURON_TYPES)
        except ValueError as e:
            if not str(e).startswith("no layer selected"):
                raise
            log.info("sops_aware: no neuron layer selected; weight masks only")
            return []
