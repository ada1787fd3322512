"""Synchronised BatchNorm for distributed training, without replacing any module.

``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` builds new modules, which would drop the
parametrizations and forward hooks the compression methods put on BatchNorm layers, and change
the class channel surgery looks for. Here each training-mode ``nn.BatchNorm{1,2,3}d`` keeps its
object, class, parameters and hooks; only its forward is redirected, and ``sync_batchnorm_``
returns the function that puts the original forward back.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from spikecompress.collectives import Collectives
from spikecompress.snn import BatchNorm1d, BatchNorm2d, BNTT1d, BNTT2d

BNTT = (BNTT1d, BNTT2d)

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def sync_batchnorm_(model: nn.Module, comm: Collectives) -> Callable[[], None]:
    """Make every BatchNorm of ``model`` normalise over the global batch while training (a no-op
    unless several processes run); returns the undo function. The statistics' traffic is counted
    in ``comm.bytes_sent``."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return lambda: None
    for name, m in model.named_modules():
        if isinstance(m, BNTT):
            raise ValueError(f"sync_batchnorm: {name} is a BNTT layer (one BatchNorm per time "
                             f"step), which it does not synchronise; train without it")
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and not isinstance(
        m, nn.SyncBatchNorm)]
    for m in norms:
        m.forward = types.MethodType(functools.partial(_synced_forward, comm=comm), m)

    def undo() -> None:
        for m in norms:
            del m.forward  # the class's forward again

    return undo


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose gradient is the sum over the ranks of the gradients (every rank's
    loss depends on every rank's contribution to the global statistics)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, comm: Collectives) -> torch.Tensor:
        ctx.comm = comm
        out = t.clone()
        comm.sum_(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.clone()
        ctx.comm.sum_(out)
        return out, None


def _synced_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor,
                    comm: Collectives) -> torch.Tensor:
    """The layer's forward with global statistics: our sequence layers (``snn.BatchNorm1d/2d``)
    take x_seq [T, B, C, ...] and normalise over time and batch together, torch's take
    [N, C, ...]."""
    if not self.training:
        return type(self).forward(self, x)
    if isinstance(self, (BatchNorm1d, BatchNorm2d)):
        return _global_norm(self, x.flatten(0, 1), comm).view_as(x)  # [T*B, C, ...] and back
    return _global_norm(self, x, comm)


def _global_norm(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor,
                 comm: Collectives) -> torch.Tensor:
    """Batch normalisation y = (x - μ) / sqrt(σ² + eps) · γ + β with μ, σ² (biased) over every
    rank's batch: two autograd-aware all-reduces (the sums, then the squared deviations), so the
    gradient flows through the global statistics as through local ones. Running statistics are
    updated with the unbiased global variance, as nn.BatchNorm does locally. ``x``: [N, C, ...]."""
    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(t, comm)

    C = x.shape[1]
    dims = [0, *range(2, x.dim())]  # every axis but the channels
    shape = [1, C] + [1] * (x.dim() - 2)  # [1, C, 1, ...] to broadcast per channel
    local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / C])])  # [C + 1]: sums, count
    total = all_reduce(local)
    n = total[C]
    mean = total[:C] / n
    sq = all_reduce((x - mean.view(shape)).pow(2).sum(dims))  # [C]
    var = sq / n
    if self.track_running_stats:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * n / max(float(n) - 1, 1.0)
            self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y
