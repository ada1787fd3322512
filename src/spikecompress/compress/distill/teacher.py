"""The frozen teacher of a distillation method: where it comes from, how it runs, what it records.

A teacher is named by ``teacher`` (a method field):

* ``None``: a frozen copy of the student as it enters the stage (distillation methods attach
  before every other method, so the copy is the dense / unquantized model a compression stage
  starts from);
* a path: an artifact folder, or a run or stage folder holding ``artifact/`` (safetensors and
  JSON, never pickle), ANN or SNN;
* ``"stage:NAME"``: the artifact of an earlier stage of the same recipe (``spikecompress run``
  resolves it to that stage's folder before the stage starts);
* an ``nn.Module`` (Python only; a copy is frozen, the caller's model is left as it is).

The teacher is frozen: ``eval()`` (BN running statistics never move), ``requires_grad_(False)``,
its forward under ``torch.no_grad``. It runs on the student's input sequence; ``T`` (or, for a
non-spiking teacher, 1) runs it at another number of steps on a static input (every step the
same frame: direct encoding), which is refused for inputs that change over time. Its outputs are
cached per sample, keyed by the sample's content (a 128-bit hash of its bytes, so a shuffled
loader hits from the second epoch on and augmentation can never hit a wrong entry), up to
``CACHE_LIMIT`` bytes; a cached sample's outputs are those computed in the batch it first came
in (equal to a fresh forward up to float rounding).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math

import torch
from torch import nn

from spikecompress.export import artifact_of, load
from spikecompress.snn.layers import reset_state

log = logging.getLogger(__name__)

CACHE_LIMIT = 512 * 2**20  # bytes of cached teacher outputs
STAGE_PREFIX = "stage:"


def check_source(teacher: object, field: str = "teacher") -> None:
    """``teacher`` is None, a non-empty string or a module (one line naming ``field``)."""
    if teacher is None or isinstance(teacher, nn.Module):
        return
    if not isinstance(teacher, str) or not teacher.strip():
        raise ValueError(f"{field} must be a path, 'stage:NAME' or null, got {teacher!r}")
    if teacher.startswith(STAGE_PREFIX) and not teacher[len(STAGE_PREFIX):]:
        raise ValueError(f"{field}: 'stage:' needs a stage name, got {teacher!r}")


def load_teacher(teacher: object, student: nn.Module, field: str = "teacher") -> nn.Module:
    """The teacher model ``teacher`` names (see the module docstring), checked against the
    student: the same classes and the same input shape where both models declare them."""
    check_source(teacher, field)
    if teacher is None or isinstance(teacher, nn.Module):  # a copy: the caller's stays as is
        model = copy.deepcopy(student if teacher is None else teacher)
    elif teacher.startswith(STAGE_PREFIX):
        raise ValueError(f"{field}: {teacher!r} names a stage of a recipe; `spikecompress run` "
                         f"resolves it (in Python, pass a model or an artifact path)")
    else:
        folder = artifact_of(teacher)
        if folder is None:
            raise ValueError(f"{field}: {teacher} holds no artifact (give an artifact folder, or "
                             f"a run or stage folder with artifact/)")
        model = load(folder)
    check_pair(model, student, field)
    return model


def check_pair(teacher: nn.Module, student: nn.Module, field: str = "teacher") -> None:
    """Teacher and student must agree on the classes and the input shape (when both say)."""
    ts, ss = getattr(teacher, "spec", None) or {}, getattr(student, "spec", None) or {}
    if "classes" in ts and "classes" in ss and ts["classes"] != ss["classes"]:
        raise ValueError(f"{field}: the teacher has {ts['classes']} classes, the student "
                         f"{ss['classes']}")
    ti, si = getattr(teacher, "in_shape", None), getattr(student, "in_shape", None)
    if ti is not None and si is not None and math.prod(ti) != math.prod(si):
        raise ValueError(f"{field}: the teacher takes inputs of shape {list(ti)}, the student "
                         f"{list(si)}")


def is_spiking(model: nn.Module) -> bool:
    """False for an ANN twin (``spec["spiking"]`` False), else True."""
    return bool((getattr(model, "spec", None) or {}).get("spiking", True))


class Teacher:
    """A frozen model run beside the student: ``outputs(x_seq)`` → (its per-step logits
    [T_t, B, K], the outputs of the layers named in ``features`` {name: [T_t, B, ...]})."""

    def __init__(self, model: nn.Module, T: int | None = None, cache: bool = True,
                 features: tuple[str, ...] = ()) -> None:
        self.model = model.eval().requires_grad_(False)
        self.T, self.cache = T, cache
        modules = dict(model.named_modules())
        missing = [n for n in features if n not in modules]
        if missing:
            raise ValueError(f"teacher has no layer {missing[0]!r}")
        self.features = tuple(features)
        self._cache: dict[bytes, tuple] = {}
        self._cached_bytes = 0
        self._records: dict[str, torch.Tensor] = {}
        for name in self.features:
            modules[name].register_forward_hook(self._recorder(name))

    def _recorder(self, name: str):
        def hook(module, inputs, output):
            self._records[name] = output.detach().float()  # [T_t, B, ...]
        return hook

    def steps(self, x_seq: torch.Tensor) -> int:
        """The steps the teacher runs for this input (see the module docstring)."""
        if self.T is not None:
            return self.T
        return 1 if not is_spiking(self.model) and _static(x_seq) else x_seq.shape[0]

    @torch.no_grad()
    def outputs(self, x_seq: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(per-step logits [T_t, B, K], {layer: [T_t, B, ...]}) for x_seq [T, B, ...]: cached
        samples are looked up, the others run as one sub-batch (a frozen model in eval mode
        treats every sample on its own)."""
        T = self.steps(x_seq)
        if not self.cache:
            return self._run(x_seq, T)
        keys = [_digest(x_seq[:, i], T) for i in range(x_seq.shape[1])]
        fresh = {}
        miss = [i for i, k in enumerate(keys) if k not in self._cache]
        if miss:
            out_seq, feats = self._run(x_seq[:, miss], T)
            for j, i in enumerate(miss):
                entry = (out_seq[:, j], {n: f[:, j] for n, f in feats.items()})
                fresh[keys[i]] = entry
                size = 4 * (entry[0].numel() + sum(f.numel() for f in entry[1].values()))
                if self._cached_bytes + size <= CACHE_LIMIT:  # else served, not kept
                    self._cache[keys[i]] = entry
                    self._cached_bytes += size
        entries = [fresh[k] if k in fresh else self._cache[k] for k in keys]
        out_seq = torch.stack([e[0] for e in entries], 1)  # B x [T_t, K] -> [T_t, B, K]
        return out_seq, {n: torch.stack([e[1][n] for e in entries], 1) for n in self.features}

    def _run(self, x_seq: torch.Tensor, T: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if T != x_seq.shape[0]:
            if not _static(x_seq):
                raise ValueError(f"teacher_T: the teacher runs at T = {T} but the student's "
                                 f"input changes over its {x_seq.shape[0]} steps (only a static "
                                 f"input can be replayed at another T)")
            x_seq = x_seq[:1].expand(T, *x_seq.shape[1:])  # [1, B, ...] -> [T, B, ...]
        device = x_seq.device
        if next(self.model.parameters(), x_seq).device != device:
            self.model.to(device)
        self.model.eval()
        self._records = {}
        out_seq = self.model(x_seq).float()  # [T_t, B, K]
        reset_state(self.model)
        return out_seq, {n: self._records[n] for n in self.features}

    def clear(self) -> None:
        """Drop the cache (at finalize)."""
        self._cache, self._cached_bytes = {}, 0


def _static(x_seq: torch.Tensor) -> bool:
    """Every step of x_seq [T, B, ...] is the same frame (direct encoding)."""
    return bool((x_seq == x_seq[:1]).all())


def _digest(sample: torch.Tensor, T: int) -> bytes:
    """A 128-bit hash of one sample's shape, dtype and bytes (sample [T, ...]) and the teacher's
    steps ``T``."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(sample.shape)}{sample.dtype}{T}".encode())
    h.update(sample.detach().contiguous().cpu().numpy().tobytes())
    return h.digest()
