"""Which layers a method compresses: the one place that walks ``named_modules`` for selection."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from torch import nn

log = logging.getLogger("spikecompress.targets")

# conv and linear by default (never silently linear only); our time-folded layers subclass these
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# networks beside the SNN (SEENN-II's exit policy, SSNN's training heads): never picked implicitly
AUXILIARY = ("exit_policy.", "ssnn_heads.")


def select(
    model: nn.Module,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    types: Sequence[type[nn.Module]] = DEFAULT_TYPES,
) -> list[tuple[str, nn.Module]]:
    """The (qualified name, module) pairs to compress, in model order.

    A module is picked when it is an instance of one of ``types``, its name matches one of the
    ``include`` regexes (``re.fullmatch``; no include = every name outside the ``AUXILIARY``
    networks) and none of ``exclude``.
    Exclude wins over include. Logs the picked names at INFO. Raises ValueError when nothing is
    picked or a pattern is not a valid regex (naming it).
    """
    inc, exc = compile_patterns(include, "include"), compile_patterns(exclude, "exclude")
    picked = [
        (name, m)
        for name, m in model.named_modules()
        if name
        and isinstance(m, tuple(types))
        and (any(p.fullmatch(name) for p in inc) if inc else not name.startswith(AUXILIARY))
        and not any(p.fullmatch(name) for p in exc)
    ]
    if not picked:
        raise ValueError(
            f"no layer selected (include={list(include)}, exclude={list(exclude)}, "
            f"types={[t.__name__ for t in types]})"
        )
    log.info("selected %d layers: %s", len(picked), ", ".join(n for n, _ in picked))
    return picked


def compile_patterns(patterns: Sequence[str], field: str) -> list[re.Pattern]:
    """The compiled regexes; ValueError naming ``field`` and the pattern when one is invalid."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"{field}: invalid regex {p!r}: {e}") from None
    return out
