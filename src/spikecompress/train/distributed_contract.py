"""The distributed contract: every method under DDP on several gloo processes, checked, not trusted.

``check_method_distributed`` trains a tiny model with one method through the real ``Trainer``
(DDP, sharded data, the Session's ``reduce_`` hooks) with ``Session(verify=True)``: after every
step and after finalize the ranks all-gather hashes of the model's state and of the method's
runtime fields and raise ``StateDivergence`` naming the first that differs. ``spawn`` runs a
function on N local processes joined in a gloo group (the contract suite's launcher; tests and
benchmarks use it too).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from spikecompress.compress.contract import TINY_MODELS, tiny_model
from spikecompress.compress.registry import METHODS
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.train.config import TrainConfig
from spikecompress.train.trainer import Trainer

CONTRACT_DATA = DataConfig(name="digits", T=2, batch_size=64, limit=192)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve(method: str) -> type:
    """A registered method's class by name, or any method class by ``"module:Class"``."""
    if ":" in method:
        module, name = method.split(":")
        return getattr(importlib.import_module(module), name)
    return METHODS[method]


def check_method_distributed(method: str, model_name: str = "conv_net", epochs: int = 2) -> None:
    """Train ``method`` (a name or ``"module:Class"``) on the contract's tiny model for ``epochs``
    under the process group already running, verifying agreement after every step and after
    finalize; raises ``StateDivergence`` (or the method's own error)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_data(CONTRACT_DATA, rank, world)
    torch.manual_seed(0)
    name = method.split(":")[-1]
    model = tiny_model(method if method in METHODS else "magnitude", model_name)
    session = attach(model, [resolve(method)()], stage=name, verify=True)
    cfg = TrainConfig(epochs=epochs, lr=1e-2, schedule="constant")
    Trainer(model, data, cfg, session=session, verbose=False).fit()
    session.finalize()


def contract_worker(methods: list[str], model_names: list[str]) -> dict[str, str | None]:
    """Every method of ``methods`` on every model of ``model_names`` in turn, keyed
    ``"<method>@<model>"``: None when it passed, else its error's first line (a model family
    the method refuses, its class's ``REFUSES``, is left out)."""
    results: dict[str, str | None] = {}
    for model_name in model_names:
        for method in methods:
            if TINY_MODELS[model_name]["name"] in getattr(resolve(method), "REFUSES", ()):
                continue
            try:
                check_method_distributed(method, model_name)
                results[f"{method}@{model_name}"] = None
            except Exception as e:  # noqa: BLE001 - reported per method, the next one runs
                first = (str(e).strip().splitlines() or [""])[0]
                results[f"{method}@{model_name}"] = f"{type(e).__name__}: {first}"
    return results


def spawn(fn: str, args: tuple, world_size: int = 2, timeout_s: float = 120.0) -> list:
    """Run ``fn`` (``"module:function"``) with ``args`` on ``world_size`` local processes joined
    in a gloo group; returns each rank's JSON-able return value, in rank order."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.start_processes(
            _entry, args=(fn, args, world_size, port, timeout_s, tmp), nprocs=world_size,
            start_method="spawn")
        return [json.loads((Path(tmp) / f"rank{r}.json").read_text())
                for r in range(world_size)]


def _entry(rank: int, fn: str, args: tuple, world_size: int, port: int, timeout_s: float,
           tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    try:
        module, name = fn.split(":")
        result = getattr(importlib.import_module(module), name)(*args)
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
