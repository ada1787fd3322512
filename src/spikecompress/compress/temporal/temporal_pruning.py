"""Progressive temporal pruning (Chowdhury, Rathi & Roy, ECCV 2022).

The paper trains an SNN at T steps, then retrains it at fewer steps, each stage initialised from the
previous one, down to T = 1, with the firing threshold and the leak of every layer trained as
parameters. Training straight at T = 1 fails (spikes vanish layer by layer); the gradual path keeps
enough activity for the thresholds to adapt. The authors' code (IIR-SNN) goes 5 → 3 → 1: one scalar
threshold and leak per layer (optionally per neuron), the leak starting at 1.0 and clamped to ≤ 1
after every optimizer step, soft reset, direct input.

In spikecompress the T of each stage is the recipe's ``Stage.T`` (the pipeline re-encodes the data
and records T in the artifact); this method is what every stage of that descent attaches: it
turns each selected neuron's ``v_threshold`` into an ``nn.Parameter`` and gives it a learnable
``leak`` (the charge ``H[t] = leak · V[t-1] + a · X[t]``, initialised from the neuron's own decay:
1 − 1/τ for LIF, 1 for IF, 1 − sigmoid(w) for PLIF), clamps both after every step (``leak`` to
[0, ``leak_max``], the threshold to >= ``min_threshold``) and, at finalize, stores them back as
buffers: a plain model whose learned values travel in the artifact. A neuron built per channel
(``neuron_params.per_channel``) learns one threshold and leak per channel, else one per layer.
``recipes/temporal_pruning.yaml`` is the descent 5 → 3 → 1; ``ann_conversion`` gives the
authors' hybrid initialisation (an ANN converted at percentile thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.targets import select
from spikecompress.snn.neuron import NEURONS


def neuron_decay(neuron: nn.Module) -> torch.Tensor:
    """The decay k of a neuron's charge now (its ``leak`` when it has one), detached."""
    if neuron.leak is not None:
        return neuron.leak.detach().clone()
    k, _ = neuron._decay_gain()
    return torch.as_tensor(k).detach().clone().to(neuron.v_threshold.dtype)


def as_parameter_(module: nn.Module, name: str, value: torch.Tensor) -> nn.Parameter:
    """Make ``module.<name>`` a trainable parameter holding ``value`` (state_dict key unchanged)."""
    if name in module._buffers:
        del module._buffers[name]
    param = nn.Parameter(value.detach().clone())
    setattr(module, name, param)
    return param


def as_buffer_(module: nn.Module, name: str) -> None:
    """Turn the parameter ``module.<name>`` back into a buffer of the same value."""
    value = getattr(module, name).detach().clone()
    if name in module._parameters:
        del module._parameters[name]
    module.register_buffer(name, value)


@dataclass
class TemporalPruning:
    """Learnable per-layer threshold and leak for training an SNN at fewer time steps.

    Attach it to every stage of a descent in T (``Stage.T``: 5, 3, 1); each stage starts from the
    previous stage's model. ``learn_threshold`` / ``learn_leak`` switch either off;
    ``leak_max``: the clamp of the leak (1 as in the paper: no growth of the membrane);
    ``min_threshold``: keeps thresholds positive; ``include`` / ``exclude``: regexes on neuron
    names (``targets.select``).
    Distributed: thresholds and leaks are model parameters trained through DDP (the clamps follow
    them): they agree by themselves.
    """

    NAME: ClassVar[str] = "temporal_pruning"
    PAPER: ClassVar[str] = "Chowdhury, Rathi & Roy, ECCV 2022 (temporal pruning)"
    KIND: ClassVar[str] = "time"

    learn_threshold: bool = True
    learn_leak: bool = True
    leak_max: float = 1.0
    min_threshold: float = 1e-3
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    neurons_: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("learn_threshold", "learn_leak"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not 0 < self.leak_max <= 1:
            raise ValueError(f"leak_max must be in (0, 1], got {self.leak_max}")
        if not self.min_threshold > 0:
            raise ValueError(f"min_threshold must be > 0, got {self.min_threshold}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        picked = select(model, self.include, self.exclude, types=tuple(NEURONS.values()))
        self.neurons_ = [m for _, m in picked]
        for m in self.neurons_:
            if self.learn_leak:
                leak = neuron_decay(m).expand_as(m.v_threshold).clamp(0, self.leak_max)
                as_parameter_(m, "leak", leak)
            if self.learn_threshold:
                as_parameter_(m, "v_threshold", m.v_threshold)

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: Context) -> None:
        for m in self.neurons_:
            if self.learn_leak:
                m.leak.clamp_(0, self.leak_max)
            if self.learn_threshold:
                m.v_threshold.clamp_(min=self.min_threshold)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        for m in self.neurons_:
            for name in ("leak", "v_threshold"):
                if name in m._parameters:
                    as_buffer_(m, name)
        return model
