"""Distributed training on PyTorch's own engine: ``torchrun`` → process group → DDP.

    torchrun --nproc-per-node 2 -m spikecompress run sca --out runs/sca2

``torchrun`` starts one process per rank and tells each its place in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). ``init_distributed`` joins the
process group (gloo for CPU training, NCCL for CUDA, chosen from the device), with a timeout that
turns a rendezvous that never forms into a one-line error instead of a hang. ``wrap`` puts the
model in ``DistributedDataParallel``; the plain model stays what methods, checkpoints and artifacts
see. Without torchrun's variables everything here is a no-op: one process, no group.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from spikecompress.collectives import Collectives

TIMEOUT_ENV = "SPIKECOMPRESS_DIST_TIMEOUT"  # seconds to wait for every process (default 300)
DEFAULT_TIMEOUT_S = 300.0


class DistributedError(RuntimeError):
    """A distributed run that cannot start: one line naming the setting or the missing peer."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, artifacts, metrics and reports."""
        return self.rank == 0


def env_world() -> World:
    """The rank / world size torchrun set in the environment (one process when unset)."""
    values = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(key)
        try:
            values[key] = default if text is None else int(text)
        except ValueError:
            raise DistributedError(f"environment {key}={text!r} is not an integer") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise DistributedError(f"environment RANK={values['RANK']} does not fit "
                               f"WORLD_SIZE={values['WORLD_SIZE']}")
    return World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def timeout_s() -> float:
    """How long to wait for every process to join (and for any collective): env
    ``SPIKECOMPRESS_DIST_TIMEOUT`` in seconds, default 300."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"environment {TIMEOUT_ENV}={text!r} must be a number of "
                               "seconds > 0")
    return value


def init_distributed(device: str = "cpu") -> tuple[World, str]:
    """Join the process group torchrun described (no-op for one process); returns the world and
    the device this rank trains on ("cuda" becomes "cuda:<local_rank>"). A peer that never
    arrives raises ``DistributedError`` after ``timeout_s()`` seconds."""
    world = env_world()
    if world.world_size == 1:
        return world, device
    if dist.is_initialized():  # already joined (a library user's own group)
        return World(dist.get_rank(), dist.get_world_size(), world.local_rank), device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    wait = timeout_s()
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=wait))
        dist.barrier()  # every rank is here: the group has formed
    except (RuntimeError, ValueError, TimeoutError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DistributedError(
            f"distributed: rank {world.rank} of {world.world_size} could not form the process "
            f"group at {where} within {wait:g} s ({first}); start the same torchrun command on "
            f"every node, or raise {TIMEOUT_ENV}") from None
    return world, device


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class TrafficCounter:
    """Bytes DDP's gradient all-reduce sends per rank: its buckets' payloads, counted by a DDP
    communication hook (``count_then_allreduce``) that then runs the default all-reduce."""

    def __init__(self) -> None:
        self.bytes_sent = 0


def count_then_allreduce(counter: TrafficCounter, bucket):
    """DDP communication hook: count the bucket's bytes, then DDP's default all-reduce."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buffer = bucket.buffer()
    counter.bytes_sent += buffer.numel() * buffer.element_size()
    return allreduce_hook(None, bucket)


def wrap(
    model: nn.Module, device: torch.device, outside: list[nn.Parameter] = ()
) -> tuple[nn.Module, TrafficCounter | None]:
    """``model`` in DistributedDataParallel when a group of several processes is running (else
    ``model`` itself), and the counter of its gradient traffic. DDP broadcasts rank 0's parameters
    and buffers once, at the start; buffers are not broadcast again at every forward: masks and
    method buffers agree by the methods' own ``reduce_`` hooks, and BatchNorm running statistics
    are taken from rank 0 before every evaluation, checkpoint and finalize (``sync_buffers_``).
    ``outside``: parameters DDP must leave alone because a method uses them outside the model's
    forward (its ``param_groups``: early-exit heads, architecture logits in a cost term); the
    caller averages their gradients itself."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return model, None
    ignore = {id(p) for p in outside}
    if not any(p.requires_grad and id(p) not in ignore for p in model.parameters()):
        return model, TrafficCounter()  # a frozen model (a policy trained beside it): no DDP
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch 2.13 renamed the switch; older releases only know broadcast_buffers
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
               else {"broadcast_buffers": False})
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [n for n, p in model.named_parameters() if id(p) in ignore])
    ddp = DistributedDataParallel(model, device_ids=ids, **no_sync)
    counter = TrafficCounter()
    ddp.register_comm_hook(counter, count_then_allreduce)
    return ddp, counter


def sync_buffers_(model: nn.Module, comm: Collectives) -> None:
    """Every buffer of ``model`` set to rank 0's (BatchNorm running statistics above all)."""
    buffers = [b for b in model.buffers() if b.numel()]
    if buffers:
        comm.broadcast_(*buffers)
