"""Saving and loading the integer SNN.

Saved as a folder holding ``integer.safetensors`` (every tensor) and ``integer.json`` (format,
input shape and quantizer, the ops with their bits, each tensor's dtype and shape, the tensor
file's byte count and sha256), written atomically (``atomic.write_pair``), tensor file first and
JSON last (the commit point). ``load_integer`` validates everything (tensors present, dtypes,
shapes, codes within their bits, the ops' shapes chain) and refuses a mismatch with one line
naming file and tensor.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from spikecompress._version import __version__
from spikecompress.atomic import write_pair
from spikecompress.export.artifact import ArtifactError
from spikecompress.export.integer.ops import _TENSOR_DTYPES
from spikecompress.export.integer.program import OPS, IntegerSNN

FORMAT = "spikecompress-integer"
FORMAT_VERSION = 1
TENSOR_FILE = "integer.safetensors"
SPEC_FILE = "integer.json"


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
    write_pair(path / TENSOR_FILE, data, path / SPEC_FILE, text)
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
