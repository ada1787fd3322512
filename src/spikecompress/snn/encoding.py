"""Input encoders: a static input x [B, ...] → x_seq [T, B, ...].

- ``direct``: the analog input repeated T times (the first layer then sees real values: MACs).
- ``poisson``: rate coding, ``S[t] ~ Bernoulli(clamp(x, 0, 1))`` independently per step.
- ``latency``: time to first spike, one spike per element at ``t = round((T − 1)(1 − x))``;
  brighter elements fire earlier, elements with ``x <= 0`` never fire (x is clamped to [0, 1]).
- ``tsc``: temporal-switch coding (Han & Roy, ECCV 2020), window ``Tw = T − 1``: an element
  x in [0, 1] is an ON event +1 at step 0 and an OFF event −1 at step ``round(x · Tw)`` (half to
  even, ``torch.round``), so the interval over Tw is x on a grid of 1/Tw; an element whose
  interval rounds to 0 emits nothing.
  Values outside [0, 1] are refused (``snn.tsc`` runs networks on these events).
- ``ttfs``: the onset of the analog input, x at step 0 and 0 after (values as they are): a TTFS
  network (``snn.ttfs``) integrates it as a constant current from step 0, so its first layer
  spikes at ``t_first ≈ V_th / (W x)``, and its synapses see one event per sample (MACs, once).
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


def tsc(x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Temporal-switch coding: ON (+1) at step 0, OFF (−1) at step round(x · (T − 1)) per element
    of x [B, ...] in [0, 1]: [T, B, ...] in {−1, 0, 1}; no events where that interval is 0."""
    if T < 2:
        raise ValueError(f"tsc encoding needs T >= 2 (its window is T - 1 steps), got T={T}")
    outside = ~((x >= 0) & (x <= 1))  # NaN is outside too
    if bool(outside.any()):
        raise ValueError(f"tsc encoding needs inputs in [0, 1], got {x[outside][0].item()!r}")
    k = torch.round(x * (T - 1)).long()  # [B, ...] interval in steps, 0..T-1
    on = (k > 0).to(x.dtype)
    x_seq = x.new_zeros(T, *x.shape)
    x_seq[0] = on
    return x_seq.scatter_add_(0, k.unsqueeze(0), -on.unsqueeze(0))  # OFF at step k (k > 0)


def ttfs(x: torch.Tensor, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The onset of x [B, ...]: x at step 0, zeros at the other T − 1 steps: [T, B, ...]."""
    x_seq = x.new_zeros(T, *x.shape)
    x_seq[0] = x
    return x_seq


ENCODERS = {"direct": direct, "poisson": poisson, "latency": latency, "tsc": tsc, "ttfs": ttfs}


def encode(
    x: torch.Tensor, T: int, kind: str = "direct", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Encode a static batch x [B, ...] into x_seq [T, B, ...] with the named encoder."""
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoding {kind!r}; choose one of {sorted(ENCODERS)}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return ENCODERS[kind](x, T, generator)
