"""``check_method``: the contract every registered compression method passes (the contract suite).

attach → a few training steps (Adam, the user's own loop) → finalize must give a plain module
with the same output shape; the artifact round trip must reproduce its outputs bit for bit; every
Metrics figure must be finite; the method's spec must round-trip through YAML. New methods get the
suite for free: ``tests/compress/test_contract.py`` runs it for every ``METHODS`` entry.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from spikecompress.compress.parametrize import is_plain
from spikecompress.compress.session import attach
from spikecompress.export import load, save
from spikecompress.measurement import measure
from spikecompress.snn.layers import reset_state

# the tiny models the contract suite runs every method on: build(classes=10, **TINY_MODELS[name])
TINY_MODELS = {
    "mlp": {"name": "mlp", "in_features": 64, "widths": [16]},
    "conv_net": {"name": "conv_net", "in_channels": 1, "input_size": 8, "widths": [4, 8]},
    "sew_resnet": {"name": "sew_resnet", "in_channels": 1, "input_size": 8, "widths": [4, 8],
                   "blocks": [1, 1]},
}


def method_spec(method: object) -> dict:
    """The YAML-ready spec of a method: its name and its hyper-parameter fields (not ``*_``)."""
    fields = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)
              if f.init and not f.name.endswith("_")}
    return {"name": type(method).NAME, **fields}


def _train_steps(
    model: nn.Module, session, data, steps: int, lr: float = 1e-2, per_epoch: int | None = None
) -> None:
    """Adam over the model and the methods' own groups for ``steps`` steps of ``data.train``
    (cycled), epochs of ``per_epoch`` steps (default: one epoch)."""
    groups = session.param_groups()
    claimed = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in claimed]
    extra = [{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in groups]
    opt = torch.optim.Adam([{"params": rest}, *extra], lr=lr)
    per_epoch = per_epoch or steps
    session.bind(opt, total_steps=steps, steps_per_epoch=per_epoch)
    batches = (b for _ in range(steps) for b in data.train)
    for step, (x_seq, y) in zip(range(steps), batches, strict=False):
        model.train()
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / steps, epoch=step // per_epoch)
        reset_state(model)


def check_method(method_cls: type, model: nn.Module, data, steps: int = 3) -> nn.Module:
    """Run the contract on a fresh ``method_cls()`` (its defaults) and ``model``; raise
    AssertionError naming the broken clause. Returns the finalized model."""

    method = method_cls()
    spec = method_spec(method)
    again = yaml.safe_load(yaml.safe_dump(spec))
    rebuilt = method_cls(**{k: v for k, v in again.items() if k != "name"})
    _require(rebuilt == method, f"{spec['name']}: spec does not round-trip through YAML")
    x_seq = next(iter(data.test))[0]
    shape = model(x_seq).shape
    reset_state(model)
    session = attach(model, [method])
    _train_steps(model, session, data, steps)
    model = session.finalize().eval()
    _require(is_plain(model), "finalize must leave no parametrizations or hooks")
    out = model(x_seq)
    reset_state(model)
    same_t = out.shape[0] == shape[0] or method.KIND == "time"  # time methods may shrink T
    _require(out.shape[1:] == shape[1:] and same_t,
             f"output shape changed: {tuple(shape)} → {tuple(out.shape)}")
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load(save(model, Path(tmp) / "artifact"))
    _require(torch.equal(loaded(x_seq), out), "artifact round trip changed the outputs")
    metrics = measure(model, data, latency_repeats=1).to_dict()
    for key, value in _numbers(metrics):
        _require(math.isfinite(value), f"Metrics.{key} is not finite: {value}")
    return model


def _require(condition: bool, message: str) -> None:
    """An assertion that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


def _numbers(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}", float(v)
