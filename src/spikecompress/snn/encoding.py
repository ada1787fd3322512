"""Input encoders: a static input x [B, ...] → x_seq [T, B, ...].

- ``direct``: the analog input repeated T times (the first layer then sees real values: MACs).
- ``poisson``: rate coding, ``S[t] ~ Bernoulli(clamp(x, 0, 1))`` independently per step.
- ``latency``: time to first spike, one spike per element at ``t = round((T − 1)(1 − x))``;
  brighter elements fire earlier, elements with ``x <= 0`` never fire (x is clamped to [0, 1]).
"""

from __future__ import annotations

import torch


def direct(x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Repeat x [B, ...] over T steps: [T, B, ...]."""
    return x.unsqueeze(0).expand(T, *x.shape).contiguous()


def poisson(x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli spikes with probability clamp(x, 0, 1) at every step: [T, B, ...] in {0, 1}."""
    p = x.clamp(0, 1).unsqueeze(0).expand(T, *x.shape)
    return (torch.rand(p.shape, generator=generator, device=x.device, dtype=x.dtype) < p).to(
        x.dtype
    )


def latency(x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One spike per positive element at step round((T − 1)(1 − x)): [T, B, ...] in {0, 1}."""
    xc = x.clamp(0, 1)
    t_fire = torch.round((T - 1) * (1 - xc)).long()  # [B, ...]
    steps = torch.arange(T, device=x.device).view(T, *([1] * x.dim()))
    return ((steps == t_fire.unsqueeze(0)) & (xc > 0).unsqueeze(0)).to(x.dtype)


ENCODERS = {"direct": direct, "poisson": poisson, "latency": latency}


def encode(
    x: torch.Tensor, T: int, kind: str = "direct", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Encode a static batch x [B, ...] into x_seq [T, B, ...] with the named encoder."""
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoding {kind!r}; choose one of {sorted(ENCODERS)}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return ENCODERS[kind](x, T, generator)
