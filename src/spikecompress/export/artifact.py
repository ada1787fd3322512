"""The saved compressed model: a folder with ``model.safetensors`` and ``spec.json``.

``model.safetensors`` holds every state_dict tensor in its smallest exact format (``codec``:
dense, bitmap-sparse, codebook-packed, sparse codebook, index lists), as plain safetensors
tensors named ``<key>`` or ``<key>::<piece>``. ``spec.json`` holds the format name and version,
the library version, the model spec (``model.spec``, rebuilt with ``models.from_spec``), the
user's ``meta`` (T, exit policies, quantization parameters), the per-tensor storage entries and
the byte count and sha256 of the tensor file. Loading reads safetensors and JSON only (never
pickle), checks the tensor file against the recorded sha256 and rebuilds the model bit for bit.

Writes go through ``atomic.write_pair``, tensor file first and spec.json last (the commit point).
Everything is encoded in memory before the first write, and a failure while writing spec.json
puts the previous tensor file back, so a failed save leaves a previous artifact intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from spikecompress._version import __version__
from spikecompress.atomic import write_pair
from spikecompress.export import codec
from spikecompress.models import from_spec
from spikecompress.snn.neuron import add_optional_state_

FORMAT = "spikecompress-artifact"
FORMAT_VERSION = 2  # 2: the scaled-codes formats (codec); readers take every version up to it
TENSOR_FILE = "model.safetensors"
SPEC_FILE = "spec.json"


class ArtifactError(ValueError):
    """A missing, truncated, corrupt, tampered or too-new artifact (one line, naming the file)."""


def artifact_of(path: str | Path) -> Path | None:
    """The artifact a folder holds: itself, or its ``artifact/`` (a run or stage folder); None
    when it has none."""
    p = Path(path)
    for folder in (p, p / "artifact"):
        if (folder / SPEC_FILE).is_file():
            return folder
    return None


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def encode_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Encode every tensor in its smallest exact format → (safetensors pieces, spec entries).

    A tensor whose ``<key>_scale`` is in ``state`` may be stored as integer codes times that
    scale (``codec.SCALED_FORMATS``), unless the scale has a scale of its own (no chains)."""
    pieces: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    for key, tensor in state.items():
        ref = codec.scale_key(key)
        scale = (ref, state[ref]) if ref in state and codec.scale_key(ref) not in state else None
        p, entries[key] = codec.encode(key, tensor, scale=scale)
        clash = set(p) & set(pieces)
        if clash:
            raise ValueError(f"state_dict key {key!r} clashes with stored tensor {clash.pop()!r}")
        pieces.update(p)
    return pieces, entries


def _check_meta(meta: dict | None) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    t = meta.get("T")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        raise ValueError(f"meta['T'] must be a positive int, got {t!r}")
    _spec_bytes(meta)  # fail before the encoding work, not after it
    return meta


def _spec_bytes(doc: dict) -> bytes:
    try:
        # compact: spec.json's bytes are part of what the artifact costs
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise ValueError(f"model spec and meta must be JSON-serialisable: {e}") from None


def save(model: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Save ``model`` (built by ``spikecompress.models``, so it has ``.spec``) as an artifact
    folder at ``path`` (created, or overwritten if it exists); returns ``path``.

    ``meta`` is a JSON-serialisable dict stored in spec.json (``T``, quantization parameters,
    exit policies). Models without ``.spec`` raise ValueError.
    """
    path = Path(path)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"cannot save {type(model).__name__} to {path}: it has no .spec (build "
                         "it with spikecompress.models.build so it can be rebuilt)")
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot save artifact to {path}: it exists and is not a folder")
    meta = _check_meta(meta)
    pieces, entries = encode_state_dict(model.state_dict())
    data = st_save(pieces, metadata={"format": FORMAT})
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "library_version": __version__, "model": spec, "meta": meta,
        "tensor_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "tensors": entries,
    }
    write_pair(path / TENSOR_FILE, data, path / SPEC_FILE, _spec_bytes(doc))
    return path


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"missing artifact file {file}") from None
    except OSError as e:
        raise ArtifactError(f"cannot read artifact file {file}: {e.strerror}") from None


def _check_doc(doc: object, file: Path) -> dict:
    """The schema of spec.json: every key the loader reads, its type and range; one-line
    ArtifactError naming ``file`` and the key (``tensors.<name>.shape``)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArtifactError(f"{file} is not a {FORMAT} spec (no 'format': {FORMAT!r})")
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"corrupt artifact file {file}: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{file} has format version {version}, newer than this library "
                            f"reads ({FORMAT_VERSION}); upgrade spikecompress")
    types = {"model": (dict, "an object"), "meta": (dict, "an object"),
             "tensors": (dict, "an object"), "sha256": (str, "a string"),
             "tensor_bytes": (int, "an integer"), "library_version": (str, "a string")}
    for key, (kind, what) in types.items():
        if key not in doc:
            raise ArtifactError(f"corrupt artifact file {file}: '{key}' missing")
        if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
            raise ArtifactError(f"corrupt artifact file {file}: '{key}' must be {what}, got "
                                f"{doc[key]!r:.60}")
    _check_values(doc, file)
    for key, entry in doc["tensors"].items():
        problem = codec.entry_problem(entry, doc["tensors"])
        if problem is not None:
            field, what = problem
            name = f"tensors.{key}.{field}" if field else f"tensors.{key}"
            got = entry.get(field) if field and isinstance(entry, dict) else entry
            raise ArtifactError(f"corrupt artifact file {file}: {name!r} {what}, got {got!r:.60}")
    return doc


def _check_values(doc: dict, file: Path) -> None:
    """Ranges of spec.json's scalar keys (their types are checked already)."""
    bad = None
    if doc["tensor_bytes"] < 0:
        bad = "'tensor_bytes' must be an integer >= 0"
    elif len(doc["sha256"]) != 64 or doc["sha256"].strip("0123456789abcdef"):
        bad = "'sha256' must be 64 hex digits"
    elif not isinstance(doc["model"].get("name"), str):
        bad = "'model.name' must be a model name (a string)"
    elif "T" in doc["meta"] and doc["meta"]["T"] is not None and not (
        type(doc["meta"]["T"]) is int and doc["meta"]["T"] >= 1
    ):
        bad = f"'meta.T' must be an integer >= 1, got {doc['meta']['T']!r}"
    elif not isinstance(doc["meta"].get("data", {}), dict | None):
        bad = "'meta.data' must be an object (the data settings)"
    if bad is not None:
        raise ArtifactError(f"corrupt artifact file {file}: {bad}")


def read_spec(path: str | Path) -> dict:
    """The artifact's spec.json as a dict (model spec, meta, tensor entries, versions, sha256),
    checked for format and version; does not read the tensor file."""
    file = Path(path) / SPEC_FILE
    try:
        doc = json.loads(_read(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"corrupt artifact file {file}: invalid JSON ({e})") from None
    return _check_doc(doc, file)


def _read_pieces(path: Path, doc: dict) -> dict[str, torch.Tensor]:
    """The tensor file's tensors, after checking its size and sha256 against spec.json."""
    file = path / TENSOR_FILE
    data = _read(file)
    if len(data) != doc["tensor_bytes"]:
        raise ArtifactError(f"corrupt artifact file {file}: {len(data)} bytes, {SPEC_FILE} "
                            f"records {doc['tensor_bytes']} (truncated or replaced)")
    if hashlib.sha256(data).hexdigest() != doc["sha256"]:
        raise ArtifactError(f"corrupt artifact file {file}: sha256 does not match {SPEC_FILE} "
                            "(modified or tampered)")
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise ArtifactError(f"corrupt artifact file {file}: {_one_line(e)}") from None


def read_state_dict(path: str | Path, doc: dict | None = None) -> dict[str, torch.Tensor]:
    """The decoded state_dict of the artifact at ``path`` (exact tensors, CPU); ``doc`` is its
    ``read_spec`` if already read."""
    path = Path(path)
    doc = read_spec(path) if doc is None else doc
    pieces = _read_pieces(path, doc)
    tensors, state = doc["tensors"], {}
    # the scales first: a scaled entry's scale is stored without a scale of its own (spec check)
    for key in sorted(tensors, key=lambda k: codec.is_scaled(tensors[k])):
        entry = tensors[key] if isinstance(tensors[key], dict) else {}
        try:
            state[key] = codec.decode(key, entry, pieces, scale=state.get(codec.scale_ref(entry)))
        except ValueError as e:
            raise ArtifactError(f"corrupt artifact file {path / SPEC_FILE}: does not match "
                                f"{TENSOR_FILE}: {_one_line(e)}") from None
    return {key: state[key] for key in tensors}


def _check_fits(model: nn.Module, state: dict, file: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise ArtifactError(f"artifact file {file} does not fit its model: missing tensors "
                            f"{missing[:5]}, unexpected tensors {extra[:5]}")
    for key, shape in expected.items():
        if got[key] != shape:
            raise ArtifactError(f"artifact file {file} does not fit its model: {key} has shape "
                                f"{list(got[key])}, the model needs {list(shape)}")


def load(path: str | Path) -> nn.Module:
    """Rebuild the saved model (``from_spec`` + the exact state_dict, dtypes kept) in eval mode;
    its outputs equal the saved model's bit for bit. ArtifactError for any broken artifact."""
    path = Path(path)
    doc = read_spec(path)
    state = read_state_dict(path, doc)
    spec_file = path / SPEC_FILE
    model = _build(doc["model"], spec_file)
    add_optional_state_(model, state)
    _check_fits(model, state, spec_file)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _build(spec: dict, spec_file: Path) -> nn.Module:
    """``from_spec(spec)``; ArtifactError for a spec the builders refuse or cannot build (a size
    beyond memory: torch's allocator refuses it)."""
    try:
        return from_spec(spec)
    except ValueError as e:
        raise ArtifactError(f"bad model spec in {spec_file}: {_one_line(e)}") from None
    except (RuntimeError, TypeError) as e:
        raise ArtifactError(f"bad model spec in {spec_file}: cannot build it: "
                            f"{_one_line(e)[:200]}") from None


def size_bytes(path: str | Path) -> int:
    """Bytes on disk of the artifact's files (tensor file + spec.json), from ``os.path.getsize``."""
    total = 0
    for name in (TENSOR_FILE, SPEC_FILE):
        file = Path(path) / name
        try:
            total += os.path.getsize(file)
        except FileNotFoundError:
            raise ArtifactError(f"missing artifact file {file}") from None
    return total
