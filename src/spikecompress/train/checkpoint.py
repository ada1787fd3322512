"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically; no pickle.

A run directory holds ``checkpoint.json`` (the pointer: epoch, configs, history, RNG and optimizer
metadata) and the tensor file it names, ``ckpt-<epoch>.safetensors``. A new checkpoint writes its
tensor file under a new name, then replaces the pointer with ``os.replace``, then deletes the old
tensor file. A run killed at any moment therefore finds either the old or the new checkpoint,
complete, never a mix.
"""

from __future__ import annotations

import json
import math
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
    """The checkpoint metadata of a run directory, its schema checked (:func:`check_pointer`);
    CheckpointError naming the file (and the field) if unusable."""
    path = Path(run_dir) / POINTER
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint in {run_dir}: expected {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from None
    check_pointer(meta, path)
    return meta


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _tensor_file_name(v: object) -> bool:
    return isinstance(v, str) and v.endswith(".safetensors") and Path(v).name == v != ".safetensors"


# field -> (check, what it must be); the fields every checkpoint has, then the optional ones
_REQUIRED = {
    "tensors": (_tensor_file_name, "the name of a .safetensors file in the run folder"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "step": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "history": (lambda v: isinstance(v, list), "a list"),
    "optimizer": (lambda v: isinstance(v, dict), "an object"),
    "train": (lambda v: isinstance(v, dict), "an object"),
}
_OPTIONAL = {
    "grad_scale": (lambda v: v is None or (_is_number(v) and math.isfinite(v) and v >= 0),
                   "a number >= 0 or null"),
    "session": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "model": (lambda v: isinstance(v, dict) and isinstance(v.get("name"), str),
              "an object with a string 'name' (the model spec)"),
    "data": (lambda v: isinstance(v, dict), "an object (the data settings)"),
    "recipe": (lambda v: isinstance(v, dict), "an object"),
    "stage": (lambda v: isinstance(v, str), "a string"),
}


def _finite(v: object) -> bool:
    return _is_number(v) and math.isfinite(v)


def _flag(v: object) -> bool:
    return v is None or isinstance(v, bool)


# the keys of an Adam / SGD parameter group (``params`` always; the rest when present)
_GROUP_FIELDS = {
    "params": (lambda v: isinstance(v, list) and all(_is_int(p) and p >= 0 for p in v),
               "a list of integers >= 0"),
    **{k: (_finite, "a finite number")
       for k in ("lr", "lr_scale", "eps", "weight_decay", "momentum", "dampening")},
    "betas": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_finite, v)),
              "two finite numbers"),
    **{k: (_flag, "true, false or null") for k in (
        "amsgrad", "maximize", "nesterov", "foreach", "capturable", "differentiable", "fused",
        "decoupled_weight_decay")},
}


def check_pointer(meta: object, path: Path) -> None:
    """The type of every field the trainer and the loaders read; CheckpointError naming
    ``path`` and the first bad field."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"corrupt checkpoint file {path}: expected a JSON object, got "
                              f"{type(meta).__name__}")
    for table, required in ((_REQUIRED, True), (_OPTIONAL, False)):
        for key, (ok, what) in table.items():
            if key not in meta:
                if required:
                    raise CheckpointError(f"corrupt checkpoint file {path}: {key!r} missing")
                continue
            if not ok(meta[key]):
                raise CheckpointError(f"corrupt checkpoint file {path}: {key!r} must be {what}, "
                                      f"got {_short(meta[key])}")
    if not all(isinstance(h, dict) and _is_number(h.get("test_accuracy"))
               for h in meta["history"]):
        raise CheckpointError(f"corrupt checkpoint file {path}: 'history' must be a list of "
                              "objects with a number 'test_accuracy' (one per epoch)")
    _check_optimizer(meta["optimizer"], path)


def _check_optimizer(opt: dict, path: Path) -> None:
    groups, scalars = opt.get("param_groups"), opt.get("scalars")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"corrupt checkpoint file {path}: 'optimizer.param_groups' must be "
                              f"a list of objects, got {_short(groups)}")
    for i, group in enumerate(groups):
        for key, (ok, what) in _GROUP_FIELDS.items():
            if (key == "params" or key in group) and not ok(group.get(key)):
                raise CheckpointError(f"corrupt checkpoint file {path}: 'optimizer.param_groups."
                                      f"{i}.{key}' must be {what}, got {_short(group.get(key))}")
    if not isinstance(scalars, dict):
        raise CheckpointError(f"corrupt checkpoint file {path}: 'optimizer.scalars' must be an "
                              f"object, got {_short(scalars)}")
    for key in scalars:
        pid, _, name = key.partition(".")
        if not (pid.isdigit() and name):
            raise CheckpointError(f"corrupt checkpoint file {path}: 'optimizer.scalars' key "
                                  f"{key!r} is not <int>.<key>")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_checkpoint(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read the run's last complete checkpoint: (tensors, metadata). CheckpointError naming the
    file for a bad pointer, a missing or corrupt tensor file, or tensors a checkpoint lacks."""
    meta = read_pointer(run_dir)
    path = Path(run_dir) / meta["tensors"]
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {Path(run_dir) / POINTER} names missing {path}"
        ) from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"corrupt tensor file {path}: {_first_line(e)}") from None
    _check_tensors(tensors, path, meta.get("world_size", 1))
    return tensors, meta


def _check_tensors(tensors: dict[str, torch.Tensor], path: Path, world_size: int) -> None:
    """The RNG state of every rank (``rng.cpu``; ``rank<r>.rng.cpu`` when several processes
    wrote it) and well-formed optimizer keys."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise CheckpointError(f"corrupt checkpoint for {path}: world_size {world_size!r} is not "
                              "a number of processes")
    keys = ["rng.cpu"] if world_size == 1 else [f"rank{r}.rng.cpu" for r in range(world_size)]
    for key in keys:
        rng = tensors.get(key)
        if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise CheckpointError(f"corrupt tensor file {path}: it lacks the RNG state {key!r} "
                                  "(uint8, as torch.get_rng_state())")
    for name in tensors:
        if name.startswith("opt."):
            _, pid, key = (name.split(".", 2) + ["", ""])[:3]
            if not (pid.isdigit() and key):
                raise CheckpointError(f"corrupt tensor file {path}: tensor {name!r} is not "
                                      "opt.<int>.<key>")


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
