"""Whole jobs under torchrun on this machine: a recipe on 2 processes (rank 0 writes), the same job
SIGKILLed mid-stage and started again (same final weights), and two "nodes" on localhost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from spikecompress.train.distributed_contract import free_port

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
RECIPE = """
version: 1
seed: 0
model: {name: conv_net, widths: [4, 8]}
data: {name: digits, T: 2, batch_size: 64, limit: 384}
stages:
  - name: sca
    epochs: 4
    optimizer: {name: adam, lr: 5.0e-3}
    methods:
      - {name: sca, alpha: 0.4, beta: 0.1}
"""


def _env(tmp_path):
    return {**os.environ, "SPIKECOMPRESS_CACHE": str(tmp_path / "cache"), "THREADS": "1",
            "OMP_NUM_THREADS": "1", "SPIKECOMPRESS_DIST_TIMEOUT": "60"}


def _torchrun(args, env, launch=("--nproc-per-node", "2")):
    cmd = [TORCHRUN, *launch, "--master-port", str(free_port()), "-m", "spikecompress", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_job(marker: str) -> None:
    """SIGKILL every process of a job: torchrun's agent and its workers (which torchrun starts
    in sessions of their own), found by a marker in their command lines."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _step(folder):
    try:
        return json.loads((folder / "checkpoint.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def test_recipe_killed_mid_stage_resumes_to_the_uninterrupted_weights(tmp_path):
    """2 processes, SCA (activity sums agreed across ranks): the job killed with SIGKILL after its
    first epoch checkpoint and started again with the same command ends on the same weights as
    an uninterrupted 2-process run; only rank 0 wrote."""
    recipe = tmp_path / "sca.yaml"
    recipe.write_text(RECIPE)
    env = _env(tmp_path)
    args = ["run", str(recipe), "--quiet", "--threads", "1", "--out"]
    ref = _torchrun([*args, str(tmp_path / "ref")], env)
    run = _torchrun([*args, str(tmp_path / "run")], env)
    stage = tmp_path / "run" / "stages" / "0-sca"
    deadline = time.time() + 180
    while _step(stage) < 6 and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    _kill_job(str(tmp_path / "run"))
    assert run.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert 6 <= _step(stage) < 24

    again = _torchrun([*args, str(tmp_path / "run")], env)
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()[-2000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]
    a = load_file(tmp_path / "ref" / "artifact" / "model.safetensors")
    b = load_file(tmp_path / "run" / "artifact" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["resumed"]
    assert metrics["train"]["distributed"]["world_size"] == 2
    assert metrics["train"]["distributed"]["gradient_bytes_per_step"] > 0
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes by one rank left no debris


def test_two_nodes_on_localhost_train_together(tmp_path):
    """--nnodes 2 --nproc-per-node 1: two torchrun agents (one per "node") rendezvous at the
    master address; the job trains on 2 ranks and node 0's rank 0 writes."""
    env, port = _env(tmp_path), str(free_port())
    out = tmp_path / "two-nodes"
    args = ["train", "--model", "mlp", "--widths", "16", "--epochs", "2", "--T", "2",
            "--limit", "256", "--quiet", "--threads", "1", "--out", str(out)]
    nodes = [subprocess.Popen(
        [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
         "--master-addr", "127.0.0.1", "--master-port", port, "--rdzv-conf", "timeout=60",
         "-m", "spikecompress", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][1].decode()[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"]["world_size"] == 2 and len(metrics["history"]) == 2
    assert b"wrote" in outs[0][0] and b"wrote" not in outs[1][0]  # rank 0 speaks
