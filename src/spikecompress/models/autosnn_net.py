"""AutoSNN's macro backbone (Na et al., ICML 2022, arXiv 2201.12738): a stem, stages of cells, a 2×
pooling after every stage, no global average pooling, a linear read-out of the flattened map.

    model = build("autosnn_net", in_channels=1, input_size=8, classes=10,
                  widths=[[16], [32, 32], [64, 64]], cells=[["scb_k3"], ["srb_k5", "skip"],
                                                            ["scb_k3", "skip"]])

This is the network an architecture search (``compress.search.autosnn``) returns: ``widths`` holds
per stage the output channels of its cells, ``cells`` names the cell of each entry. The default
widths are the paper's ``AutoSNN_16`` macro space (stem 16; [16], M, [32, 32], M, [64, 64], M in
the authors' ``space.py``). Cells (the authors' candidate blocks, over [T, B, C, H, W] or, with
``dims`` 1, [T, B, C, L]):

* ``skip``: the identity; a cell that changes the channel count is conv1×1 → BN → neuron instead
  (as the authors' ``Identity`` op).
* ``scb_k3`` / ``scb_k5``: spiking convolution block, (conv k×k → BN → neuron) twice.
* ``srb_k3`` / ``srb_k5``: spiking residual block, conv k → BN → neuron → conv k → BN, plus the
  shortcut (x, or BN(conv1×1(x)) when the channels change), then the neuron (Spiking ResNet's
  order, as the authors' ``SpikingResidualBlock``).

Every conv has stride 1 and "same" padding; down-sampling is the pooling after each stage (``pool``
"max", the paper's finding, or "avg"). Module names: ``features.stem`` (conv, bn, act),
``features.stage{s}.{b}`` (the cells: conv1, bn1, act1, conv2, bn2, act2, downsample; ``conv``,
``bn``, ``act`` for a widening skip), ``features.pool{s}``, then ``classifier``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from spikecompress.models.checks import (
    check_bool,
    check_choice,
    check_int,
    check_int_list,
    check_size,
)
from spikecompress.models.common import (
    POOLS,
    Act,
    Network,
    Norm,
    activation,
    conv_bn_act,
    head,
    norm_factory,
    resolve_neuron,
    resolve_norm,
)
from spikecompress.snn import AvgPool1d, AvgPool2d, Conv1d, Conv2d, MaxPool1d, MaxPool2d

CELLS = ("skip", "scb_k3", "scb_k5", "srb_k3", "srb_k5")
DEFAULT_STEM = 16
DEFAULT_WIDTHS = ((16,), (32, 32), (64, 64))  # AutoSNN_16
DIMS = (1, 2)

# (stage, block, in channels, out channels) -> the cell module of that slot
CellFactory = Callable[[int, int, int, int], nn.Module]


def _conv(dims: int, c_in: int, c_out: int, kernel: int) -> nn.Module:
    return (Conv1d if dims == 1 else Conv2d)(c_in, c_out, kernel, padding=kernel // 2, bias=False)


class ConvBlock(nn.Module):
    """Spiking convolution block (SCB): ``SN(BN(conv2(SN(BN(conv1(x))))))``, kernel k, stride 1."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dims: int, act: Act, norm: Norm):
        super().__init__()
        self.conv1, self.bn1, self.act1 = _conv(dims, c_in, c_out, kernel), norm(c_out, dims), act(
            c_out)
        self.conv2, self.bn2, self.act2 = _conv(dims, c_out, c_out, kernel), norm(c_out, dims), act(
            c_out)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x_seq))))))


class ResidualBlock(nn.Module):
    """Spiking residual block (SRB): ``SN(BN(conv2(SN(BN(conv1(x))))) + shortcut(x))``; the
    shortcut is x, or BN(conv1×1(x)) when the block changes the channel count."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dims: int, act: Act, norm: Norm):
        super().__init__()
        self.conv1, self.bn1, self.act1 = _conv(dims, c_in, c_out, kernel), norm(c_out, dims), act(
            c_out)
        self.conv2, self.bn2 = _conv(dims, c_out, c_out, kernel), norm(c_out, dims)
        self.downsample = None
        if c_in != c_out:
            self.downsample = nn.Sequential(OrderedDict(conv=_conv(dims, c_in, c_out, 1),
                                                        bn=norm(c_out, dims)))
        self.act2 = act(c_out)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x_seq)))))
        identity = x_seq if self.downsample is None else self.downsample(x_seq)
        return self.act2(out + identity)


def make_cell(name: str, c_in: int, c_out: int, dims: int, act: Act, norm: Norm) -> nn.Module:
    """The cell ``name`` (one of ``CELLS``) from ``c_in`` to ``c_out`` channels."""
    if name == "skip":
        if c_in == c_out:
            return nn.Identity()
        return conv_bn_act(c_in, c_out, 1, 1, 0, act, dims=dims, norm=norm)
    kind, kernel = name.split("_k")
    block = ConvBlock if kind == "scb" else ResidualBlock
    return block(c_in, c_out, int(kernel), dims, act, norm)


def check_widths(name: str, widths: object) -> list[list[int]]:
    """At least one stage, each a non-empty list of cell widths."""
    if isinstance(widths, str) or not isinstance(widths, Sequence) or not widths:
        raise ValueError(f"{name} must be a non-empty list of stages (each a list of cell widths), "
                         f"got {widths!r}")
    return [check_int_list(f"{name}[{s}]", v, min_len=1) for s, v in enumerate(widths)]


def check_cells(name: str, cells: object, widths: list[list[int]]) -> list[list[str]]:
    """One cell name of ``CELLS`` per entry of ``widths``, nested the same way."""
    if isinstance(cells, str) or not isinstance(cells, Sequence) or len(cells) != len(widths):
        raise ValueError(f"{name} must hold one list of cell names per stage ({len(widths)}), "
                         f"got {cells!r}")
    out = []
    for s, (row, stage) in enumerate(zip(cells, widths, strict=True)):
        if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != len(stage):
            raise ValueError(f"{name}[{s}] must name {len(stage)} cells (widths[{s}]), "
                             f"got {row!r}")
        out.append([check_choice(f"{name}[{s}][{b}]", c, CELLS) for b, c in enumerate(row)])
    return out


def pooled_sizes(name: str, size: tuple[int, ...], stages: int) -> list[tuple[int, ...]]:
    """The map size after each stage's 2× pooling; a pooling below 1 (per side) names ``name``."""
    out, given = [], "×".join(map(str, size))
    for s in range(stages):
        if min(size) < 2:
            raise ValueError(f"{name}: the pooling after stage {s} would shrink the "
                             f"{'×'.join(map(str, size))} map below 1 (input {given}); this input "
                             f"takes at most {s} stages")
        size = tuple(v // 2 for v in size)
        out.append(size)
    return out


def _pool(pool: str, dims: int) -> nn.Module:
    if dims == 1:
        return MaxPool1d(2) if pool == "max" else AvgPool1d(2)
    return MaxPool2d(2) if pool == "max" else AvgPool2d(2)


def backbone(
    in_channels: int, size: tuple[int, ...], stem: int, widths: list[list[int]], cell: CellFactory,
    pool: str, dims: int, act: Act, norm: Norm, name: str = "widths",
) -> tuple[nn.Sequential, int, tuple[int, ...]]:
    """stem (conv3 → BN → neuron) → [stage s: cell(s, b, c_in, c_out) per width → 2× pool] per
    stage. Returns (the features, their channels, their map size); ``name`` is the field a pooling
    below 1 is reported under."""
    sizes = pooled_sizes(name, size, len(widths))
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        stem=conv_bn_act(in_channels, stem, 3, 1, 1, act, dims=dims, norm=norm))
    c = stem
    for s, stage in enumerate(widths):
        cells = []
        for b, width in enumerate(stage):
            cells.append(cell(s, b, c, width))
            c = width
        layers[f"stage{s}"] = nn.Sequential(*cells)
        layers[f"pool{s}"] = _pool(pool, dims)
    return nn.Sequential(layers), c, sizes[-1]


def autosnn_net(
    *,
    in_channels: int,
    input_size: int | Sequence[int],
    classes: int,
    dims: int = 2,
    stem: int = DEFAULT_STEM,
    widths: Sequence[Sequence[int]] = DEFAULT_WIDTHS,
    cells: Sequence[Sequence[str]] | None = None,
    pool: str = "max",
    hidden: Sequence[int] = (),
    spiking: bool = True,
    neuron: str = "lif",
    neuron_params: dict | None = None,
    norm: str = "bn",
    steps: int | None = None,
) -> Network:
    """AutoSNN backbone: [T, B, C, H, W] (``dims`` 2) or [T, B, C, L] (``dims`` 1) → logits.

    Args:
        in_channels, input_size (int, or one size per spatial dim), classes: the data.
        dims: 2 for images and event frames, 1 for sequences (MNIST-1D).
        stem: channels of the stem conv3 → BN → neuron.
        widths: per stage, the output channels of its cells; every stage ends with a 2× pooling.
        cells: per stage, one name of ``CELLS`` per width; None: ``scb_k3`` everywhere.
        pool: "max" (default, the paper's choice) or "avg".
        hidden: widths of hidden classifier layers (Linear → BN → neuron) before the read-out.
        spiking: False gives the ANN twin (ReLU in place of every neuron).
        neuron: "lif", "if" or "plif"; neuron_params: see ``spikecompress.models.common``.
        norm: "bn" or "bntt" (one BatchNorm per time step); steps: the T "bntt" needs.
    """
    in_channels = check_int("in_channels", in_channels)
    if isinstance(dims, bool) or dims not in DIMS:
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    input_size, size = check_size("input_size", input_size, dims=dims)
    classes = check_int("classes", classes)
    stem = check_int("stem", stem)
    widths = check_widths("widths", widths)
    cells = [["scb_k3"] * len(w) for w in widths] if cells is None else cells
    cells = check_cells("cells", cells, widths)
    pool = check_choice("pool", pool, POOLS)
    hidden = check_int_list("hidden", hidden)
    spiking = check_bool("spiking", spiking)
    neuron, neuron_params = resolve_neuron(neuron, neuron_params)
    act = activation(spiking, neuron, neuron_params)
    norm, steps = resolve_norm(norm, steps)
    bn = norm_factory(norm, steps)

    def cell(s: int, b: int, c_in: int, c_out: int) -> nn.Module:
        return make_cell(cells[s][b], c_in, c_out, dims, act, bn)

    features, c, out_size = backbone(in_channels, size, stem, widths, cell, pool, dims, act, bn)
    spec = {
        "name": "autosnn_net", "in_channels": in_channels, "input_size": input_size,
        "classes": classes, "dims": dims, "stem": stem, "widths": widths, "cells": cells,
        "pool": pool, "hidden": hidden, "spiking": spiking, "neuron": neuron,
        "neuron_params": neuron_params, "norm": norm, "steps": steps,
    }
    flat = c * math.prod(out_size)
    classifier = head(flat, hidden, classes, act, bn)
    return Network(features, classifier, (in_channels, *size), spec)
