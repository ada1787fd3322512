"""LitE-SNN: joint search of per-layer prune ratio, weight bits and the network's time steps under a
Bit-SynOps budget (Liu, Yan, Zhang, Pan, Li — IJCAI 2024, arXiv 2401.14652).

From the paper's abstract: a Compressive Convolution block (CompConv) whose search space
covers prune ratios and mixed-precision bit widths, sharing weights and pruning masks across
candidates; a compressive time-step search under a compute constraint; the cost is Bit-SynOps
(synaptic operations weighted by the weight bit width); derive the argmax and fine-tune. No code
was released; everything below is our design [R]:

* CompConv: a ``parametrize`` entry on every selected conv / linear ``weight`` (``include`` /
  ``exclude``, ``targets.select``) holding two logit vectors, α_r over the ratios and α_b over the
  bits (DARTS-style, one softmax per axis): ``W_eff = Σ_j Σ_k p_j q_k · Q_{b_k}(W ⊙ M_{r_j})``,
  p = softmax(α_r), q = softmax(α_b). M_r zeroes the round(r·n) smallest |W| of the layer (ties by
  index), recomputed from the current W at every forward: one weight tensor and one ranking shared
  by all candidates. Q_b: the repo's per-tensor symmetric quantizer (``fake_quant``; 0 stays 0).
  Gradient to W: identity (straight-through masks and rounding, Σ p_j q_k = 1), so pruned weights
  can grow back; to the logits: through the mixture (the candidates detached).
* Time steps: logits β over ``candidates.steps`` in a child module ``model.lite_snn_time`` (the
  optimizer trains it, checkpoints carry it); s = softmax(β) over the candidates ≤ the input T
  (larger ones are dropped for that input: the T = 2 contract data searches {1, 2}). The model
  runs the data's T; the loss adds Σ_m s_m · CE(mean_{t ≤ T_m} out[t], y) (causal network: the
  prefix is the run at T_m).
* Cost: ``E_s[T] · Σ_l E_q[b_l] · E_p[1 − r_l] · ops_l / (32 · T · Σ_l ops_l)``, ops_l = the
  layer's synaptic operations per frame (sample × step) of the current batch at full precision
  and no pruning: Σ over non-zero inputs of their fan-out, ``sum(conv(1[x ≠ 0], ones))`` (the
  first layer's real input alike), from a forward hook, detached. Every conv / linear outside the
  auxiliary networks counts (an unselected one at 32 bits, unpruned), so ``budget`` is a fraction
  of the network's dense 32-bit cost at the input T. loss += ``mu`` · max(0, cost − ``budget``).
* Phases (as ``sops_aware``): search for S = max(1, round(``search`` · total steps)) optimizer steps
  (weights and logits jointly; the logits in their own group at ``lr_scale`` × the stage's lr,
  weight decay 0; 10 lets them travel a few units in a short CPU stage), then derive and fine-tune
  in the same stage (a plain fine-tune stage would lose the sparsity and the bit grids).
* Derive: per layer argmax α_r and α_b; T* = argmax s. With ``repair`` a configuration over the
  budget is made cheaper greedily, one candidate at a time (a layer's next larger ratio or next
  smaller bits, or the next smaller T), taking the move that loses the least log-probability per
  unit of cost saved (ops_l: their running mean, momentum 0.9). Fine-tune: W ⊙ M_{r*} at b* bits
  (straight-through; the mask still follows |W|), loss += CE of the mean logits of the first T*
  steps. Logged and kept in ``choices_``: layer → [ratio, bits], ``steps``, ``cost`` and
  ``argmax_cost`` (before repair), as fractions of the dense cost.
* Finalize: W ⊙ M_{r*} at b* bits baked into the plain weight (≤ 2^b* − 1 values: the artifact
  packs it); ``lite_snn_time`` removed; the ``fixed`` exit policy (``models.exit_policy``) with T*
  steps installed, so ``measure()`` counts T* steps and the artifact records it. Biases, BN and
  neurons stay float; bits are 1..8 (the quantizer's range; 32 is not a candidate).
* KIND "quant": it owns the weights' bits, so the Session refuses a second quantizer in its stage
  (whose finalize would bake the mixture); a time method beside it (SEENN) finalizes later and
  replaces the fixed exit policy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.compress.method import Context, model_device
from spikecompress.compress.quant.fake_quant import bake_weight_
from spikecompress.compress.targets import select
from spikecompress.compress.temporal.lite_snn_space import (
    DENSE_BITS,
    CompConv,
    StepLogits,
    bit_synops,
    synops_per_frame,
)
from spikecompress.models.exit_policy import install_exit_policy_

log = logging.getLogger("spikecompress.lite_snn")

TIME = "lite_snn_time"
CANDIDATES = {"ratios": [0.0, 0.5, 0.75], "bits": [8, 4, 2], "steps": [1, 2, 4]}


def _check_candidates(c: object) -> dict:
    if not isinstance(c, dict) or set(c) - set(CANDIDATES):
        raise ValueError(f"candidates must be a mapping with keys {list(CANDIDATES)}, got {c!r}")
    out = {k: list(c.get(k, v)) for k, v in CANDIDATES.items()}
    ok = {"ratios": (lambda r: isinstance(r, int | float) and 0 <= r < 1, "numbers in [0, 1)"),
          "bits": (lambda b: isinstance(b, int) and 1 <= b <= 8, "ints in 1..8"),
          "steps": (lambda t: isinstance(t, int) and t >= 1, "ints >= 1")}
    for k, v in out.items():
        test, what = ok[k]
        if not v or len(set(v)) != len(v) or any(isinstance(x, bool) or not test(x) for x in v):
            raise ValueError(f"candidates.{k} must be distinct {what}, got {v}")
    out["ratios"] = [float(r) for r in out["ratios"]]
    return out


def _number(name: str, value: object, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


@dataclass
class LiteSNN:
    """Search per-layer prune ratio and bits and the network's T under a Bit-SynOps ``budget``
    (a fraction of the dense 32-bit cost at the input T), then fine-tune the derived network
    (module docstring). ``candidates``: {ratios, bits, steps}; ``mu``: the budget penalty;
    ``search``: the fraction of the stage spent searching; ``lr_scale``: the logits' lr factor;
    ``repair``: make a derived configuration over budget fit greedily. Distributed: the logits'
    gradients are averaged by the loop (``param_groups``); the running op counts ``ops_``, which
    each rank moves by its own batch, are averaged over the ranks in ``reduce_`` (a linear moving
    mean: the moving mean of the ranks' mean counts), so the derivation and its repair read the
    same costs on every rank."""

    NAME: ClassVar[str] = "lite_snn"
    PAPER: ClassVar[str] = "Liu, Yan, Zhang, Pan, Li, IJCAI 2024 (arXiv 2401.14652)"
    KIND: ClassVar[str] = "quant"

    candidates: dict = field(default_factory=dict)
    budget: float = 0.1
    mu: float = 1.0
    search: float = 0.5
    lr_scale: float = 10.0
    repair: bool = True
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    ops_: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64),
                               init=False, repr=False, compare=False)
    seen_: int = field(default=0, init=False, repr=False, compare=False)
    t_max_: int = field(default=0, init=False, repr=False, compare=False)
    derived_: bool = field(default=False, init=False, repr=False, compare=False)
    choices_: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.candidates = _check_candidates(self.candidates)
        self.budget = _number("budget", self.budget, 0.0, 1.0)
        self.mu = _number("mu", self.mu, 0.0)
        self.search = _number("search", self.search, 0.0, 1.0)
        self.lr_scale = _number("lr_scale", self.lr_scale, 0.0)
        if self.search == 0 or not isinstance(self.repair, bool):
            raise ValueError(f"need search in (0, 1] and repair true or false, got search="
                             f"{self.search}, repair={self.repair!r}")

    # -- hooks ---------------------------------------------------------------------------------
    def attach(self, model: nn.Module, ctx: Context) -> None:
        """CompConv on the selected layers, β on the model, op-counting hooks on every counted
        conv / linear (the selected ones and every one outside the auxiliary networks)."""
        picked = {id(m) for _, m in select(model, self.include, self.exclude)}
        counted = picked | {id(m) for _, m in select(model)}
        mods = [(n, m) for n, m in model.named_modules() if n and id(m) in counted]
        self._names, self._mods = [n for n, _ in mods], [m for _, m in mods]
        dev, c = model_device(model), self.candidates
        self._comp = []
        for m in self._mods:
            comp = CompConv(c["ratios"], c["bits"], dev) if id(m) in picked else None
            if comp is not None:
                parametrize.register_parametrization(m, "weight", comp)
            self._comp.append(comp)
        setattr(model, TIME, StepLogits(c["steps"], dev))
        self._ops: dict[int, torch.Tensor] = {}
        self._hooks = [m.register_forward_hook(partial(self._count, i))
                       for i, m in enumerate(self._mods)]
        if self.ops_.numel() != len(self._mods):
            self.ops_ = torch.zeros(len(self._mods), dtype=torch.float64)

    def _count(self, i: int, module: nn.Module, inputs, output) -> None:
        if module.training:
            with torch.no_grad():
                self._ops[i] = synops_per_frame(module, inputs[0])

    def param_groups(self, model: nn.Module, ctx: Context) -> list[dict]:
        logits = [p for c in self._comp if c is not None for p in (c.alpha_r, c.alpha_b)]
        return [{"params": [*logits, getattr(model, TIME).beta], "lr_scale": self.lr_scale,
                 "weight_decay": 0.0}]

    def loss(self, model: nn.Module, x_seq: torch.Tensor, out_seq: torch.Tensor, ctx: Context):
        """Search: Σ_m s_m CE(prefix mean at T_m) + mu · max(0, E[cost] − budget); fine-tune:
        CE of the mean logits of the first T* steps."""
        if ctx.y is None:
            raise ValueError("lite_snn needs the labels: call Session.loss(x_seq, out_seq, y)")
        T, y = int(out_seq.shape[0]), ctx.y.to(out_seq.device)
        self.t_max_ = T
        z = out_seq.float().cumsum(0)  # [T, B, K]: z[t - 1] / t is the mean of the first t steps
        time = getattr(model, TIME)
        if self.derived_:
            t = min(time.steps[int(time.choice)], T)  # T* (the whole input when T < T*)
            return F.cross_entropy(z[t - 1] / t, y)
        ops = self._batch_ops(out_seq.device)
        self.ops_ = ops.cpu() if not self.seen_ else 0.9 * self.ops_ + 0.1 * ops.cpu()
        self.seen_ += 1
        s = time.probs(T)
        total = sum(s[m] * F.cross_entropy(z[t - 1] / t, y)
                    for m, t in enumerate(time.steps) if t <= T)
        if self.mu > 0:
            over = F.relu(self.expected_cost(model, ops, T) - self.budget)
            total = total + self.mu * over.to(total.device, total.dtype)
        return total

    def _batch_ops(self, device) -> torch.Tensor:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return torch.stack([self._ops.get(i, zero).to(device) for i in range(len(self._mods))])

    def reduce_(self, model: nn.Module, ctx: Context) -> None:
        """Average the running op counts over the ranks while searching."""
        if not self.derived_:
            ctx.comm.mean_(self.ops_)

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """Derive once the search is over: after S = max(1, round(search · total_steps)) steps
        (or at progress >= search when the loop did not bind its step count)."""
        done = (ctx.step >= max(1, round(self.search * ctx.total_steps)) if ctx.total_steps
                else ctx.progress >= self.search)
        if done and not self.derived_:
            self.derive(model)

    @torch.no_grad()
    def finalize(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Bake Q_{b*}(W ⊙ M_{r*}) into every selected weight and install the fixed exit policy."""
        for h in self._hooks:
            h.remove()
        comps = [(m, c) for m, c in zip(self._mods, self._comp, strict=True) if c is not None]
        if not self.derived_ and not all(_carries(m, c) for m, c in comps):
            raise RuntimeError("lite_snn: another method baked the weights before the search was "
                               "derived; attach it in its own stage")
        if not self.derived_:
            self.derive(model)
        for m, c in comps:
            if _carries(m, c):
                bake_weight_(m, m.weight)
        time = getattr(model, TIME)
        delattr(model, TIME)
        if getattr(model, "exit_policy", None) is not None:
            log.info("lite_snn: replacing the exit policy %s", model.exit_policy.config)
        install_exit_policy_(model, {"kind": "fixed", "steps": time.steps[int(time.choice)]})
        return model

    # -- cost and derivation -------------------------------------------------------------------
    def _T(self, T: int | None = None) -> int:
        return T or self.t_max_ or max(self.candidates["steps"])

    def _factors(self, model: nn.Module, pick: dict | None = None, T: int | None = None):
        """(keep [L], bits [L], steps []) float64: expected under the softmaxes, or of ``pick``
        (candidate indices: ``r``, ``b`` per layer (None: not selected), ``t`` = [step index])."""
        c, one = self.candidates, torch.ones((), dtype=torch.float64)
        keep_f, bits_f = 1 - torch.tensor(c["ratios"]).double(), torch.tensor(c["bits"]).double()
        keep, bits = [], []
        for i, comp in enumerate(self._comp):
            if comp is None:  # not selected: 32 bits, nothing pruned
                keep.append(one), bits.append(one * DENSE_BITS)
            elif pick is None:
                keep.append(torch.softmax(comp.alpha_r.double().cpu(), 0) @ keep_f)
                bits.append(torch.softmax(comp.alpha_b.double().cpu(), 0) @ bits_f)
            else:
                keep.append(keep_f[pick["r"][i]]), bits.append(bits_f[pick["b"][i]])
        steps = torch.tensor(c["steps"]).double()
        if pick is not None:
            return torch.stack(keep), torch.stack(bits), steps[pick["t"][0]]
        s = getattr(model, TIME).probs(self._T(T)).double().cpu()
        return torch.stack(keep), torch.stack(bits), s @ steps

    def expected_cost(self, model: nn.Module, ops: torch.Tensor | None = None,
                      T: int | None = None) -> torch.Tensor:
        """E[Bit-SynOps] / dense cost, differentiable in every logit; ``ops`` [L] per frame
        (default: the running ``ops_``), ``T`` the input's (default: the last seen)."""
        ops = (self.ops_ if ops is None else ops).double().cpu()
        return bit_synops(*self._factors(model, T=self._T(T)), ops, self._T(T))

    def pick_cost(self, model: nn.Module, pick: dict, T: int | None = None) -> float:
        """Bit-SynOps / dense of a derived configuration ``pick`` (running ``ops_``)."""
        return float(bit_synops(*self._factors(model, pick), self.ops_.double(), self._T(T)))

    def argmax_pick(self, model: nn.Module, T: int | None = None) -> dict:
        """The argmax configuration: ratio and bits indices per layer, [the step index]."""
        return {"r": [None if c is None else int(c.alpha_r.argmax()) for c in self._comp],
                "b": [None if c is None else int(c.alpha_b.argmax()) for c in self._comp],
                "t": [int(getattr(model, TIME).probs(self._T(T)).argmax())]}

    @torch.no_grad()
    def derive(self, model: nn.Module) -> dict:
        """Fix the argmax candidates (repaired to fit the budget); fills ``choices_``."""
        pick = self.argmax_pick(model)
        known = bool(self.seen_) and float(self.ops_.sum()) > 0
        argmax_cost = self.pick_cost(model, pick) if known else math.nan
        if self.repair and known:
            pick = self._repair(model, pick)
        c, time = self.candidates, getattr(model, TIME)
        for i, comp in enumerate(self._comp):
            if comp is not None:
                comp.choice.copy_(torch.tensor([pick["r"][i], pick["b"][i]]))
        time.choice.fill_(pick["t"][0])
        layers = {n: [c["ratios"][pick["r"][i]], c["bits"][pick["b"][i]]]
                  for i, n in enumerate(self._names) if self._comp[i] is not None}
        cost = self.pick_cost(model, pick) if known else math.nan
        self.choices_ = {n: torch.tensor(v, dtype=torch.float64) for n, v in layers.items()}
        self.choices_.update(steps=torch.tensor(c["steps"][pick["t"][0]]),
                             cost=torch.tensor(cost), argmax_cost=torch.tensor(argmax_cost))
        self.derived_ = True
        log.info("lite_snn: T* = %d, [ratio, bits] %s, Bit-SynOps %.4f of dense (argmax %.4f, "
                 "budget %.4f)", c["steps"][pick["t"][0]], layers, cost, argmax_cost, self.budget)
        return pick

    def _repair(self, model: nn.Module, pick: dict) -> dict:
        """Greedy: while over budget, take the one-candidate-cheaper move that loses the least
        log-probability per unit of cost saved."""
        cost = self.pick_cost(model, pick)
        while cost > self.budget:
            best = (math.inf, None)
            for key, i, logp, factors in self._axes(model):
                old = pick[key][i]
                smaller = [j for j, f in enumerate(factors) if f < factors[old]]
                if not smaller:
                    continue
                new = max(smaller, key=lambda j: factors[j])  # the next cheaper candidate
                trial = {k: list(v) for k, v in pick.items()}
                trial[key][i] = new
                saved = cost - self.pick_cost(model, trial)
                score = (float(logp[old]) - float(logp[new])) / saved if saved > 0 else math.inf
                if score < best[0]:
                    best = (score, trial)
            if best[1] is None:
                log.warning("lite_snn: nothing fits the budget %.4f (cheapest %.4f)",
                            self.budget, cost)
                break
            pick, cost = best[1], self.pick_cost(model, best[1])
        return pick

    def _axes(self, model: nn.Module):
        """(key, index, log-probabilities, cost factors) of every choice: each layer's ratio
        (factor 1 − r) and bits, and the step (candidates above the input T: never cheaper)."""
        c, T = self.candidates, self._T()
        for i, comp in enumerate(self._comp):
            if comp is not None:
                yield "r", i, torch.log_softmax(comp.alpha_r.double(), 0), [1 - r for r in
                                                                              c["ratios"]]
                yield "b", i, torch.log_softmax(comp.alpha_b.double(), 0), c["bits"]
        yield "t", 0, torch.log(getattr(model, TIME).probs(T).double()), [
            t if t <= T else math.inf for t in c["steps"]]


def _carries(module: nn.Module, comp: CompConv) -> bool:
    """True while ``comp`` is still one of the parametrizations of ``module.weight``."""
    return parametrize.is_parametrized(module, "weight") and any(
        p is comp for p in module.parametrizations["weight"])
