"""Calibration of an ANN → SNN conversion: each ReLU's positive activations and their percentile
(the activation scale λ a neuron's threshold stands for), shared by ``coding.tsc``,
``coding.ttfs`` and ``temporal.ann_conversion``.

A method keeps its calibration state in its own fields (fields ending in ``_`` are checkpointed
with the stage): ``values_`` (ReLU name → positive activations of training-mode forwards),
``evals_`` (of eval-mode forwards) and ``batches_`` (``"<name>"`` / ``"eval:<name>"`` → batches
kept so far), which ``collector`` fills, and the batches not kept yet in ``_pending`` (a
distributed run keeps them at ``reduce_``, ``merge_pending_``: every rank's, in one order).
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


def collector(method, name: str, index: int, ctx, presample: bool = False):
    """A forward hook on ReLU ``name`` (the ``index``-th) that keeps a uniform random subsample of
    at most ``method.samples`` of its positive activations (``method.seed``: the subsampling) in
    ``method.values_`` (training-mode forwards) or ``method.evals_`` (eval-mode ones), counting
    the batches in ``method.batches_``. ``presample``: subsample each batch to ``samples`` before
    merging it with what was kept.

    A batch waits in ``method._pending`` with the generator of its subsample, seeded by its place
    in the pool's stream (the j-th batch of rank r since the last merge is batch
    done + j · world size + r), until ``merge_pending_`` keeps it: at once in a one-process run
    (``ctx.comm``), at the method's ``reduce_`` in a distributed one, where it is presampled
    whatever ``presample`` says (it waits, and travels to every rank, until then)."""

    def hook(module, inputs, output) -> None:
        comm = ctx.comm
        key = name if module.training else f"eval:{name}"
        waiting = method._pending.setdefault(key, [])
        done = int(method.batches_.get(key, 0))
        gen = generator(method.seed, index, done + len(waiting) * comm.world_size + comm.rank)
        pos = positive(output)  # [N] positive activations of this batch
        if (presample or comm.distributed) and pos.numel() > method.samples:
            pos = pos[torch.randperm(pos.numel(), generator=gen)[: method.samples]]
        waiting.append((pos, gen.get_state()))
        if not comm.distributed:
            merge_pending_(method, comm)

    return hook


def merge_pending_(method, comm) -> None:
    """Keep the pending batches of every rank (``collector``) on every rank, in one order: round
    j holds the j-th batch of ranks 0, 1, … since the last merge."""
    every = comm.gather_object(method._pending)
    method._pending = {}
    for key in sorted(set().union(*every)):
        queues = [pending.get(key, []) for pending in every]
        rounds = max(len(q) for q in queues)
        for j in range(rounds):
            for q in queues:
                if j < len(q):
                    _keep(method, key, *q[j])
        done = int(method.batches_.get(key, 0))
        method.batches_[key] = torch.tensor(done + rounds * comm.world_size)


def _keep(method, key: str, pos: torch.Tensor, state: torch.Tensor) -> None:
    """Merge one batch's positive activations into the pool of ``key``: a uniform subsample of
    everything seen, drawn with the batch's generator (its ``state``)."""
    pool, name = (method.evals_, key[len("eval:"):]) if key.startswith("eval:") else (
        method.values_, key)
    gen = torch.Generator()
    gen.set_state(state)
    old = pool.get(name)
    kept = pos if old is None else torch.cat([old, pos])
    if kept.numel() > method.samples:
        kept = kept[torch.randperm(kept.numel(), generator=gen)[: method.samples]]
    pool[name] = kept


def percentiles(values: dict[str, torch.Tensor], percentile: float) -> dict[str, float]:
    """ReLU name → the ``percentile`` of its kept positive activations (1.0 when none was
    positive)."""
    return {name: float(torch.quantile(v.double(), percentile / 100)) if v.numel() else 1.0
            for name, v in values.items()}
