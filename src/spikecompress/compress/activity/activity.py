"""Activity regularisation as a method of its own: a spike-rate penalty added to the task loss.

Deng et al., "Comprehensive SNN Compression Using ADMM Optimization and Activity
Regularization", IEEE TNNLS 2021 (arXiv 1911.00822): "activity regularization to reduce the spike
events for fewer active operations", usable alone or with ADMM pruning / quantization. The form
used here (spec §4.1, [R]: the paper body is not verified):

    L = L_task + λ · Σ_l w_l · h(r_l) / Σ_l w_l

over the spiking layers l, r_l the layer's rate (``per``: "neuron_step", spikes per neuron per
time step, batch-averaged; "sample", spikes of the layer per sample), h(r) = r, or the hinge
relu(r − r*) with a ``target`` r* (0 once a layer is at or below it), and w_l the product of
``layer_weights`` (regex → weight, default 1) and ``weighting``:

    "uniform"   w_l = 1:          the mean of the layers' rates, each layer the same
    "neurons"   w_l = N_l:        the neurons of one sample of the layer; with "neuron_step" this
                                  is Deng's (1/(N·T)) Σ_{n,t} S_n[t], the mean rate of all neurons
    "fanout"    w_l = fanout_l:   the synapses one spike of the layer drives (conv C_out·k²/s²,
                                  linear out_features, summed over every layer the spikes reach;
                                  ``penalty.layer_fanouts``); Σ_l fanout_l·r_l / Σ_l fanout_l, so
                                  the penalty tracks synaptic operations (with per "sample": the
                                  SOPs per sample / Σ_l fanout_l, pooling and borders ignored)

Gradients reach the weights through the neurons' surrogate derivative. The spikes come from
forward hooks (``penalty.SpikeRecorder``, the same code as ADMM pruning's ``activity`` knob,
which is this penalty with weighting "uniform", unnormalised: λ · Σ_l r_l); the hooks are removed
at finalize, so the model leaves plain. A "loss" method: it composes with every other family
and changes no weight at finalize.

Defaults: weight λ = 2 with per "neuron_step" and uniform weighting (the established default
of ``penalty.py``; "neurons" did the same on digits, "fanout" cuts fewer spikes, as it should:
it aims at SOPs). Measured at one thread, fine-tuning a trained model with and without the term
(mean over dense seeds; accuracy vs the same fine-tune at λ = 0; spikes per test sample):

    λ              0.25    0.5     1       2       4
    digits         −17 %   −23 %   −28 %   −32 %   −37 %     spikes (1297 at λ = 0)
                   −0.5    −0.6    −0.7    −0.6    −0.7      pp accuracy (99.54 % at λ = 0)
    MNIST-1D               −5 %    −9 %    −16 %   −27 %*    spikes (348 at λ = 0)
                           +0.7    +0.6    +1.4    +0.6*     pp accuracy (92.65 % at λ = 0)

digits: conv_net [16, 32, 64], T = 4, 12 epochs at Adam 5e-3 then 6 at 1e-3, seeds 1-3;
MNIST-1D: conv1d_net [32, 32, 32], T = 4, 30 epochs at 2e-3 then 10 at 1e-3, seeds 0-1 (*: seed
0 only, against its own λ = 0; λ = 8 there: −41 %, −0.3 pp). λ = 2 is the largest cut whose
every single run stayed within about 1 pp of its λ = 0 fine-tune (worst digits run −1.1 pp at
λ = 1 and 2, −1.4 pp at λ = 4); on a 2-epoch fine-tune of the same CNN trained 4 epochs
it cut 11 % of the spikes for −0.3 pp.

Not included: the membrane variant λ_u · mean(relu(H − V_th)²) (spec §4.1, not from Deng): the
neurons keep H only detached (``record_v``), so it would need a differentiable membrane path.
Recipe: ``{name: activity, weight: 2.0}`` (``recipes/activity.yaml``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.activity.penalty import (
    NORMALISATIONS,
    SpikeRecorder,
    layer_fanouts,
    neurons_per_sample,
    spike_rate_penalty,
)
from spikecompress.compress.method import Context, zero_loss
from spikecompress.measurement.spikes import is_neuron

WEIGHTINGS = ("uniform", "neurons", "fanout")


@dataclass
class ActivityPenalty:
    """λ · the weighted mean spike rate of the spiking layers (see the module docstring).

    ``weight``: λ (0 turns the term off). ``per``: "neuron_step" or "sample". ``weighting``:
    "uniform", "neurons" or "fanout". ``layer_weights``: {regex: w ≥ 0}; a layer takes the
    weight of the one pattern its name fullmatches (two matches: an error), else the key
    ``"default"``, else 1; 0 leaves a layer out. ``target``: the rate r* (in the units of
    ``per``) below which a layer is not penalised (None: off).
    Distributed: a loss term on each rank's own spikes (the layer weights come from the structure):
    nothing of its own to agree."""

    NAME: ClassVar[str] = "activity"
    PAPER: ClassVar[str] = "Deng et al., IEEE TNNLS 2021 (arXiv 1911.00822)"
    KIND: ClassVar[str] = "loss"

    weight: float = 2.0
    per: str = "neuron_step"
    weighting: str = "uniform"
    layer_weights: dict[str, float] = field(default_factory=dict)
    target: float | None = None
    weights_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    recorder_: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight!r}")
        self.weight = float(self.weight)
        if self.per not in NORMALISATIONS:
            raise ValueError(f"per must be one of {list(NORMALISATIONS)}, got {self.per!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {list(WEIGHTINGS)}, got "
                             f"{self.weighting!r}")
        _check_layer_weights(self.layer_weights)
        if self.target is not None:
            t = self.target
            top = 1.0 if self.per == "neuron_step" else float("inf")
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < top:
                unit = "[0, 1) (a rate per neuron per step)" if top == 1 else ">= 0"
                raise ValueError(f"target must be a number in {unit} or null, got {t!r}")
            self.target = float(t)

    # -- hooks -------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: Context) -> None:
        names = [n for n, m in model.named_modules() if is_neuron(m)]
        if not names:
            raise ValueError("activity: the model has no spiking neuron to regularise")
        chosen = {n: self.layer_weight(n) for n in names}
        unused = [p for p in self.layer_weights if p != "default"
                  and not any(re.fullmatch(p, n) for n in names)]
        if unused:
            raise ValueError(f"layer_weights: pattern {unused[0]!r} matches no spiking layer "
                             f"(they are {', '.join(names)})")
        if self.weighting == "fanout":
            fan = layer_fanouts(model)
            chosen = {n: w * fan[n] for n, w in chosen.items()}
        if not any(chosen.values()):
            raise ValueError(f"layer_weights: every spiking layer has weight 0 "
                             f"(weighting {self.weighting!r})")
        self.weights_ = chosen
        self.recorder_ = SpikeRecorder(model) if self.weight > 0 else None

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        """λ · Σ_l w_l · h(r_l) / Σ_l w_l over this forward's spikes."""
        if self.recorder_ is None:
            return zero_loss(out_seq)
        spikes = self.recorder_.take()
        return self.penalty(spikes).to(out_seq.dtype)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Drop the spike hooks; the weights are left as trained."""
        if self.recorder_ is not None:
            self.recorder_.remove()
            self.recorder_ = None
        return model

    # -- the pieces --------------------------------------------------------------------------
    def penalty(self, spikes: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """The penalty of recorded ``spikes`` (name → [T, B, ...] tensors) with this method's
        options and the layer weights fixed at attach (``weights_``)."""
        weights = dict(self.weights_)
        if self.weighting == "neurons":
            counts = neurons_per_sample(spikes)
            weights = {n: w * counts.get(n, 0) for n, w in weights.items()}
        return spike_rate_penalty(spikes, self.weight, self.per, layer_weights=weights,
                                  target=self.target, normalise=True)

    def layer_weight(self, name: str) -> float:
        """The ``layer_weights`` entry of the layer ``name`` (see the class docstring)."""
        hits = [k for k in self.layer_weights if k != "default" and re.fullmatch(k, name)]
        if len(hits) > 1:
            raise ValueError(f"layer_weights: layer {name!r} matches several patterns: {hits}")
        if hits:
            return float(self.layer_weights[hits[0]])
        return float(self.layer_weights.get("default", 1.0))


def _check_layer_weights(layer_weights: object) -> None:
    if not isinstance(layer_weights, dict):
        raise ValueError(f"layer_weights must be a mapping regex -> weight, got "
                         f"{layer_weights!r}")
    for pattern, w in layer_weights.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"layer_weights: invalid regex {pattern!r}: {e}") from None
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                or w < 0:
            raise ValueError(f"layer_weights: the weight of {pattern!r} must be a finite "
                             f"number >= 0, got {w!r}")
