"""Distributed training: collectives, sharding, DDP against one process, SyncBatchNorm, the
distributed contract (every method's state compared across 2 gloo processes), and the boundary
errors. Whole-job tests under torchrun (SIGKILL resume, two nodes): tests/cli/test_torchrun.py."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from _distributed_workers import train_mlp

from spikecompress.cli import main
from spikecompress.collectives import Collectives, fingerprint
from spikecompress.compress import METHODS, MagnitudePruning, attach
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build
from spikecompress.train import TrainConfig, Trainer
from spikecompress.train.checkpoint import CheckpointError
from spikecompress.train.distributed_contract import free_port, spawn

# tests/train/_distributed_workers.py, on sys.path by pytest: spawned ranks import it by name
WORKERS = "_distributed_workers"


def test_collectives_are_identities_in_one_process():
    comm = Collectives()
    assert (comm.rank, comm.world_size, comm.distributed) == (0, 1, False)
    a = torch.tensor([1.5, 2.0])
    comm.sum_(a)
    comm.mean_(a)
    comm.broadcast_(a)
    assert a.tolist() == [1.5, 2.0] and comm.bytes_sent == 0
    assert comm.gather_object({"x": 1}) == [{"x": 1}]
    assert fingerprint(torch.tensor(1.0)) != fingerprint(torch.tensor(1.0, dtype=torch.float64))


def test_collectives_across_two_processes_are_exact():
    r0, r1 = spawn(f"{WORKERS}:collectives", (), 2)
    assert r0 == r1  # every agreed value is the same on both
    assert r0["a"] == [3.0, 0.5] and r0["b"] == [1, 6] and r0["flags"] == [True, False, True]
    assert r0["mean"] == [1.0] and r0["max"] == [1.0, 0.0] and r0["pick"] == [10.0]
    assert r0["bytes"] > 0


def test_shards_of_a_global_batch_are_the_one_process_batch():
    cfg = DataConfig(name="digits", T=2, batch_size=64, limit=256)
    whole = load_data(cfg)
    shards = [load_data(cfg, r, 2) for r in range(2)]
    for loader in [whole.train, *(s.train for s in shards)]:
        loader.set_epoch(3)
    for (_, y), (_, y0), (_, y1) in zip(whole.train, shards[0].train, shards[1].train,
                                        strict=True):
        assert y0.shape == y1.shape == (32,)
        assert sorted(y0.tolist() + y1.tolist()) == sorted(y.tolist())
    assert len(shards[0].test) == len(whole.test)  # every rank evaluates the whole test set


def test_batch_that_the_processes_cannot_split_is_refused_by_name():
    with pytest.raises(ValueError, match="data.batch_size 64 is not divisible by the 3 processes"):
        load_data(DataConfig(name="digits", T=2, batch_size=64), 0, 3)


def test_two_processes_train_like_one_at_the_same_global_batch():
    """SGD, direct coding, synchronised BatchNorm: each step's averaged shard gradients are the
    global batch's gradient, so the weights match the one-process run up to summation order."""
    one = torch.tensor(train_mlp(64, 1))  # here, in one process
    r0, r1 = (torch.tensor(w) for w in spawn(f"{WORKERS}:train_mlp", (64, 1), 2))
    assert torch.equal(r0, r1)
    assert torch.allclose(r0, one, rtol=0, atol=1e-5)


def test_sync_batchnorm_is_batchnorm_over_the_global_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, 3, 3, generator=g, dtype=torch.float64) * 3 + 1
    r0, r1 = spawn(f"{WORKERS}:sync_bn", (x.tolist(),), 2)
    ref = torch.nn.BatchNorm2d(2).double()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.5, 0.5], dtype=torch.float64))
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    (y * torch.cat([torch.arange(y[:4].numel(), dtype=torch.float64)] * 2).view_as(y)).sum() \
        .backward()
    got_y = torch.tensor(r0["y"] + r1["y"], dtype=torch.float64)
    got_dx = torch.tensor(r0["dx"] + r1["dx"], dtype=torch.float64)
    assert torch.allclose(got_y, y.detach(), atol=1e-12)
    assert torch.allclose(got_dx, xr.grad, atol=1e-10)
    assert torch.allclose(torch.tensor(r0["dw"], dtype=torch.float64), ref.weight.grad,
                          atol=1e-10)
    assert torch.allclose(torch.tensor(r0["mean"], dtype=torch.float64), ref.running_mean)
    assert torch.allclose(torch.tensor(r0["var"], dtype=torch.float64), ref.running_var)
    assert r0["var"] == r1["var"] and not r0["patched"]  # undone: the class's forward again


@pytest.fixture(scope="module")
def contract():
    """One spawn of 2 gloo processes runs the distributed contract on every registered method
    (a CNN and a SEW-ResNet, whose residual adds tie channels together) and on a method that
    forgets ``reduce_``: rank 0's and rank 1's results, keyed "<method>@<model>"."""
    return spawn("spikecompress.train.distributed_contract:contract_worker",
                 ([*METHODS, f"{WORKERS}:LocalActivity"], ["conv_net", "sew_resnet"]), 2, 120)


def test_every_registered_method_agrees_across_two_processes(contract):
    """The distributed contract: each method trained by the real Trainer under DDP on 2 gloo
    processes, its state (model and runtime fields) all-gathered and compared after every step
    and after finalize."""
    r0, r1 = contract
    assert {k.split("@")[0] for k in r0 if "@conv_net" in k} >= set(METHODS)
    failed = {k: v for k, v in r0.items() if v is not None and "LocalActivity" not in k}
    assert not failed, failed
    assert r1 == r0


def test_a_method_without_reduce_is_caught_by_the_distributed_contract(contract):
    msg = contract[0][f"{WORKERS}:LocalActivity@conv_net"]
    assert msg.startswith("StateDivergence: after step 1: local_activity.spikes_ differs")


def test_layer_selection_ignores_ddps_module_prefix(tmp_path):
    """attach() sees the plain model inside DDP: include names have no ``module.`` prefix."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        model = build(**{"name": "mlp", "in_features": 64, "widths": [16], "classes": 10})
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        session = attach(ddp, [MagnitudePruning(sparsity=0.5, include=["classifier.*"])])
        assert session.model is model
        model = session.finalize()
        zeros = {n: float((m.weight == 0).float().mean()) for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear)}
        assert zeros["classifier.fc"] == 0.5 and min(zeros.values()) == 0.0
    finally:
        dist.destroy_process_group()


def test_resuming_with_another_number_of_processes_is_refused(tmp_path):
    data = load_data(DataConfig(name="digits", T=2, batch_size=64, limit=128))
    model = build(**{"name": "mlp", "in_features": 64, "widths": [8], "classes": 10})
    Trainer(model, data, TrainConfig(epochs=1), out_dir=tmp_path, verbose=False).fit()
    assert json.loads((tmp_path / "checkpoint.json").read_text())["world_size"] == 1
    _rewrite_world_size(tmp_path, 2)
    with pytest.raises(CheckpointError, match="written by a run of 2 process"):
        Trainer(model, data, TrainConfig(epochs=2), out_dir=tmp_path, verbose=False).fit()


def _rewrite_world_size(folder, world_size):
    """Edit the checkpoint's JSON as a 2-process run would have written it."""
    for path in folder.rglob("*.json"):
        d = json.loads(path.read_text())
        if "world_size" in d:
            d["world_size"] = world_size
            path.write_text(json.dumps(d))


def _cli(args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "spikecompress", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_process_group_that_never_forms_is_a_one_line_error(tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "SPIKECOMPRESS_DIST_TIMEOUT": "2"}
    r = _cli(["train", "--epochs", "1", "--T", "2", "--out", str(tmp_path / "a"), "--quiet"], env)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2
    assert last.startswith("spikecompress: error: distributed: rank 0 of 2 could not form the "
                           "process group at 127.0.0.1:")
    assert "SPIKECOMPRESS_DIST_TIMEOUT" in last


@pytest.mark.parametrize("env_extra,args,message", [
    ({"RANK": "0", "WORLD_SIZE": "3"}, ["train", "--batch-size", "64"],
     "data.batch_size 64 is not divisible by the 3 processes"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, ["eval", "x"], "eval runs in one process"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, ["train"], "environment RANK='x' is not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "2", "SPIKECOMPRESS_DIST_TIMEOUT": "soon"}, ["train"],
     "SPIKECOMPRESS_DIST_TIMEOUT='soon' must be a number of seconds"),
])
def test_bad_distributed_settings_fail_before_any_work(tmp_path, monkeypatch, capsys, env_extra,
                                                       args, message):
    for key, value in {**env_extra, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    argv = [*args, "--out", str(tmp_path / "o")] if args[0] == "train" else args
    assert main(argv) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not dist.is_initialized() and not (tmp_path / "o").exists()
