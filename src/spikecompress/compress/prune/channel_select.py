"""Which channels to keep: one global ranking over every group, with a per-group floor.

    masks = keep_top({"features.0.conv": s0, "features.1.conv": s1}, keep=0.3, floor=0.1)

Scores are compared across groups as they are (normalise them first when their scales differ).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def floor_count(size: int, floor: float) -> int:
    """Channels a group of ``size`` keeps at least: max(1, ⌈floor·size⌉)."""
    return min(size, max(1, math.ceil(floor * size - 1e-9)))


def keep_top(
    scores: Mapping[str, torch.Tensor], keep: float, floor: float = 0.0
) -> dict[str, torch.Tensor]:
    """{group: {0, 1} mask [C]} keeping the ⌊N·keep⌋ highest scores over all N channels.

    Every group first keeps its ``floor_count(C, floor)`` best channels (so no layer vanishes);
    the rest of the budget goes to the best remaining channels globally. The total kept is
    max(⌊N·keep⌋, Σ floors). Ties go to the earlier group, then the lower channel index.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in names])
    owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
    index = torch.cat([torch.arange(scores[n].numel()) for n in names])
    # rank: score descending, then group order, then channel index (a stable lexicographic sort)
    order = sorted(range(len(flat)), key=lambda j: (-flat[j].item(), owner[j].item(), index[j]))
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    for i, n in enumerate(names):
        mine = [j for j in order if owner[j] == i]
        chosen[mine[: floor_count(scores[n].numel(), floor)]] = True
    budget = math.floor(len(flat) * keep + 1e-9) - int(chosen.sum())
    for j in order:
        if budget <= 0:
            break
        if not chosen[j]:
            chosen[j], budget = True, budget - 1
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = chosen[start : start + size].float()
        start += size
    return out
