"""count() against independent counters: SpikingJelly 2.0's SynOpCounter and NeuroBench 2.3.

Both are optional (the ``oracles`` install); each test skips when its package is missing.
SpikingJelly counts every weight position of a spike-driven conv / matmul, zero weights included
(compare with ``count_zero_weights=True``) and only binary inputs. NeuroBench expects [B, T, ...]
data (it divides by ``data[0].size(0)``) and sums in the layer's dtype: it gets float32 models
small enough that every sum stays exact, with weights zeroed in place (no prune hooks).
"""

import pytest
import torch
from torch import nn

from _oracles import oracle
from spikecompress.measurement.counters import count
from spikecompress.models import build
from spikecompress.snn import LIF, reset_state

_oracle = oracle


def _model(name: str, pruned: bool) -> nn.Module:
    """A tiny active model: weights large enough that every layer spikes; pruned in place."""
    spec = {"in_channels": 1, "input_size": 8, "classes": 10, "widths": [4, 8]}
    if name == "sew_resnet":
        spec["blocks"] = [1, 1]
    model = build(name, **spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.uniform_(-0.5, 1.0)
                if pruned:
                    m.weight[torch.rand_like(m.weight) < 0.4] = 0.0
    return model


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("name", ["conv_net", "sew_resnet"])
def test_spikingjelly_synop_counter(name, pruned):
    op_counter = _oracle("spikingjelly.activation_based.op_counter")
    model = _model(name, pruned)
    x = torch.rand(3, 5, 1, 8, 8) * 2
    counter = op_counter.SynOpCounter()
    reset_state(model.eval())
    with torch.no_grad(), op_counter.DispatchCounterMode([counter]):
        model(x)
    reset_state(model)
    dense = count(model, x, count_zero_weights=True)
    assert counter.get_total() == dense.sops > 0
    per_layer = counter.get_counts()
    for layer, rec in dense.layers.items():
        if rec.kind == "synaptic":
            assert sum(per_layer[f"Network.{layer}"].values()) == rec.sops
    ours = count(model, x)
    assert ours.sops < dense.sops if pruned else ours.sops == dense.sops


class _BatchFirst(nn.Module):
    """NeuroBench feeds [B, T, ...]; our models take [T, B, ...]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x_bt: torch.Tensor) -> torch.Tensor:
        return self.net(x_bt.transpose(0, 1))  # [B, T, ...] -> [T, B, ...]


def _neurobench(model: nn.Module, data: torch.Tensor, wrap: bool) -> dict:
    """NeuroBench's workload and static metrics of one batch (metrics called directly, so an
    exception fails the test instead of being reported as 0.0 as ``Benchmark.run`` does)."""
    models = _oracle("neurobench.models")
    workload = _oracle("neurobench.metrics.workload")
    static = _oracle("neurobench.metrics.static")
    nb_model = models.TorchModel(_BatchFirst(model) if wrap else model)
    nb_model.add_activation_module(LIF)
    nb_model.register_hooks()
    try:
        reset_state(model)
        with torch.no_grad():
            preds = nb_model(data)
        batch = (data, torch.zeros(data.shape[0]))
        out = workload.SynapticOperations()(nb_model, preds, batch)
        out["ActivationSparsity"] = workload.ActivationSparsity()(nb_model, preds, batch)
        for metric in (static.ConnectionSparsity, static.ParameterCount, static.Footprint):
            out[metric.__name__] = metric()(nb_model)
    finally:
        nb_model.cleanup_hooks()
        reset_state(model)
    return out


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("name", ["conv_net", "sew_resnet"])
def test_neurobench_metrics(name, pruned):
    model = _model(name, pruned)
    x = torch.rand(3, 5, 1, 8, 8) * 2  # [T, B, ...], real-valued: the first layer does MACs
    theirs = _neurobench(model, x.transpose(0, 1).contiguous(), wrap=True)
    ours = count(model, x).to_neurobench()
    assert ours["Effective_MACs"] > 0 and ours["Effective_ACs"] > 0
    for key in ("Effective_ACs", "Effective_MACs", "Dense", "ParameterCount", "Footprint"):
        assert theirs[key] == ours[key], key
    assert theirs["ActivationSparsity"] == pytest.approx(ours["ActivationSparsity"], abs=1e-12)
    assert theirs["ConnectionSparsity"] == round(ours["ConnectionSparsity"], 4)
    assert (ours["ConnectionSparsity"] > 0.3) == pruned


def test_neurobench_fed_time_major_divides_by_t():
    """The pitfall the spec warns about: [T, B, ...] data makes NeuroBench divide by T, not B."""
    model = _model("conv_net", pruned=False)
    x = torch.rand(3, 5, 1, 8, 8) * 2
    theirs = _neurobench(model, x, wrap=False)
    c = count(model, x)
    assert theirs["Effective_ACs"] == c.sops / 3 != c.per_sample("sops")
