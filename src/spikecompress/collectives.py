"""How a method's statistics agree across the processes of a distributed run.

Under ``torchrun`` every process trains the same model on its own shard of the data. DDP makes the
*gradients* agree (so the weights stay identical), but a method's own statistics — activity sums,
covariances, spike counts, rewards — are measured on each process's shard and differ. A method
makes them agree in its ``reduce_(model, ctx)`` hook through ``ctx.comm``, a ``Collectives``: in a
one-process run every operation is the identity, so one code path serves both.

The Session calls ``reduce_`` before each ``after_step`` and before ``finalize``, so what every
hook reads has agreed, and a checkpoint (written after ``after_step``) holds agreed state only.
Accumulators agree in one of two ways: ``reduce_`` sums only this step's local contribution over
the ranks and adds it to the agreed total (PCA's covariances), or averages totals that agreed
before the step (SCA's activity sums: the agreed value plus the ranks' mean batch).
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


class Collectives:
    """The processes of the run as a method sees them: ``rank``, ``world_size`` and in-place
    collectives over them (identities in a one-process run). Tensors of one call are coalesced
    into one message per dtype; ``bytes_sent`` counts the payload of every collective this object
    ran (the traffic figure of docs/benchmarks.md)."""

    def __init__(self, group=None) -> None:
        self.group = group
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self.active else 0
        self.world_size = dist.get_world_size(group) if self.active else 1
        self.bytes_sent = 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    def sum_(self, *tensors: torch.Tensor) -> None:
        """Replace each tensor by its sum over the ranks (bool tensors: logical or)."""
        self._reduce(tensors, dist.ReduceOp.SUM)

    def mean_(self, *tensors: torch.Tensor) -> None:
        """Replace each floating-point tensor by its mean over the ranks."""
        for t in tensors:
            if not t.is_floating_point():
                raise TypeError(f"mean_ needs floating-point tensors, got {t.dtype}")
        self._reduce(tensors, dist.ReduceOp.SUM)
        for t in tensors:
            t.div_(self.world_size)

    def max_(self, *tensors: torch.Tensor) -> None:
        """Replace each tensor by its element-wise maximum over the ranks."""
        self._reduce(tensors, dist.ReduceOp.MAX)

    def broadcast_(self, *tensors: torch.Tensor, src: int = 0) -> None:
        """Overwrite each tensor with rank ``src``'s (a decision one rank takes for all: a random
        draw, a search's pick)."""
        if not self.distributed:
            return
        for flat, targets in _coalesced(tensors, self.group):
            dist.broadcast(flat, src=src, group=self.group)
            self.bytes_sent += flat.numel() * flat.element_size()
            _scatter_back(flat, targets)

    def gather_object(self, obj: object) -> list:
        """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a one-process run."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def _reduce(self, tensors: tuple[torch.Tensor, ...], op) -> None:
        if not self.distributed:
            return
        for flat, targets in _coalesced(tensors, self.group):
            dist.all_reduce(flat, op=op, group=self.group)
            self.bytes_sent += flat.numel() * flat.element_size()
            _scatter_back(flat, targets)


def _coalesced(tensors, group=None):
    """One flat buffer per (dtype, device) holding the tensors' values (bool travels as uint8,
    which gloo reduces; its SUM becomes logical or on the way back). NCCL only moves CUDA
    tensors: under it a CPU tensor (a method's counts) travels through the current GPU."""
    cuda = dist.get_backend(group) == "nccl"
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for (dtype, device), ts in groups.items():
        wire = torch.uint8 if dtype == torch.bool else dtype
        flat = torch.cat([t.detach().reshape(-1).to(wire) for t in ts])  # [sum of numels]
        if cuda and device.type == "cpu":
            flat = flat.to(torch.device("cuda", torch.cuda.current_device()))
        yield flat, ts


def _scatter_back(flat: torch.Tensor, targets: list[torch.Tensor]) -> None:
    offset = 0
    for t in targets:
        n = t.numel()
        part = flat[offset : offset + n].view(t.shape)
        with torch.no_grad():  # copy_ also brings a value back from the GPU it travelled on
            t.copy_(part.bool() if t.dtype == torch.bool else part)
        offset += n


def fingerprint(t: torch.Tensor) -> str:
    """A hash of a tensor's dtype, shape and exact bytes (equal on two ranks iff bitwise equal)."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    flat = t.detach().cpu().contiguous().reshape(-1)  # [numel]: a 0-dim tensor cannot be viewed
    h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
