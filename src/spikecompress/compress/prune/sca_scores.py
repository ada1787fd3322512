"""SCA's scoring and update rules as pure functions (the method is ``prune.sca``): the channel
score of one batch, the kept fraction α_t of a gradual schedule, one mask update (keep the best
by score, regrow by |gradient|), and our corrections to the authors' code as a validated
dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spikecompress.compress.prune.channel_select import keep_best, top_k_eligible

SCORES = ("activity", "firing", "membrane")


@dataclass
class Corrections:
    """Our corrections to the code's behaviour (module docstring); all off = the code.
    ``after_bn`` None: on in the target mode, off with ``alpha`` (SCA resolves it)."""

    after_bn: bool | None = None
    dense_regrow: bool = False
    gradual: bool = False
    until: float = 0.5
    floor: float = 0.0

    def __post_init__(self) -> None:
        for name in ("after_bn", "dense_regrow", "gradual"):
            if not isinstance(getattr(self, name), bool) and not (
                    name == "after_bn" and self.after_bn is None):
                raise ValueError(f"corrections.{name} must be true or false, "
                                 f"got {getattr(self, name)!r}")
        self.until, self.floor = _number("corrections.until", self.until), _number(
            "corrections.floor", self.floor)
        if not 0 < self.until <= 1:
            raise ValueError(f"corrections.until must be in (0, 1], got {self.until}")
        if not 0 <= self.floor <= 1:
            raise ValueError(f"corrections.floor must be in [0, 1], got {self.floor}")
        if self.dense_regrow and self.after_bn is False:
            raise ValueError("corrections.dense_regrow needs corrections.after_bn: with in-place "
                             "zeroing a pruned filter is 0, so its dense γ-gradient is 0 too")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def score_fraction(progress: float, alpha: float, beta: float, corr: Corrections) -> float:
    """α_t, the fraction of all channels kept by score at an update at ``progress`` (α mode)."""
    if not corr.gradual or progress >= corr.until:
        return alpha
    return alpha + (1 - alpha - beta) * (1 - progress / corr.until) ** 3


def channel_score(kind: str, s: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """The SCA scorer of one batch, [C]: mean over every dim but the channel dim 2 of s + |u|,
    s or |u| (s spikes, u membrane after reset, both [T, B, C, ...])."""
    dims = [d for d in range(s.dim()) if d != 2]
    if kind == "firing":
        return s.float().mean(dims)
    membrane = u.float().abs().mean(dims)
    return membrane if kind == "membrane" else s.float().mean(dims) + membrane


def update_masks(scores: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], keep: int,
                 regrow: int, floor: float = 0.0) -> dict[str, torch.Tensor]:
    """One SCA update: keep the ``keep`` best channels by score (global, per-group ``floor``),
    then switch on the ``regrow`` channels outside them with the largest |gradient|."""
    kept = keep_best(scores, keep, floor)
    dropped = {n: m == 0 for n, m in kept.items()}
    grown = top_k_eligible({n: g.abs() for n, g in grads.items()}, dropped, regrow)
    return {n: ((kept[n] > 0) | grown[n]).float() for n in kept}
