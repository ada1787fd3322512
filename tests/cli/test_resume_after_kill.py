import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

ARGS = ["train", "--model", "conv_net", "--widths", "8,16", "--data", "digits", "--epochs", "4"]
ARGS += ["--T", "4", "--lr", "5e-3", "--checkpoint-every", "5", "--quiet", "--threads", "1"]


def _cli(out, **kw):
    cmd = [sys.executable, "-m", "spikecompress", *ARGS, "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def _step(out):
    try:
        return json.loads((out / "checkpoint.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL in the middle of the second epoch, rerun the same command: same final weights."""
    env = {**os.environ, "SPIKECOMPRESS_CACHE": str(tmp_path / "cache")}
    ref = _cli(tmp_path / "ref", env=env)
    run = _cli(tmp_path / "run", env=env)
    deadline = time.time() + 120
    while _step(tmp_path / "run") < 30 and run.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = _step(tmp_path / "run")
    assert 30 <= killed_at < 4 * 23

    assert _cli(tmp_path / "run", env=env).wait() == 0
    assert ref.wait() == 0
    a = load_file(tmp_path / "ref" / "artifact" / "model.safetensors")
    b = load_file(tmp_path / "run" / "artifact" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["resumed"] and len(metrics["history"]) == 4
