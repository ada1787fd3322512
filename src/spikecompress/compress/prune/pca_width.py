"""PCA width selection: how MANY channels each layer keeps, from the principal components of its
time-averaged membrane potential (Chowdhury, Garg, Roy — "Spatio-Temporal Pruning and Quantization
for Low-latency SNNs", IJCNN 2021, arXiv 2104.12528; spec pruning.md §3.2, §12.3).

What is from the paper (abstract only; no code exists): the layer-wise number of significant
dimensions is found by principal component analysis of the *average accumulated membrane
potential* of the neurons of a trained SNN; a network of those widths is then trained (the abstract
reports 10-14x model compression on CIFAR VGGs). The builder method (Garg, Panda, Roy, IEEE Access
2020) analyses a trained network once and sets the number of filters per layer, without iterative
pruning. PCA decides how many channels, not which: the output is a new width list.

What is our choice (§12.3: the equations, threshold and data layout were not reachable):

* statistic: Ū = (1/T) Σ_t H[t] per neuron, where H[t] is our neurons' charge *before* firing and
  reset (``record_v=True`` gives it as ``h_seq`` [T, B, C, ...]); we take this pre-reset charge as
  the paper's "accumulated membrane potential".
* data matrix of a channel group (``groups.channel_groups``: conv groups and hidden FC groups, the
  read-out never): rows = B·H·W observations, columns = C channels; a residual-coupled group stacks
  the rows of every neuron that fires its channels.
* which data: the training batches of the last ``collect`` fraction of the stage (steps whose
  progress is > 1 − collect; the last step always counts), in train mode, as the model trains.
  Σx, Σxxᵀ (float64) and the row count are accumulated in runtime fields, so a killed and resumed
  stage ends with the same statistics; covariance = (Σxxᵀ − n·μμᵀ) / (n − 1).
* width: k = the smallest k whose cumulative explained variance (covariance eigenvalues in
  descending order, negatives clipped to 0) is ≥ ``variance`` (τ; the spec's τ ≈ 0.999 is
  unverified [R], so it is configurable), then at least ``min_width``. A group without variance
  keeps ``min_width`` channels. Garg et al.'s removal of whole layers is not done.
* the new model: ``init="scratch"`` (the paper: the smaller network is trained anew) builds
  ``models.from_spec`` of the new widths under ``torch.manual_seed(seed)``, so every parameter
  and buffer is freshly initialised and the result is a function of the seed (finalize leaves
  the global RNG as it was); ``init="inherit"`` keeps the k channels whose Ū has the largest
  variance (the diagonal of the covariance; ties to the lower index) and removes the rest
  physically with ``surgery.remove_channels_``, weights inherited. Either way the next recipe
  stage trains the smaller model.
* cost: the group neurons record ``h_seq`` on the first step and then only on the steps that
  will be collected (predicted from step / total_steps once the loop has bound the session,
  always when it has not); spikes and gradients are the same with recording on or off.

Needs a model of ``spikecompress.models`` (it rebuilds the model from ``model.spec``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.surgery import remove_channels_
from spikecompress.models import MODELS, from_spec

log = logging.getLogger(__name__)

INITS = ("scratch", "inherit")
_EPS = 1e-9  # progress comparisons: a step exactly at 1 − collect is not collected


def covariance(x: torch.Tensor) -> torch.Tensor:
    """The [C, C] float64 covariance of a data matrix ``x`` [N, C] (rows = observations)."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"a data matrix [N >= 2, C] is needed, got shape {tuple(x.shape)}")
    return _cov(x.double().sum(0), x.double().T @ x.double(), x.shape[0])


def _cov(total: torch.Tensor, outer: torch.Tensor, n: float) -> torch.Tensor:
    mean = total / n  # [C]
    return (outer - n * torch.outer(mean, mean)) / (n - 1)


def explained_variance(cov: torch.Tensor) -> torch.Tensor:
    """[C] cumulative explained-variance ratio of the covariance's eigenvalues, descending (all
    zeros when the total variance is 0)."""
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"a square covariance [C, C] is needed, got shape {tuple(cov.shape)}")
    sym = (cov.double() + cov.double().T) / 2
    eig = torch.linalg.eigvalsh(sym).clamp(min=0).flip(0)  # descending
    cum = eig.cumsum(0)
    return cum / cum[-1] if cum[-1] > 0 else torch.zeros_like(cum)


def pca_width(cov: torch.Tensor, variance: float) -> int:
    """The smallest k whose top-k principal components explain ≥ ``variance`` of the total
    variance of ``cov`` [C, C] (use ``covariance(x)`` for a data matrix); 1 without variance."""
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    ratio = explained_variance(cov)
    if ratio[-1] == 0:
        return 1
    return int((ratio < variance - 1e-12).sum()) + 1


def membrane_rows(neuron: nn.Module) -> torch.Tensor:
    """[B·H·W, C] float64 rows of Ū = mean_t H[t] from a neuron's last ``h_seq`` [T, B, C, ...]."""
    h = getattr(neuron, "h_seq", None)
    if h is None:
        raise RuntimeError("pca_width: a neuron recorded no membrane potential (h_seq) in this "
                           "step; after_step must follow the step's forward, with progress = "
                           "step / total_steps")
    u = h.double().mean(0)  # [B, C, ...]
    return u.movedim(1, -1).reshape(-1, u.shape[1])  # [B, ..., C] -> [B·H·W, C]


@dataclass
class PCAWidth:
    """New widths from the PCA of each channel group's time-averaged membrane potential.

    ``variance`` is the explained-variance threshold τ; ``collect`` the fraction of the stage
    (its last steps) whose training batches are analysed; ``init`` "scratch" (fresh weights, the
    paper) or "inherit" (keep the highest-variance channels' weights); ``min_width`` the least a
    group keeps; ``seed`` seeds the scratch initialisation. See the module docstring.
    """

    NAME: ClassVar[str] = "pca_width"
    PAPER: ClassVar[str] = "Chowdhury, Garg, Roy, IJCNN 2021 (arXiv 2104.12528)"
    KIND: ClassVar[str] = "channels"

    variance: float = 0.999
    collect: float = 0.25
    init: str = "scratch"
    min_width: int = 1
    seed: int = 0
    groups_: list = field(default_factory=list, init=False, repr=False, compare=False)
    sum_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    outer_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    rows_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    record_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    widths_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    kept_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("variance", "collect"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0 < value <= 1):
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
            setattr(self, name, float(value))
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")
        if isinstance(self.min_width, bool) or not isinstance(self.min_width, int) or (
                self.min_width < 1):
            raise ValueError(f"min_width must be an int >= 1, got {self.min_width!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (
                0 <= self.seed < 2**31):
            raise ValueError(f"seed must be an int in [0, 2**31), got {self.seed!r}")

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Find the channel groups, zero the statistics, make their neurons record ``h_seq``."""
        _require_spec(model)
        self.groups_ = channel_groups(model)
        dev = next(model.parameters()).device
        f64 = {"dtype": torch.float64, "device": dev}
        self.sum_ = {g.name: torch.zeros(g.size, **f64) for g in self.groups_}
        self.outer_ = {g.name: torch.zeros(g.size, g.size, **f64) for g in self.groups_}
        self.rows_ = {g.name: torch.zeros((), **f64) for g in self.groups_}
        modules = dict(model.named_modules())
        self.record_ = {n: modules[n].record_v for g in self.groups_ for n in g.neurons}
        self._record(model, True)
        self.widths_, self.kept_ = {}, {}

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """Add this step's Ū rows when it lies in the last ``collect`` of the stage."""
        if self._collects(ctx.progress):
            modules = dict(model.named_modules())
            for g in self.groups_:
                x = torch.cat([membrane_rows(modules[n]) for n in g.neurons])  # [N, C]
                name = g.name
                self.sum_[name] = self.sum_[name].to(x.device) + x.sum(0)
                self.outer_[name] = self.outer_[name].to(x.device) + x.T @ x
                self.rows_[name] = self.rows_[name].to(x.device) + x.shape[0]
        total = ctx.total_steps
        self._record(model, not total or self._collects((ctx.step + 1) / total))

    def covariances(self) -> dict[str, torch.Tensor]:
        """{group: [C, C] float64 covariance of the Ū rows collected so far}."""
        empty = [n for n, r in self.rows_.items() if r < 2]
        if empty or not self.rows_:
            raise RuntimeError(
                f"pca_width collected fewer than 2 rows for {empty or 'any group'}: train at "
                f"least one step in the last collect={self.collect} of the stage")
        return {n: _cov(self.sum_[n], self.outer_[n], float(self.rows_[n])) for n in self.rows_}

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """The model of the selected widths: fresh ("scratch") or with inherited weights."""
        self._record(model, None)
        covs = self.covariances()
        kept: dict[str, list[int]] = {}
        for g in self.groups_:
            k = min(g.size, max(self.min_width, pca_width(covs[g.name], self.variance)))
            kept[g.name] = top_variance(covs[g.name], k)
            self.widths_[g.name] = [g.size, k]
            log.info("pca_width %s: %d -> %d channels", g.name, g.size, k)
        self.kept_ = kept if self.init == "inherit" else {}
        with torch.random.fork_rng(devices=[]):  # surgery's rebuild check draws from the RNG
            remove_channels_(model, {n: sorted(set(range(self.widths_[n][0])) - set(keep))
                                    for n, keep in kept.items()})
        return model if self.init == "inherit" else fresh_model(model, self.seed)

    def _collects(self, progress: float) -> bool:
        return progress > 1.0 - self.collect + _EPS

    def _record(self, model: nn.Module, on: bool | None) -> None:
        """Set the group neurons' ``record_v`` (None: back to what they had before attach)."""
        modules = dict(model.named_modules())
        for name, before in self.record_.items():
            if name in modules:
                modules[name].record_v = before if on is None else on


def top_variance(cov: torch.Tensor, k: int) -> list[int]:
    """The k channels with the largest variance (diagonal of ``cov``), ascending indices; ties go
    to the lower index."""
    order = torch.sort(-cov.diagonal().double().cpu(), stable=True).indices
    return sorted(order[:k].tolist())


def fresh_model(model: nn.Module, seed: int) -> nn.Module:
    """A new ``from_spec(model.spec)`` initialised under ``torch.manual_seed(seed)``, on the
    model's device and dtype and in its train/eval mode; the global RNG state is kept."""

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = from_spec(model.spec)
    p = next(model.parameters())
    return new.to(device=p.device, dtype=p.dtype).train(model.training)


def _require_spec(model: nn.Module) -> None:

    spec = getattr(model, "spec", None)
    if not (isinstance(spec, dict) and spec.get("name") in MODELS):
        raise ValueError("pca_width needs a model built by spikecompress.models (with a .spec): "
                         "it rebuilds the model with the new widths")
