"""The folders the CLI is given: what a model folder holds, and whether an ``--out`` is writable.

A model folder (``eval``, ``measure``, ``report``, a stage's ``init``) is one of::

    artifact folder        spec.json, model.safetensors           (export.save)
    run folder of train    checkpoint.json, artifact/, metrics.json
    run folder of run      recipe.effective.yaml, artifact/, metrics.json, stages/, report/
    stage folder           checkpoint.json, artifact/, metrics.json   (runs/a/stages/1-compress)

The folder's artifact is preferred; a checkpoint serves while there is none yet (a killed run).

    model, data, artifact = open_model("runs/a/stages/1-compress")
    check_out_dir("runs/b", "--out")       # before any work: a folder (or absent) we can write in
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import nn

from spikecompress.export import artifact_of, load, read_spec
from spikecompress.export.artifact import SPEC_FILE
from spikecompress.models import from_spec
from spikecompress.snn.neuron import add_optional_state_
from spikecompress.train.checkpoint import POINTER, CheckpointError, load_checkpoint

METRICS = "metrics.json"
EFFECTIVE = "recipe.effective.yaml"


def load_model(path: str | Path, field: str | None = None) -> nn.Module:
    """The model of a model folder: its artifact, else its checkpoint. One-line errors that say
    what is missing, prefixed with ``field`` (e.g. ``stages.1.init``) when given."""
    p, head = Path(path), f"{field}: " if field else ""
    artifact = artifact_of(p)
    if artifact is not None:
        return load(artifact)
    if not (p / POINTER).is_file():
        raise FileNotFoundError(f"{head}{_missing(p)}")
    tensors, meta = load_checkpoint(p)
    if "model" not in meta:
        raise CheckpointError(f"{head}the checkpoint in {p} records no model spec")
    try:
        model = from_spec(meta["model"])
    except (RuntimeError, TypeError) as e:  # a tampered spec torch cannot build (huge sizes)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{head}the model spec in {p / POINTER} cannot be built: {msg}") \
            from None
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    add_optional_state_(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        if any(".parametrizations." in k for k in state):  # a stage killed before finalize
            raise CheckpointError(
                f"{head}{p} holds no artifact/ yet, and its checkpoint is of an unfinished "
                "compression stage: finish it (run the recipe again with the same --out)"
            ) from None
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{head}checkpoint in {p} does not fit its model: {first}") from None
    return model


def recorded_data(path: str | Path) -> dict:
    """The data config recorded with a model folder's model (artifact meta or checkpoint)."""
    p = Path(path)
    artifact = artifact_of(p)
    if artifact is not None:
        return dict(read_spec(artifact)["meta"].get("data") or {})
    if (p / POINTER).is_file():
        return dict(load_checkpoint(p)[1].get("data") or {})
    raise FileNotFoundError(_missing(p))


def open_model(path: str | Path) -> tuple[nn.Module, dict, Path | None]:
    """(model, recorded data config, artifact folder or None) of a model folder."""
    model = load_model(path)
    return model, recorded_data(path), artifact_of(path)


def _missing(p: Path) -> str:
    if not p.exists():
        return f"{p} holds neither checkpoint.json nor an artifact: no such folder"
    if not p.is_dir():
        return f"{p} holds neither checkpoint.json nor an artifact: it is a file, not a folder"
    if (p / "stages").is_dir():
        return (f"{p} holds neither checkpoint.json nor an artifact: a recipe run that has not "
                f"finished; give one of its finished stages ({p / 'stages'}/<i>-<name>)")
    return (f"{p} holds neither checkpoint.json (a run) nor {SPEC_FILE} or artifact/{SPEC_FILE} "
            "(an artifact)")


# -- metrics records -----------------------------------------------------------------------------
def metrics_file(path: str | Path) -> Path:
    """Where a folder's measurement lives: ``<path>/metrics.json``; for an artifact folder
    without one, the metrics.json of the run or stage folder whose ``artifact/`` it is."""
    p = Path(path)
    own = p / METRICS
    if own.is_file() or not (p / SPEC_FILE).is_file() or p.name != "artifact":
        return own
    parent = p.parent / METRICS
    return parent if parent.is_file() else own


def recipe_text(path: str | Path) -> str | None:
    """The recipe.effective.yaml of the recipe run a folder belongs to (the run folder, its
    artifact, a stage folder or a stage's artifact); None for a ``train`` run or a lone artifact."""
    p = Path(path)
    run = p.parent if p.name == "artifact" else p
    if run.parent.name == "stages":
        run = run.parent.parent
    file = run / EFFECTIVE
    return file.read_text() if file.is_file() else None


def read_json(file: Path) -> dict:
    """A JSON object from ``file``; one-line ValueError naming the file otherwise."""
    try:
        d = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {file}: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(d).__name__}")
    return d


# -- outputs -------------------------------------------------------------------------------------
def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse (one line naming ``flag``) an output folder that is a file or cannot be written:
    it must be a folder or absent, and a probe file must be creatable in it (or in the nearest
    folder above it that exists)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p}: is a file, not a folder; give a folder (new or existing)")
    _probe(p, flag)
    return p


def check_out_file(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output file that is a folder or cannot be written (one line naming ``flag``)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p}: is a folder; give a file name, e.g. {p / METRICS}")
    _probe(p.parent, flag, about=p)
    return p


def _probe(folder: Path, flag: str, about: Path | None = None) -> None:
    about = folder if about is None else about
    base = folder
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{flag} {about}: {base} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(dir=base, prefix=".spikecompress-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ValueError(f"{flag} {about}: cannot write in {base} ({e.strerror})") from None
