"""Fold BatchNorm into the conv / linear layer before it (for integer quantization).

An integer SNN cannot run a float BatchNorm between a layer and its neuron, so quantization that
lowers to integers first folds every BN (eval statistics) into the preceding layer:

    y = γ (W x + b − μ) / sqrt(σ² + ε) + β   ⇒   W' = W · γ / sqrt(σ² + ε),
                                                  b' = (b − μ) · γ / sqrt(σ² + ε) + β

per output channel, computed in float64 and rounded once. The BN module is replaced by
``nn.Identity`` and the layer gets a bias; ``model.spec["folded_bn"]`` records the folded
paths so that ``from_spec`` (``models.EXTRAS``) rebuilds the same structure and the artifact
loads. Only a BN that directly follows a conv / linear layer in the same ``nn.Sequential`` is
folded (every block of our model families); ``strict`` refuses any other BN by name (a
SEW-ResNet's BN sits in a residual block). A BNTT (``snn.BNTT``: one BN per time step) is always
refused by name: its per-step scales cannot fold into one weight.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from spikecompress.snn.bntt import BNTT

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _pairs(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module, nn.Module]]:
    """(layer path, layer, BN path, BN, parent) for every BN right after a layer in a Sequential."""
    out = []
    for pname, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (lname, layer), (bname, bn) in zip(children, children[1:], strict=False):
            if isinstance(layer, LAYERS) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                prefix = f"{pname}." if pname else ""
                out.append((prefix + lname, layer, prefix + bname, bn, parent))
    return out


def _raw_weight(layer: nn.Module) -> torch.Tensor:
    """The stored W (under a parametrization such as a pruning mask, its original: folding
    scales rows, which commutes with a mask)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def _give_bias_(layer: nn.Module) -> None:
    if layer.bias is None:
        w = layer.weight
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))


@torch.no_grad()
def fold_batchnorm_(model: nn.Module, strict: bool = True) -> list[str]:
    """Fold every BN of ``model`` into the layer before it (in place); returns the BN paths.

    ``strict``: any BN left that cannot be folded is a ValueError naming it. A BNTT is a
    ValueError naming it in either mode. Records ``model.spec["folded_bn"]`` when the model has a
    spec."""
    for name, m in model.named_modules():
        if isinstance(m, BNTT):
            raise ValueError(f"{name}: {type(m).__name__} (one BatchNorm per time step) cannot be "
                             "folded: a per-step scale does not fold into one weight")
    pairs = _pairs(model)
    folded = {bpath for _, _, bpath, _, _ in pairs}
    if strict:
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in folded:
                raise ValueError(f"{name}: a BatchNorm that does not directly follow a conv or "
                                 f"linear layer cannot be folded")
    for _, layer, bpath, bn, parent in pairs:
        if bn.running_mean is None:
            raise ValueError(f"{bpath}: BatchNorm without running statistics cannot be folded")
        raw = _raw_weight(layer)
        w = raw.detach().double()
        gamma = bn.weight.double() if bn.affine else torch.ones_like(w[:, 0].flatten())
        inv = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() if bn.affine else torch.zeros_like(inv)
        b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(inv)
        new_w = w * inv.view(-1, *([1] * (w.dim() - 1)))
        new_b = (b - bn.running_mean.double()) * inv + shift
        _give_bias_(layer)
        raw.copy_(new_w.to(raw.dtype))
        layer.bias.copy_(new_b.to(layer.bias.dtype))
        setattr(parent, bpath.rpartition(".")[2], nn.Identity())
    paths = sorted(folded)
    if isinstance(getattr(model, "spec", None), dict) and paths:
        model.spec["folded_bn"] = sorted(set(model.spec.get("folded_bn") or []) | set(paths))
    return paths


def install_folded_bn_(model: nn.Module, paths: list[str]) -> None:
    """``from_spec``'s installer: give the structure of a folded model (BN → Identity, a bias on
    the layer before) so that its state dict loads; the values come from the state dict."""
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"folded_bn must be a list of module paths, got {paths!r}")
    pairs = {bpath: (layer, parent) for _, layer, bpath, _, parent in _pairs(model)}
    for path in paths:
        if path not in pairs:
            raise ValueError(f"folded_bn: {path} is not a BatchNorm after a conv / linear layer "
                             f"of this model")
        layer, parent = pairs[path]
        _give_bias_(layer)
        setattr(parent, path.rpartition(".")[2], nn.Identity())
    model.spec["folded_bn"] = list(paths)
