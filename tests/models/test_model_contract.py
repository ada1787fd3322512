"""The contract every entry of MODELS must meet, parametrized over the table with tiny widths."""

import inspect
import json

import pytest
import torch
from torch import nn

from _exact import dyadic, dyadic_, rounding_modules
from spikecompress.models import MODELS, build, from_spec
from spikecompress.snn import NEURONS, reset_state

TINY = {
    "mlp": {"in_features": 16, "classes": 3, "widths": [8, 6]},
    "conv_net": {"in_channels": 1, "input_size": 8, "classes": 3, "widths": [4, 6]},
    "conv1d_net": {"in_channels": 1, "input_size": 12, "classes": 3, "widths": [4, 5, 6]},
    "vgg": {"in_channels": 3, "input_size": 8, "classes": 3, "widths": [4, "M", 6, 6, "M"]},
    "resnet": {"in_channels": 2, "input_size": 8, "classes": 3, "widths": [4, 6],
               "blocks": [1, 2], "hidden": [5]},
    "sew_resnet": {"in_channels": 2, "input_size": 8, "classes": 3, "widths": [4, 6],
                   "blocks": [2, 1]},
    "autosnn_net": {"in_channels": 2, "input_size": 8, "classes": 3, "stem": 4,
                    "widths": [[4], [6, 6]], "cells": [["srb_k3"], ["skip", "scb_k5"]]},
}
SMALLER = {  # what a channel-pruning surgery could hand back
    "mlp": {"widths": [5, 3]},
    "conv_net": {"widths": [2, 5]},
    "conv1d_net": {"widths": [3, 5, 2]},
    "vgg": {"widths": [3, "M", 6, 2, "M"]},
    "resnet": {"widths": [3, 6], "inner_widths": [[2], [6, 1]], "hidden": [2]},
    "sew_resnet": {"widths": [4, 5], "inner_widths": [[1, 4], [3]]},
    "autosnn_net": {"widths": [[4], [5, 6]]},
}
NAMES = sorted(set(MODELS) - {"layers"})  # the generic graph: tests/models/test_layer_graph.py


def _x(model: nn.Module, T: int, B: int = 2) -> torch.Tensor:
    return torch.rand(T, B, *model.in_shape) * 2


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_model_has_test_specs():
    assert set(TINY) == set(NAMES) == set(SMALLER)


@pytest.mark.parametrize("name", NAMES)
def test_per_step_logits_for_any_T(name):
    # dyadic weights, BN and input (tests/_exact.py): a run of 1 step and one of 3 fold different
    # batches into their convolutions and matmuls, which may sum in different orders
    model = dyadic_(build(name, **TINY[name])).eval()
    x3 = dyadic(_x(model, 3))
    assert rounding_modules(model, x3) == []  # nothing rounds: no summation order can matter
    out3 = model(x3)
    reset_state(model)
    out1 = model(x3[:1])
    assert out3.shape == (3, 2, 3) and out1.shape == (1, 2, 3)
    # causal per-step read-out: step 0 does not depend on how many steps follow, to the bit
    assert torch.equal(out1[0], out3[0])


@pytest.mark.parametrize("name", NAMES)
def test_ann_twin_has_same_topology_and_no_neurons(name):
    snn = build(name, **TINY[name])
    ann = build(name, **TINY[name], spiking=False)
    assert _count(ann) == _count(snn)
    assert not any(isinstance(m, tuple(NEURONS.values())) for m in ann.modules())
    relus = sum(isinstance(m, nn.ReLU) for m in ann.modules())
    assert relus == sum(isinstance(m, tuple(NEURONS.values())) for m in snn.modules()) > 0
    assert ann(_x(ann, 2)).shape == (2, 2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trips_through_json(name):
    model = build(name, **TINY[name]).eval()
    assert set(model.spec) == {"name", *inspect.signature(MODELS[name]).parameters}
    rebuilt = from_spec(json.loads(json.dumps(model.spec))).eval()
    assert rebuilt.spec == model.spec
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    x = _x(model, 3)
    out = model(x)
    reset_state(model)
    torch.testing.assert_close(rebuilt(x), out, rtol=0, atol=0)
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_smaller_widths_build_a_smaller_model(name):
    small = build(name, **{**TINY[name], **SMALLER[name]})
    assert _count(small) < _count(build(name, **TINY[name]))
    assert small(_x(small, 2)).shape == (2, 2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    # a low threshold so every layer fires: a silent layer rightly gives its consumer a zero grad
    model = build(name, **TINY[name], neuron_params={"v_threshold": 0.25})
    model(_x(model, 4, B=8)).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_bad_spec_raises_value_error_naming_the_key(name):
    with pytest.raises(ValueError, match="bogus"):
        build(name, **TINY[name], bogus=1)
    with pytest.raises(ValueError, match="classes"):
        build(name, **{**TINY[name], "classes": 0})
    with pytest.raises(ValueError, match=r"widths\[0\]"):
        build(name, **{**TINY[name], "widths": [-1, *TINY[name]["widths"][1:]]})
    with pytest.raises(ValueError, match="spiking"):
        build(name, **TINY[name], spiking="yes")
    with pytest.raises(ValueError, match="neuron"):
        build(name, **TINY[name], neuron="hh")
    with pytest.raises(ValueError, match=r"neuron_params\.taux"):
        build(name, **TINY[name], neuron_params={"taux": 2.0})
    with pytest.raises(ValueError, match="classes"):
        build(name, **{k: v for k, v in TINY[name].items() if k != "classes"})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("neuron", ["if", "plif"])
def test_if_and_plif_neurons(name, neuron):
    model = build(name, **TINY[name], neuron=neuron, neuron_params={"per_channel": True})
    neurons = [m for m in model.modules() if isinstance(m, NEURONS[neuron])]
    assert neurons and all(m.v_threshold.dim() == 1 for m in neurons)
    lif = build(name, **TINY[name])
    extra = sum(m.v_threshold.numel() for m in neurons) if neuron == "plif" else 0
    assert _count(model) == _count(lif) + extra  # PLIF learns one decay per channel
    out = model(_x(model, 2))
    out.sum().backward()
    assert out.shape == (2, 2, 3)
