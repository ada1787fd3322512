"""Export: the compressed-model artifact (safetensors + JSON, no pickle).

    path = save(model, "runs/a/artifact", meta={"T": 4})
    model = load(path)              # bit-exact, eval mode
    size_bytes(path)                # measured on disk
"""

from spikecompress.export.artifact import (
    ArtifactError,
    load,
    read_spec,
    read_state_dict,
    save,
    size_bytes,
)

__all__ = ["ArtifactError", "load", "read_spec", "read_state_dict", "save", "size_bytes"]
