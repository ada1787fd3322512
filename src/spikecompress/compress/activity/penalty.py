"""The spike-rate penalty (activity regularisation) and the recorder that feeds it.

    recorder = SpikeRecorder(model)          # forward hooks on every neuron (``is_neuron``)
    out_seq = model(x_seq)                   # spikes of this forward are kept, with their graph
    loss = task + spike_rate_penalty(recorder.take(), weight=λ_act)
    recorder.remove()                        # before finalize: the model must be hook-free

Normalisation (``per``), for spikes s_l of neuron layer l, shape [T, B, ...] (all calls of that
layer in one forward together):

    "neuron_step" (default):  P = λ_act · Σ_l  Σ s_l / numel(s_l)
                              mean spikes per neuron per time step (batch-averaged), in [0, 1]
                              per layer; every layer weighs the same whatever its width.
    "sample":                 P = λ_act · Σ_l  Σ s_l / B
                              spikes per sample over all T steps: the total spike count that
                              synaptic operations scale with; wide layers weigh more.

Deng et al. (TNNLS 2021) add "λ_act · the average number of spikes" to the loss; their exact
normalisation is not verified here [R], so the default is the per-neuron-per-step rate (a
dimensionless number that does not change with T, B or width) and ``"sample"`` the count.
Gradients reach the weights through the neurons' surrogate derivative of s = Θ(h − V_th).

Options (the ``activity`` method, ``compress/activity/activity.py``, uses them; ADMM's
``activity`` knob calls this function with none of them: the plain sum above):

    layer_weights {name: w_l}   P = λ_act · Σ_l w_l · h(r_l)           (absent layers: w_l = 1)
    normalise=True              P = λ_act · Σ_l w_l · h(r_l) / Σ_l w_l  (a weighted mean)
    target r*                   h(r) = relu(r − r*) per layer (0 at or below the target), else r

``layer_fanouts(model)`` gives the per-neuron fan-out of every neuron layer (the SOPs-aware
geometry probe, ``compress/prune/sops_geometry.py``): with w_l = fanout_l and ``normalise`` the
penalty is Σ_l fanout_l · r_l / Σ_l fanout_l, the spike rate weighted by the synaptic operations
a spike of each layer causes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from spikecompress.compress.prune.sops_geometry import probe_geometry
from spikecompress.measurement.spikes import is_neuron

NORMALISATIONS = ("neuron_step", "sample")


def layer_rates(
    spikes: Mapping[str, Sequence[torch.Tensor]], per: str = "neuron_step"
) -> dict[str, torch.Tensor]:
    """r_l of every neuron layer of ``spikes`` (name → that layer's output spike tensors
    [T, B, ...] of one forward; layers without a tensor are left out), normalised by ``per``
    (module docstring); differentiable. Raises ValueError when no layer holds a tensor."""
    if per not in NORMALISATIONS:
        raise ValueError(f"per must be one of {list(NORMALISATIONS)}, got {per!r}")
    layers = {name: list(seq) for name, seq in spikes.items() if len(seq)}
    if not layers:
        raise ValueError(
            "no spikes recorded: run a forward with autograd on after attaching the "
            "SpikeRecorder (and give the model spiking neurons)"
        )
    rates = {}
    for name, seq in layers.items():
        count = sum(s.float().sum() for s in seq)
        if per == "neuron_step":
            norm = sum(s.numel() for s in seq)
        else:
            norm = seq[0].shape[1] if seq[0].dim() > 1 else 1  # B of [T, B, ...]
        rates[name] = count / norm
    return rates


def neurons_per_sample(spikes: Mapping[str, Sequence[torch.Tensor]]) -> dict[str, int]:
    """Neurons of one sample in each layer of ``spikes`` (the numel of one step of one sample of
    its first tensor [T, B, ...])."""
    return {name: math.prod(seq[0].shape[2:]) for name, seq in spikes.items() if len(seq)}


def layer_fanouts(model: nn.Module, sample_shape: Sequence[int] | None = None) -> dict[str, float]:
    """Name → fan-out of every neuron layer of ``model``: the synapses one spike of one of its
    neurons drives per step, summed over every conv / linear layer the spikes reach (C_out/groups ·
    Πk / Πstride for a conv, borders ignored; out_features for a linear layer; 0 for a layer whose
    spikes reach none). One probe forward of a zero input of ``sample_shape`` (default
    ``model.in_shape``), as SOPs-aware pruning's geometry (``compress/prune/sops_geometry.py``)."""
    if sample_shape is None and getattr(model, "in_shape", None) is None:
        raise ValueError("fan-out weighting needs model.in_shape (one input sample's shape, e.g. "
                         "(C, H, W)) for its probe forward; set it on the model")
    geo = probe_geometry(model, None if sample_shape is None else tuple(sample_shape))
    return {name: float(geo.neuron_cost.get(m, 0.0))
            for name, m in model.named_modules() if is_neuron(m)}


def spike_rate_penalty(
    spikes: Mapping[str, Sequence[torch.Tensor]],
    weight: float = 1.0,
    per: str = "neuron_step",
    layer_weights: Mapping[str, float] | None = None,
    target: float | None = None,
    normalise: bool = False,
) -> torch.Tensor:
    """``weight · Σ_l w_l · h(r_l)`` over the neuron layers of ``spikes`` (name → that layer's
    output spike tensors [T, B, ...] from one forward), divided by ``Σ_l w_l`` when ``normalise``;
    ``r_l`` as in the module docstring for ``per``, ``w_l`` = ``layer_weights[name]`` (1 for a
    layer it does not name), h(r) = relu(r − target) with a ``target``, else r.

    A pure function of its inputs (differentiable through the spikes). Raises ValueError when
    ``spikes`` holds no tensor (the forward ran without autograd, or no neuron was hooked).
    With no options: ``weight · Σ_l r_l`` (ADMM's ``activity``).
    """
    rates = layer_rates(spikes, per)
    weights = layer_weights or {}
    total = next(iter(rates.values())).new_zeros(())
    norm = 0.0
    for name, r in rates.items():
        w = float(weights.get(name, 1.0))
        if w == 0:
            continue
        h = r if target is None else torch.relu(r - target)
        total = total + (h if w == 1 else w * h)
        norm += w
    if normalise:
        if norm <= 0:
            raise ValueError("layer_weights: every recorded spiking layer has weight 0")
        total = total / norm
    return weight * total


class SpikeRecorder:
    """Forward hooks that keep the output spikes of every neuron of ``model`` (``is_neuron``) for
    the latest forward of ``model`` run with autograd on (a pre-hook on ``model`` clears them, so
    memory never exceeds one forward's spikes; forwards under ``no_grad`` record nothing).

    ``take()`` returns {neuron name: [spike tensors]} and empties the store; ``remove()`` drops
    every hook. Raises ValueError when the model has no neuron.
    """

    def __init__(self, model: nn.Module) -> None:
        self.spikes: dict[str, list[torch.Tensor]] = {}
        neurons = [(name, m) for name, m in model.named_modules() if is_neuron(m)]
        if not neurons:
            raise ValueError("SpikeRecorder: the model has no spiking neuron to record")
        self._handles = [model.register_forward_pre_hook(self._clear)]
        self._handles += [m.register_forward_hook(self._hook(name, m)) for name, m in neurons]

    def _clear(self, module: nn.Module, inputs: tuple) -> None:
        self.spikes = {}

    def _hook(self, name: str, neuron: nn.Module):
        def hook(module: nn.Module, inputs: tuple, out_seq: torch.Tensor) -> None:
            # ``module is neuron``: a deep copy of the model (a distillation teacher) carries
            # this closure too, and must not record into this recorder
            if module is neuron and torch.is_grad_enabled():
                self.spikes.setdefault(name, []).append(out_seq)

        return hook

    def __deepcopy__(self, memo: dict) -> SpikeRecorder:
        """A deep copy of the model (a distillation teacher) copies its hooks' bound methods, so
        this recorder too: the copy is inert (no hooks, nothing recorded), and copying never
        touches the recorded spikes (non-leaf tensors, which cannot be deep-copied)."""
        twin = object.__new__(type(self))
        twin.spikes, twin._handles = {}, []
        return twin

    def take(self) -> dict[str, list[torch.Tensor]]:
        """The recorded spikes (name → list of [T, B, ...] tensors); the store is emptied."""
        out, self.spikes = self.spikes, {}
        return out

    def remove(self) -> None:
        """Remove every hook this recorder registered (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles, self.spikes = [], {}
