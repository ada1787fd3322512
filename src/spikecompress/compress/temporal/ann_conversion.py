"""ANN → SNN conversion at percentile thresholds: the hybrid initialisation of temporal pruning.

Chowdhury et al. initialise their SNNs from a trained ANN (ECCV 2022, IJCNN 2021): every ReLU
becomes an integrate-and-fire neuron with soft reset whose threshold is a high percentile of that
layer's activations (IIR-SNN: the 90th on one batch for T = 5; the IJCNN 2021 spatio-temporal
paper: the 99.9th for T = 100), the weights are copied, and the SNN is then trained with
surrogate gradients (here: the ``temporal_pruning`` stages). The idea is Rueckauer et al.'s
(2017) robust normalisation: a neuron whose threshold λ is the activation that ReLU rarely
exceeds fires at a rate ≈ ReLU(x) / λ.

A unit spike at that rate stands for an activation of λ · rate, so every weight layer that reads
the spikes of a neuron has its weights multiplied by that neuron's λ (Rueckauer et al.'s
W_l · λ_{l−1} / λ_l and b_l / λ_l, written with the threshold at λ_l instead of 1): its output,
and so the BN after it and the next neuron's input current, is then the ANN's at the rates'
average. Without it the next layer sees its input divided by λ while the BN shift (the bias)
is not, which a network without biases absorbs (ReLU is positively homogeneous) but a network with
BN does not: a 3-layer digits CNN then falls to chance at any T. Spikes that are added before a
weight layer reads them (SEW-ResNet's ADD connections) must stand for the same λ: their neurons
share the largest of their percentiles. A neuron whose input adds spikes without a weight layer in
between (the identity shortcut of a Spiking ResNet basic block) cannot be matched this way and is
refused. Which layer reads which neurons is traced once, at ``attach``, on a zero input.

Our choices (the code's exact statistic was not readable): the percentile is taken over the
*positive* outputs of each ReLU (the zeros of silent units would drag it down), from a uniform
random subsample of at most ``samples`` values per layer collected over the stage's training
batches (a stage's evaluations on the test set do not count; eval-mode forwards count only when
no training-mode forward came, a calibration by hand that leaves BN's statistics alone); BN
is kept as it is (the SNN has the same BN layers as its ANN twin) instead of being folded into
the weights. Max pooling of spikes is not max pooling of rates: build the ANN with average
pooling. Use it in a stage of 1 epoch at a negligible learning rate on the ANN twin
(``model: {spiking: false}``), like the ``pca_width`` analysis stage; finalize returns the
spiking model (``spiking: true``, ``neuron``) with the ANN's weights (scaled as above) and those
thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from spikecompress.compress.coding.calibration import (
    ann_twin_spec,
    collector,
    merge_pending_,
    percentiles,
)
from spikecompress.compress.method import Context
from spikecompress.models import from_spec

NEURON_CHOICES = ("if", "lif")

# the weight layers: their weights scale with the threshold of the neurons they read
SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class ANNConversion:
    """Convert the ANN twin to an SNN with thresholds at the ``percentile`` of each layer's
    positive activations. ``neuron``: "if" (the papers) or "lif" (τ ``tau``), soft reset
    (``soft_reset``, the papers) or hard reset to 0; ``samples``: activations kept per layer;
    ``seed``: the subsampling. Distributed: each rank's batches wait until ``reduce_``, which
    keeps every rank's in one order on every rank (``calibration.merge_pending_``); the readers
    are traced on a zero input."""

    NAME: ClassVar[str] = "ann_conversion"
    PAPER: ClassVar[str] = "Rueckauer et al. 2017; hybrid init of Chowdhury et al. (IJCNN 2021)"
    KIND: ClassVar[str] = "channels"

    percentile: float = 99.9
    neuron: str = "if"
    tau: float = 2.0
    soft_reset: bool = True
    samples: int = 100_000
    seed: int = 0
    # ReLU name → kept positive activations of training-mode forwards; evals_: of eval-mode ones;
    # batches_: "<name>" / "eval:<name>" → batches kept so far (seeds the next subsample)
    values_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    evals_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    batches_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    hooks_: list = field(default_factory=list, init=False, repr=False, compare=False)
    readers_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _pending: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.neuron not in NEURON_CHOICES:
            raise ValueError(f"neuron must be one of {list(NEURON_CHOICES)}, got {self.neuron!r}")
        if not self.tau > 1:
            raise ValueError(f"tau must be > 1, got {self.tau}")
        if not isinstance(self.soft_reset, bool):
            raise ValueError(f"soft_reset must be true or false, got {self.soft_reset!r}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        ann_twin_spec(model, self.NAME)
        relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
        if not relus:
            raise ValueError("ann_conversion: the model has no ReLU to convert")
        self.readers_ = spike_readers(model)
        self.hooks_ = [m.register_forward_hook(collector(self, n, i, ctx, presample=True))
                       for i, (n, m) in enumerate(relus)]

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """Keep every rank's batches since the last step, in one order on every rank."""
        merge_pending_(self, ctx.comm)

    def activations(self) -> dict[str, torch.Tensor]:
        """ReLU name → the positive activations kept: those of training-mode forwards when there
        were any (a stage's evaluations on the test set then do not count), else of eval-mode
        forwards (a calibration pass by hand that leaves BN's running statistics alone)."""
        return {**self.evals_, **self.values_}

    def percentiles(self) -> dict[str, float]:
        """ReLU name → the ``percentile`` of its positive activations seen so far (1.0 if none
        was positive)."""
        return percentiles(self.activations(), self.percentile)

    def thresholds(self) -> dict[str, float]:
        """ReLU name → its neuron's threshold: its ``percentile``, or the largest percentile of
        the neurons whose spikes are added to its own before a weight layer reads them."""
        pct = self.percentiles()
        out = dict(pct)
        for group in _groups(self.readers_.values()):
            if all(n in pct for n in group):
                top = max(pct[n] for n in group)
                out.update(dict.fromkeys(group, top))
        return out

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:

        for h in self.hooks_:
            h.remove()
        missing = [n for n, m in model.named_modules()
                   if isinstance(m, nn.ReLU) and n not in self.activations()]
        if missing:
            raise ValueError(f"ann_conversion saw no activations of {missing[:3]}: give its stage "
                             "at least one epoch (a negligible lr keeps the ANN as it is)")
        params = {"v_reset": None if self.soft_reset else 0.0}
        if self.neuron == "lif":
            params.update(tau=self.tau, decay_input=False)
        snn = from_spec({**model.spec, "spiking": True, "neuron": self.neuron,
                         "neuron_params": params})
        result = snn.load_state_dict(model.state_dict(), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"ann_conversion: ANN tensors {result.unexpected_keys[:3]} have no "
                             "place in the SNN")
        modules = dict(snn.named_modules())
        thresholds = self.thresholds()
        with torch.no_grad():
            for name, v_th in thresholds.items():
                modules[name].v_threshold.fill_(v_th)
            for layer, sources in self.readers_.items():
                if sources:  # its input spikes stand for v_th · spike (one v_th per group)
                    modules[layer].weight.mul_(thresholds[sources[0]])
        return snn.to(next(model.parameters()).device)


def spike_readers(model: nn.Module) -> dict[str, list[str]]:
    """Weight layer name → the ReLUs whose outputs reach its input through no other weight layer
    (through pooling, flattening, reshaping and additions), from one forward of a zero input in
    eval mode (the model's state is left as it was).

    Raises ValueError when such outputs reach a ReLU's input or the model's output without a
    weight layer in between: no weight scaling can then make the spikes stand for activations.
    """
    in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        raise ValueError("ann_conversion needs a model of spikecompress.models (with in_shape)")
    param = next(model.parameters())
    x_seq = torch.zeros(1, 1, *in_shape, dtype=param.dtype, device=param.device)
    trace = _Provenance()
    readers: dict[str, list[str]] = {}
    refused: list[str] = []

    def before(name: str, relu: bool):
        def hook(module, inputs) -> None:
            sources = sorted(trace.of(inputs))
            if relu and sources:
                refused.append(f"{name} (adds the spikes of {sources[:2]})")
            elif not relu:
                readers[name] = sources
        return hook

    def after(name: str, relu: bool):
        def hook(module, inputs, output) -> None:
            trace.mark(output, frozenset({name}) if relu else frozenset())
        return hook

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.ReLU, *SYNAPSES)):
            relu = isinstance(m, nn.ReLU)
            handles += [m.register_forward_pre_hook(before(name, relu)),
                        m.register_forward_hook(after(name, relu))]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # BN running statistics stay as they are
        with torch.no_grad(), trace:
            out = model(x_seq)
        left = sorted(trace.of(out))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    if left:
        refused.append(f"the output (the spikes of {left[:2]} reach it without a weight layer)")
    if refused:
        raise ValueError(f"ann_conversion cannot convert {refused[0]}: the spikes of a neuron "
                         "must reach the next neuron through a weight layer")
    return readers


class _Provenance(TorchFunctionMode):
    """Tags every tensor computed from a marked tensor with the union of its inputs' tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, frozenset[str]] = {}
        self.alive: list[torch.Tensor] = []  # tagged tensors stay alive: their ids stay theirs

    def of(self, value: object) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for t in _tensors(value):
            found |= self.tags.get(id(t), frozenset())
        return found

    def mark(self, value: object, tags: frozenset[str]) -> None:
        for t in _tensors(value):
            self.alive.append(t)
            self.tags[id(t)] = tags

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tags = self.of((args, kwargs))
        if tags:
            self.mark(out, tags)
        return out


def _tensors(value: object):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _groups(source_lists) -> list[set[str]]:
    """Merge the ReLU names read together (by one layer) into disjoint groups."""
    groups: list[set[str]] = []
    for sources in source_lists:
        merged = set(sources)
        rest = []
        for g in groups:
            if g & merged:
                merged |= g
            else:
                rest.append(g)
        groups = [*rest, merged] if merged else rest
    return groups
