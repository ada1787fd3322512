"""PCA width selection: how MANY channels each layer keeps, from the principal components of its
time-averaged membrane potential (Chowdhury, Garg, Roy — "Spatio-Temporal Pruning and Quantization
for Low-latency SNNs", IJCNN 2021, arXiv 2104.12528).

What is from the paper (abstract only; no code exists): the layer-wise number of significant
dimensions is found by principal component analysis of the *average accumulated membrane
potential* of the neurons of a trained SNN; a network of those widths is then trained (the abstract
reports 10-14x model compression on CIFAR VGGs). The builder method (Garg, Panda, Roy, IEEE Access
2020) analyses a trained network once and sets the number of filters per layer, without iterative
pruning. PCA decides how many channels, not which: the output is a new width list. The equations,
the variance threshold and the data layout were not reachable; what follows is our choice.

* statistic: Ū = (1/T) Σ_t H[t] per neuron, where H[t] is our neurons' charge *before* firing and
  reset (``record_v=True`` gives it as ``h_seq`` [T, B, C, ...]); we take this pre-reset charge as
  the paper's "accumulated membrane potential".
* data matrix of a channel group (``groups.channel_groups``: conv groups and hidden FC groups, the
  read-out never): rows = B·H·W observations, columns = C channels; a residual-coupled group stacks
  the rows of every neuron that fires its channels.
* when: the widths are chosen once, after the first training step whose progress reaches
  ``decide`` (None: 1.0, the end of the stage, for ``init="scratch"``, whose weights are thrown
  away anyway; 0.25 for ``init="inherit"``, so that the last 3/4 of the stage fine-tunes the
  narrowed network: on a trained digits CNN the accuracy recovered better from 0.25 than from
  0.5). The statistics are the training batches (train mode, as the model trains) of the steps
  with progress in (decide − ``collect``, decide], the deciding step included. Σx, Σxxᵀ (float64)
  and the row count are accumulated in runtime fields, so a killed and resumed stage ends with
  the same statistics; covariance = (Σxxᵀ − n·μμᵀ) / (n − 1). They are added in ``reduce_``
  (before ``after_step``), the rows of every rank summed: a distributed run collects the rows
  of the global batch.
* width, by ``variance`` (τ, the paper's knob, unknown there): k = the smallest k whose
  cumulative explained variance (covariance eigenvalues in descending order, negatives clipped
  to 0) is ≥ τ, then at least ``min_width``; a group without variance keeps ``min_width``. The
  default τ = ``DEFAULT_VARIANCE`` = 0.99: τ = 0.999 removed 2 % of a trained digits CNN's
  channels, 0.99 about 20 % (0.98: 30 %, but more than 3 points of accuracy lost on one seed
  after 2 epochs of fine-tuning). The spatio-temporal recipe uses 0.9 with "scratch".
* width, by ``channel_sparsity`` (the fraction s of the N prunable channels to remove; then
  ``variance`` must stay unset): ONE threshold τ common to every group is lowered from 1 until
  the groups keep N − round(s·N) channels in all (``common_threshold_widths``: each channel a
  group would add has the key "explained variance without it"; the smallest keys are kept, ties
  to the earlier group). ``min_width`` floors still hold (the target is then missed, with a
  warning). Garg et al.'s removal of whole layers is not done.
* the new model: ``init="scratch"`` (the paper: the smaller network is trained anew) builds
  ``models.from_spec`` of the new widths under ``torch.manual_seed(seed)``, so every parameter
  and buffer is freshly initialised and the result is a function of the seed (finalize leaves
  the global RNG as it was): train it in the next stage. ``init="inherit"`` (the default) keeps
  the k channels whose Ū has the largest variance (the diagonal of the covariance; ties to the
  lower index; on a trained digits CNN this choice was no better than a random one before
  fine-tuning, the fine-tuning is what recovers the accuracy). From the decision on the other
  channels are switched off after BN (``channel_mask`` gates, installed all-ones at attach so
  that checkpoints keep one layout) while the stage goes on training; finalize removes them
  physically with ``surgery.remove_channels_``.
* cost: the group neurons record ``h_seq`` on the first step and then only on the steps that
  will be collected (predicted from step / total_steps once the loop has bound the session,
  always until the decision when it has not); spikes and gradients are the same either way.

Needs a model of ``spikecompress.models`` (it rebuilds the model from ``model.spec``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.collectives import Collectives
from spikecompress.compress.method import Context
from spikecompress.compress.prune.channel_mask import gate_channels_, ungate_
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.surgery import remove_channels_
from spikecompress.models import MODELS, from_spec

log = logging.getLogger(__name__)

INITS = ("scratch", "inherit")
DEFAULT_VARIANCE = 0.99  # τ when neither variance nor channel_sparsity is given
_EPS = 1e-9  # progress comparisons: a step exactly at decide − collect is not collected


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


def common_threshold_widths(
    ratios: Mapping[str, torch.Tensor], keep: int, floor: int = 1
) -> dict[str, int]:
    """{group: width} keeping ``keep`` channels in all, from one threshold τ common to the groups.

    ``ratios``: {group: [C] cumulative explained-variance ratio} (``explained_variance``). At τ a
    group keeps max(f, 1 + #{j < C − 1 : ratio[j] < τ}), f = min(C, ``floor``): its (j+2)-th
    channel is kept iff ratio[j] < τ. So every channel above the floor has the key ratio[j], and
    lowering τ from 1 drops the largest keys first: the ``keep`` − Σf smallest keys are kept (ties
    to the earlier group, then the lower j; keys rise with j, so each group keeps a prefix). A
    group without variance (all-zero ratio) explains nothing: its keys are 1, kept last. Fewer
    than Σf is not possible: the floors are then kept.
    """
    names = list(ratios)
    widths = {n: min(ratios[n].numel(), floor) for n in names}
    keys = []
    for i, n in enumerate(names):
        r = ratios[n].double().cpu()
        r = r if r[-1] > 0 else torch.ones_like(r)
        keys += [(float(r[j]), i, j) for j in range(widths[n] - 1, r.numel() - 1)]
    for _, i, _ in sorted(keys)[: max(0, keep - sum(widths.values()))]:
        widths[names[i]] += 1
    return widths


def membrane_rows(neuron: nn.Module) -> torch.Tensor:
    """[B·H·W, C] float64 rows of Ū = mean_t H[t] from a neuron's last ``h_seq`` [T, B, C, ...]."""
    h = getattr(neuron, "h_seq", None)
    if h is None:
        raise RuntimeError("pca_width: a neuron recorded no membrane potential (h_seq) in this "
                           "step; after_step must follow the step's forward, with progress = "
                           "step / total_steps")
    u = h.double().mean(0)  # [B, C, ...]
    return u.movedim(1, -1).reshape(-1, u.shape[1])  # [B, ..., C] -> [B·H·W, C]


def _fraction(name: str, value: object, zero: bool = False) -> float:
    """``value`` as a float in (0, 1] (``zero``: in [0, 1)), else a one-line ValueError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (
        0 <= value < 1 if zero else 0 < value <= 1)
    if not ok:
        raise ValueError(f"{name} must be in {'[0, 1)' if zero else '(0, 1]'}, got {value!r}")
    return float(value)


def _count(name: str, value: object, low: int, high: int | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= low and (
        high is None or value < high)
    if not ok:
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")


@dataclass
class PCAWidth:
    """New widths from the PCA of each channel group's time-averaged membrane potential.

    One knob sets the widths: ``variance`` (τ, the explained-variance threshold of every group;
    ``DEFAULT_VARIANCE`` when neither is given) or ``channel_sparsity`` (the fraction of the
    prunable channels removed, reached by one common τ). ``decide`` is the progress at which the
    widths are chosen, from the batches of the ``collect`` fraction of the stage before it;
    ``init`` "inherit" (keep the highest-variance channels' weights and fine-tune them for the
    rest of the stage) or "scratch" (fresh weights of the new widths, the paper); ``min_width``
    the least a group keeps; ``seed`` seeds the scratch initialisation. See the module docstring.
    Distributed: each step's Σx, Σxxᵀ and row count are summed over the ranks in ``reduce_``, so
    the widths, the kept channels and the gates are chosen from the same statistics everywhere.
    """

    NAME: ClassVar[str] = "pca_width"
    PAPER: ClassVar[str] = "Chowdhury, Garg, Roy, IJCNN 2021 (arXiv 2104.12528)"
    KIND: ClassVar[str] = "channels"

    variance: float | None = None
    channel_sparsity: float | None = None
    collect: float = 0.25
    decide: float | None = None
    init: str = "inherit"
    min_width: int = 1
    seed: int = 0
    groups_: list = field(default_factory=list, init=False, repr=False, compare=False)
    sum_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    outer_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    rows_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    record_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    masks_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    decided_: bool = field(default=False, init=False, repr=False, compare=False)
    widths_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    kept_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # the step whose rows were added last: the Session's second reduce_ of a step (before
    # finalize) adds nothing, also right after a resume
    rows_step_: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.variance is not None and self.channel_sparsity is not None:
            raise ValueError("variance and channel_sparsity are both set: give one (variance: "
                             "the explained-variance threshold; channel_sparsity: the fraction "
                             "of channels to remove)")
        if self.variance is not None:
            self.variance = _fraction("variance", self.variance)
        if self.channel_sparsity is not None:
            self.channel_sparsity = _fraction("channel_sparsity", self.channel_sparsity, True)
        self.collect = _fraction("collect", self.collect)
        if self.decide is not None:
            self.decide = _fraction("decide", self.decide)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")
        _count("min_width", self.min_width, 1)
        _count("seed", self.seed, 0, 2**31)

    @property
    def tau(self) -> float | None:
        """The variance threshold in use (None when ``channel_sparsity`` sets the widths)."""
        if self.channel_sparsity is not None:
            return None
        return DEFAULT_VARIANCE if self.variance is None else self.variance

    @property
    def decision(self) -> float:
        """The progress at which the widths are chosen (``decide`` or its default by init)."""
        if self.decide is not None:
            return self.decide
        return 1.0 if self.init == "scratch" else 0.25

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Find the channel groups, zero the statistics, make their neurons record ``h_seq``;
        "inherit": all-ones channel gates."""
        _require_spec(model)
        self.groups_ = channel_groups(model)
        dev = next(model.parameters()).device
        f64 = {"dtype": torch.float64, "device": dev}
        self.sum_ = {g.name: torch.zeros(g.size, **f64) for g in self.groups_}
        self.outer_ = {g.name: torch.zeros(g.size, g.size, **f64) for g in self.groups_}
        self.rows_ = {g.name: torch.zeros((), **f64) for g in self.groups_}
        self.masks_ = {g.name: torch.ones(g.size) for g in self.groups_}
        self.decided_, self.rows_step_ = False, 0
        if self.init == "inherit":
            for g in self.groups_:
                gate_channels_(model, g, torch.ones(g.size))
        modules = dict(model.named_modules())
        self.record_ = {n: modules[n].record_v for g in self.groups_ for n in g.neurons}
        self._record(model, True)
        self.widths_, self.kept_ = {}, {}

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """While collecting, add this step's Ū rows of every rank to the statistics."""
        if ctx.step != self.rows_step_ and self._collects(ctx.progress):
            self._accumulate(model, ctx.comm)
            self.rows_step_ = ctx.step

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """Choose the widths once ``decide`` is reached (from the rows ``reduce_`` added)."""
        if not self.decided_ and ctx.progress >= self.decision - _EPS:
            self._decide(model)
        total = ctx.total_steps
        self._record(model, self._collects((ctx.step + 1) / total if total else 1.0))

    def covariances(self) -> dict[str, torch.Tensor]:
        """{group: [C, C] float64 covariance of the Ū rows collected so far}."""
        empty = [n for n, r in self.rows_.items() if r < 2]
        if empty or not self.rows_:
            raise RuntimeError(
                f"pca_width collected fewer than 2 rows for {empty or 'any group'}: train at "
                f"least one step in the collect={self.collect} of the stage before "
                f"decide={self.decision}")
        return {n: _cov(self.sum_[n], self.outer_[n], float(self.rows_[n])) for n in self.rows_}

    def choose_widths(self, covs: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """{group: new width} from the covariances, by ``variance`` or ``channel_sparsity``."""
        sizes = {g.name: g.size for g in self.groups_}
        if self.channel_sparsity is None:
            return {n: min(c, max(self.min_width, pca_width(covs[n], self.tau)))
                    for n, c in sizes.items()}
        total = sum(sizes.values())
        keep = total - int(self.channel_sparsity * total + 0.5)
        ratios = {n: explained_variance(covs[n]) for n in sizes}
        widths = common_threshold_widths(ratios, keep, self.min_width)
        if sum(widths.values()) > keep:
            log.warning("pca_width: min_width=%d keeps %d of %d channels, more than "
                        "channel_sparsity=%g allows", self.min_width, sum(widths.values()),
                        total, self.channel_sparsity)
        return widths

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """The model of the selected widths: inherited weights, or fresh ("scratch")."""
        self._record(model, None)
        if not self.decided_:
            self._decide(model)
        remove = {}
        for g in self.groups_:
            keep = self.masks_[g.name].nonzero().flatten().tolist()
            remove[g.name] = sorted(set(range(g.size)) - set(keep))
            self.widths_[g.name] = [g.size, len(keep)]
            if self.init == "inherit":
                self.kept_[g.name] = keep
            log.info("pca_width %s: %d -> %d channels", g.name, g.size, len(keep))
        if self.init == "inherit":
            ungate_(model)
        with torch.random.fork_rng(devices=[]):  # surgery's rebuild check draws from the RNG
            remove_channels_(model, remove)
        return model if self.init == "inherit" else fresh_model(model, self.seed)

    def _accumulate(self, model: nn.Module, comm: Collectives) -> None:
        """Add Σx, Σxxᵀ and the row count of this step's rows, summed over the ranks (a fold
        into new tensors: a state_dict taken earlier keeps the old ones)."""
        modules = dict(model.named_modules())
        adds = []
        for g in self.groups_:
            x = torch.cat([membrane_rows(modules[n]) for n in g.neurons])  # [N, C]
            rows = torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device)
            adds += [(self.sum_, g.name, x.sum(0)), (self.outer_, g.name, x.T @ x),
                     (self.rows_, g.name, rows)]
        comm.sum_(*(local for _, _, local in adds))
        for stats, name, local in adds:
            stats[name] = stats[name].to(local.device) + local

    def _decide(self, model: nn.Module) -> None:
        """Choose the widths and which channels keep them; "inherit": switch the rest off."""
        covs = self.covariances()
        widths = self.choose_widths(covs)
        for g in self.groups_:
            mask = torch.zeros(g.size)
            mask[top_variance(covs[g.name], widths[g.name])] = 1.0
            self.masks_[g.name] = mask
            if self.init == "inherit":
                gate_channels_(model, g, mask)
        self.decided_ = True
        log.info("pca_width: widths %s chosen at progress >= %g", widths, self.decision)

    def _collects(self, progress: float) -> bool:
        return not self.decided_ and progress > self.decision - self.collect + _EPS

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
