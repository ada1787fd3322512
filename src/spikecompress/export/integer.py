"""The integer SNN: a finalized quantized model lowered to integer tensors and run with them only.

    program = to_integer(model)              # checks the quantization contract, refuses by name
    acc = program(program.encode(x_seq))     # int64 [T, B, classes]: the read-out accumulators
    logits = acc.float() * program.scale     # == the fake-quant model's logits, bit for bit
    save_integer(program, "runs/a/artifact"); program = load_integer("runs/a/artifact")

``IntegerSNN`` is a plain data structure: the input quantizer (``input_scale``, ``input_bits``)
and a list of ops, each a dataclass over integer tensors, applied in order to x [T, B, ...]:

* ``IntConv`` (1-D or 2-D): ``acc = conv(x, codes) + bias`` (codes int8/int16 [O, C, *k], bias
  int32 [O]; zero padding, stride; no groups or dilation), by ``unfold`` and an int64 matmul.
* ``IntLinear``: ``acc = x · codesᵀ + bias`` (codes [O, F]).
* ``IntNeuronOp``: ``snn.integer.IntNeuron.step`` from u = 0 at t = 0, spikes times the optional
  ``spike_mask`` (int8 {0, 1} of one sample's shape).
* ``SumPool``: the window sum (an average pool whose 1/area went into the next layer's
  ``input_scale``); ``MaxPool``: the window maximum; ``Flatten``: one sample to a vector.

The last op is the read-out ``IntLinear``; ``scale`` (its grid ``weight_scale · input_scale``,
float32 [] or [classes]) turns its accumulators into the model's logits. The float scales of
every layer and neuron (``weight_scale``, ``input_scale``, ``membrane_scale``) are kept as
metadata; the forward never reads them. ``encode`` is the one float op, at the boundary:
``clamp(round(x / input_scale), ±qmax(input_bits))`` exactly as the fake-quant input layer.

Range: every accumulator is bounded, per output channel, by Σ|codes|·max|x| + |bias|; a layer
whose bound reaches 2^31 (an int32 accumulator) or whose charge can reach 2^53
(``snn.integer.check_range``) is refused by name, so the int64 forward is exact and an int32 one
would be too.

Saved as a folder holding ``integer.safetensors`` (every tensor) and ``integer.json`` (format,
input shape and quantizer, the ops with their bits, each tensor's dtype and shape, the tensor
file's byte count and sha256), written atomically, tensor file first and JSON last (the commit
point). ``load_integer`` validates everything (tensors present, dtypes, shapes, codes within
their bits, the ops' shapes chain) and refuses a mismatch with one line naming file and tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from spikecompress._version import __version__
from spikecompress.atomic import atomic_writer
from spikecompress.export.artifact import ArtifactError
from spikecompress.models.common import Network
from spikecompress.models.resnet import BasicBlock, SEWBlock
from spikecompress.snn import layers as L
from spikecompress.snn.integer import MAX_BITS, MAX_SHIFT, IntNeuron, check_range, int_neuron, qmax
from spikecompress.snn.neuron import IF, LIF, PLIF

FORMAT = "spikecompress-integer"
FORMAT_VERSION = 1
TENSOR_FILE = "integer.safetensors"
SPEC_FILE = "integer.json"
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


# ------------------------------------------------------------------------------------------ ops


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


@dataclass(repr=False, eq=False)
class IntNeuronOp:
    """A spiking layer: ``neuron.step`` (``snn.integer.IntNeuron``) per time step from u = 0,
    its spikes (0/1, int64) times ``spike_mask`` (int8 {0, 1} of one sample's shape, or None).
    ``membrane_scale`` (float32 [] or [C]): metadata, the membrane's unit."""

    name: str
    neuron: IntNeuron
    spike_mask: torch.Tensor | None
    membrane_scale: torch.Tensor

    kind = "neuron"

    def out_shape(self, shape: Shape) -> Shape:
        for key in ("leak", "gain", "threshold"):
            p = getattr(self.neuron, key)
            if p.dim() > 1 or (p.dim() == 1 and (len(shape) < 1 or p.shape[0] != shape[0])):
                raise ValueError(f"{self.name}: {key} of shape {list(p.shape)} does not fit "
                                 f"samples of shape {list(shape)} (a scalar or one per channel)")
        if self.spike_mask is not None and tuple(self.spike_mask.shape) != tuple(shape):
            raise ValueError(f"{self.name}: spike_mask of shape {list(self.spike_mask.shape)} "
                             f"does not fit samples of shape {list(shape)}")
        return tuple(shape)

    def run(self, x_seq: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x_seq)
        u = torch.zeros_like(x_seq[0])
        for t in range(x_seq.shape[0]):
            out[t], u, _ = self.neuron.step(u, x_seq[t])
        if self.spike_mask is not None:
            out *= self.spike_mask.to(torch.int64)
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        n = self.neuron
        return _present(leak=n.leak, gain=n.gain, threshold=n.threshold,
                        spike_mask=self.spike_mask, membrane_scale=self.membrane_scale)

    def spec(self) -> dict:
        n = self.neuron
        return {"shift": n.shift, "membrane_bits": n.bits, "soft": n.soft}

    @classmethod
    def build(cls, name: str, spec: dict, t: dict[str, torch.Tensor]) -> IntNeuronOp:
        neuron = IntNeuron(t["leak"], t["gain"], int(spec["shift"]), t["threshold"],
                           int(spec["membrane_bits"]), bool(spec["soft"]))
        return cls(name, neuron, t.get("spike_mask"), t["membrane_scale"])


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


Op = IntConv | IntLinear | IntNeuronOp | SumPool | MaxPool | Flatten
OPS: dict[str, type] = {c.kind: c for c in (IntConv, IntLinear, IntNeuronOp, SumPool, MaxPool,
                                             Flatten)}
SYNAPTIC = (IntConv, IntLinear)
# every tensor an op may hold: (required, allowed dtypes)
_TENSOR_DTYPES = {
    "codes": (True, (torch.int8, torch.int16)), "bias": (False, (torch.int32,)),
    "weight_scale": (True, (torch.float32,)), "input_scale": (True, (torch.float32,)),
    "leak": (True, (torch.int64,)), "gain": (True, (torch.int64,)),
    "threshold": (True, (torch.int64,)), "spike_mask": (False, (torch.int8,)),
    "membrane_scale": (True, (torch.float32,)),
}


def _present(**tensors: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if v is not None}


def _pool_shape(op: SumPool | MaxPool, shape: Shape, padding: Shape) -> Shape:
    d = len(op.kernel)
    if len(shape) != 1 + d:
        raise ValueError(f"{op.name}: a {d}-D pool gets samples of shape {list(shape)}")
    out = _window_out(shape[1:], op.kernel, op.stride, padding)
    if min(out) < 1:
        raise ValueError(f"{op.name}: input {list(shape)} is smaller than the pool window")
    return (shape[0], *out)


# ----------------------------------------------------------------------------------- program


@dataclass
class LayerTrace:
    """One op's place in the program: sample shapes in and out, the bound on |input codes|
    and (synaptic ops) on |accumulator|."""

    op: Op
    in_shape: Shape
    out_shape: Shape
    x_max: int
    acc_bound: int | None


@dataclass(repr=False, eq=False)
class IntegerSNN:
    """A quantized SNN as integer tensors (see the module docstring): x [T, B, *in_shape]
    integer codes → the read-out accumulators int64 [T, B, classes].

    ``input_scale`` (float32 []) and ``input_bits``: the input quantizer ``encode`` applies;
    ``ops``: the program, the last one the read-out ``IntLinear``."""

    in_shape: Shape
    input_scale: torch.Tensor
    input_bits: int
    ops: list[Op]

    def __post_init__(self) -> None:
        self.in_shape = tuple(int(s) for s in self.in_shape)
        self.trace()  # the structure is valid, or a one-line ValueError names the op

    @property
    def readout(self) -> IntLinear:
        return self.ops[-1]

    @property
    def scale(self) -> torch.Tensor:
        """float32 [] or [classes]: ``acc.float() * scale`` are the logits."""
        return self.readout.grid

    def trace(self) -> list[LayerTrace]:
        """Check the program's structure and bounds op by op (shapes chain, codes within their
        bits, neurons fed by a synaptic op, accumulators < 2^31, charges < 2^53); one line per
        op in order. Raises ValueError naming the op."""
        if not 1 <= self.input_bits <= MAX_BITS:
            raise ValueError(f"input_bits {self.input_bits} outside 1..{MAX_BITS}")
        if not self.ops or not isinstance(self.ops[-1], IntLinear):
            raise ValueError("an integer SNN must end with its read-out Linear")
        shape, x_max, fed = self.in_shape, qmax(self.input_bits), None
        out: list[LayerTrace] = []
        for op in self.ops:
            _check_tensors(op)
            new = op.out_shape(shape)
            bound, x_in = None, x_max
            if isinstance(op, SYNAPTIC):
                if fed is not None:
                    raise ValueError(f"{op.name}: takes the accumulator of {fed.name}; a "
                                     "synaptic layer must feed a neuron or be the read-out")
                bias = op.bias.to(torch.int64).abs() if op.bias is not None else 0
                bound = int((op.fan_in_abs() * x_max + bias).max())
                if bound >= ACC_LIMIT:
                    raise ValueError(f"{op.name}: the accumulator can reach {bound} (>= 2^31, "
                                     "an int32); use fewer weight or input bits")
                fed, fed_bound = op, bound
            elif isinstance(op, IntNeuronOp):
                if fed is None:
                    raise ValueError(f"{op.name}: a neuron must follow a synaptic layer")
                check_range(fed_bound, op.neuron, op.name)
                fed, x_max = None, 1
            elif isinstance(op, SumPool):
                x_max *= math.prod(op.kernel)
            if fed is not None and isinstance(op, SumPool | Flatten):
                raise ValueError(f"{op.name}: {op.kind} between {fed.name} and its neuron")
            out.append(LayerTrace(op, shape, new, x_in, bound))
            shape = new
        return out

    def encode(self, x_seq: torch.Tensor) -> torch.Tensor:
        """Float x_seq [T, B, ...] → input codes ``clamp(round(x / input_scale), ±qmax)``
        (half to even, in x's dtype, as the fake-quant input layer), int8 or int16."""
        if not x_seq.is_floating_point():
            raise ValueError(f"encode takes a float tensor, got {x_seq.dtype}")
        m = qmax(self.input_bits)
        codes = torch.round(x_seq / self.input_scale.to(x_seq.dtype)).clamp(-m, m)
        return codes.to(weight_dtype(self.input_bits))

    def _check_input(self, x_seq: torch.Tensor) -> torch.Tensor:
        if not isinstance(x_seq, torch.Tensor):
            raise TypeError(f"IntegerSNN takes an integer tensor, got {type(x_seq).__name__}")
        if x_seq.dtype not in INT_DTYPES:
            raise ValueError(f"IntegerSNN takes integer input codes [T, B, ...], got a "
                             f"{x_seq.dtype} tensor: quantize it with .encode(x_seq) first")
        sample = tuple(x_seq.shape[2:])
        flat = len(self.in_shape) == 1 and math.prod(sample) == self.in_shape[0]
        if x_seq.dim() < 3 or not (sample == self.in_shape or flat):
            raise ValueError(f"IntegerSNN expects x_seq of shape [T, B, "
                             f"{', '.join(map(str, self.in_shape))}], got {list(x_seq.shape)}")
        x = x_seq.to(torch.int64)
        m = qmax(self.input_bits)
        if x.numel() and int(x.abs().max()) > m:
            raise ValueError(f"input codes reach {int(x.abs().max())}, outside the "
                             f"{self.input_bits}-bit range ±{m}")
        return x.flatten(2) if flat and sample != self.in_shape else x

    def __call__(
        self, x_seq: torch.Tensor, record: bool = False, batch_size: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Integer codes [T, B, *in_shape] (int8..int64) → read-out accumulators int64
        [T, B, classes]. With ``record``, also {neuron op name: its spikes int64 [T, B, ...]}.

        Runs ``batch_size`` samples at a time (None: as many as keep the largest unfolded conv
        input near 16 MiB, which keeps it in cache)."""
        x = self._check_input(x_seq)
        T, B = x.shape[:2]
        if batch_size is None:
            batch_size = max(1, UNFOLD_BUDGET // max(1, T * self._unfold_bytes()))
        accs, spikes = [], {}
        for b0 in range(0, max(B, 1), batch_size):
            h = x[:, b0:b0 + batch_size]
            for op in self.ops:
                h = op.run(h)
                if record and isinstance(op, IntNeuronOp):
                    spikes.setdefault(op.name, []).append(h)
            accs.append(h)
        acc = torch.cat(accs, 1)
        if record:
            return acc, {k: torch.cat(v, 1) for k, v in spikes.items()}
        return acc

    def logits(self, x_seq: torch.Tensor, **kw) -> torch.Tensor:
        """Float x_seq → float32 logits [T, B, classes]: encode, run, scale (the float ops only
        at the two ends)."""
        return self(self.encode(x_seq), **kw).float() * self.scale

    def _unfold_bytes(self) -> int:
        """int64 bytes per sample and step of the largest unfolded conv input."""
        sizes = [math.prod(t.out_shape[1:]) * math.prod(t.op.codes.shape[1:]) * 8
                 for t in self.trace() if isinstance(t.op, IntConv)]
        return max(sizes, default=1)

    def describe(self) -> dict:
        """A JSON-ready summary: per layer its bits (weights, membrane), weight count, packed
        weight bytes and accumulator bound; totals of packed and stored integer weight bytes
        and of membrane state bytes per sample."""
        rows, neurons = [], {}
        traces = self.trace()
        for i, t in enumerate(traces):
            if isinstance(t.op, IntNeuronOp):
                neurons[traces[_feeder(traces, i)].op.name] = t
        for t in traces:
            op = t.op
            if not isinstance(op, SYNAPTIC):
                continue
            n = neurons.get(op.name)
            rows.append({
                "name": op.name, "kind": op.kind, "in_shape": list(t.in_shape),
                "out_shape": list(t.out_shape), "weight_bits": op.weight_bits,
                "weights": op.codes.numel(), "weight_bytes": op.codes.numel() * op.weight_bits / 8,
                "bias_bytes": 0 if op.bias is None else op.bias.numel() * 4,
                "acc_bound": t.acc_bound,
                "neuron": None if n is None else n.op.name,
                "membrane_bits": None if n is None else n.op.neuron.bits,
                "neurons": None if n is None else math.prod(n.out_shape),
                "shift": None if n is None else n.op.neuron.shift,
            })
        return {
            "in_shape": list(self.in_shape), "input_bits": self.input_bits,
            "classes": self.readout.codes.shape[0], "layers": rows,
            "weight_bytes": sum(r["weight_bytes"] for r in rows),
            "weight_bytes_stored": sum(op.codes.numel() * op.codes.element_size()
                                       for op in self.ops if isinstance(op, SYNAPTIC)),
            "bias_bytes": sum(r["bias_bytes"] for r in rows),
            "state_bytes": sum(r["neurons"] * r["membrane_bits"] / 8 for r in rows
                               if r["neurons"] is not None),
        }

    def __repr__(self) -> str:
        lines = [f"IntegerSNN(in_shape={list(self.in_shape)}, input_bits={self.input_bits},"]
        for op in self.ops:
            extra = ""
            if isinstance(op, SYNAPTIC):
                extra = f" {list(op.codes.shape)} w{op.weight_bits}"
            elif isinstance(op, IntNeuronOp):
                extra = f" u{op.neuron.bits} N={op.neuron.shift}"
            lines.append(f"  {op.kind} {op.name}{extra}")
        return "\n".join(lines) + ")"


def _feeder(traces: list[LayerTrace], i: int) -> int:
    """The index of the synaptic op that feeds the neuron at ``i``."""
    while not isinstance(traces[i].op, SYNAPTIC):
        i -= 1
    return i


def _check_tensors(op: Op) -> None:
    """Dtypes and code ranges of one op's tensors (ValueError naming ``<op>.<tensor>``)."""
    for key, t in op.tensors().items():
        allowed = _TENSOR_DTYPES[key][1]
        if t.dtype not in allowed:
            raise ValueError(f"{op.name}.{key}: dtype {str(t.dtype)[6:]}, expected "
                             f"{' or '.join(str(a)[6:] for a in allowed)}")
    if isinstance(op, SYNAPTIC):
        problem = _codes_problem(op.codes, op.weight_bits)
        if problem is not None:
            raise ValueError(f"{op.name}.codes {problem}")
        if op.codes.dtype != weight_dtype(op.weight_bits):
            raise ValueError(f"{op.name}.codes: {op.weight_bits}-bit codes stored as "
                             f"{str(op.codes.dtype)[6:]}")
        c_out = op.codes.shape[0]
        if op.bias is not None and tuple(op.bias.shape) != (c_out,):
            raise ValueError(f"{op.name}.bias: shape {list(op.bias.shape)}, expected [{c_out}]")
        if op.weight_scale.dim() > 1 or op.weight_scale.numel() not in (1, c_out) or \
                op.input_scale.dim() != 0:
            raise ValueError(f"{op.name}.weight_scale: shape {list(op.weight_scale.shape)}, "
                             f"expected [] or [{c_out}] (and input_scale [])")
    if isinstance(op, IntNeuronOp):
        n = op.neuron
        if not 0 <= n.shift <= MAX_SHIFT or not 1 <= n.bits <= MAX_BITS:
            raise ValueError(f"{op.name}: shift {n.shift} or membrane_bits {n.bits} out of range")
        mask = op.spike_mask
        if mask is not None and mask.numel() and bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(f"{op.name}.spike_mask holds values other than 0 and 1")


# ---------------------------------------------------------------------------------- lowering


def _leaves(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of the modules a sequential forward runs, in order; a container whose
    forward is not plain composition is refused by name."""
    if type(module) is nn.Sequential:
        for name, child in module.named_children():
            yield from _leaves(child, f"{path}.{name}" if path else name)
        return
    if isinstance(module, BasicBlock | SEWBlock):
        raise ValueError(f"{path}: {type(module).__name__} adds a residual; residual "
                         "networks cannot be lowered to the integer SNN")
    yield path, module


_IDENTITY = (nn.Identity, nn.Dropout)
_POOLS = {L.MaxPool1d: 1, L.MaxPool2d: 2, L.AvgPool1d: 1, L.AvgPool2d: 2}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


_HINT_LAYER = "(quantize it: uniform_quant or mint)"
_HINT_NEURON = "(quantize the membrane: uniform_quant membrane_bits or mint)"


def _need(module: nn.Module, path: str, name: str, what: str, hint: str) -> torch.Tensor:
    value = getattr(module, name, None)
    if value is None:
        raise ValueError(f"{path}: {what} without {name} cannot be lowered {hint}")
    return value.detach()


class _Lowering:
    """The state of a walk over the model's leaves: the ops so far, the current sample shape,
    the scale of the integer stream (its float value = scale · codes) and what produced it, the
    synaptic op waiting for its neuron."""

    def __init__(self, in_shape: Shape) -> None:
        self.ops: list[Op] = []
        self.shape = tuple(in_shape)
        self.scale: float | None = None  # None: before the input quantizer
        self.why = ""
        self.pending: IntConv | IntLinear | None = None
        self.input: tuple[torch.Tensor, int] | None = None

    def push(self, op: Op) -> None:
        self.shape = op.out_shape(self.shape)
        self.ops.append(op)

    def synaptic(self, path: str, m: nn.Module) -> None:
        if self.pending is not None:
            raise ValueError(f"{path}: takes the accumulator of {self.pending.name}; a synaptic "
                             "layer must feed a neuron or be the read-out")
        s_in = _need(m, path, "input_scale", "layer", _HINT_LAYER)
        s_w = _need(m, path, "weight_scale", "layer", _HINT_LAYER)
        if s_in.dim() != 0:
            raise ValueError(f"{path}: input_scale must be a scalar, got {list(s_in.shape)}")
        bits = getattr(m, "input_bits", None)
        if self.scale is None:
            if bits is None:
                raise ValueError(f"{path}: the first quantized layer has no input_bits (the "
                                 "range of the network's input codes is unknown)")
            self.input = (s_in.float().clone(), int(bits))
        else:
            if bits is not None:
                raise ValueError(f"{path}: input_bits on a layer that does not take the "
                                 "network's input")
            expected = torch.tensor(self.scale, dtype=torch.float32)
            if float(s_in) != float(expected):
                raise ValueError(f"{path}: input_scale {float(s_in):g} does not match its input "
                                 f"({self.why}: {float(expected):g})")
        grid = s_w.float() * s_in.float()
        if not bool(torch.isfinite(grid).all() & (grid > 0).all()):
            raise ValueError(f"{path}: the grid weight_scale · input_scale must be finite and "
                             "> 0")
        if s_w.dim() > 1 or s_w.numel() not in (1, m.weight.shape[0]):
            raise ValueError(f"{path}: weight_scale of shape {list(s_w.shape)} is neither a "
                             f"scalar nor one per output channel ({m.weight.shape[0]})")
        w = m.weight.detach().float()
        codes = torch.round(w / (s_w.view(-1, *[1] * (w.dim() - 1)) if s_w.dim() else s_w))
        wbits = getattr(m, "weight_bits", None)
        wbits = bits_of(codes) if wbits is None else int(wbits)
        problem = _codes_problem(codes, wbits)
        if problem is not None:
            raise ValueError(f"{path}: the weight codes round(weight / weight_scale) {problem}")
        codes = codes.to(weight_dtype(wbits))
        bias = None
        if m.bias is not None:
            b = torch.round(m.bias.detach().float() / grid)
            if not bool(b.abs().max() < ACC_LIMIT):
                raise ValueError(f"{path}: bias codes round(bias / grid) reach "
                                 f"{float(b.abs().max()):g} (>= 2^31)")
            bias = b.to(torch.int32)
        meta = (s_w.float().clone(), s_in.float().clone())
        if isinstance(m, nn.Linear):
            op = IntLinear(path, codes, bias, wbits, *meta)
        else:
            d = m.weight.dim() - 2
            if m.groups != 1 or _tuple(m.dilation, d) != (1,) * d or \
                    m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"{path}: only convolutions with groups 1, dilation 1 and "
                                 "numeric zero padding can be lowered")
            op = IntConv(path, codes, bias, _tuple(m.stride, d), _tuple(m.padding, d), wbits,
                         *meta)
        self.push(op)
        self.pending = op

    def neuron(self, path: str, n: nn.Module) -> None:
        if self.pending is None:
            raise ValueError(f"{path}: a neuron must follow a quantized synaptic layer")
        bits = _need(n, path, "membrane_bits", "neuron", _HINT_NEURON)
        v_reset = n.reset.v_reset
        if v_reset not in (None, 0.0):
            raise ValueError(f"{path}: hard reset to v_reset={v_reset} cannot be lowered (the "
                             "integer membrane resets by subtraction or to 0)")
        grid = _need(n, path, "input_grid", "neuron", _HINT_NEURON)
        layer = self.pending
        try:
            same = grid.dim() <= 1 and bool((grid.float() == layer.grid).all())
        except RuntimeError:  # shapes that do not broadcast
            same = False
        if not same:
            raise ValueError(f"{path}: input_grid does not match the grid of {layer.name} "
                             "(weight_scale · input_scale)")
        s_u = getattr(n, "membrane_scale", None)
        s_u = grid if s_u is None else s_u.detach()  # None: shares the input grid (MINT)
        k, a = n._decay_gain()
        k = k if n.leak is None else n.leak
        p = int_neuron(k, a, n.v_threshold, grid, s_u, int(bits), soft=v_reset is None)
        mask = getattr(n, "spike_mask", None)
        mask = None if mask is None else (mask.detach() != 0).to(torch.int8)
        self.push(IntNeuronOp(path, p, mask, s_u.float().clone()))
        self.pending, self.scale, self.why = None, 1.0, f"the spikes of {path}"

    def pool(self, path: str, m: nn.Module, d: int) -> None:
        if isinstance(m, nn.AdaptiveAvgPool2d):
            out = _tuple(m.output_size, 2)
            size = self.shape[1:]
            if len(size) != 2 or any(s % o for s, o in zip(size, out, strict=True)):
                raise ValueError(f"{path}: adaptive pooling of {list(size)} to {list(out)} is "
                                 "not a fixed window")
            kernel = stride = tuple(s // o for s, o in zip(size, out, strict=True))
            padding, avg = (0, 0), True
        else:
            kernel, stride = _tuple(m.kernel_size, d), _tuple(m.stride or m.kernel_size, d)
            padding, avg = _tuple(m.padding, d), isinstance(m, nn.AvgPool1d | nn.AvgPool2d)
            dil = 1 if avg else m.dilation
            if m.ceil_mode or (not avg and (_tuple(dil, d) != (1,) * d or m.return_indices)):
                raise ValueError(f"{path}: only pooling without ceil_mode, dilation or indices "
                                 "can be lowered")
        if not avg:
            if self.scale is None and self.pending is None:
                raise ValueError(f"{path}: pooling before the first quantized layer")
            self.push(MaxPool(path, kernel, stride, padding))
            return
        if self.pending is not None or self.scale is None:
            raise ValueError(f"{path}: average pooling is lowered as a sum on spikes; here it "
                             "does not follow a neuron")
        if any(padding) or getattr(m, "divisor_override", None):
            raise ValueError(f"{path}: only average pooling without padding or divisor_override "
                             "can be lowered")
        area = math.prod(kernel)
        self.push(SumPool(path, kernel, stride))
        self.scale /= area
        self.why = f"{self.why} sum-pooled by {path} (area {area})"


def _network_leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(model, Network):
        spec = getattr(model, "spec", {}) or {}
        if spec.get("time_stages") is not None:
            raise ValueError("time_stages: temporal transformers between stages cannot be "
                             "lowered to the integer SNN")
        yield from _leaves(model.features, "features")
        yield from _leaves(model.classifier, "classifier")
    elif type(model) is nn.Sequential:
        yield from _leaves(model, "")
    else:
        raise ValueError(f"{type(model).__name__}: only a models.Network or an nn.Sequential "
                         "can be lowered to the integer SNN")


def to_integer(model: nn.Module, in_shape: Shape | None = None) -> IntegerSNN:
    """Lower a finalized quantized model to its integer program.

    ``model``: a ``models.Network`` (or an ``nn.Sequential``) whose blocks are BN-free quantized
    synaptic layers (buffers ``input_scale``, ``weight_scale``; ``input_bits`` on the first)
    each followed by a neuron with an integer membrane (``membrane_bits``, ``membrane_scale``,
    ``input_grid``), pools, Flatten and Dropout, ending with a read-out Linear.
    ``in_shape``: one sample's shape; default ``model.in_shape``.

    Anything else (BN left in, a residual add, a float-only layer, a missing buffer, an
    unsupported neuron or reset, ranges beyond int32 accumulators or 2^53 charges) is a one-line
    ValueError naming the module path and why.
    """
    in_shape = getattr(model, "in_shape", None) if in_shape is None else in_shape
    if in_shape is None:
        raise ValueError(f"{type(model).__name__} has no in_shape: pass in_shape=(C, ...) to "
                         "to_integer")
    low = _Lowering(tuple(int(s) for s in in_shape))
    for path, m in list(_network_leaves(model)):  # the structure first, then each module
        if isinstance(m, _BN):
            raise ValueError(f"{path}: BatchNorm left in the model cannot be lowered (fold it "
                             "into the layer before it, as the quantization methods' finalize "
                             "does)")
        if isinstance(m, _IDENTITY):
            continue
        if isinstance(m, L.Conv1d | L.Conv2d | L.Linear):
            low.synaptic(path, m)
        elif isinstance(m, IF | LIF | PLIF):
            low.neuron(path, m)
        elif isinstance(m, L.Flatten):
            if low.pending is not None:
                raise ValueError(f"{path}: Flatten between {low.pending.name} and its neuron")
            low.push(Flatten(path))
        elif type(m) in _POOLS or isinstance(m, L.AdaptiveAvgPool2d):
            low.pool(path, m, _POOLS.get(type(m), 2))
        else:
            raise ValueError(f"{path}: {type(m).__name__} cannot be lowered to the integer SNN "
                             "(not a quantized synaptic layer, spiking neuron, pool, Flatten or "
                             "Dropout of spikecompress.snn)")
    if not isinstance(low.pending, IntLinear):
        raise ValueError("the model has no read-out: it must end with a quantized Linear that "
                         "no neuron follows")
    scale, bits = low.input
    return IntegerSNN(tuple(in_shape), scale, bits, low.ops)


# ------------------------------------------------------------------------------- save / load


def save_integer(program: IntegerSNN, path: str | Path) -> Path:
    """Write ``program`` to the folder ``path`` as ``integer.safetensors`` and ``integer.json``
    (atomically: tensor file first, the JSON, the commit point, last); returns ``path``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot save the integer SNN to {path}: it exists and is not a folder")
    program.trace()
    tensors = {"input_scale": program.input_scale.contiguous()}
    ops = []
    for op in program.ops:
        entry = {"kind": op.kind, "name": op.name, **op.spec()}
        for key, t in op.tensors().items():
            tensors[f"{op.name}.{key}"] = t.contiguous()
        ops.append(entry)
    data = st_save(tensors, metadata={"format": FORMAT})
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
        "in_shape": list(program.in_shape), "input_bits": program.input_bits, "ops": ops,
        "tensors": {k: {"dtype": str(t.dtype)[6:], "shape": list(t.shape)}
                    for k, t in tensors.items()},
        "tensor_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
    }
    text = json.dumps(doc, indent=1, allow_nan=False).encode()
    tensor_path, spec_path = path / TENSOR_FILE, path / SPEC_FILE
    old = tensor_path.read_bytes() if tensor_path.is_file() else None
    with atomic_writer(tensor_path) as f:
        f.write(data)
    try:
        with atomic_writer(spec_path) as f:
            f.write(text)
    except BaseException:  # put the previous tensor file back: the old pair stays consistent
        if old is None:
            tensor_path.unlink(missing_ok=True)
        else:
            with atomic_writer(tensor_path) as f:
                f.write(old)
        raise
    return path


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"missing integer artifact file {file}") from None
    except OSError as e:
        raise ArtifactError(f"cannot read integer artifact file {file}: {e.strerror}") from None


def _read_doc(file: Path) -> dict:
    try:
        doc = json.loads(_read(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"corrupt integer artifact file {file}: invalid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArtifactError(f"{file} is not a {FORMAT} description")
    version = doc.get("format_version")
    if type(version) is not int or version < 1:
        raise ArtifactError(f"corrupt integer artifact file {file}: bad format_version")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{file} has format version {version}, newer than this library "
                            f"reads ({FORMAT_VERSION}); upgrade spikecompress")
    kinds = {"in_shape": list, "input_bits": int, "ops": list, "tensors": dict,
             "tensor_bytes": int, "sha256": str}
    for key, kind in kinds.items():
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise ArtifactError(f"corrupt integer artifact file {file}: '{key}' missing or not "
                                f"a {kind.__name__}")
    for i, op in enumerate(doc["ops"]):
        if not isinstance(op, dict) or op.get("kind") not in OPS or \
                not isinstance(op.get("name"), str):
            raise ArtifactError(f"corrupt integer artifact file {file}: ops[{i}] is not an op "
                                f"(kind one of {sorted(OPS)} and a name)")
    return doc


def _check_tensor_table(doc: dict, tensors: dict[str, torch.Tensor], file: Path) -> None:
    """Every tensor the description lists is present with its dtype and shape; no other."""
    where = f"integer artifact {file} does not match its {SPEC_FILE}"
    for key, entry in doc["tensors"].items():
        if key not in tensors:
            raise ArtifactError(f"{where}: tensor {key!r} is missing")
        t = tensors[key]
        if not isinstance(entry, dict) or str(t.dtype)[6:] != entry.get("dtype"):
            said = entry.get("dtype") if isinstance(entry, dict) else entry
            raise ArtifactError(f"{where}: tensor {key!r} has dtype {str(t.dtype)[6:]}, the "
                                f"description says {said!r}")
        if list(t.shape) != entry.get("shape"):
            raise ArtifactError(f"{where}: tensor {key!r} has shape {list(t.shape)}, the "
                                f"description says {entry.get('shape')}")
    extra = sorted(set(tensors) - set(doc["tensors"]))
    if extra:
        raise ArtifactError(f"{where}: tensor {extra[0]!r} is not in the description")


def load_integer(path: str | Path) -> IntegerSNN:
    """Read an integer SNN saved by ``save_integer``, validating it (tensors present, dtypes,
    shapes, codes within their bits, the ops' structure and ranges, then the tensor file's
    sha256); a mismatch is a one-line ``ArtifactError`` (a ValueError) naming file and tensor."""
    path = Path(path)
    spec_file, tensor_file = path / SPEC_FILE, path / TENSOR_FILE
    doc = _read_doc(spec_file)
    data = _read(tensor_file)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types on a damaged header
        raise ArtifactError(f"corrupt integer artifact file {tensor_file}: "
                            f"{' '.join(str(e).split())}") from None
    _check_tensor_table(doc, tensors, tensor_file)
    where = f"integer artifact {tensor_file} does not match its {SPEC_FILE}"
    ops = []
    try:
        for entry in doc["ops"]:
            name = entry["name"]
            own = {k[len(name) + 1:]: t for k, t in tensors.items() if k.startswith(name + ".")
                   and k[len(name) + 1:] in _TENSOR_DTYPES}
            for key, (required, _) in _TENSOR_DTYPES.items():
                if required and key in _KIND_TENSORS[entry["kind"]] and key not in own:
                    raise ValueError(f"tensor {name}.{key!r} is missing")
            ops.append(OPS[entry["kind"]].build(name, entry, own))
        if "input_scale" not in tensors:
            raise ValueError("tensor 'input_scale' is missing")
        program = IntegerSNN(tuple(doc["in_shape"]), tensors["input_scale"], doc["input_bits"],
                             ops)
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"corrupt integer artifact file {spec_file}: an op lacks {e}") from None
    except ValueError as e:
        raise ArtifactError(f"{where}: {e}") from None
    if len(data) != doc["tensor_bytes"] or hashlib.sha256(data).hexdigest() != doc["sha256"]:
        raise ArtifactError(f"{where}: the tensor file's size or sha256 differs from the "
                            "description")
    return program


_KIND_TENSORS = {
    "conv": ("codes", "weight_scale", "input_scale"), "linear": ("codes", "weight_scale",
                                                                  "input_scale"),
    "neuron": ("leak", "gain", "threshold", "membrane_scale"),
    "sumpool": (), "maxpool": (), "flatten": (),
}
