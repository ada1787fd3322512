"""Residual SNNs: Spiking ResNet (e.g. ResNet-19 of Zheng et al., AAAI 2021) and SEW-ResNet with the
ADD connection (Fang et al., NeurIPS 2021), CIFAR-style (3×3 stem, stride 1, no max-pool).

Widths are given per stage (``widths[s]``: the stem, when s = 0, and every block output of stage
s, the channels the residual additions tie together and structured pruning must remove together)
and per block (``inner_widths[s][b]``: the free channels between a block's two convs), so the width
lists a channel-pruning surgery produces rebuild the pruned model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from spikecompress.models.checks import check_bool, check_int, check_int_list, check_size
from spikecompress.models.common import (
    Act,
    Network,
    Norm,
    activation,
    head,
    norm_factory,
    resolve_neuron,
    resolve_norm,
)
from spikecompress.snn import AdaptiveAvgPool2d, Conv2d

_BN: Norm = norm_factory()


def _init_branch(block: nn.Module, in_c: int, inner: int, out_c: int, stride: int, act: Act,
                 norm: Norm) -> None:
    block.conv1 = Conv2d(in_c, inner, 3, stride=stride, padding=1, bias=False)
    block.bn1 = norm(inner, 2)
    block.act1 = act(inner)
    block.conv2 = Conv2d(inner, out_c, 3, stride=1, padding=1, bias=False)
    block.bn2 = norm(out_c, 2)
    block.act2 = act(out_c)


def _downsample(in_c: int, out_c: int, stride: int, act: Act | None,
                norm: Norm) -> nn.Module | None:
    """1×1 conv (stride) → BN [→ neuron] when the block changes shape, else None (identity)."""
    if stride == 1 and in_c == out_c:
        return None
    layers = OrderedDict(conv=Conv2d(in_c, out_c, 1, stride=stride, bias=False),
                         bn=norm(out_c, 2))
    if act is not None:
        layers["act"] = act(out_c)
    return nn.Sequential(layers)


class BasicBlock(nn.Module):
    """Spiking ResNet basic block: ``SN(BN(conv2(SN(BN(conv1(x))))) + shortcut(x))``.

    The residual is added to the BN output before the last neuron (Zheng et al. 2021); the
    shortcut is x or, when the block changes shape, BN(conv1×1(x)). [T, B, C, H, W] →
    [T, B, out_c, H/stride, W/stride].
    """

    def __init__(self, in_c: int, inner: int, out_c: int, stride: int, act: Act,
                 norm: Norm = _BN) -> None:
        super().__init__()
        _init_branch(self, in_c, inner, out_c, stride, act, norm)
        self.downsample = _downsample(in_c, out_c, stride, None, norm)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x_seq)))))
        identity = x_seq if self.downsample is None else self.downsample(x_seq)
        return self.act2(out + identity)


class SEWBlock(nn.Module):
    """SEW basic block, ADD connection: ``SN(BN(conv2(SN(BN(conv1(x)))))) + shortcut(x)``.

    Spikes are added, so the output counts spikes (values up to the block depth + 1, not {0, 1}).
    The shortcut is x or, when the block changes shape, SN(BN(conv1×1(x))) as in Fang et al.
    2021, so that both terms are spikes. [T, B, C, H, W] → [T, B, out_c, H/stride, W/stride].
    """

    def __init__(self, in_c: int, inner: int, out_c: int, stride: int, act: Act,
                 norm: Norm = _BN) -> None:
        super().__init__()
        _init_branch(self, in_c, inner, out_c, stride, act, norm)
        self.downsample = _downsample(in_c, out_c, stride, act, norm)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        out = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x_seq))))))
        identity = x_seq if self.downsample is None else self.downsample(x_seq)
        return out + identity


def _check_inner(inner_widths: object, widths: list[int], blocks: list[int]) -> list[list[int]]:
    if inner_widths is None:
        return [[w] * n for w, n in zip(widths, blocks, strict=True)]
    not_list = isinstance(inner_widths, str) or not isinstance(inner_widths, Sequence)
    if not_list or len(inner_widths) != len(blocks):
        raise ValueError(f"inner_widths must hold one list per stage, got {inner_widths!r}")
    out = [check_int_list(f"inner_widths[{s}]", v) for s, v in enumerate(inner_widths)]
    for s, (v, n) in enumerate(zip(out, blocks, strict=True)):
        if len(v) != n:
            raise ValueError(f"inner_widths[{s}] must have {n} widths (blocks[{s}]), got {v}")
    return out


def _features(block: type, in_channels: int, widths: list[int], inner: list[list[int]],
              act: Act, norm: Norm) -> nn.Sequential:
    """stem (conv3×3-BN-neuron) → stage0 … stageN (stage s > 0 starts with stride 2) → pool."""
    stem = OrderedDict(conv=Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                       bn=norm(widths[0], 2), act=act(widths[0]))
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(stem))
    c = widths[0]
    for s, (w, inner_s) in enumerate(zip(widths, inner, strict=True)):
        stage = []
        for b, mid in enumerate(inner_s):
            stage.append(block(c, mid, w, 2 if s > 0 and b == 0 else 1, act, norm))
            c = w
        layers[f"stage{s}"] = nn.Sequential(*stage)
    layers["pool"] = AdaptiveAvgPool2d(1)  # [T, B, C, H, W] -> [T, B, C, 1, 1]
    return nn.Sequential(layers)


def _build(name: str, block: type, *, in_channels, input_size, classes, widths, blocks,
           inner_widths, hidden, spiking, neuron, neuron_params, norm, steps) -> Network:
    in_channels = check_int("in_channels", in_channels)
    input_size, size = check_size("input_size", input_size, dims=2)
    classes = check_int("classes", classes)
    widths = check_int_list("widths", widths, min_len=1)
    blocks = check_int_list("blocks", blocks, min_len=1)
    if len(blocks) != len(widths):
        raise ValueError(f"blocks must have one count per stage ({len(widths)}), got {blocks}")
    inner_widths = _check_inner(inner_widths, widths, blocks)
    hidden = check_int_list("hidden", hidden)
    spiking = check_bool("spiking", spiking)
    neuron, neuron_params = resolve_neuron(neuron, neuron_params)
    act = activation(spiking, neuron, neuron_params)
    norm, steps = resolve_norm(norm, steps)
    bn = norm_factory(norm, steps)
    spec = {
        "name": name, "in_channels": in_channels, "input_size": input_size, "classes": classes,
        "widths": widths, "blocks": blocks, "inner_widths": inner_widths, "hidden": hidden,
        "spiking": spiking, "neuron": neuron, "neuron_params": neuron_params, "norm": norm,
        "steps": steps,
    }
    features = _features(block, in_channels, widths, inner_widths, act, bn)
    classifier = head(widths[-1], hidden, classes, act, bn)
    return Network(features, classifier, (in_channels, *size), spec)


def resnet(
    *,
    in_channels: int,
    input_size: int | Sequence[int],
    classes: int,
    widths: Sequence[int] = (128, 256, 512),
    blocks: Sequence[int] = (3, 3, 2),
    inner_widths: Sequence[Sequence[int]] | None = None,
    hidden: Sequence[int] = (256,),
    spiking: bool = True,
    neuron: str = "lif",
    neuron_params: dict | None = None,
    norm: str = "bn",
    steps: int | None = None,
) -> Network:
    """Spiking ResNet of ``BasicBlock``s: [T, B, C, H, W] → logits [T, B, classes].

    The defaults are ResNet-19 (Zheng et al. 2021): stem 128, stages 128×3, 256×3, 512×2, global
    average pooling, a 256-wide hidden layer and the read-out. Modules: ``features.stem``,
    ``features.stage{s}.{b}`` (conv1, bn1, act1, conv2, bn2, act2, downsample), ``features.pool``,
    ``classifier``.

    Args:
        in_channels, input_size (int for square, or [H, W]), classes: the data.
        widths: channels per stage (the stem has ``widths[0]``).
        blocks: number of blocks per stage.
        inner_widths: per stage, per block, the channels between the two convs; None means
            ``widths[s]`` everywhere (the spec records the resolved lists).
        hidden: widths of hidden classifier layers (Linear → BN → neuron).
        spiking: False gives the ANN twin (ReLU in place of every neuron).
        neuron: "lif", "if" or "plif"; neuron_params: see ``spikecompress.models.common``.
        norm: "bn" (one BatchNorm over time and batch) or "bntt" (one BatchNorm per time step,
            γ only: ``snn.BNTT``); steps: the T of the model, required by "bntt", else null.
    """
    return _build(
        "resnet", BasicBlock, in_channels=in_channels, input_size=input_size, classes=classes,
        widths=widths, blocks=blocks, inner_widths=inner_widths, hidden=hidden, spiking=spiking,
        neuron=neuron, neuron_params=neuron_params, norm=norm, steps=steps,
    )


def sew_resnet(
    *,
    in_channels: int,
    input_size: int | Sequence[int],
    classes: int,
    widths: Sequence[int] = (64, 128, 256, 512),
    blocks: Sequence[int] = (2, 2, 2, 2),
    inner_widths: Sequence[Sequence[int]] | None = None,
    hidden: Sequence[int] = (),
    spiking: bool = True,
    neuron: str = "lif",
    neuron_params: dict | None = None,
    norm: str = "bn",
    steps: int | None = None,
) -> Network:
    """SEW-ResNet with ADD connections (Fang et al. 2021): [T, B, C, H, W] → logits [T, B, classes].

    The defaults are SEW-ResNet-18's stages (64, 128, 256, 512 × 2 blocks) with a CIFAR stem.
    Same module names and arguments as ``resnet``, with ``SEWBlock``s.
    """
    return _build(
        "sew_resnet", SEWBlock, in_channels=in_channels, input_size=input_size, classes=classes,
        widths=widths, blocks=blocks, inner_widths=inner_widths, hidden=hidden, spiking=spiking,
        neuron=neuron, neuron_params=neuron_params, norm=norm, steps=steps,
    )
