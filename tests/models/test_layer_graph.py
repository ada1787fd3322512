"""The generic layer-graph model ("layers"): every node type, its spec, surgery and bad specs."""

import json

import pytest
import torch

from _exact import dyadic, dyadic_
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.surgery import remove_channels_
from spikecompress.measurement.counters import count
from spikecompress.models import from_spec
from spikecompress.models.layer_graph import Add, LayerGraph, layers
from spikecompress.snn import IF, LIF, PLIF, reset_state
from spikecompress.snn import layers as seq


def _graph() -> LayerGraph:
    """Every node type once: conv / BN / neuron / pool / residual add / flatten / linear."""
    lif = LIF(tau=torch.full((4,), 2.0), v_threshold=0.5, v_reset=None, semantics="spikingjelly")
    snt = LIF(tau=2.0, decay_input=False, v_threshold=torch.full((6,), 0.75), semantics="snntorch")
    snt.leak = torch.full((6,), 0.875)
    nodes = [
        ("conv1", seq.Conv2d(1, 4, 3, padding=1, bias=False), ["input"]),
        ("bn1", seq.BatchNorm2d(4), ["conv1"]),
        ("sn1", lif, ["bn1"]),
        ("conv2", seq.Conv2d(4, 4, (3, 1), padding=(1, 0)), ["sn1"]),
        ("sn2", PLIF(init_tau=3.0, channels=4), ["conv2"]),
        ("res", Add(), ["sn2", "sn1"]),
        ("pool", seq.AvgPool2d(2), ["res"]),
        ("mpool", seq.MaxPool2d(2, stride=1), ["pool"]),
        ("drop", seq.Dropout(0.25), ["mpool"]),
        ("flat", seq.Flatten(), ["drop"]),
        ("fc1", seq.Linear(36, 6), ["flat"]),
        ("sn3", snt, ["fc1"]),
        ("fc2", seq.Linear(6, 3), ["sn3"]),
        ("sn4", IF(v_threshold=0.25), ["fc2"]),
    ]
    return LayerGraph(nodes, (1, 8, 8))


def test_spec_round_trips_through_json_and_rebuilds_the_same_model():
    model = dyadic_(_graph()).eval()
    spec = json.loads(json.dumps(model.spec))
    assert spec["name"] == "layers" and [n["type"] for n in spec["nodes"]][:3] == [
        "conv2d", "bn2d", "lif"]
    rebuilt = from_spec(spec).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.spec == model.spec
    x = dyadic(torch.rand(3, 2, 1, 8, 8) * 2)
    out = model(x)
    assert out.shape == (3, 2, 3)
    assert torch.equal(rebuilt(x), out)
    for name in ("sn1", "sn3"):  # foreign semantics and per-channel tensors survive the spec
        a, b = model.nodes[name], rebuilt.nodes[name]
        assert a.semantics == b.semantics and torch.equal(a.v_threshold, b.v_threshold)
    assert torch.equal(rebuilt.nodes["sn3"].leak, torch.full((6,), 0.875))


def test_channel_surgery_rewrites_the_spec():
    model = _graph().eval()
    groups = {g.name: g for g in channel_groups(model)}
    # groups are named by module path; the residual ties conv1 and conv2 (they are added)
    assert groups["nodes.fc1"].size == 6 and groups["nodes.fc1"].consumers == ["nodes.fc2"]
    assert groups["nodes.conv1"].producers == ["nodes.conv1", "nodes.conv2"]
    remove_channels_(model, {"nodes.fc1": [0, 2], "nodes.conv1": [1]})
    assert model.nodes["conv2"].out_channels == 3 and model.nodes["fc1"].in_features == 27
    assert model.nodes["fc1"].out_features == 4
    assert model.nodes["sn3"].v_threshold.shape == (4,)
    node = next(n for n in model.spec["nodes"] if n["name"] == "fc1")
    assert node["out_features"] == 4
    rebuilt = from_spec(model.spec)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 2, 1, 8, 8)
    reset_state(model)
    assert torch.equal(rebuilt.eval()(x), model(x))


def test_add_reads_named_inputs_and_input_is_the_model_input():
    spec = {"in_shape": [4], "nodes": [
        {"name": "fc", "type": "linear", "in_features": 4, "out_features": 4, "bias": False},
        {"name": "sum", "type": "add", "inputs": ["fc", "input"]}]}
    model = layers(**spec)
    with torch.no_grad():
        model.nodes["fc"].weight.copy_(torch.eye(4))
    x = torch.rand(2, 3, 4)
    assert torch.equal(model(x), x + x)


@pytest.mark.parametrize("nodes, match", [
    ([{"name": "a", "type": "gru"}], "unknown type 'gru'"),
    ([{"name": "a.b", "type": "flatten"}], "bad or repeated name 'a.b'"),
    ([{"name": "a", "type": "flatten"}, {"name": "a", "type": "flatten"}], "repeated name 'a'"),
    ([{"name": "a", "type": "flatten", "inputs": ["b"]}], "reads 'b'"),
    ([{"name": "a", "type": "add", "inputs": ["input"]}], "add node 'a' needs two"),
    ([{"name": "a", "type": "linear", "in_features": 4}], r"node 'a' \(linear\) lacks"),
    ([{"type": "flatten"}], r"nodes\[0\] must be a dict with 'name' and 'type'"),
])
def test_bad_specs_name_the_node(nodes, match):
    with pytest.raises(ValueError, match=match):
        layers(in_shape=[4], nodes=nodes)


def test_wrong_input_shape_is_refused():
    model = layers(in_shape=[4], nodes=[{"name": "f", "type": "flatten"}])
    with pytest.raises(ValueError, match=r"layers expects x_seq of shape \[T, B, 4\]"):
        model(torch.zeros(2, 3, 5))


def test_per_step_runs_layers_step_by_step_with_the_same_results_and_counts():
    model = dyadic_(_graph()).eval()
    stepwise = from_spec({**model.spec, "per_step": True}).eval()
    stepwise.load_state_dict(model.state_dict())
    assert stepwise.spec["per_step"] is True and "per_step" not in model.spec
    calls = []
    stepwise.nodes["fc1"].register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    x = dyadic(torch.rand(3, 2, 1, 8, 8) * 2)  # dyadic: every sum exact in any order
    assert torch.equal(stepwise(x), model(x)) and calls == [1, 1, 1]
    a, b = count(model, x), count(stepwise, x)
    assert (a.sops, a.macs, a.spikes, a.samples) == (b.sops, b.macs, b.spikes, b.samples)
    with pytest.raises(ValueError, match="per_step must be true or false"):
        from_spec({**model.spec, "per_step": "yes"})
