"""The integer SNN's shape operations, applied to x [T, B, ...]: ``SumPool`` the window sum (an
average pool whose 1/area went into the next layer's ``input_scale``), ``MaxPool`` the window
maximum, ``Flatten`` one sample to a vector."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spikecompress.export.integer.ops import Shape, _fold, _pad_arg, _window_out, _windows


@dataclass(repr=False, eq=False)
class SumPool:
    """Window sum over the trailing ``len(kernel)`` dims (no padding): an average pool whose
    1/area went into the next layer's ``input_scale``."""

    name: str
    kernel: Shape
    stride: Shape

    kind = "sumpool"

    def out_shape(self, shape: Shape) -> Shape:
        return _pool_shape(self, shape, (0,) * len(self.kernel))

    def run(self, x_seq: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel)
        return _fold(lambda x: _windows(x, self.kernel, self.stride).sum(
            tuple(range(-d, 0))), x_seq)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def spec(self) -> dict:
        return {"kernel": list(self.kernel), "stride": list(self.stride)}

    @classmethod
    def build(cls, name: str, spec: dict, t: dict[str, torch.Tensor]) -> SumPool:
        return cls(name, tuple(spec["kernel"]), tuple(spec["stride"]))


@dataclass(repr=False, eq=False)
class MaxPool:
    """Window maximum over the trailing ``len(kernel)`` dims, padding never chosen."""

    name: str
    kernel: Shape
    stride: Shape
    padding: Shape

    kind = "maxpool"

    def out_shape(self, shape: Shape) -> Shape:
        if any(2 * p > k for p, k in zip(self.padding, self.kernel, strict=True)):
            raise ValueError(f"{self.name}: padding {list(self.padding)} exceeds half the "
                             f"kernel {list(self.kernel)}")
        return _pool_shape(self, shape, self.padding)

    def run(self, x_seq: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel)

        def pool(x: torch.Tensor) -> torch.Tensor:
            if any(self.padding):  # every window keeps one real element (padding <= k / 2)
                x = F.pad(x, _pad_arg(self.padding), value=float(-(2**62)))
            return _windows(x, self.kernel, self.stride).amax(tuple(range(-d, 0)))

        return _fold(pool, x_seq)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def spec(self) -> dict:
        return {"kernel": list(self.kernel), "stride": list(self.stride),
                "padding": list(self.padding)}

    @classmethod
    def build(cls, name: str, spec: dict, t: dict[str, torch.Tensor]) -> MaxPool:
        return cls(name, tuple(spec["kernel"]), tuple(spec["stride"]), tuple(spec["padding"]))


@dataclass(repr=False, eq=False)
class Flatten:
    """One sample [d1, d2, ...] → [d1·d2·...]."""

    name: str

    kind = "flatten"

    def out_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def run(self, x_seq: torch.Tensor) -> torch.Tensor:
        return x_seq.flatten(2)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def spec(self) -> dict:
        return {}

    @classmethod
    def build(cls, name: str, spec: dict, t: dict[str, torch.Tensor]) -> Flatten:
        return cls(name)


def _pool_shape(op: SumPool | MaxPool, shape: Shape, padding: Shape) -> Shape:
    d = len(op.kernel)
    if len(shape) != 1 + d:
        raise ValueError(f"{op.name}: a {d}-D pool gets samples of shape {list(shape)}")
    out = _window_out(shape[1:], op.kernel, op.stride, padding)
    if min(out) < 1:
        raise ValueError(f"{op.name}: input {list(shape)} is smaller than the pool window")
    return (shape[0], *out)
