"""SCA: spiking channel activity-based pruning with gradient regrowth, then physical channel
removal (Li, Xu, Shen, Xu, Chen, Pan — ICML 2024, arXiv 2406.01072; what follows is what the
authors' released code does, our reading of it, and our corrections).

The released code, which the paper-knob mode follows:

* score of channel c of a pruned group: the running mean over the training batches since the last
  update of mean over (T, batch, H, W) of s + |u|, s the neuron's output spike and u its membrane
  potential after the reset (``record_v=True`` gives ``v_seq``). Collected by a forward hook on the
  neuron, in training mode only, reset after every update. A residual-coupled group fires through
  several neurons: their scores are averaged. ``score="firing"`` (s) and ``"membrane"`` (|u|) are
  the two other readings of the paper. Every batch weighs the same in the running mean (ours).
* pruned groups: every ``channel_groups`` group whose producers are all convs (hidden FC layers
  and the read-out are not pruned, as in the code's VGG16); a non-empty ``include`` (regexes,
  ``re.fullmatch`` on group names) replaces that default, ``exclude`` removes groups.
* one update at the end of every epoch (``ctx.step`` a multiple of ``ctx.steps_per_epoch``) to
  the end of training: all N channels ranked together by score, the top ⌊N·α⌋ kept, then among
  the others the top ⌊N·β⌋ by |∂L/∂γ| of their BN weight (summed over the group's BNs) from the
  last mini-batch come back. The mask is recomputed from scratch each time, so "just dropped" =
  not in this update's top ⌊N·α⌋; a channel pruned earlier is in that set too, but its actual
  ∂L/∂γ is 0, so it comes back only by momentum revival (code masking) or not at all (gates).
  Ties go to the earlier group, then the lower channel index (``channel_select``).
* masking (``after_bn: false``): the conv filter rows (and bias) and BN γ, β of pruned channels
  multiplied by zero in place once per update (``channel_mask.zero_channels_``); gradients are
  not masked, so optimizer momentum can revive them.
* ``l1``: the code adds l1·sign(W) to the gradients of its 3×3 convs; here the loss term
  l1·Σ|W| over the pruned groups' producer convs whose kernel is not pointwise (same gradient).
* finalize: physical removal with the last update's mask. The code keeps the mask of the
  best-test-accuracy epoch; a method sees no test accuracy, so we take the last one.

The target (``channel_sparsity``, the fraction of the pruned groups' channels removed, the
library's knob) versus the paper's α (the fraction kept by score): with ``alpha`` set the code's
counts are used as they are (⌊N·α⌋ + ⌊N·β⌋ kept, plus floors); otherwise α is calibrated to the
target: K = N − round(N·channel_sparsity) channels are kept, K − ⌊N·β⌋ by score and ⌊N·β⌋ regrown
(fewer when a floor already keeps more than K − ⌊N·β⌋ by score), so the result is the target
up to rounding unless the floors keep more. Setting both is an error; setting neither is
``channel_sparsity`` 0.3. Selection, gating, the count rounding and the removal are the channel
driver's (``channel_pruning``); the scoring and the keep-α + regrow-β dynamics are SCA's own.

Ours, not the code's: every group keeps at least one channel (the floor surgery needs). Gates are
installed at attach on every pruned group (all ones in the code mode, where they change nothing)
so that the state_dict has one layout and ∂L/∂γ is read the same way in every mode.

Corrections (``corrections``, one mapping):

* ``after_bn`` (default: on in the target mode, off with ``alpha``, which is the code as
  released): masks applied after BN at every step through the driver's gates (γ⊙m, β⊙m): a
  masked channel is exactly 0 downstream in training and eval, and momentum cannot revive it;
  nothing is zeroed in place. With the code's masking the fine-tuning between updates keeps
  reviving channels that the next update removes again, and the last update's removals get no
  fine-tuning (a trained digits CNN, 30 % removed over 2 epochs: 0.964 vs 0.978 with gates).
* ``dense_regrow``: regrowth ranks by the dense γ-gradient ∂L/∂(γ⊙m) that each gate captures
  (``channel_mask.dense_gamma_grad``; non-zero for masked channels), |.| per BN summed over the
  group's BNs and averaged over every step of the epoch (our choice: the score's window), so
  long-pruned channels can return. Needs ``after_bn``.
* ``gradual``: the pruned fraction follows Zhu & Gupta's cubic (ICLR-W 2018) from 0 to the
  target at progress ``until`` (in the α mode: α_t = α + (1 − α − β)·(1 − p/until)³), so the
  density falls from 1 to α + β instead of being fixed at the first update. Default ``until``
  0.5 is our choice.
* ``floor``: each group always keeps ⌈floor·C⌉ channels of its best scores (none in the code).

Runtime state (exact kill-and-resume): ``masks_``, the score sums ``sums_`` and batch counts
``batches_`` per neuron, the dense-gradient sums ``grads_`` and their ``grad_steps_``, the update
counter ``updates_``; the gates are model buffers installed at attach.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from spikecompress.compress.method import Context
from spikecompress.compress.prune.channel_mask import (
    channel_rows,
    gate_of,
    raw_tensor,
    zero_channels_,
)
from spikecompress.compress.prune.channel_pruning import (
    gate_,
    ramp,
    remove_and_record_,
    resolve_target,
    select_channel_groups,
)
from spikecompress.compress.prune.channel_select import keep_best, prune_count
from spikecompress.compress.prune.groups import ChannelGroup, channel_groups, check_patterns
from spikecompress.compress.prune.sca_scores import (
    SCORES,
    Corrections,
    _number,
    channel_score,
    score_fraction,
    update_masks,
)

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
DEFAULT_TARGET = 0.3  # channel_sparsity when neither it nor alpha is given


@dataclass
class SCA:
    """Spiking Channel Activity-based pruning: score, keep α, regrow β by |∂L/∂γ| every epoch,
    remove the pruned channels at finalize. ``channel_sparsity`` the fraction of the pruned
    groups' channels removed (α calibrated to it) or ``alpha`` the paper's kept-by-score
    fraction, not both; ``beta`` the regrown fraction; ``score`` one of SCORES; ``l1`` the code's
    L1 on conv weights; ``corrections`` our options (after_bn, dense_regrow, gradual, until,
    floor; missing keys take their defaults); ``include`` / ``exclude`` regexes on group names.
    Needs ``session.bind(..., steps_per_epoch=...)``. Distributed: the score sums and batch
    counts each rank adds to are averaged over the ranks in ``reduce_`` (a step then adds the
    ranks' mean batch score), and so are the dense γ-gradients the gates capture (the ∂L/∂γ of
    the code's regrowth is a model gradient, averaged by DDP)."""

    NAME: ClassVar[str] = "sca"
    PAPER: ClassVar[str] = "Li et al., ICML 2024 (arXiv 2406.01072)"
    KIND: ClassVar[str] = "channels"

    channel_sparsity: float | None = None
    alpha: float | None = None
    beta: float = 0.1
    score: str = "activity"
    l1: float = 3e-5
    corrections: dict = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    groups_: list = field(default_factory=list, init=False, repr=False, compare=False)
    hooks_: list = field(default_factory=list, init=False, repr=False, compare=False)
    masks_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    sums_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    batches_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    grads_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    grad_steps_: int = field(default=0, init=False, repr=False, compare=False)
    updates_: int = field(default=0, init=False, repr=False, compare=False)
    record_: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    removed_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.channel_sparsity = resolve_target(self.channel_sparsity, {"alpha": self.alpha},
                                               DEFAULT_TARGET)
        self.beta, self.l1 = _number("beta", self.beta), _number("l1", self.l1)
        if self.alpha is not None:
            self.alpha = _number("alpha", self.alpha)
            if not 0 < self.alpha <= 1:
                raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.alpha is not None and not 0 <= self.beta <= 1 - self.alpha:
            raise ValueError(f"beta must be in [0, 1 - alpha], got {self.beta}")
        if self.alpha is None and not 0 <= self.beta < 1 - self.channel_sparsity:
            raise ValueError(f"beta must be in [0, 1 - channel_sparsity) = "
                             f"[0, {1 - self.channel_sparsity:g}), got {self.beta}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {list(SCORES)}, got {self.score!r}")
        if self.l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {self.l1}")
        if not isinstance(self.corrections, dict):
            raise ValueError(f"corrections must be a mapping, got {self.corrections!r}")
        known = [f.name for f in dataclasses.fields(Corrections)]
        unknown = sorted(set(self.corrections) - set(known))
        if unknown:
            raise ValueError(f"corrections: unknown key(s) {unknown}; known: {known}")
        corr = dict(self.corrections)
        if corr.get("after_bn") is None:  # the driver's gates in the target mode, else the code's
            corr["after_bn"] = self.alpha is None
        self.corrections = dataclasses.asdict(Corrections(**corr))
        check_patterns(self.include, self.exclude)

    @property
    def corr(self) -> Corrections:
        return Corrections(**self.corrections)

    # -- hooks ---------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Pick the groups, install all-ones gates, hook the groups' neurons."""
        self.groups_ = self.select(model)
        for g in self.groups_:
            if not g.bns or not g.neurons:
                raise ValueError(f"sca: group {g.name!r} needs a BatchNorm and a spiking neuron "
                                 "(score and regrowth read them); exclude it")
        gate_(model, self.groups_, {g.name: torch.ones(g.size) for g in self.groups_})
        self.masks_ = {g.name: torch.ones(g.size) for g in self.groups_}
        modules = dict(model.named_modules())
        self.hooks_, self.record_ = [], {}
        for n in self.neuron_names():
            neuron = modules[n]
            if self.score != "firing":
                if not hasattr(neuron, "record_v"):
                    raise ValueError(f"sca: neuron {n!r} cannot record its membrane (record_v); "
                                     "use score='firing'")
                self.record_[n] = neuron.record_v
                neuron.record_v = True
            self.hooks_.append(neuron.register_forward_hook(functools.partial(self._record, n)))
        self._reset_scores()
        self.updates_ = self.grad_steps_ = 0  # in the instance dict, so state_dict sees them

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor,
             ctx: Context) -> torch.Tensor:
        """l1 · Σ|W| over the pruned groups' non-pointwise producer convs."""
        total = out_seq.new_zeros(())
        if self.l1 == 0:
            return total
        modules = dict(model.named_modules())
        for g in self.groups_:
            for n in g.producers:
                m = modules[n]
                if isinstance(m, CONVS) and math.prod(m.kernel_size) > 1:
                    total = total + m.weight.abs().sum()
        return self.l1 * total

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """Average the statistics every rank moved by its own data: the score sums and batch
        counts (agreed before the step, so their mean is the agreed value plus the ranks' mean
        batch) and, with ``dense_regrow``, the γ-gradients the gates captured in the backward."""
        names = self.neuron_names()
        ctx.comm.mean_(*(self.sums_[n] for n in names), *(self.batches_[n] for n in names))
        if self.corr.dense_regrow:
            ctx.comm.mean_(*self._gate_grads(model))

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        if not self.groups_:
            return
        if not ctx.steps_per_epoch:
            raise RuntimeError("sca updates its masks once per epoch: call session.bind(optimizer,"
                               " steps_per_epoch=...) before training")
        if self.corr.dense_regrow:
            self._accumulate_dense_grads(model)
        if ctx.step % ctx.steps_per_epoch == 0:
            self.update(model, ctx.progress)

    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Unhook, restore the neurons' record_v, remove the masked channels physically."""
        modules = dict(model.named_modules())
        for handle in self.hooks_:
            handle.remove()
        self.hooks_ = []
        for n, flag in self.record_.items():
            modules[n].record_v = flag
            modules[n].v_seq = modules[n].h_seq = None
        if not self.groups_:
            return model
        masks = {n: m.cpu() for n, m in self.masks_.items()}
        model, self.removed_ = remove_and_record_(model, masks, "sca")
        return model

    # -- the rule ------------------------------------------------------------------------------
    def select(self, model: nn.Module) -> list[ChannelGroup]:
        """The pruned groups (module docstring): conv groups, or those ``include`` names."""
        modules = dict(model.named_modules())
        convs = {g.name for g in channel_groups(model)
                 if all(isinstance(modules[p], CONVS) for p in g.producers)}

        def usable(g: ChannelGroup) -> str | None:  # default: the all-conv groups
            return "is not a conv group" if not self.include and g.name not in convs else None

        return select_channel_groups(model, self.include, self.exclude, usable, "sca",
                                     required=False)

    def counts(self, progress: float) -> tuple[int, int]:
        """(channels kept by score, channels regrown) at an update at ``progress``."""
        n_all = sum(g.size for g in self.groups_)
        regrow = math.floor(n_all * self.beta + 1e-9)
        if self.alpha is not None:
            keep = score_fraction(progress, self.alpha, self.beta, self.corr)
            return math.floor(n_all * keep + 1e-9), regrow
        corr = self.corr
        target = ramp(progress, self.channel_sparsity, 0.0, corr.until) if corr.gradual else \
            self.channel_sparsity
        return n_all - prune_count(n_all, target) - regrow, regrow

    def neuron_names(self) -> list[str]:
        return list(dict.fromkeys(n for g in self.groups_ for n in g.neurons))

    def scores(self) -> dict[str, torch.Tensor]:
        """{group: [C]} the running-mean score since the last update, averaged over its neurons."""
        out = {}
        for g in self.groups_:
            if any(float(self.batches_[n]) == 0 for n in g.neurons):
                raise RuntimeError(f"sca: no training-mode forward through {g.name!r} since the "
                                   "last update: nothing to score channels by")
            per = [self.sums_[n].cpu() / float(self.batches_[n]) for n in g.neurons]
            out[g.name] = torch.stack(per).mean(0)
        return out

    def regrow_grads(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """{group: [C]} what regrowth ranks by: the epoch's mean |dense γ-gradient|, or (code)
        |∂L/∂γ| of the last mini-batch; both summed over the group's BNs."""
        if self.corr.dense_regrow:
            steps = max(self.grad_steps_, 1)
            return {n: g.cpu() / steps for n, g in self.grads_.items()}
        modules = dict(model.named_modules())
        out = {}
        for g in self.groups_:
            total = torch.zeros(g.size)
            for n in g.bns:
                grad = raw_tensor(modules[n], "weight").grad
                if grad is None:
                    raise RuntimeError("sca regrows by the γ-gradient of the last mini-batch: "
                                       "call loss.backward() before session.after_step")
                total += channel_rows(modules[n], grad.detach().abs()).sum(0).cpu()
            out[g.name] = total
        return out

    def update(self, model: nn.Module, progress: float) -> None:
        """One mask update (end of an epoch): score, keep, regrow, apply, reset the statistics."""
        corr = self.corr
        keep, regrow = self.counts(progress)
        scores = self.scores()
        if self.alpha is None:  # a floor keeping more by score leaves less to regrow
            by_score = sum(int(m.sum()) for m in keep_best(scores, keep, corr.floor).values())
            regrow = max(0, min(regrow, keep + regrow - by_score))
        self.masks_ = update_masks(scores, self.regrow_grads(model), keep, regrow, corr.floor)
        if corr.after_bn:
            gate_(model, self.groups_, self.masks_)
        else:
            for g in self.groups_:
                zero_channels_(model, g, self.masks_[g.name])
        self._reset_scores()
        self.updates_ += 1

    def active_channels(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks_.values()))

    # -- statistics ----------------------------------------------------------------------------
    def _record(self, name: str, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if not module.training:
            return
        u = None if self.score == "firing" else module.v_seq
        if self.score != "firing" and u is None:
            raise RuntimeError(f"sca: neuron {name!r} kept no v_seq (single-step mode?)")
        batch = channel_score(self.score, out.detach(), u).detach()
        self.sums_[name] = self.sums_[name].to(batch.device) + batch
        self.batches_[name] = self.batches_[name] + 1

    def _reset_scores(self) -> None:
        sizes = {n: g.size for g in self.groups_ for n in g.neurons}
        self.sums_ = {n: torch.zeros(c) for n, c in sizes.items()}
        self.batches_ = {n: torch.zeros(()) for n in sizes}
        self.grads_ = {g.name: torch.zeros(g.size) for g in self.groups_}
        self.grad_steps_ = 0

    def _accumulate_dense_grads(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for g in self.groups_:
            for n in g.bns:
                gate = gate_of(modules[n], "weight")
                if gate is not None and gate.grad is not None:
                    grad = channel_rows(modules[n], gate.grad.detach().abs()).sum(0)  # on device
                    self.grads_[g.name] = self.grads_[g.name].to(grad.device) + grad
        self.grad_steps_ += 1

    def _gate_grads(self, model: nn.Module) -> list[torch.Tensor]:
        """The dense γ-gradients the pruned groups' gates captured in the last backward."""
        modules = dict(model.named_modules())
        gates = [gate_of(modules[n], "weight") for g in self.groups_ for n in g.bns]
        return [gate.grad for gate in gates if gate is not None and gate.grad is not None]
