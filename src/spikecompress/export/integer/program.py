"""``IntegerSNN``: the integer program, a plain data structure, and its forward.

The input quantizer (``input_scale``, ``input_bits``) and a list of ops (``ops``) applied in
order to x [T, B, ...]. The last op is the read-out ``IntLinear``; ``scale`` (its grid
``weight_scale · input_scale``, float32 [] or [classes]) turns its accumulators into the model's
logits. The float scales of every layer and neuron (``weight_scale``, ``input_scale``,
``membrane_scale``) are kept as metadata; the forward never reads them. ``encode`` is the one
float op, at the boundary: ``clamp(round(x / input_scale), ±qmax(input_bits))`` exactly as the
fake-quant input layer.

Range: every accumulator is bounded, per output channel, by Σ|codes|·max|x| + |bias|; a layer
whose bound reaches 2^31 (an int32 accumulator) or whose charge can reach 2^53
(``snn.integer.check_range``) is refused by name, so the int64 forward is exact and an int32 one
would be too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spikecompress.export.integer.neuron_op import IntNeuronOp
from spikecompress.export.integer.ops import (
    _TENSOR_DTYPES,
    ACC_LIMIT,
    INT_DTYPES,
    SYNAPTIC,
    UNFOLD_BUDGET,
    IntConv,
    IntLinear,
    Shape,
    _codes_problem,
    weight_dtype,
)
from spikecompress.export.integer.shape_ops import Flatten, MaxPool, SumPool
from spikecompress.snn.integer import MAX_BITS, MAX_SHIFT, check_range, qmax

Op = IntConv | IntLinear | IntNeuronOp | SumPool | MaxPool | Flatten
OPS: dict[str, type] = {c.kind: c for c in (IntConv, IntLinear, IntNeuronOp, SumPool, MaxPool,
                                             Flatten)}


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

