"""The contract every registered compression method passes (the contract suite).

``check_method``: attach → a few training steps (Adam, the user's own loop) → finalize must give a
plain module with the same output shape; the artifact round trip must reproduce its outputs bit
for bit; every Metrics figure must be finite; the method's spec must round-trip through YAML; a
method whose knob names its target (``sparsity``, ``channel_sparsity``) must end on it.
``check_defaults``: with its defaults, a short fine-tune of a trained model keeps the accuracy
within a few points of dense while really compressing it. New methods get both for free:
``tests/compress/test_contract.py`` and ``test_defaults.py`` run them for every ``METHODS`` entry.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from spikecompress.compress.parametrize import is_plain
from spikecompress.compress.prune.groups import channel_groups, select_groups
from spikecompress.compress.registry import METHODS
from spikecompress.compress.session import attach
from spikecompress.compress.targets import select
from spikecompress.export import load, save
from spikecompress.measurement import measure
from spikecompress.models import build
from spikecompress.snn.layers import reset_state

# the tiny models the contract suite runs every method on: build(classes=10, **TINY_MODELS[name])
TINY_MODELS = {
    "mlp": {"name": "mlp", "in_features": 64, "widths": [16]},
    "conv_net": {"name": "conv_net", "in_channels": 1, "input_size": 8, "widths": [4, 8]},
    "sew_resnet": {"name": "sew_resnet", "in_channels": 1, "input_size": 8, "widths": [4, 8],
                   "blocks": [1, 1]},
}


# methods that convert the ANN twin: the contract builds them a non-spiking model
ANN_METHODS = ("ann_conversion", "tsc", "ttfs")


def tiny_model(method_name: str, model_name: str, steps: int = 2) -> nn.Module:
    """The tiny ``model_name`` model the contract runs ``method_name`` on: the ANN twin for the
    conversion methods, built with the method's ``MODEL_OPTIONS`` (a BNTT student gets ``steps``
    BatchNorms, the data's T)."""
    options = dict(getattr(METHODS[method_name], "MODEL_OPTIONS", {}))
    if options.get("norm") == "bntt":
        options["steps"] = steps
    spiking = method_name not in ANN_METHODS
    return build(classes=10, spiking=spiking, **{**TINY_MODELS[model_name], **options})


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
        if session.has_train_step:  # the method trains the model itself (integer-only training)
            session.train_step(x_seq, y)
        else:
            out = model(x_seq)
            loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        session.after_step(progress=(step + 1) / steps, epoch=step // per_epoch)
        reset_state(model)


def check_method(method_cls: type, model: nn.Module, data, steps: int = 3) -> nn.Module:
    """Run the contract on a fresh ``method_cls()`` (its defaults) and ``model``; raise
    AssertionError naming the broken clause. Returns the finalized model. A method whose class
    lists the model's family in ``REFUSES`` must instead refuse it at attach: a one-line
    ValueError naming the module it cannot handle. A method that needs a model option (its class
    attribute ``MODEL_OPTIONS``, e.g. ``bntt_kd``'s ``{"norm": "bntt"}``) gets ``model`` built
    with it by the caller."""

    method = method_cls()
    target = Target.of(method, model)
    spec = method_spec(method)
    again = yaml.safe_load(yaml.safe_dump(spec))
    rebuilt = method_cls(**{k: v for k, v in again.items() if k != "name"})
    _require(rebuilt == method, f"{spec['name']}: spec does not round-trip through YAML")
    x_seq = next(iter(data.test))[0]
    shape = model(x_seq).shape
    reset_state(model)
    family = getattr(model, "spec", {}).get("name")
    if family in getattr(method_cls, "REFUSES", ()):  # e.g. integer methods vs residual nets
        try:
            attach(model, [method])
        except ValueError as e:
            _require("\n" not in str(e) and ":" in str(e),
                     f"{spec['name']}: the refusal of {family} must be one line naming a module")
            return model
        raise AssertionError(f"{spec['name']}: declares it refuses {family} but attached")
    session = attach(model, [method])
    _train_steps(model, session, data, steps)
    model = session.finalize().eval()
    _require(is_plain(model), "finalize must leave no parametrizations or hooks")
    if target is not None:
        target.check(model, spec["name"])
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


@dataclass
class Target:
    """A method's named target and how far the finalized model is allowed to miss it.

    ``sparsity``: the zero fraction of the selected conv / linear weights (±1 pp, or one weight
    on a tiny net); ``channel_sparsity``: the fraction of the selected prunable channels removed
    (±2 pp, or one channel)."""

    knob: str
    value: float
    before: dict[str, int]  # selected layer → weights, or selected channel group → channels

    @staticmethod
    def of(method: object, model: nn.Module) -> Target | None:
        """The target of ``method`` on ``model`` (None without a numeric one: a paper knob, or a
        per-layer mapping, which the method's own tests check)."""
        include, exclude = getattr(method, "include", ()), getattr(method, "exclude", ())
        sparsity = getattr(method, "sparsity", None)
        if isinstance(sparsity, (int, float)):
            picked = select(model, include, exclude)
            return Target("sparsity", float(sparsity), {n: m.weight.numel() for n, m in picked})
        channel_sparsity = getattr(method, "channel_sparsity", None)
        if isinstance(channel_sparsity, (int, float)):
            # a channel method says which groups it prunes (SCA: conv groups only)
            groups = (method.select(model) if callable(getattr(method, "select", None))
                      else select_groups(channel_groups(model), include, exclude))
            if not groups:
                return None
            return Target("channel_sparsity", float(channel_sparsity),
                          {g.name: g.size for g in groups})
        return None

    def reached(self, model: nn.Module) -> float:
        """The sparsity of the finalized ``model`` by the same count as the target."""
        total = sum(self.before.values())
        if self.knob == "sparsity":
            modules = dict(model.named_modules())
            zeros = sum(int((modules[n].weight == 0).sum()) for n in self.before)
            return zeros / total
        after = {g.name: g.size for g in channel_groups(model)}
        return 1 - sum(after.get(n, 0) for n in self.before) / total

    def check(self, model: nn.Module, name: str) -> None:
        tolerance = (0.01 if self.knob == "sparsity" else 0.02)
        tolerance = max(tolerance, 1 / sum(self.before.values()) + 1e-9)
        got = self.reached(model)
        _require(abs(got - self.value) <= tolerance,
                 f"{name}: {self.knob} {got:.4f} misses its target {self.value} by more than "
                 f"{tolerance:.4f}")


def check_defaults(
    method_cls: type, model: nn.Module, data, epochs: int = 2, lr: float = 1e-3,
    max_drop: float = 0.04, compresses: bool = True, stage_data=None,
) -> dict:
    """Fine-tune the trained ``model`` for ``epochs`` with ``method_cls()`` (its defaults), and
    require the finalized model to stay within ``max_drop`` of the dense accuracy and to really
    compress (``compresses``): at most 80 % of the dense bytes on disk, non-zero parameters, or
    average time steps. ``stage_data``: the data the method trains and is measured on when it is
    not ``data`` (a time-step method's stage at a smaller T); dense is measured on ``data``.
    Returns ``{"dense": ..., "compressed": ...}``, the two ``Metrics`` as dicts."""
    dense = measure(model, data, latency_repeats=1)
    data = stage_data or data
    method = method_cls()
    target = Target.of(method, model)
    session = attach(model, [method])
    steps = len(data.train)
    _train_steps(model, session, data, epochs * steps, lr=lr, per_epoch=steps)
    model = session.finalize().eval()
    got = measure(model, data, latency_repeats=1)
    name = method_spec(method)["name"]
    if target is not None:
        target.check(model, name)
    _require(got.accuracy >= dense.accuracy - max_drop,
             f"{name}: accuracy {got.accuracy:.4f} with defaults, dense {dense.accuracy:.4f}")
    ratios = {"size_bytes": got.size_bytes / dense.size_bytes,
              "params_nonzero": got.params_nonzero / dense.params_nonzero,
              "avg_time_steps": got.avg_time_steps / dense.avg_time_steps}
    _require(not compresses or min(ratios.values()) <= 0.8,
             f"{name}: does not compress with defaults: {ratios}")
    return {"dense": dense.to_dict(), "compressed": got.to_dict()}
