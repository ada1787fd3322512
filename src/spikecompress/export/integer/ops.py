"""The integer SNN's synaptic operations and the helpers and tables every op shares; each op is a
dataclass over integer tensors applied to x [T, B, ...]:

* ``IntConv`` (1-D or 2-D): ``acc = conv(x, codes) + bias`` (codes int8/int16 [O, C, *k], bias
  int32 [O]; zero padding, stride; no groups or dilation), by ``unfold`` and an int64 matmul.
* ``IntLinear``: ``acc = x · codesᵀ + bias`` (codes [O, F]).

The neuron op is in ``neuron_op`` (``IntNeuronOp``), the pooling and flatten ops in ``shape_ops``
(``SumPool``, ``MaxPool``, ``Flatten``), and the union ``Op``, the registry ``OPS`` and the
tensor checks in ``program``. Each op has ``kind``, ``out_shape`` (one sample's shape through it,
or a ValueError naming it), ``run``, ``tensors`` and ``spec`` (what is saved) and ``build`` (its
inverse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spikecompress.snn.integer import MAX_BITS, qmax

ACC_LIMIT = 2**31  # accumulators must fit an int32
UNFOLD_BUDGET = 2**24  # bytes of the largest unfolded conv input per forward chunk
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

Shape = tuple[int, ...]


def weight_dtype(bits: int) -> torch.dtype:
    """The storage dtype of b-bit codes: int8 up to 8 bits, else int16."""
    return torch.int8 if bits <= 8 else torch.int16


def bits_of(codes: torch.Tensor) -> int:
    """The fewest bits that hold ``codes`` on a narrow symmetric grid: 1 for codes all ±1
    (binary), else the smallest b >= 2 with max|codes| <= qmax(b) (2 bits: ternary)."""
    m = int(codes.abs().max()) if codes.numel() else 0
    if codes.numel() and bool((codes.abs() == 1).all()):
        return 1
    b = 2
    while qmax(b) < m:
        b += 1
    return b


def _codes_problem(codes: torch.Tensor, bits: int) -> str | None:
    """Why ``codes`` do not fit ``bits`` (None when they do)."""
    if not 1 <= bits <= MAX_BITS:
        return f"has {bits} bits, outside 1..{MAX_BITS}"
    m = int(codes.abs().max()) if codes.numel() else 0
    if m > qmax(bits):
        return f"holds code {m}, outside the {bits}-bit range ±{qmax(bits)}"
    if bits == 1 and codes.numel() and bool((codes == 0).any()):
        return "holds code 0, outside the 1-bit codes ±1"
    return None


def _tuple(v: int | tuple | list, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, tuple | list) else (int(v),) * n


def _windows(x: torch.Tensor, kernel: Shape, stride: Shape) -> torch.Tensor:
    """x [N, C, *S] → [N, C, *S_out, *kernel]: every window, a view."""
    for d, (k, s) in enumerate(zip(kernel, stride, strict=True)):
        x = x.unfold(2 + d, k, s)
    return x


def _pad_arg(padding: Shape) -> list[int]:
    """F.pad's argument for symmetric padding of the trailing dims (last dim first)."""
    return [p for q in reversed(padding) for p in (q, q)]


def _fold(fn, x_seq: torch.Tensor) -> torch.Tensor:
    """A per-sample op over [T, B, ...] with time folded into the batch."""
    T, B = x_seq.shape[:2]
    y = fn(x_seq.reshape(T * B, *x_seq.shape[2:]))
    return y.view(T, B, *y.shape[1:])


def _window_out(size: Shape, kernel: Shape, stride: Shape, padding: Shape) -> Shape:
    return tuple((s + 2 * p - k) // st + 1 for s, k, st, p in
                 zip(size, kernel, stride, padding, strict=True))


def _present(**tensors: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if v is not None}


@dataclass(repr=False, eq=False)
class IntConv:
    """1-D or 2-D convolution on integer codes: ``acc = conv(x, codes) + bias``.

    ``codes`` int8/int16 [O, C, *kernel] of ``weight_bits`` bits; ``bias`` int32 [O] or None;
    ``stride``, ``padding`` (zeros) per spatial dim. Metadata (float32, never read by the
    forward): ``weight_scale`` [] or [O] and ``input_scale`` [], the layer's float grid being
    their product."""

    name: str
    codes: torch.Tensor
    bias: torch.Tensor | None
    stride: Shape
    padding: Shape
    weight_bits: int
    weight_scale: torch.Tensor
    input_scale: torch.Tensor

    kind = "conv"

    @property
    def dims(self) -> int:
        return self.codes.dim() - 2

    @property
    def grid(self) -> torch.Tensor:
        return self.weight_scale * self.input_scale

    def out_shape(self, shape: Shape) -> Shape:
        c_out, C, *kernel = self.codes.shape
        if len(shape) != 1 + self.dims or shape[0] != C:
            raise ValueError(f"{self.name}: a conv{self.dims}d over {C} channels gets samples "
                             f"of shape {list(shape)}")
        out = _window_out(shape[1:], tuple(kernel), self.stride, self.padding)
        if min(out) < 1:
            raise ValueError(f"{self.name}: input {list(shape)} is smaller than the kernel")
        return (c_out, *out)

    def run(self, x_seq: torch.Tensor) -> torch.Tensor:
        c_out, _, *kernel = self.codes.shape
        w = self.codes.to(torch.int64).reshape(c_out, -1).t()  # [C·k, O]

        def conv(x: torch.Tensor) -> torch.Tensor:  # [N, C, *S] -> [N, O, *S_out]
            x = F.pad(x, _pad_arg(self.padding)) if any(self.padding) else x
            win = _windows(x, tuple(kernel), self.stride)  # [N, C, *S_out, *k]
            n, out = win.shape[0], win.shape[2:2 + self.dims]
            order = (0, *range(2, 2 + self.dims), 1, *range(2 + self.dims, win.dim()))
            acc = win.permute(order).reshape(n * math.prod(out), -1) @ w  # [N·S_out, O]
            if self.bias is not None:
                acc += self.bias.to(torch.int64)
            return acc.view(n, *out, c_out).movedim(-1, 1)  # a view: [N, O, *S_out]

        return _fold(conv, x_seq)

    def fan_in_abs(self) -> torch.Tensor:
        return self.codes.to(torch.int64).abs().flatten(1).sum(1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return _present(codes=self.codes, bias=self.bias, weight_scale=self.weight_scale,
                        input_scale=self.input_scale)

    def spec(self) -> dict:
        return {"stride": list(self.stride), "padding": list(self.padding),
                "weight_bits": self.weight_bits}

    @classmethod
    def build(cls, name: str, spec: dict, t: dict[str, torch.Tensor]) -> IntConv:
        d = t["codes"].dim() - 2
        return cls(name, t["codes"], t.get("bias"), _tuple(spec["stride"], d),
                   _tuple(spec["padding"], d), int(spec["weight_bits"]), t["weight_scale"],
                   t["input_scale"])


@dataclass(repr=False, eq=False)
class IntLinear:
    """Linear layer on integer codes: ``acc = x · codesᵀ + bias`` (codes int8/int16 [O, F],
    bias int32 [O] or None); metadata ``weight_scale`` [] or [O], ``input_scale`` []."""

    name: str
    codes: torch.Tensor
    bias: torch.Tensor | None
    weight_bits: int
    weight_scale: torch.Tensor
    input_scale: torch.Tensor

    kind = "linear"

    @property
    def grid(self) -> torch.Tensor:
        return self.weight_scale * self.input_scale

    def out_shape(self, shape: Shape) -> Shape:
        if tuple(shape) != (self.codes.shape[1],):
            raise ValueError(f"{self.name}: a linear layer of {self.codes.shape[1]} inputs gets "
                             f"samples of shape {list(shape)} (flatten them first)")
        return (self.codes.shape[0],)

    def run(self, x_seq: torch.Tensor) -> torch.Tensor:
        acc = x_seq @ self.codes.to(torch.int64).t()
        if self.bias is not None:
            acc += self.bias.to(torch.int64)
        return acc

    def fan_in_abs(self) -> torch.Tensor:
        return self.codes.to(torch.int64).abs().sum(1)

    def tensors(self) -> dict[str, torch.Tensor]:
        return _present(codes=self.codes, bias=self.bias, weight_scale=self.weight_scale,
                        input_scale=self.input_scale)

    def spec(self) -> dict:
        return {"weight_bits": self.weight_bits}

    @classmethod
    def build(cls, name: str, spec: dict, t: dict[str, torch.Tensor]) -> IntLinear:
        return cls(name, t["codes"], t.get("bias"), int(spec["weight_bits"]), t["weight_scale"],
                   t["input_scale"])


SYNAPTIC = (IntConv, IntLinear)
# every tensor an op may hold: (required, allowed dtypes)
_TENSOR_DTYPES = {
    "codes": (True, (torch.int8, torch.int16)), "bias": (False, (torch.int32,)),
    "weight_scale": (True, (torch.float32,)), "input_scale": (True, (torch.float32,)),
    "leak": (True, (torch.int64,)), "gain": (True, (torch.int64,)),
    "threshold": (True, (torch.int64,)), "spike_mask": (False, (torch.int8,)),
    "membrane_scale": (True, (torch.float32,)),
}
