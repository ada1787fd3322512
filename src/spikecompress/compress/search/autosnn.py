"""AutoSNN: spike-aware architecture search (Na, Mok, Park, Lee, Choe, Yoon — ICML 2022,
arXiv 2201.12738). Facts from the authors' code (``nabk89/AutoSNN``: ``space.py``, ``blocks.py``,
``train_supernet/``, ``search_arch/evolution_algo.py``, the scripts); the code here is ours.

What the stage does:

* **Space** (``search.space``): the paper's macro backbone — a stem conv, stages of cells
  (``widths``), each stage followed by a 2× max-pool, no global average pooling, a linear read-out
  of the flattened map — with one of ``candidates`` per cell (default all five: ``skip``,
  ``scb_k3``, ``scb_k5``, ``srb_k3``, ``srb_k5``). The paper's ``AutoSNN_16`` is stem 16 and
  [16], [32, 32], [64, 64] (5 cells, 3125 architectures, for 32×32 CIFAR); our default drops its
  last stage, stem 16 and [16], [32, 32] (3 cells, 125 architectures): on 8×8 digits three
  poolings leave a 1×1 map and a supernet that stayed near chance after 10 CPU epochs (15-20 %
  held-out accuracy against 45-70 % for the two-stage one). Two stages leave 2×2 on 8×8 digits,
  5×5 on 22×22 event frames, 10 on MNIST-1D (1-D cells, length 40). The neuron, its parameters
  and the norm are the entering model's (the paper: PLIF, τ₀ 2, V_th 1; a recipe sets
  ``neuron: plif`` on its model for that).
* **Supernet, uniform path sampling** (``train_step``): the stage's epochs train the supernet
  ``model.autosnn_supernet`` (installed at ``attach``, so the loop's optimizer and checkpoints hold
  it; initialised under ``torch.manual_seed(seed)``): at every step one path, each slot's cell drawn
  uniformly from a generator seeded by (``seed``, step) — a pure function of the step, so a resumed
  stage draws the same paths — is trained on the step's training rows with the loop's task loss,
  optimizer and learning rate (``ctx.lr_at``). The entering model is not trained (the loop's
  per-epoch test accuracy is that of the entering model; its train accuracy mixes the trained
  rows with the held-out rows, run along the same path in eval mode).
* **Held-out search set**: a sample goes to the search set iff the hash of its encoded input falls
  below ``search_fraction`` (0.2, the authors' 80 / 20 split of the training set; the key is
  ``search.evolution.sample_keys``), so it never trains the supernet in any epoch whatever the
  shuffle. Up to ``search_samples`` distinct ones are kept in runtime fields (``held_x_``,
  ``held_y_``, ``held_keys_``; checkpointed, so a killed stage resumes with the same set).
* **Evolutionary search** (``finalize``): ``search.evolution.evolve`` with the stage's
  ``iterations``, ``population``, ``mutations``, ``mutation_prob``, ``crossovers``, ``top_k``,
  ``seed``; each architecture is scored by ``search.evolution.evaluate_arch`` on the search set
  with the fitness F(A) = Acc(A) · (Spikes(A) / S_ref)^λ, λ = ``fitness_lambda`` (−0.08, the
  paper), S_ref = ``spikes_ref`` (None: the median of the first population). The algorithm, the
  defaults against the paper's and the spike count are described in ``search.evolution``.
* **Result**: ``finalize`` returns the best architecture of the last top-k as a fresh
  ``autosnn_net`` (``models.from_spec`` rebuilds it; the chosen cells are in its spec, hence in the
  artifact) for the next stage to train: ``init="scratch"`` (the paper: trained anew) initialised
  under ``torch.manual_seed(seed)``, or ``init="inherit"`` (the default) with the supernet's
  weights, BN statistics and neuron parameters of that path (a warm start, the default so that a
  stage followed by a short training is not thrown back to chance; the shipped recipe uses
  "scratch" and trains the winner as long as its dense reference). The search record
  (winner, its accuracy / spikes / fitness, S_ref, every iteration's top-k) is in ``result_``
  and the log.

Our simplifications, plainly: a CPU-sized search (the stage's epochs instead of the paper's 600
supernet epochs, 10 × 10 evaluations instead of 20 × 20); the read-out is a plain linear layer
(the authors' is a spiking FC of 10 × classes neurons averaged by a "boost" pool, whose spikes they
count; their count also adds the max-pool outputs, which only repeat spikes, and we do not); the
neuron is the entering model's (LIF unless the recipe says PLIF); no DVS stem; the held-out split
is by sample hash, not the first 80 % of the training indices.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.collectives import Collectives
from spikecompress.compress.method import Context
from spikecompress.compress.search.evolution import (
    PAPER_LAMBDA,
    SearchResult,
    evaluate_arch,
    evolve,
    fitness,
    rank,
    sample_keys,
)
from spikecompress.compress.search.space import Arch, SearchSpace, Supernet, check_candidates
from spikecompress.models.autosnn_net import CELLS, DEFAULT_STEM, check_widths
from spikecompress.models.common import POOLS
from spikecompress.snn.layers import reset_state
from spikecompress.snn.losses import task_loss

__all__ = ["INITS", "PAPER_LAMBDA", "SEARCH_WIDTHS", "SUPERNET", "AutoSNN", "SearchResult",
           "evaluate_arch", "evolve", "fitness", "rank", "sample_keys"]

log = logging.getLogger("spikecompress.autosnn")

SUPERNET = "autosnn_supernet"  # the child module of the entering model that holds the supernet
INITS = ("inherit", "scratch")
SEARCH_WIDTHS = ((16,), (32, 32))  # AutoSNN_16 without its last stage (see the docstring)


def _fraction(name: str, value: object) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and 0 < value < 1
    if not ok:
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")
    return float(value)


def _count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@dataclass
class AutoSNN:
    """Spike-aware architecture search: supernet trained by uniform path sampling during the
    stage, evolutionary search at ``finalize`` with fitness Acc · (Spikes / S_ref)^λ, a fresh
    ``autosnn_net`` of the winner returned. See the module docstring. Distributed: the supernet
    trains in ``train_step``, outside DDP, with its gradients averaged over every rank's training
    rows there; the held-out set gathers every rank's held-out rows in rank order; the paths and
    the search are seeded, the same on every rank."""

    NAME: ClassVar[str] = "autosnn"
    PAPER: ClassVar[str] = "Na et al., ICML 2022 (arXiv 2201.12738)"
    KIND: ClassVar[str] = "channels"  # it changes the architecture
    REFUSES: ClassVar[tuple[str, ...]] = ("mlp",)

    stem: int = DEFAULT_STEM
    widths: list[list[int]] = field(default_factory=lambda: [list(w) for w in SEARCH_WIDTHS])
    candidates: list[str] = field(default_factory=lambda: list(CELLS))
    pool: str = "max"
    fitness_lambda: float = PAPER_LAMBDA
    spikes_ref: float | None = None
    search_fraction: float = 0.2
    search_samples: int = 1024
    iterations: int = 10
    population: int = 10
    mutations: int = 5
    mutation_prob: float = 0.2
    crossovers: int = 5
    top_k: int = 5
    init: str = "inherit"
    seed: int = 0
    held_x_: torch.Tensor = field(default_factory=lambda: torch.zeros(0), init=False, repr=False,
                                  compare=False)
    held_y_: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64),
                                  init=False, repr=False, compare=False)
    held_keys_: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64),
                                     init=False, repr=False, compare=False)
    result_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _count("stem", self.stem, 1)
        self.widths = check_widths("widths", self.widths)
        self.candidates = list(check_candidates("candidates", self.candidates))
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, got {self.pool!r}")
        lam = self.fitness_lambda
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not -10 <= lam <= 0:
            raise ValueError(f"fitness_lambda must be a number in [-10, 0] (the paper: -0.08; 0 "
                             f"ranks by accuracy only), got {lam!r}")
        self.fitness_lambda = float(lam)
        ref = self.spikes_ref
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int | float)
                                or not ref > 0):
            raise ValueError(f"spikes_ref must be a number > 0 (spikes per sample) or null (the "
                             f"median of the first population), got {ref!r}")
        self.spikes_ref = None if ref is None else float(ref)
        self.search_fraction = _fraction("search_fraction", self.search_fraction)
        _count("search_samples", self.search_samples, 1)
        _count("iterations", self.iterations, 1)
        _count("population", self.population, 1)
        _count("mutations", self.mutations, 0)
        _count("crossovers", self.crossovers, 0)
        _count("top_k", self.top_k, 1)
        p = self.mutation_prob
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise ValueError(f"mutation_prob must be in (0, 1], got {p!r}")
        self.mutation_prob = float(p)
        if self.mutations + self.crossovers > self.population:
            raise ValueError(f"mutations + crossovers ({self.mutations} + {self.crossovers}) must "
                             f"not exceed population ({self.population})")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (
                0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}")

    # -- hooks -----------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Build the search space from the entering model (input shape, classes, neuron, norm)
        and install the supernet as ``model.autosnn_supernet``; empty the search set."""
        space = self.space_of(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = Supernet(space)
        p = next(model.parameters(), None)
        if p is not None:
            net = net.to(device=p.device, dtype=p.dtype)
        model.add_module(SUPERNET, net.train(model.training))
        self.held_x_ = torch.zeros(0)
        self.held_y_ = torch.zeros(0, dtype=torch.int64)
        self.held_keys_ = torch.zeros(0, dtype=torch.int64)
        self.result_ = {}
        log.info("autosnn: %d slots x %d candidates = %d architectures", len(space.slots),
                 len(space.candidates), space.size)

    def space_of(self, model: nn.Module) -> SearchSpace:
        """The search space on ``model``'s data (a one-line error for a model it cannot read)."""
        spec, in_shape = getattr(model, "spec", None), getattr(model, "in_shape", None)
        if not isinstance(spec, dict) or in_shape is None or "classes" not in spec:
            raise ValueError(f"autosnn: the model {type(model).__name__} was not built by "
                             f"spikecompress.models (no spec / in_shape): the search reads the "
                             f"input shape, classes and neuron from them")
        if len(in_shape) < 2:
            raise ValueError(f"autosnn: the {spec['name']} model takes flat inputs "
                             f"{tuple(in_shape)}; the search space is convolutional: start from "
                             f"a model with a spatial input (conv_net, conv1d_net, vgg, resnet, "
                             f"sew_resnet)")
        if not spec.get("spiking", True):
            raise ValueError(f"autosnn: the {spec['name']} model is an ANN (spiking: false); the "
                             f"search space is of spiking cells")
        return SearchSpace(
            in_shape=tuple(in_shape), classes=spec["classes"], stem=self.stem,
            widths=tuple(tuple(w) for w in self.widths), candidates=tuple(self.candidates),
            pool=self.pool, neuron=spec.get("neuron", "lif"),
            neuron_params=dict(spec.get("neuron_params") or {}), norm=spec.get("norm", "bn"),
            steps=spec.get("steps"))

    def train_step(
        self, model: nn.Module, x_seq: torch.Tensor, y: torch.Tensor, ctx: Context
    ) -> tuple[float, torch.Tensor]:
        """One supernet step on the batch's training rows along the path of this step; the
        held-out rows join the search set (their logits, in eval mode, fill the returned
        out_seq [T, B, classes] for the loop's accuracy). Distributed: a rank without training
        rows takes part in the step with a zero gradient; no rank steps when none has any."""
        net = self.supernet(model)
        if ctx.optimizer is None or ctx.lr_at is None:
            raise ValueError("autosnn: the supernet trains with the loop's optimizer: call "
                             "Session.bind(optimizer, ...) first")
        keys = sample_keys(x_seq)
        held = torch.tensor([k < self.search_fraction * 2**63 for k in keys], dtype=torch.bool)
        self._keep(x_seq, y, keys, held, ctx.comm)
        held = held.to(x_seq.device)
        net.set_arch(self.path(ctx.step, net.space))
        T, B = x_seq.shape[:2]
        out = x_seq.new_zeros(T, B, net.space.classes)
        loss_value = 0.0
        rows = int((~held).sum())
        every = torch.tensor([rows], dtype=torch.int64)
        ctx.comm.sum_(every)  # the training rows of every rank
        if int(every):
            opt, lr = ctx.optimizer, ctx.lr_at(ctx.step)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            opt.zero_grad(set_to_none=True)
            if rows:
                out_train = net(x_seq[:, ~held])
                loss = task_loss(out_train, y[~held], ctx.task_loss)
                loss.backward()
                out[:, ~held] = out_train.detach().to(out.dtype)
                loss_value = float(loss.detach())
                reset_state(net)
            _average_grads_(net, rows * ctx.comm.world_size / int(every), ctx.comm)
            opt.step()
        if bool(held.any()):
            was = net.training
            net.eval()
            with torch.no_grad():
                out[:, held] = net(x_seq[:, held]).to(out.dtype)
            net.train(was)
            reset_state(net)
        return loss_value, out

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Search, then return the winner as a fresh ``autosnn_net`` (``init``: inherited
        weights or a seeded re-initialisation), in the entering model's train/eval mode."""
        net = self.supernet(model)
        result = self.search(net)
        self.result_ = result.summary(self.fitness_lambda)
        r = self.result_
        log.info("autosnn: chose %s (held-out accuracy %.4f, %.1f spikes/sample, fitness %.4f, "
                 "S_ref %.1f) after %d evaluations", r["arch"], r["accuracy"],
                 r["spikes_per_sample"], r["fitness"], r["spikes_ref"], r["evaluated"])
        new = net.extract(result.best, self.init, self.seed).train(model.training)
        delattr(model, SUPERNET)
        return new

    # -- the pieces ------------------------------------------------------------------------------
    def supernet(self, model: nn.Module) -> Supernet:
        net = getattr(model, SUPERNET, None)
        if not isinstance(net, Supernet):
            raise RuntimeError("autosnn: the model holds no supernet; attach the method first")
        return net

    def path(self, step: int, space: SearchSpace) -> Arch:
        """The path trained at ``step``: every slot's cell drawn uniformly, seeded by
        (``seed``, ``step``)."""
        rng = random.Random(f"autosnn:{self.seed}:{step}")
        return tuple(rng.choice(space.candidates) for _ in space.slots)

    def search(self, net: Supernet) -> SearchResult:
        """The evolutionary search on the held-out samples (deterministic for a given seed)."""
        if self.held_y_.numel() == 0:
            raise RuntimeError(f"autosnn: no held-out sample was seen (search_fraction "
                               f"{self.search_fraction}); train the stage for at least one epoch "
                               f"of a data set with more than a handful of samples")
        x, y = self.held_x_, self.held_y_
        return evolve(
            lambda arch: evaluate_arch(net, arch, x, y), net.space.candidates,
            len(net.space.slots), iterations=self.iterations, population=self.population,
            mutations=self.mutations, mutation_prob=self.mutation_prob,
            crossovers=self.crossovers, top_k=self.top_k, lam=self.fitness_lambda,
            spikes_ref=self.spikes_ref, seed=self.seed)

    def _keep(self, x_seq: torch.Tensor, y: torch.Tensor, keys: list[int], held: torch.Tensor,
              comm: Collectives) -> None:
        """Add the held-out samples of every rank's batch (rank order) not kept yet, up to
        ``search_samples``."""
        if self.held_keys_.numel() >= self.search_samples:
            return  # full, on every rank alike: nothing to gather
        rows = torch.nonzero(held).flatten().tolist()
        idx = torch.tensor(rows, dtype=torch.int64)
        xs = x_seq.detach()[:, idx.to(x_seq.device)].transpose(0, 1).to("cpu", torch.float32)
        ys = y.detach()[idx.to(y.device)].to("cpu", torch.int64)
        for batch in comm.gather_object((xs, ys, [keys[b] for b in rows])):
            self._add(*batch)

    def _add(self, xs: torch.Tensor, ys: torch.Tensor, keys: list[int]) -> None:
        """Append the samples (xs [N, T, ...], ys [N]) whose key is not kept yet, up to
        ``search_samples``."""
        known = set(self.held_keys_.tolist())
        new = []
        for i, k in enumerate(keys):
            if k not in known and len(known) < self.search_samples:
                known.add(k)
                new.append(i)
        if not new:
            return
        pick = torch.tensor(new)
        self.held_x_ = xs[pick] if self.held_x_.numel() == 0 else torch.cat([self.held_x_,
                                                                             xs[pick]])
        self.held_y_ = torch.cat([self.held_y_, ys[pick]])
        self.held_keys_ = torch.cat([self.held_keys_,
                                     torch.tensor([keys[i] for i in new], dtype=torch.int64)])


def _average_grads_(net: nn.Module, weight: float, comm: Collectives) -> None:
    """Make the supernet's gradients the mean over every rank's training rows: each rank's
    gradient of its mean loss times ``weight`` (its share of the rows times the world size; 1 in
    one process), averaged over the ranks. A parameter without a gradient on every rank keeps
    none (the optimizer skips it, as in one process)."""
    params = [p for p in net.parameters() if p.requires_grad]
    got = torch.tensor([p.grad is not None for p in params])
    comm.sum_(got)  # any rank
    grads = []
    for p, any_rank in zip(params, got.tolist(), strict=True):
        if any_rank:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad.mul_(weight))
    comm.mean_(*grads)
