"""Calibration of an ANN → SNN conversion: each ReLU's positive activations and their percentile
(the activation scale λ a neuron's threshold stands for), shared by ``coding.tsc``,
``coding.ttfs`` and ``temporal.ann_conversion``.

A method keeps its calibration state in its own fields (fields ending in ``_`` are checkpointed
with the stage): ``values_`` (ReLU name → positive activations of training-mode forwards),
``evals_`` (of eval-mode forwards) and ``batches_`` (``"<name>"`` / ``"eval:<name>"`` → batches
kept so far), which ``collector`` fills.
"""

from __future__ import annotations

import torch
from torch import nn


def check_knobs(percentile: object, samples: object, seed: object) -> None:
    """One-line ValueError for a ``percentile`` outside (0, 100], ``samples`` not an integer >= 1
    or ``seed`` not an integer >= 0."""
    if isinstance(percentile, bool) or not isinstance(percentile, int | float) or (
            not 0 < percentile <= 100):
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def ann_twin_spec(model: nn.Module, method: str) -> dict:
    """The spec of ``model``, refused in one line unless it is an ANN twin (``spiking: false``)."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict) or spec.get("spiking", True):
        raise ValueError(f"{method} needs the ANN twin: a model built with spiking: false")
    return spec


def generator(seed: int, index: int, done: int) -> torch.Generator:
    """The generator of ReLU ``index``'s subsample after ``done`` batches: a generator per batch,
    seeded by what came before, so that a resumed stage draws the same."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index * 65_537 + done)


def positive(output: torch.Tensor) -> torch.Tensor:
    """[N] the positive values of ``output``, as float32 on the CPU."""
    pos = output.detach().flatten()
    return pos[pos > 0].float().cpu()


def collector(method, name: str, index: int, presample: bool = False):
    """A forward hook on ReLU ``name`` (the ``index``-th) that keeps a uniform random subsample of
    at most ``method.samples`` of its positive activations (``method.seed``: the subsampling) in
    ``method.values_`` (training-mode forwards) or ``method.evals_`` (eval-mode ones), counting
    the batches in ``method.batches_``. ``presample``: subsample each batch to ``samples`` before
    merging it with what was kept."""

    def hook(module, inputs, output) -> None:
        pool, key = (method.values_, name) if module.training else (method.evals_, f"eval:{name}")
        done = int(method.batches_.get(key, 0))
        gen = generator(method.seed, index, done)
        pos = positive(output)  # [N] positive activations of this batch
        if presample and pos.numel() > method.samples:
            pos = pos[torch.randperm(pos.numel(), generator=gen)[: method.samples]]
        old = pool.get(name)
        kept = pos if old is None else torch.cat([old, pos])
        if kept.numel() > method.samples:  # a uniform subsample of everything seen
            kept = kept[torch.randperm(kept.numel(), generator=gen)[: method.samples]]
        pool[name] = kept
        method.batches_[key] = torch.tensor(done + 1)

    return hook


def percentiles(values: dict[str, torch.Tensor], percentile: float) -> dict[str, float]:
    """ReLU name → the ``percentile`` of its kept positive activations (1.0 when none was
    positive)."""
    return {name: float(torch.quantile(v.double(), percentile / 100)) if v.numel() else 1.0
            for name, v in values.items()}
