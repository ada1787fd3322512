"""AutoSNN's search space and its one-shot super-network (Na et al., ICML 2022; the authors'
``space.py`` and ``train_supernet/supernet.py`` read for the facts, not the code).

The space is the macro backbone of ``models.autosnn_net`` (stem, stages of cells, a 2× pooling after
every stage, no global average pooling) with one searchable *slot* per cell: every slot chooses one
of ``candidates`` (by default all of ``models.autosnn_net.CELLS``: skip, SCB k3 / k5, SRB k3 / k5).
An architecture is the tuple of the slots' cell names, stage after stage.

``Supernet``: the same backbone where every slot is a ``Choice`` holding one module per candidate
(its own weights, BN and neurons); the stem and the read-out are shared by every path. It runs the
path set by ``set_arch``. ``extract(arch)`` builds the ``autosnn_net`` of that path (a model
``models.from_spec`` rebuilds from its spec) with the supernet's weights, BN statistics and neuron
parameters of that path, or freshly initialised (``init="scratch"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spikecompress.models import from_spec
from spikecompress.models.autosnn_net import (
    CELLS,
    backbone,
    check_widths,
    make_cell,
    pooled_sizes,
)
from spikecompress.models.common import POOLS, activation, head, norm_factory

Arch = tuple[str, ...]  # one cell name per slot, stage after stage
_SLOT = re.compile(r"features\.stage(\d+)\.(\d+)\.(.*)")


@dataclass(frozen=True)
class SearchSpace:
    """The macro backbone and the candidate cells; ``in_shape`` (C, H, W) or (C, L) and
    ``classes`` come from the data, the neuron and norm settings from the entering model's spec
    (``neuron``, ``neuron_params``, ``norm``, ``steps``). ``name`` prefixes error messages."""

    in_shape: tuple[int, ...]
    classes: int
    stem: int
    widths: tuple[tuple[int, ...], ...]
    candidates: tuple[str, ...]
    pool: str
    neuron: str
    neuron_params: dict
    norm: str
    steps: int | None
    name: str = "autosnn"

    def __post_init__(self) -> None:
        check_candidates(f"{self.name}.candidates", self.candidates)
        check_widths(f"{self.name}.widths", self.widths)
        if self.pool not in POOLS:
            raise ValueError(f"{self.name}.pool must be one of {list(POOLS)}, got {self.pool!r}")
        if len(self.in_shape) not in (2, 3):
            raise ValueError(f"{self.name}: the search space is convolutional (1-D or 2-D); the "
                             f"input shape {tuple(self.in_shape)} has no spatial dims")
        pooled_sizes(f"{self.name}.widths", tuple(self.in_shape[1:]), len(self.widths))

    @property
    def dims(self) -> int:
        return len(self.in_shape) - 1

    @property
    def slots(self) -> list[tuple[int, int]]:
        """(stage, block) of every searchable slot, in architecture order."""
        return [(s, b) for s, stage in enumerate(self.widths) for b in range(len(stage))]

    @property
    def size(self) -> int:
        """How many architectures the space holds."""
        return len(self.candidates) ** len(self.slots)

    def check_arch(self, arch: Sequence[str]) -> Arch:
        """``arch`` as a tuple, if it names one candidate per slot (else a one-line error)."""
        arch = tuple(arch)
        if len(arch) != len(self.slots) or any(c not in self.candidates for c in arch):
            raise ValueError(f"{self.name}: an architecture names one of {list(self.candidates)} "
                             f"per slot ({len(self.slots)} slots), got {list(arch)}")
        return arch

    def cells(self, arch: Sequence[str]) -> list[list[str]]:
        """The architecture nested per stage (``autosnn_net``'s ``cells``)."""
        arch, out, i = self.check_arch(arch), [], 0
        for stage in self.widths:
            out.append(list(arch[i:i + len(stage)]))
            i += len(stage)
        return out

    def spec(self, arch: Sequence[str]) -> dict:
        """The ``autosnn_net`` spec of ``arch`` (``models.from_spec`` builds it)."""
        size = list(self.in_shape[1:])
        return {
            "name": "autosnn_net", "in_channels": self.in_shape[0],
            "input_size": size[0] if len(set(size)) == 1 else size, "classes": self.classes,
            "dims": self.dims, "stem": self.stem, "widths": [list(w) for w in self.widths],
            "cells": self.cells(arch), "pool": self.pool, "hidden": [], "spiking": True,
            "neuron": self.neuron, "neuron_params": dict(self.neuron_params), "norm": self.norm,
            "steps": self.steps,
        }


def check_candidates(name: str, candidates: object) -> tuple[str, ...]:
    """At least one cell name of ``CELLS``, no repeats (a one-line error naming the entry)."""
    if isinstance(candidates, str) or not isinstance(candidates, Sequence) or not candidates:
        raise ValueError(f"{name} must be a non-empty list of cell names of {list(CELLS)}, got "
                         f"{candidates!r}")
    for i, c in enumerate(candidates):
        if not isinstance(c, str) or c not in CELLS:
            raise ValueError(f"{name}: unknown cell {c!r} at index {i} (known: {list(CELLS)})")
        if c in candidates[:i]:
            raise ValueError(f"{name}: cell {c!r} is listed twice")
    return tuple(candidates)


class Choice(nn.Module):
    """One searchable slot: a module per candidate cell (``ops``), of which the ``active`` one
    runs. [T, B, C_in, ...] → [T, B, C_out, ...]."""

    def __init__(self, ops: dict[str, nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(ops)
        self.active = next(iter(ops))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.ops[self.active](x_seq)


class Supernet(nn.Module):
    """The one-shot super-network of ``space``: stem → stages of ``Choice`` slots (2× pool after
    each) → flatten → linear read-out. [T, B, *in_shape] → [T, B, classes] along the path of
    ``set_arch`` (initially every slot's first candidate)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        act = activation(True, space.neuron, space.neuron_params)
        bn = norm_factory(space.norm, space.steps)
        dims = space.dims

        def cell(s: int, b: int, c_in: int, c_out: int) -> nn.Module:
            return Choice({c: make_cell(c, c_in, c_out, dims, act, bn) for c in space.candidates})

        widths = [list(w) for w in space.widths]
        self.features, c, size = backbone(space.in_shape[0], tuple(space.in_shape[1:]), space.stem,
                                          widths, cell, space.pool, dims, act, bn,
                                          name=f"{space.name}.widths")
        self.classifier = head(c * math.prod(size), [], space.classes, act, bn)
        self.choices = [m for m in self.features.modules() if isinstance(m, Choice)]

    def set_arch(self, arch: Sequence[str]) -> None:
        """Make ``arch`` (one candidate per slot) the path every forward runs."""
        arch = self.space.check_arch(arch)
        for choice, cell in zip(self.choices, arch, strict=True):
            choice.active = cell

    @property
    def arch(self) -> Arch:
        """The path the forward runs now."""
        return tuple(c.active for c in self.choices)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x_seq))

    def extract(self, arch: Sequence[str], init: str = "inherit", seed: int = 0) -> nn.Module:
        """The ``autosnn_net`` of ``arch``, on the supernet's device and dtype, in eval mode:
        "inherit" copies the path's parameters and buffers (weights, BN statistics, PLIF decays);
        "scratch" initialises it afresh under ``torch.manual_seed(seed)`` (the global RNG is
        kept)."""
        spec = self.space.spec(arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = from_spec(spec)
        p = next(self.parameters())
        model = model.to(device=p.device, dtype=p.dtype).eval()
        if init == "inherit":
            model.load_state_dict(self.path_state(arch, model.state_dict().keys()))
        return model

    def path_state(self, arch: Sequence[str], keys) -> dict[str, torch.Tensor]:
        """The supernet's tensors for the ``autosnn_net`` state-dict ``keys`` of ``arch``: a
        slot's ``features.stage{s}.{b}.X`` is ``features.stage{s}.{b}.ops.<cell>.X`` here."""
        arch = self.space.check_arch(arch)
        index = {sb: i for i, sb in enumerate(self.space.slots)}
        mine = self.state_dict()
        out = {}
        for key in keys:
            m = _SLOT.fullmatch(key)
            if m is not None:
                s, b, rest = int(m[1]), int(m[2]), m[3]
                source = f"features.stage{s}.{b}.ops.{arch[index[(s, b)]]}.{rest}"
            else:
                source = key
            out[key] = mine[source].detach().clone()
        return out
