"""AutoSNN's search machinery (Na et al., ICML 2022, arXiv 2201.12738; the method is
``search.autosnn``): the spike-aware fitness and ranking, the authors' evolutionary search, the
held-out split by sample hash and the evaluation of one path of the supernet (``search.space``).

* **Held-out search set** (``sample_keys``): the method sends a sample to its search set iff the
  BLAKE2b hash of its encoded input x_seq[:, b] falls below ``search_fraction`` (0.2, the authors'
  80 / 20 split of the training set) — a property of the sample, so it never trains the supernet
  in any epoch whatever the shuffle. With a stochastic encoding (Poisson) the split is per
  presentation instead: an image can land on both sides.
* **Evolutionary search** (``evolve``, run at the method's ``finalize``), the authors' algorithm
  with smaller defaults: a random population of ``population`` unseen architectures; each
  iteration keeps the ``top_k`` best of the previous top-k and the new population by fitness, then
  builds the next population from ``mutations`` mutants (a top-k parent, each slot re-drawn among
  the other candidates with probability ``mutation_prob``), ``crossovers`` one-point crossovers of
  two top-k parents, and random architectures to fill it; an architecture is evaluated once
  (``iterations`` rounds; the search stops early when the space is exhausted). Draws come from
  ``random.Random(seed)``: the search is deterministic. The paper: 20 iterations, population 20 =
  10 mutations + 10 crossovers (+ random fill), top-10, p 0.2; ours half of it: 10 iterations,
  population 10 = 5 + 5, top-5, p 0.2 — at most 100 evaluations, most of the default
  125-architecture space (a larger ``widths`` or a longer candidate list makes the search
  selective).
* **Fitness** F(A) = Acc(A) · (Spikes(A) / S_ref)^λ, λ = ``fitness_lambda`` (−0.08, the paper).
  Acc: accuracy on the held-out search set (time-mean logits), the supernet in eval mode (its BN
  running statistics, as the authors'; no recalibration). Spikes: total spikes per sample over
  every spiking neuron of the path (stem and cells; the read-out has none) and every time step
  (``measurement.spikes.SpikeMonitor``), floored at 1 so a silent network cannot win on λ < 0.
  S_ref: ``spikes_ref``, or (None) the median Spikes of the first population. A constant S_ref
  scales every fitness by the same factor, so it changes the reported fitness, not the ranking
  (the authors use 110 000 for CIFAR-10 at T = 8). Ties keep the earlier-evaluated architecture.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from spikecompress.compress.search.space import Arch, Supernet
from spikecompress.measurement.spikes import SpikeMonitor
from spikecompress.snn.layers import reset_state

PAPER_LAMBDA = -0.08
_EVAL_BATCH = 256
_RANDOM_TRIES = 50  # random draws per wanted architecture before enumerating the unseen ones
_ENUMERATE_UP_TO = 100_000  # spaces this small are enumerated when random draws keep repeating


# -- fitness and ranking -------------------------------------------------------------------------
def fitness(accuracy: float, spikes: float, lam: float, spikes_ref: float) -> float:
    """F = accuracy · (max(spikes, 1) / spikes_ref)^λ (spikes per sample; λ ≤ 0 favours fewer)."""
    return accuracy * (max(spikes, 1.0) / spikes_ref) ** lam


def rank(records: Sequence[tuple[float, float]], lam: float, spikes_ref: float) -> list[int]:
    """Indices of ``records`` [(accuracy, spikes per sample)] by fitness, best first; ties keep
    their order (stable). λ = 0 ranks by accuracy alone."""
    scores = [fitness(a, s, lam, spikes_ref) for a, s in records]
    return sorted(range(len(records)), key=lambda i: -scores[i])


@dataclass
class SearchResult:
    """What ``evolve`` found: the ``best`` architecture, ``spikes_ref`` (S_ref as used), every
    evaluated architecture with its (accuracy, spikes per sample) in evaluation order
    (``evaluated``), and each iteration's top-k as [cells, accuracy, spikes, fitness] rows."""

    best: Arch
    spikes_ref: float
    evaluated: dict[Arch, tuple[float, float]]
    history: list[list[list]]

    def summary(self, lam: float) -> dict:
        acc, spikes = self.evaluated[self.best]
        return {"arch": list(self.best), "accuracy": acc, "spikes_per_sample": spikes,
                "fitness": fitness(acc, spikes, lam, self.spikes_ref),
                "spikes_ref": self.spikes_ref, "evaluated": len(self.evaluated),
                "history": self.history}


def evolve(
    evaluate: Callable[[Arch], tuple[float, float]], candidates: Sequence[str], slots: int, *,
    iterations: int = 10, population: int = 10, mutations: int = 5, mutation_prob: float = 0.2,
    crossovers: int = 5, top_k: int = 5, lam: float = PAPER_LAMBDA,
    spikes_ref: float | None = None, seed: int = 0,
) -> SearchResult:
    """The authors' evolutionary search over ``slots`` slots of ``candidates``; ``evaluate(arch)``
    gives (accuracy, spikes per sample). Deterministic for a given ``seed`` (and ``evaluate``)."""
    rng = random.Random(seed)
    candidates = list(candidates)
    space = len(candidates) ** slots
    evaluated: dict[Arch, tuple[float, float]] = {}
    pending: set[Arch] = set()

    def take(arch: Arch, into: list[Arch]) -> None:
        if arch not in evaluated and arch not in pending:
            pending.add(arch)
            into.append(arch)

    def random_pool(n: int) -> list[Arch]:
        new: list[Arch] = []
        for _ in range(_RANDOM_TRIES * max(n, 0)):
            if len(new) >= n or len(evaluated) + len(pending) >= space:
                return new
            take(tuple(rng.choice(candidates) for _ in range(slots)), new)
        if len(new) < n and space <= _ENUMERATE_UP_TO:  # a nearly exhausted space
            rest = [a for a in itertools.product(candidates, repeat=slots)
                    if a not in evaluated and a not in pending]
            rng.shuffle(rest)
            for arch in rest[: n - len(new)]:
                take(arch, new)
        return new

    def mutation(parents: list[Arch], n: int) -> list[Arch]:
        new: list[Arch] = []
        for _ in range(3 * n):
            if len(new) >= n or len(candidates) < 2:
                break
            child = tuple(rng.choice([o for o in candidates if o != c])
                          if rng.random() < mutation_prob else c for c in rng.choice(parents))
            take(child, new)
        return new

    def crossover(parents: list[Arch], n: int) -> list[Arch]:
        new: list[Arch] = []
        for _ in range(3 * n):
            if len(new) >= n or len(parents) < 2 or slots < 2:
                break
            a, b = rng.sample(parents, 2)
            cut = rng.randrange(1, slots)
            take(a[:cut] + b[cut:], new)
        return new

    def run(pool: list[Arch]) -> None:
        for arch in pool:
            evaluated[arch] = tuple(float(v) for v in evaluate(arch))
            pending.discard(arch)

    pool = random_pool(population)
    run(pool)
    if spikes_ref is None:
        spikes_ref = max(1.0, statistics.median(evaluated[a][1] for a in pool))
    top: list[Arch] = []
    history: list[list[list]] = []
    for it in range(iterations):
        cands = top + pool
        top = [cands[i] for i in rank([evaluated[a] for a in cands], lam, spikes_ref)[:top_k]]
        history.append([[list(a), *evaluated[a], fitness(*evaluated[a], lam, spikes_ref)]
                        for a in top])
        if it == iterations - 1:
            break
        pool = mutation(top, mutations)
        pool += crossover(top, crossovers)
        pool += random_pool(population - len(pool))
        if not pool:  # every architecture of the space has been evaluated
            break
        run(pool)
    return SearchResult(top[0], float(spikes_ref), evaluated, history)


# -- the held-out split and candidate evaluation ------------------------------------------------
def sample_keys(x_seq: torch.Tensor) -> list[int]:
    """A 63-bit BLAKE2b key of each sample's encoded input x_seq[:, b] (all T steps), [T, B, ...]
    → B ints: the same input gives the same key in any batch, epoch or process."""
    per = x_seq.detach().to("cpu", torch.float32).transpose(0, 1).contiguous().numpy()
    return [int.from_bytes(hashlib.blake2b(s.tobytes(), digest_size=8).digest(), "little") >> 1
            for s in per]


@torch.no_grad()
def evaluate_arch(
    net: Supernet, arch: Sequence[str], x: torch.Tensor, y: torch.Tensor, batch: int = _EVAL_BATCH,
) -> tuple[float, float]:
    """(accuracy, spikes per sample) of ``arch`` on samples ``x`` [N, T, ...] with labels ``y``
    [N]: the supernet in eval mode; spikes of every neuron of the path at every step."""
    was, before = net.training, net.arch
    net.set_arch(arch)
    net.eval()
    device = next(net.parameters()).device
    correct = 0
    try:
        with SpikeMonitor(net) as monitor:
            for i in range(0, len(y), batch):
                x_seq = x[i:i + batch].to(device).transpose(0, 1)  # [T, b, ...]
                out = net(x_seq)
                reset_state(net)
                correct += int((out.mean(0).argmax(1) == y[i:i + batch].to(device)).sum())
    finally:
        net.train(was)
        net.set_arch(before)
    return correct / max(len(y), 1), monitor.spikes_per_sample()
