"""Which channels to keep: per-channel scores + a target → {0, 1} masks per channel group.

The pruner half of Torch-Pruning's Importance / Pruner split (Fang, Ma, Song, Mi, Wang,
"DepGraph: Towards Any Structural Pruning", CVPR 2023): scorers give one score per channel of
each group; these pure functions turn them and a target into masks.

    masks = keep_best({"features.0.conv": s0, "features.1.conv": s1}, k=30, floor=0.1)
    masks = choose_masks(scores, channel_sparsity=0.3, scope="layer", floor=0.1)

Targets count channels: a ``channel_sparsity`` s over N channels removes round(N·s) of them,
unless a floor forbids it. ``scope="global"`` ranks all groups' scores together (so they must be
comparable: normalise them first when their scales differ); ``"layer"`` removes s of every group,
the rounding spread by largest remainder so the total is still round(N·s). Ties go to the earlier
group, then the lower channel index, on every device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

SCOPES = ("layer", "global")


def floor_count(size: int, floor: float) -> int:
    """Channels a group of ``size`` keeps at least: max(1, ⌈floor·size⌉)."""
    return min(size, max(1, math.ceil(floor * size - 1e-9)))


def prune_count(total: int, channel_sparsity: float) -> int:
    """round(total·channel_sparsity), halves rounded up (not Python's to-even)."""
    return int(math.floor(total * channel_sparsity + 0.5 + 1e-9))


def keep_best(
    scores: Mapping[str, torch.Tensor], k: int, floor: float = 0.0
) -> dict[str, torch.Tensor]:
    """{group: {0, 1} mask [C]} keeping the ``k`` highest scores over all N channels.

    Every group first keeps its ``floor_count(C, floor)`` best channels (so no layer vanishes);
    the rest of the budget goes to the best remaining channels globally. The total kept is
    max(min(k, N), Σ floors). Ties go to the earlier group, then the lower channel index.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    flat = torch.cat([scores[n].detach().flatten().double().cpu() for n in names])  # [N]
    owner = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes))  # [N]
    # the channels are concatenated in group order, so a stable sort breaks ties as promised
    flat = torch.where(flat.isnan(), -math.inf, flat)
    order = torch.sort(flat, descending=True, stable=True).indices
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    for i, size in enumerate(sizes):
        mine = order[owner[order] == i]
        chosen[mine[: floor_count(size, floor)]] = True
    budget = min(k, len(flat)) - int(chosen.sum())
    if budget > 0:
        rest = order[~chosen[order]]
        chosen[rest[:budget]] = True
    return dict(zip(names, (c.float() for c in chosen.split(sizes)), strict=True))


def keep_top(
    scores: Mapping[str, torch.Tensor], keep: float, floor: float = 0.0
) -> dict[str, torch.Tensor]:
    """``keep_best`` with k = ⌊N·keep⌋ (a kept fraction, as SCA's α)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    total = sum(s.numel() for s in scores.values())
    return keep_best(scores, math.floor(total * keep + 1e-9), floor)


def layer_prune_counts(
    sizes: Mapping[str, int], channel_sparsity: float, floor: float = 0.0
) -> dict[str, int]:
    """{group: channels to remove} for ``scope="layer"``: each group's share C·s, rounded so that
    the total is round(N·s) (largest remainder; ties to the earlier group), none below its floor
    (then the total falls short)."""
    room = {n: c - floor_count(c, floor) for n, c in sizes.items()}
    quota = {n: c * channel_sparsity for n, c in sizes.items()}
    counts = {n: min(math.floor(quota[n] + 1e-9), room[n]) for n in sizes}
    missing = prune_count(sum(sizes.values()), channel_sparsity) - sum(counts.values())
    while missing > 0:
        open_ = [n for n in sizes if counts[n] < room[n]]
        if not open_:
            break
        best = max(open_, key=lambda n: quota[n] - counts[n])  # max keeps the earliest on ties
        counts[best] += 1
        missing -= 1
    return counts


def choose_masks(
    scores: Mapping[str, torch.Tensor],
    channel_sparsity: float,
    scope: str = "global",
    floor: float = 0.0,
) -> dict[str, torch.Tensor]:
    """{group: {0, 1} [C]} removing round(N·channel_sparsity) of the lowest-scored channels, over
    all groups (``"global"``) or the same fraction of every group (``"layer"``); each group keeps
    at least ``floor_count(C, floor)``. A channel scored -inf goes first (the driver marks the
    channels it already gated so, which keeps pruning monotone)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    sizes = {n: s.numel() for n, s in scores.items()}
    if scope == "global":
        total = sum(sizes.values())
        return keep_best(scores, total - prune_count(total, channel_sparsity), floor)
    counts = layer_prune_counts(sizes, channel_sparsity, floor)
    return {n: keep_best({n: s}, sizes[n] - counts[n], floor)[n] for n, s in scores.items()}


def top_k_eligible(
    values: Mapping[str, torch.Tensor], eligible: Mapping[str, torch.Tensor], k: int
) -> dict[str, torch.Tensor]:
    """{group: bool [C]}: the ``k`` eligible channels with the largest values over all groups
    (fewer when fewer are eligible); ties go to the earlier group, then the lower index."""
    names = list(values)
    sizes = [values[n].numel() for n in names]
    flat = torch.cat([values[n].detach().double().cpu().flatten() for n in names])  # [N]
    ok = torch.cat([eligible[n].bool().cpu().flatten() for n in names])  # [N]
    ranked = torch.sort(torch.where(ok, flat, -math.inf), descending=True, stable=True).indices
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[ranked[: max(0, min(k, int(ok.sum())))]] = True
    return dict(zip(names, chosen.split(sizes), strict=True))


def mean_normalised(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every group's scores divided by their mean (unchanged when the mean is not positive):
    comparable across groups whose scores scale with the fan-in, for ``scope="global"``."""
    return {n: s / s.mean() if s.mean() > 0 else s for n, s in scores.items()}


def pruned_fraction(masks: Mapping[str, torch.Tensor]) -> float:
    """Zeros over all channels of ``masks`` (0 for no channel)."""
    total = sum(m.numel() for m in masks.values())
    return sum(int((m == 0).sum()) for m in masks.values()) / total if total else 0.0
