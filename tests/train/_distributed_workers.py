"""Functions the distributed tests run on every rank of a spawned gloo group (``spawn`` imports
them by name, so they live in a module, not in the test file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.distributed as dist
from torch import nn

from spikecompress.collectives import Collectives
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build
from spikecompress.train import TrainConfig, Trainer
from spikecompress.train.sync_batchnorm import sync_batchnorm_

MLP = {"name": "mlp", "in_features": 64, "widths": [16], "classes": 10}


def collectives() -> dict:
    """sum_ / mean_ / max_ / broadcast_ on rank-dependent values (all dyadic: exact)."""
    comm = Collectives()
    r = comm.rank
    a = torch.tensor([1.0 + r, 0.5 * r])
    b = torch.tensor([r, 3], dtype=torch.int64)
    flags = torch.tensor([r == 0, False, r == 1])
    comm.sum_(a, b, flags)
    m = torch.tensor([2.0 * r])
    comm.mean_(m)
    mx = torch.tensor([float(r), -float(r)])
    comm.max_(mx)
    pick = torch.tensor([10.0 + r])
    comm.broadcast_(pick)
    return {"a": a.tolist(), "b": b.tolist(), "flags": flags.tolist(), "mean": m.tolist(),
            "max": mx.tolist(), "pick": pick.tolist(), "bytes": comm.bytes_sent}


def train_mlp(world_batch: int, steps_epochs: int) -> list[float]:
    """SGD on the MLP's ANN twin (no spike threshold to amplify a rounding difference) with
    direct coding and synchronised BatchNorm: the weights after ``steps_epochs`` epochs (the
    per-rank shards of a global batch average to the one-process gradient)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    data = load_data(DataConfig(name="digits", T=2, batch_size=world_batch, limit=256), rank,
                     world)
    torch.manual_seed(0)
    model = build(**MLP, spiking=False)
    cfg = TrainConfig(epochs=steps_epochs, lr=0.05, optimizer="sgd", momentum=0.0,
                      schedule="constant", sync_batchnorm=True)
    Trainer(model, data, cfg, verbose=False).fit()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def sync_bn(full_batch: list) -> dict:
    """BatchNorm2d in float64 on this rank's half of ``full_batch`` with sync_batchnorm_: the
    outputs, the input gradient and the running statistics."""
    comm = Collectives()
    x_all = torch.tensor(full_batch, dtype=torch.float64)  # [B, C, H, W]
    half = len(x_all) // comm.world_size
    x = x_all[comm.rank * half:(comm.rank + 1) * half].clone().requires_grad_(True)
    bn = nn.BatchNorm2d(x.shape[1]).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5], dtype=torch.float64))
    undo = sync_batchnorm_(bn, comm)
    y = bn(x)
    (y * torch.arange(y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
    undo()
    grad_w = bn.weight.grad.clone()
    comm.sum_(grad_w)  # DDP would average: the sum over ranks is the full batch's gradient
    return {"y": y.detach().tolist(), "dx": x.grad.tolist(), "mean": bn.running_mean.tolist(),
            "var": bn.running_var.tolist(), "dw": grad_w.tolist(), "patched": "forward" in
            vars(bn)}


@dataclass
class LocalActivity:
    """A method that forgets reduce_: it sums each rank's spikes into runtime state (the kind
    of bug the distributed contract exists to catch)."""

    KIND: ClassVar[str] = "loss"
    NAME: ClassVar[str] = "local_activity"
    spikes_: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    def loss(self, model, x_seq, out_seq, ctx):
        self.spikes_ = self.spikes_ + x_seq.detach().sum()
        return out_seq.new_zeros(())
