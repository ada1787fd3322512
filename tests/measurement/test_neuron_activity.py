"""Spikes per neuron per sample and silent neurons (never firing on the whole test set): exact on a
hand network, consistent with the totals in ``measure``, per layer in its table and reported."""

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from spikecompress.data import DataConfig, load_data
from spikecompress.measurement import count
from spikecompress.measurement.metrics import measure
from spikecompress.measurement.totals import count_loader
from spikecompress.models import build
from spikecompress.report.render import table_rows
from spikecompress.report.tables import print_metrics
from spikecompress.snn import IF, reset_state
from spikecompress.snn.neuron import set_spike_mask_


def _hand():
    """Linear(2, 4) → IF (threshold 1, hard reset): neuron currents x·[1, 0], x·[0, ½],
    −x·[1, 1] and x·[¼, 0]; with x = [1, 0] (batch A) or [0, 1] (batch B) at T = 4 they fire
    4 | 0, 0 | 2, 0 | 0 and 1 | 0 times."""
    net = nn.Sequential(nn.Linear(2, 4, bias=False), IF(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5], [-1.0, -1.0], [0.25, 0.0]]))
    a = torch.tensor([1.0, 0.0]).expand(4, 1, 2)  # [T, B, F]
    b = torch.tensor([0.0, 1.0]).expand(4, 1, 2)
    return net, [(a, None), (b, None)]


def test_silent_neurons_are_those_that_fire_in_no_batch_by_hand():
    net, loader = _hand()
    one = count(net, loader[0][0]).layers["1"]
    assert (one.neurons, one.silent, one.spikes) == (4, 2, 5)  # neurons 1 and 2 silent in A
    assert "fired" not in one.to_dict() and json.dumps(one.to_dict())
    t, _ = count_loader(net, loader)
    row = t["layers"]["1"]
    assert (row["neurons"], row["silent"], row["spikes"]) == (4, 1, 7)  # only neuron 2: 1 / 4
    assert (t["neurons"], t["silent"]) == (4, 1)  # not the per-batch silences (2 + 3)
    assert "neurons" not in t["layers"]["0"]  # synaptic rows: no neurons


def test_measure_reports_spikes_per_neuron_and_the_silent_share(tmp_path):
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits", T=2, batch_size=128, limit=64))
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    with torch.no_grad():  # an untrained tiny net is silent: make it fire
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4)
    act = model.features[1].act  # prune 3 of its 8 channels: their neurons never fire
    mask = torch.ones(8, 4, 4)
    mask[:3] = 0
    set_spike_mask_(act, mask)
    m = measure(model, data, latency_repeats=1)

    fired, spikes = {}, {}  # independently: hooks on the neurons over the test set

    def seen(name):
        def hook(mod, inputs, out):
            fired[name] = fired.get(name, False) | (out != 0).flatten(0, 1).any(0)
            spikes[name] = spikes.get(name, 0) + int(out.sum())
        return hook

    hooks = [mod.register_forward_hook(seen(name))
             for name, mod in model.named_modules() if name.endswith(".act")]
    n = 0
    with torch.no_grad():
        for x_seq, _ in data.test:
            model.eval()
            model(x_seq)
            reset_state(model)
            n += x_seq.shape[1]
    for h in hooks:
        h.remove()
    neurons = {k: v.numel() for k, v in fired.items()}
    silent = {k: int((~v).sum()) for k, v in fired.items()}
    assert silent["features.1.act"] >= 3 * 16  # the pruned channels, at least
    total = sum(neurons.values())
    assert m.spikes_per_neuron == pytest.approx(m.spikes_per_sample / total, rel=1e-12)
    assert m.spikes_per_neuron == pytest.approx(sum(spikes.values()) / (n * total), rel=1e-12)
    assert m.silent_neurons == sum(silent.values()) / total
    assert 0 < m.silent_neurons < 1 and m.spikes_per_neuron > 0
    for name in neurons:
        row = m.layers[name]
        assert row["silent_neurons"] == silent[name] / neurons[name]
        assert row["spikes_per_neuron"] == pytest.approx(spikes[name] / (n * neurons[name]))
    assert m.layers["features.0.conv"]["silent_neurons"] is None  # a synaptic row
    record = m.to_dict()
    assert json.loads(json.dumps(record))["silent_neurons"] == m.silent_neurons

    # reported: the CLI totals and per-layer table, and the report / comparison table
    buf = io.StringIO()
    print_metrics(record, "t", console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert f"{m.spikes_per_neuron:.3f} per neuron" in text and "silent" in text
    assert f"{m.silent_neurons:.1%}" in text
    header, rows = table_rows({"run": record})
    assert rows[0][header.index("silent neurons")] == f"{m.silent_neurons:.1%}"
    older = {k: v for k, v in record.items() if k not in ("spikes_per_neuron", "silent_neurons")}
    header, rows = table_rows({"old": older})  # a record from before: a dash, not a crash
    assert rows[0][header.index("spikes/neuron")] == "–"


def test_a_model_without_neurons_reports_zero():
    data = load_data(DataConfig(name="digits", T=1, batch_size=128, limit=64))
    ann = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8], spiking=False)
    m = measure(ann, data, latency_repeats=1)
    assert m.spikes_per_neuron == 0.0 and m.silent_neurons == 0.0
