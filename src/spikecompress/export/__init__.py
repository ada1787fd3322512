"""Export: the compressed-model artifact (safetensors + JSON, no pickle).

    path = save(model, "runs/a/artifact", meta={"T": 4})
    model = load(path)              # bit-exact, eval mode
    size_bytes(path)                # measured on disk
    program = to_integer(model)     # the integer SNN of a finalized quantized model
    save_integer(program, path); program = load_integer(path)
"""

from spikecompress.export.artifact import (
    ArtifactError,
    artifact_of,
    load,
    read_spec,
    read_state_dict,
    save,
    size_bytes,
)
from spikecompress.export.integer import IntegerSNN, load_integer, save_integer, to_integer

__all__ = [
    "ArtifactError", "IntegerSNN", "artifact_of", "load", "load_integer", "read_spec",
    "read_state_dict", "save", "save_integer", "size_bytes", "to_integer",
]
