"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically; no pickle.

A run directory holds ``checkpoint.json`` (the pointer: epoch, configs, history, RNG and optimizer
metadata) and the tensor file it names, ``ckpt-<epoch>.safetensors``. A new checkpoint writes its
tensor file under a new name, then replaces the pointer with ``os.replace``, then deletes the old
tensor file. A run killed at any moment therefore finds either the old or the new checkpoint,
complete, never a mix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from spikecompress.atomic import atomic_writer

POINTER = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (a NaN or inf is refused, naming the file) with indentation, atomically."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path}: refusing to write NaN or inf into JSON") from None
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save tensors in the safetensors format, atomically."""
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (``opt.<param>.<key>``) and JSON metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Rebuild an optimizer state_dict from ``optimizer_to_flat``'s two halves."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` and ``meta`` as the run's new checkpoint; returns the tensor file."""
    run_dir = Path(run_dir)
    old = read_pointer(run_dir) if (run_dir / POINTER).exists() else None
    name = f"ckpt-{meta['epoch']:04d}-{meta['step']:08d}.safetensors"
    atomic_save_tensors(run_dir / name, tensors)
    atomic_write_json(run_dir / POINTER, {**meta, "tensors": name})
    if old is not None and old["tensors"] != name:
        (run_dir / old["tensors"]).unlink(missing_ok=True)
    return run_dir / name


def read_pointer(run_dir: str | Path) -> dict:
    """The checkpoint metadata of a run directory; CheckpointError naming the file if unusable."""
    path = Path(run_dir) / POINTER
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint in {run_dir}: expected {path}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from None
    if "tensors" not in meta:
        raise CheckpointError(f"corrupt checkpoint file {path}: no 'tensors' entry")
    return meta


def load_checkpoint(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read the run's last complete checkpoint: (tensors, metadata)."""
    meta = read_pointer(run_dir)
    path = Path(run_dir) / meta["tensors"]
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {Path(run_dir) / POINTER} names missing {path}"
        ) from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"corrupt tensor file {path}: {e}") from None
    return tensors, meta
