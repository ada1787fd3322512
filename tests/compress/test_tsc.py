"""Temporal-Switch Coding (spec quant-kd §4.4): the encoder, the switch synapse and TSC neuron,
the op counts (<= 2 weight reads and adds per synapse whatever the window), 0 or 2 spikes per
neuron, the conversion of a digits ANN, the artifact, and the refusals."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikecompress.compress import METHODS, TSCConversion, attach
from spikecompress.data import DataConfig, load_data
from spikecompress.data.common import DataError
from spikecompress.export import load, save
from spikecompress.measurement import SpikeMonitor, count, evaluate, measure
from spikecompress.models import build, from_spec
from spikecompress.models.tsc import TSCNetwork, plan, to_tsc
from spikecompress.snn import Conv2d, Linear, MaxPool2d, encode
from spikecompress.snn.tsc import TSCMaxPool, TSCNeuron, tsc_decode, tsc_input
from spikecompress.train import TrainConfig, Trainer

CNN = {"name": "conv_net", "in_channels": 1, "input_size": 8, "classes": 10,
       "widths": [16, 32, 64], "pool": "max", "spiking": False}


def _convert(ann, data, **kwargs):
    """One calibration pass of ``TSCConversion`` over ``data.train`` (training mode, no step)."""
    model = copy.deepcopy(ann)
    session = attach(model, [TSCConversion(**kwargs)])
    model.train()
    with torch.no_grad():
        for x_seq, _ in data.train:
            model(x_seq)
    return session.finalize()


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits", T=1, batch_size=128))


@pytest.fixture(scope="module")
def ann(digits):
    torch.manual_seed(0)
    model = build(**CNN)
    Trainer(model, digits, TrainConfig(epochs=10, lr=5e-3, seed=0), verbose=False).fit()
    return model.eval()


@pytest.fixture(scope="module")
def tsc_net(ann, digits):
    return _convert(ann, digits)


def _data(T: int, encoding: str = "direct"):
    return load_data(DataConfig(name="digits", T=T, batch_size=128, encoding=encoding))


# -- the code ---------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [2, 5, 17, 33])
def test_encode_decode_round_trip(T):
    x = torch.cat([torch.rand(500, generator=torch.Generator().manual_seed(T)),
                   torch.tensor([0.0, 1.0, 0.5 / (T - 1) * 0.99])]).view(1, -1)
    s = encode(x, T, "tsc")  # [T, 1, N]
    Tw = T - 1
    k = torch.round(x * Tw)
    assert set(s.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(tsc_decode(s), k / Tw)  # interval / Tw == quantized x
    assert torch.equal((s != 0).sum(0), 2 * (k > 0).long())  # 0 or 2 events, none for x -> 0
    assert torch.equal(s[0], (k > 0).float())  # ON at step 0
    off = torch.where(s[1:] == -1)
    assert torch.equal(off[0] + 1, k[off[1], off[2]].long())  # OFF at step round(x * Tw)


def test_digits_load_as_tsc_events_exactly_at_a_window_of_16():
    data = _data(17, "tsc")
    x_seq, _ = next(iter(data.test))
    direct, _ = next(iter(_data(17).test))
    assert torch.equal(tsc_decode(x_seq), direct[0])  # digits are j / 16: exact at Tw = 16
    assert torch.equal(tsc_input(direct), x_seq)  # a TSC network encodes static input the same


# -- synapse and neuron ---------------------------------------------------------------------
@pytest.mark.parametrize("Tw", [8, 13, 64])
def test_membrane_after_the_window_is_Tw_W_x_exactly(Tw):
    g = torch.Generator().manual_seed(Tw)
    k = torch.randint(0, Tw + 1, (6, 20), generator=g)  # integer intervals: x = k / Tw
    layer = Linear(20, 7).double()
    with torch.no_grad():  # dyadic weights and bias: every sum below is exact in float64
        layer.weight.copy_(torch.randint(-64, 65, (7, 20), generator=g) / 64)
        layer.bias.copy_(torch.randint(-64, 65, (7,), generator=g) / 64)
    neuron = TSCNeuron(7, v_threshold=0.25).double()
    with torch.no_grad():
        neuron.bias.copy_(layer.bias)
        layer.bias = None  # the bias is the neuron's window current (as the conversion does)
    s = encode(k.double() / Tw, Tw + 1, "tsc")
    out = neuron(layer(s))
    expected = k.double() @ layer.weight.T + Tw * neuron.bias  # Tw * (W x + b), x = k / Tw
    assert torch.equal(neuron.v, expected)
    if Tw & (Tw - 1) == 0:  # a power of 2: x = k / Tw is exact too
        assert torch.equal(neuron.v, Tw * ((k.double() / Tw) @ layer.weight.T + neuron.bias))
    interval = torch.ceil(expected / 0.25).clamp(0, Tw)  # drain by theta until V <= 0
    assert torch.equal(tsc_decode(out) * Tw, interval)
    assert torch.equal(out[0], (interval > 0).double())


def test_a_conv_layer_integrates_its_window_the_same_way():
    torch.manual_seed(0)
    Tw = 16
    conv = Conv2d(2, 3, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-32, 33, conv.weight.shape) / 32)
    k = torch.randint(0, Tw + 1, (4, 2, 5, 5))
    neuron = TSCNeuron(3).double()
    neuron(conv(encode(k.double() / Tw, Tw + 1, "tsc")))
    assert torch.equal(neuron.v, F.conv2d(k.double(), conv.weight, padding=1))


def test_max_pooling_of_events_is_the_max_of_the_intervals():
    Tw = 12
    k = torch.randint(0, Tw + 1, (3, 4, 6, 6), generator=torch.Generator().manual_seed(1))
    s = encode(k.float() / Tw, Tw + 1, "tsc")
    pooled = TSCMaxPool(MaxPool2d(2))(s)  # [T, 3, 4, 3, 3]
    assert set(pooled.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(tsc_decode(pooled) * Tw, F.max_pool2d(k.float(), 2))


# -- counting -------------------------------------------------------------------------------
def test_first_layer_sops_are_two_per_synapse_of_each_nonzero_input_by_hand():
    torch.manual_seed(0)
    ann = build("mlp", in_features=64, classes=10, widths=[16], spiking=False).eval()
    with torch.no_grad():
        ann.features[0].fc.weight[:, :8] = 0  # pruned synapses cost nothing
    net = to_tsc(ann, {"features.0.act": 1.0})
    x = torch.rand(5, 1, 8, 8)
    x[:, :, :2] = 0
    for Tw in (4, 16, 64):
        k = torch.round(x * Tw).flatten(1)  # [B, 64]
        c = count(net, x.unsqueeze(0).expand(Tw + 1, *x.shape))
        first = c.layers["features.0.fc"]
        nnz = (ann.features[0].fc.weight != 0).sum(0)  # [64] synapses per input
        assert first.input_kind == "ternary"
        assert first.sops == int(2 * ((k > 0) * nnz).sum())  # ON + OFF: 2 reads + 2 adds each


def test_op_counter_reports_at_most_two_per_synapse_independent_of_the_window(tsc_net):
    first = []
    for Tw in (16, 32, 64):
        x_seq, _ = next(iter(_data(Tw + 1).test))
        c = count(tsc_net, x_seq)
        for name, rec in c.layers.items():
            if rec.kind == "synaptic":
                synapses = rec.dense_macs // (Tw + 1)  # every (input, weight, output) link
                assert rec.input_kind == "ternary" and rec.macs == 0, name
                assert rec.sops <= 2 * synapses, name  # 2 weight reads + 2 adds at most
        first.append(c.layers["features.0.conv"].sops)
    assert first[0] == first[1] == first[2]  # digits (j / 16) are exact at these windows


def test_each_neuron_emits_zero_or_two_spikes_on_the_digits_test_set(tsc_net):
    data = _data(33)
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o))
             for m in tsc_net.modules() if isinstance(m, TSCNeuron)]
    total = 0
    with SpikeMonitor(tsc_net) as mon, torch.no_grad():
        for x_seq, _ in data.test:
            outs.clear()
            tsc_net(x_seq)
            for s in outs:
                n = (s != 0).sum(0)
                assert set(n.unique().tolist()) <= {0, 2}
                assert torch.equal(s[0], (n == 2).to(s.dtype))  # ON first, at the window's end
                assert torch.equal(s.sum(0), torch.zeros_like(s[0]))  # then one OFF
                total += int(n.sum())
    for h in hooks:
        h.remove()
    assert total > 0 and mon.spikes == total
    counted = sum(count(tsc_net, x).spikes for x, _ in data.test)
    assert counted == total  # the counters count ON and OFF as one spike each


# -- conversion -----------------------------------------------------------------------------
def test_converted_digits_cnn_keeps_the_ann_accuracy(ann, tsc_net, digits):
    ann_acc = evaluate(ann, digits.test)["accuracy"]
    report = {Tw: evaluate(tsc_net, _data(Tw + 1).test) for Tw in (8, 32)}
    assert report[32]["accuracy"] >= ann_acc - 0.02
    assert report[8]["accuracy"] >= ann_acc - 0.05


def test_artifact_round_trip_and_either_input_coding(tsc_net, tmp_path):
    assert isinstance(tsc_net, TSCNetwork) and tsc_net.spec["tsc"]["neurons"] == [
        "features.0.act", "features.1.act", "features.2.act"]
    x_seq, _ = next(iter(_data(17).test))
    events, _ = next(iter(_data(17, "tsc").test))
    out = tsc_net(x_seq)
    assert torch.equal(tsc_net(events), out)
    loaded = load(save(tsc_net, tmp_path / "artifact"))
    assert isinstance(loaded, TSCNetwork) and torch.equal(loaded(x_seq), out)
    m = measure(loaded, _data(17), latency_repeats=1)
    assert m.macs_per_sample == 0 and m.sops_per_sample > 0
    assert m.spikes_per_sample == pytest.approx(evaluate(loaded, _data(17).test)[
        "spikes_per_sample"])


def test_the_readout_mean_is_the_ann_logit_for_a_one_layer_network():
    torch.manual_seed(0)
    ann = build("mlp", in_features=64, classes=10, widths=[], spiking=False).double().eval()
    net = to_tsc(ann, {})
    x = torch.randint(0, 17, (3, 64)).double() / 16
    got = net(x.unsqueeze(0).expand(17, *x.shape)).mean(0)
    torch.testing.assert_close(got, ann(x.unsqueeze(0))[0], rtol=0, atol=1e-12)


# -- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, message", [
    ({**CNN, "spiking": True}, "tsc needs the ANN twin"),
    ({**CNN, "pool": "avg"}, r"features.1.pool \(AvgPool2d\): the mean of TSC intervals"),
    ({**CNN, "norm": "bntt", "steps": 2}, r"features.0.bn \(BNTT2d\)"),
    ({"name": "sew_resnet", "in_channels": 1, "input_size": 8, "classes": 10, "widths": [4, 8],
      "blocks": [1, 1], "spiking": False}, r"tsc cannot convert .* a block that is not a chain"),
])
def test_unconvertible_models_are_refused_by_name_at_attach(spec, message):
    with pytest.raises(ValueError, match=message) as e:
        attach(build(**spec), [TSCConversion()])
    assert "\n" not in str(e.value)


def test_bad_settings_and_inputs_are_named(tsc_net):
    for kwargs, message in [({"percentile": 0}, "percentile"), ({"percentile": 101}, "percentile"),
                            ({"samples": 0}, "samples"), ({"seed": -1}, "seed")]:
        with pytest.raises(ValueError, match=message):
            TSCConversion(**kwargs)
    with pytest.raises(ValueError, match="T >= 2"):
        encode(torch.rand(2, 3), 1, "tsc")
    with pytest.raises(ValueError, match=r"inputs in \[0, 1\]"):
        encode(torch.tensor([[0.5, 1.5]]), 4, "tsc")
    with pytest.raises(ValueError, match=r"inputs in \[0, 1\]"):
        encode(torch.tensor([[float("nan")]]), 4, "tsc")
    with pytest.raises(ValueError, match="'event_digits'"):
        DataConfig(name="event_digits", T=4, encoding="tsc")
    with pytest.raises(ValueError, match="data.T must be >= 2 for encoding tsc"):
        DataConfig(name="digits", T=1, encoding="tsc")
    x = torch.rand(5, 2, 1, 8, 8)
    for bad, message in [(x, "changes over time"), (x[:1], "T >= 2"),
                         (x[:1].expand(5, -1, -1, -1, -1) * 2, r"in \[0, 1\]"),
                         (-x, "must be TSC events")]:
        with pytest.raises(ValueError, match=message):
            tsc_net(bad)


def test_a_spec_naming_other_neurons_is_refused(tsc_net):
    with pytest.raises(ValueError, match="tsc: the spec names the neurons"):
        from_spec({**tsc_net.spec, "tsc": {"neurons": ["features.0.act"]}})


def test_data_outside_the_unit_range_is_refused_for_tsc(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.linspace(-1, 2, 40 * 4).reshape(40, 4).astype(np.float32),
             y=np.arange(40) % 2)
    with pytest.raises(DataError, match=r"encoding tsc needs inputs in \[0, 1\]; 'npz'"):
        load_data(DataConfig(name="npz", root=str(path), T=3, encoding="tsc"))


def test_a_stage_without_activations_is_refused_at_finalize():
    model = build(**{**CNN, "widths": [4]})
    session = attach(model, [METHODS["tsc"]()])
    with pytest.raises(ValueError, match="tsc saw no activations of"):
        session.finalize()


def test_plan_refuses_a_relu_without_a_layer_before_it():
    model = build(**{**CNN, "widths": [4]})
    model.features[0].conv = nn.Identity()
    with pytest.raises(ValueError, match=r"features.0.bn \(BatchNorm2d\): a BatchNorm that does "):
        plan(model)
