"""The integer SNN: a finalized quantized model lowered to integer tensors and run with them only.

    program = to_integer(model)              # checks the quantization contract, refuses by name
    acc = program(program.encode(x_seq))     # int64 [T, B, classes]: the read-out accumulators
    logits = acc.float() * program.scale     # == the fake-quant model's logits, bit for bit
    save_integer(program, "runs/a/artifact"); program = load_integer("runs/a/artifact")

By concept: ``ops`` (the synaptic operations and the helpers every op shares), ``neuron_op``
(the spiking layer) and ``shape_ops`` (pooling and flatten), each a dataclass over integer tensors;
``program`` (``IntegerSNN``: the ops in order, their checks and forward), ``lowering``
(``to_integer``: a quantized model to its program) and ``files`` (``save_integer`` /
``load_integer``: the folder of ``integer.safetensors`` and ``integer.json``).
"""

from spikecompress.export.integer.files import (
    FORMAT,
    FORMAT_VERSION,
    SPEC_FILE,
    TENSOR_FILE,
    load_integer,
    save_integer,
)
from spikecompress.export.integer.lowering import to_integer
from spikecompress.export.integer.neuron_op import IntNeuronOp
from spikecompress.export.integer.ops import (
    ACC_LIMIT,
    INT_DTYPES,
    SYNAPTIC,
    UNFOLD_BUDGET,
    IntConv,
    IntLinear,
    Shape,
    bits_of,
    weight_dtype,
)
from spikecompress.export.integer.program import OPS, IntegerSNN, LayerTrace, Op
from spikecompress.export.integer.shape_ops import Flatten, MaxPool, SumPool

__all__ = [
    "ACC_LIMIT", "FORMAT", "FORMAT_VERSION", "INT_DTYPES", "OPS", "SPEC_FILE", "SYNAPTIC",
    "TENSOR_FILE", "UNFOLD_BUDGET", "Flatten", "IntConv", "IntLinear", "IntNeuronOp",
    "IntegerSNN", "LayerTrace", "MaxPool", "Op", "Shape", "SumPool", "bits_of", "load_integer",
    "save_integer", "to_integer", "weight_dtype",
]
