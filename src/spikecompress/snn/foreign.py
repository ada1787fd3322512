"""Modules of other SNN frameworks that our counters and ``reset_state`` cannot see.

A neuron of SpikingJelly, snnTorch, Norse, Sinabs, Lava or Rockpool keeps its state and spikes in
its own conventions; counting its spikes as ours (zero) or "resetting" it by our convention (doing
nothing) would be silently wrong. So every neuron-like module of those packages — not a plain
torch layer (conv / linear / BN / pool / dropout / flatten subclasses are counted as any torch
layer), and either stateful (``v``, ``mem``, a threshold, SpikingJelly's memories) or named like a
neuron or cell — is refused by name, with the converter that makes the model ours
(``spikecompress.interop``).
"""

from __future__ import annotations

import re

from torch import nn

FRAMEWORKS = {"spikingjelly": "from_spikingjelly", "snntorch": "from_snntorch",
              "norse": "from_norse", "sinabs": None, "lava": None, "rockpool": None}
TORCH_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm,
                nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.dropout._DropoutNd, nn.Flatten,
                nn.Identity)


def framework_of(module: nn.Module) -> str | None:
    """The foreign framework a module's class comes from, or None."""
    root = type(module).__module__.split(".")[0]
    return root if root in FRAMEWORKS else None


STATE_ATTRIBUTES = ("v", "mem", "v_threshold", "threshold", "_memories")
NEURON_NAME = re.compile(r"LIF|IF|Leaky|Lapicque|Synaptic|Alpha|Cell|Node|Neuron|Spik|LSNN|LI\b")


def neuron_like(module: nn.Module) -> bool:
    """True for a module of a foreign framework that keeps spikes or state we cannot see."""
    if framework_of(module) is None or isinstance(module, TORCH_LAYERS):
        return False
    return (any(hasattr(module, a) for a in STATE_ATTRIBUTES)
            or NEURON_NAME.search(type(module).__name__) is not None)


def foreign_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, framework) of every neuron-like foreign module, in model order."""
    return [(name, m, framework_of(m)) for name, m in model.named_modules() if neuron_like(m)]


def refuse_foreign(model: nn.Module, where: str, allow: tuple[str, ...] = ()) -> None:
    """Raise a one-line ValueError naming the first foreign module ``where`` cannot see."""
    for name, m, fw in foreign_modules(model):
        if fw in allow:
            continue
        convert = FRAMEWORKS[fw]
        hint = (f"; convert the model first: spikecompress.interop.{convert}(model, example)"
                if convert else f"; spikecompress has no converter for {fw}")
        cls = f"{type(m).__module__}.{type(m).__qualname__}"
        raise ValueError(f"{where}: module {name or '<model>'!r} ({cls}) is a {fw} module whose "
                         f"spikes and state it cannot see{hint}")
