"""Early-exit policies installed on a model as ``model.exit_policy`` (SEENN, Li et al.,
NeurIPS 2023): the model's forward stays the full-T per-step logits; the policy decides, per
sample, the step t at which the SNN stops and the prediction argmax of Σ_{k≤t} out[k].

Every policy is an ``nn.Module`` called as ``policy(x_seq, out_seq) -> (steps [B] int64 in 1..T,
preds [B] int64)``; the network is causal, so the logits of a run stopped at t are exactly the
first t steps of the full run (``measure.early_exit`` relies on this and tests it).

* ``ConfidenceExit`` (SEENN-I, from the authors' code, §12.4): z_t = cumulative *sum* of the
  logits (not the mean: the sum sharpens the softmax as t grows), score = max softmax(z_t / τ) or
  1 − H(softmax(z_t / τ)) / log K; exit at the first t with score > α, or at T. Parameter-free:
  α, the score and τ live in its config. Our one addition: α ≤ 0 exits at t = 1 for every sample
  (the spec's behaviour; the entropy score of an exactly uniform softmax is 0, not > 0).
* ``PolicyExit`` (SEENN-II; no code was released, this network is our design [R]): a small ANN that
  sees the input before the SNN runs: x̄ = time-mean of x_seq [B, *in_shape] (optionally average
  pooled to ``pool`` per spatial side) → flatten → Linear(F, hidden) → ReLU → Linear(hidden,
  t_max) → logits over t ∈ {1..min(T, t_max)} (later actions masked, so T stays a runtime
  argument); at inference it picks argmax. Trained by ``compress.temporal.seenn.SEENN``.

* ``FixedExit`` (``{"kind": "fixed", "steps": k}``; LitE-SNN's searched T*, ``compress.temporal.
  lite_snn``): parameter-free, every sample runs exactly min(k, T) steps and predicts argmax of
  Σ_{k'≤min(k, T)} out[k'] (a model run at a T below k is run to its end: our choice).

``install_exit_policy_(model, config)`` builds the policy from its JSON config, sets
``model.exit_policy`` and ``model.spec["exit_policy"] = config`` (registered in ``models.EXTRAS``,
so artifacts round-trip it; the policy network's weights travel in the state_dict).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.models.checks import check_choice, check_float, check_int, check_int_list

KEY = "exit_policy"
SCORES = ("max_softmax", "entropy")
POLICY_KINDS = ("confidence", "policy", "fixed")


def exit_scores(z: torch.Tensor, score: str = "max_softmax", temperature: float = 1.0):
    """Confidence of logits z [..., K] → [...] in [0, 1]: max softmax(z / τ), or (``entropy``)
    1 − H(softmax(z / τ)) / log K."""
    check_choice("score", score, SCORES)
    p = torch.softmax(z.float() / temperature, dim=-1)
    if score == "max_softmax":
        return p.amax(-1)
    k = z.shape[-1]
    if k < 2:
        raise ValueError(f"the entropy score needs at least 2 classes, got {k}")
    entropy = -torch.special.xlogy(p, p).sum(-1)  # 0·log 0 = 0
    return (1 - entropy / math.log(k)).clamp(0, 1)


def prefix_logits(out_seq: torch.Tensor) -> torch.Tensor:
    """z [T, B, K]: z[t] = Σ_{k≤t} out_seq[k] (the cumulative sum SEENN decides on), float32."""
    if out_seq.dim() != 3:
        raise ValueError(f"expected logits out_seq [T, B, K], got {tuple(out_seq.shape)}")
    return out_seq.float().cumsum(0)


def predictions_at(out_seq: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """preds [B]: argmax of Σ_{k≤steps[b]} out_seq[k, b] for each sample b (steps in 1..T)."""
    z = prefix_logits(out_seq)
    idx = (steps.to(z.device).long() - 1).clamp(0, z.shape[0] - 1)
    rows = z.gather(0, idx.view(1, -1, 1).expand(1, z.shape[1], z.shape[2]))[0]  # [B, K]
    return rows.argmax(-1)


def exit_steps(
    out_seq: torch.Tensor, alpha: float, score: str = "max_softmax", temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEENN-I on logits out_seq [T, B, K]: (steps [B] int64 in 1..T, preds [B]); a sample exits
    at the first t whose score of z_t = Σ_{k≤t} out[k] is > ``alpha`` (α ≤ 0: at t = 1), else T."""
    z = prefix_logits(out_seq)
    s = exit_scores(z, score, temperature)  # [T, B]
    ok = s > alpha if alpha > 0 else torch.ones_like(s, dtype=torch.bool)
    ok[-1] = True  # every sample exits at T at the latest
    first = ok.to(torch.uint8).argmax(0)  # the first True (argmax returns the first maximum)
    steps = first.long() + 1
    return steps, predictions_at(out_seq, steps)


class ConfidenceExit(nn.Module):
    """SEENN-I: exit when the confidence of the cumulative logits exceeds ``alpha``."""

    def __init__(self, alpha: float, score: str = "max_softmax", temperature: float = 1.0):
        super().__init__()
        self.alpha = _check_alpha(alpha)
        self.score = check_choice("score", score, SCORES)
        self.temperature = check_float("temperature", temperature, above=0.0)

    @property
    def config(self) -> dict:
        return {"kind": "confidence", "alpha": self.alpha, "score": self.score,
                "temperature": self.temperature}

    def forward(self, x_seq: torch.Tensor, out_seq: torch.Tensor):
        """(steps [B], preds [B]) from the full-T logits out_seq [T, B, K]."""
        return exit_steps(out_seq, self.alpha, self.score, self.temperature)


class PolicyExit(nn.Module):
    """SEENN-II policy network: picks t ∈ {1..min(T, t_max)} from the input alone."""

    def __init__(self, in_shape, hidden: int, t_max: int, pool: int | None = None):
        super().__init__()
        self.in_shape = tuple(check_int_list("in_shape", in_shape, min_len=1))
        self.hidden, self.t_max = check_int("hidden", hidden), check_int("t_max", t_max)
        self.pool = None if pool is None else check_int("pool", pool)
        self.net = nn.Sequential(OrderedDict(
            fc0=nn.Linear(math.prod(self._pooled_shape()), self.hidden),
            relu=nn.ReLU(),
            fc1=nn.Linear(self.hidden, self.t_max),
        ))

    @property
    def config(self) -> dict:
        return {"kind": "policy", "in_shape": list(self.in_shape), "hidden": self.hidden,
                "t_max": self.t_max, "pool": self.pool}

    def _pooled_shape(self) -> tuple[int, ...]:
        c, *spatial = self.in_shape
        if self.pool is None or not spatial:
            return self.in_shape
        return (c, *(min(n, self.pool) for n in spatial))

    def features(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The policy's input [B, F]: the time-mean of x_seq [T, B, ...], pooled, flattened."""
        x = x_seq.float().mean(0)  # [B, ...]
        x = x.reshape(x.shape[0], *self.in_shape)  # [B, *in_shape] (the MLP's flat input too)
        size = self._pooled_shape()[1:]
        if len(size) == 2 and tuple(x.shape[2:]) != size:
            x = F.adaptive_avg_pool2d(x, size)
        elif len(size) == 1 and tuple(x.shape[2:]) != size:
            x = F.adaptive_avg_pool1d(x, size)
        return x.flatten(1)  # [B, F]

    def logits(self, x_seq: torch.Tensor) -> torch.Tensor:
        """Action logits [B, min(T, t_max)]: column a is 'stop after step a + 1'."""
        n = min(int(x_seq.shape[0]), self.t_max)
        return self.net(self.features(x_seq))[:, :n]

    def choose(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The deterministic inference choice: steps [B] = argmax π(·|x) + 1."""
        return self.logits(x_seq).argmax(1) + 1

    def forward(self, x_seq: torch.Tensor, out_seq: torch.Tensor):
        """(steps [B], preds [B]): the chosen step, the argmax of the cumulative logits there."""
        steps = self.choose(x_seq)
        return steps, predictions_at(out_seq, steps)


class FixedExit(nn.Module):
    """Every sample runs exactly ``steps`` time steps (min(steps, T) when T is shorter)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = check_int("steps", steps)

    @property
    def config(self) -> dict:
        return {"kind": "fixed", "steps": self.steps}

    def forward(self, x_seq: torch.Tensor, out_seq: torch.Tensor):
        """(steps [B] = min(steps, T), preds [B]) from the full-T logits out_seq [T, B, K]."""
        T, B = int(out_seq.shape[0]), int(out_seq.shape[1])
        steps = torch.full((B,), min(self.steps, T), dtype=torch.int64, device=out_seq.device)
        return steps, predictions_at(out_seq, steps)


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) \
            or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


def build_exit_policy(config: dict) -> nn.Module:
    """The policy module of a JSON ``config`` (its ``kind`` and that kind's fields)."""
    if not isinstance(config, dict):
        raise ValueError(f"exit_policy must be a mapping, got {config!r}")
    kind = check_choice("exit_policy.kind", config.get("kind"), POLICY_KINDS)
    fields = {"confidence": ("alpha", "score", "temperature"),
              "policy": ("in_shape", "hidden", "t_max", "pool"),
              "fixed": ("steps",)}[kind]
    unknown = sorted(set(config) - {"kind", *fields})
    if unknown:
        raise ValueError(f"exit_policy: unknown key(s) {unknown} for kind {kind!r}")
    args = {k: config[k] for k in fields if k in config}
    if kind == "fixed" and "steps" not in args:
        raise ValueError("exit_policy: kind 'fixed' needs 'steps' (an int >= 1)")
    cls = {"confidence": ConfidenceExit, "policy": PolicyExit, "fixed": FixedExit}[kind]
    return cls(**args)


def install_exit_policy_(model: nn.Module, config: dict) -> nn.Module:
    """Build the policy of ``config``, set it as ``model.exit_policy`` (replacing any) on the
    model's device, record its config in ``model.spec["exit_policy"]``; returns the policy."""
    policy = build_exit_policy(config)
    p = next(model.parameters(), None)
    if p is not None:
        policy = policy.to(p.device)
    model.exit_policy = policy
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict):
        spec[KEY] = policy.config
    return policy
