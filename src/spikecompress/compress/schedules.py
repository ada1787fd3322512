"""Schedules: pure functions of training progress in [0, 1] → a value between ``start`` and ``end``.

``cubic`` is Zhu & Gupta's gradual pruning schedule (ICLR-W 2018): ``end + (start − end)(1 − p)³``,
fast at first, flat near the end. ``steps`` moves in ``n`` equal jumps. ``begin`` / ``until`` hold
the value at ``start`` before ``begin`` and at ``end`` after ``until``.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cubic", "cosine", "steps")


def schedule_value(
    kind: str,
    progress: float,
    start: float,
    end: float,
    begin: float = 0.0,
    until: float = 1.0,
    n: int = 4,
) -> float:
    """The value of schedule ``kind`` at ``progress`` (clamped to [0, 1]); constant: ``end``."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {kind!r}")
    if not 0 <= begin < until <= 1:
        raise ValueError(f"schedule window needs 0 <= begin < until <= 1, got {begin}, {until}")
    if kind == "constant":
        return end
    p = min(max((progress - begin) / (until - begin), 0.0), 1.0)
    if kind == "linear":
        f = p
    elif kind == "cubic":
        f = 1 - (1 - p) ** 3
    elif kind == "cosine":
        f = 0.5 * (1 - math.cos(math.pi * p))
    else:
        if n < 1:
            raise ValueError(f"steps schedule needs n >= 1, got {n}")
        f = math.floor(p * n) / n
    return start + (end - start) * f
