"""Progressive temporal pruning (Chowdhury, Rathi & Roy, ECCV 2022) and its ANN-conversion init."""

import json

import pytest
import torch
import torch.nn.functional as F

from spikecompress.compress.session import attach
from spikecompress.compress.temporal.ann_conversion import ANNConversion
from spikecompress.compress.temporal.temporal_pruning import TemporalPruning
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.models import build
from spikecompress.run.recipe import Recipe
from spikecompress.run.stages import run_recipe
from spikecompress.snn.layers import reset_state
from spikecompress.snn.neuron import IF, LIF


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _net(neuron="lif", spiking=True, per_channel=False, widths=(4, 8), pool="max"):
    torch.manual_seed(0)
    params = {"per_channel": True} if per_channel else {}
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=list(widths),
                 neuron=neuron, neuron_params=params, spiking=spiking, pool=pool)


def _train(model, session, data, steps=4, lr=5e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    session.bind(opt, total_steps=steps, steps_per_epoch=steps)
    for i, (x_seq, y) in zip(range(steps), data.train, strict=False):
        loss = F.cross_entropy(model(x_seq).mean(0), y) + session.loss(x_seq, model(x_seq), y)
        reset_state(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(i + 1) / steps)
        reset_state(model)


def _f(t):
    return float(t.detach())


def _neurons(model):
    return [m for m in model.modules() if isinstance(m, (LIF, IF))]


@pytest.mark.parametrize("neuron,decay", [("lif", 0.5), ("if", 1.0)])
def test_threshold_and_leak_become_parameters_that_train_and_start_unchanged(data, neuron, decay):
    model = _net(neuron)
    x_seq = next(iter(data.test))[0]
    before = model(x_seq)
    reset_state(model)
    session = attach(model, [TemporalPruning()])
    params = {id(p) for p in model.parameters()}
    for m in _neurons(model):
        assert isinstance(m.v_threshold, torch.nn.Parameter) and id(m.v_threshold) in params
        assert isinstance(m.leak, torch.nn.Parameter) and _f(m.leak) == decay
    assert torch.equal(model(x_seq), before)  # the leak starts at the neuron's own decay
    reset_state(model)
    start = [(_f(m.v_threshold), _f(m.leak)) for m in _neurons(model)]
    _train(model, session, data)
    moved = [(_f(m.v_threshold), _f(m.leak)) for m in _neurons(model)]
    assert all(a[0] != b[0] for a, b in zip(start, moved, strict=True))  # thresholds trained
    assert any(a[1] != b[1] for a, b in zip(start, moved, strict=True))  # leaks trained
    assert all(0 <= leak <= 1 for _, leak in moved)


def test_leak_is_clamped_after_every_step_and_threshold_kept_positive(data):
    model = _net("if")
    session = attach(model, [TemporalPruning(leak_max=0.9, min_threshold=0.05)])
    with torch.no_grad():
        for m in _neurons(model):
            m.leak.fill_(1.7)
            m.v_threshold.fill_(-3.0)
    session.after_step(progress=0.5)
    for m in _neurons(model):
        assert _f(m.leak) == pytest.approx(0.9) and _f(m.v_threshold) == pytest.approx(0.05)


def test_finalize_stores_learned_values_as_buffers_that_the_artifact_keeps(data, tmp_path):
    model = _net("lif", per_channel=True)
    session = attach(model, [TemporalPruning()])
    _train(model, session, data)
    model = session.finalize().eval()
    first = _neurons(model)[0]
    assert "leak" in first._buffers and "v_threshold" in first._buffers
    assert first.leak.shape == (4,) and not any(
        isinstance(p, torch.nn.Parameter) for p in (first.leak, first.v_threshold))
    x_seq = next(iter(data.test))[0]
    out = model(x_seq)
    reset_state(model)
    loaded = load(save(model, tmp_path / "a"))
    assert torch.equal(loaded(x_seq), out)
    assert torch.equal(_neurons(loaded)[0].leak, first.leak)


def test_selected_neurons_only(data):
    model = _net("lif")
    attach(model, [TemporalPruning(include=[r"features\.0\.act"], learn_threshold=False)])
    first, second = _neurons(model)
    assert isinstance(first.leak, torch.nn.Parameter) and second.leak is None
    assert not isinstance(first.v_threshold, torch.nn.Parameter)


def test_descent_each_stage_at_its_T_initialised_from_the_previous(tmp_path):
    recipe = Recipe.from_dict({
        "version": 1, "model": {"name": "conv_net", "widths": [4, 4]},
        "data": {"name": "digits", "T": 3, "batch_size": 64, "limit": 128},
        "stages": [
            {"name": f"T{T}", "T": T, "epochs": epochs, "optimizer": {"lr": 5e-2},
             "methods": [{"name": "temporal_pruning"}]}
            for T, epochs in [(3, 1), (2, 1), (1, 0)]
        ],
    })
    result = run_recipe(recipe, tmp_path / "run", verbose=False)
    leaks = []
    for i, T in enumerate([3, 2, 1]):
        folder = tmp_path / f"run/stages/{i}-T{T}/artifact"
        assert json.loads((folder / "spec.json").read_text())["meta"]["T"] == T
        assert result["stages"][f"T{T}"]["time_steps"] == T
        leaks.append(torch.stack([m.leak for m in _neurons(load(folder))]))
    assert not torch.equal(leaks[0], leaks[1])  # the T = 2 stage trained its leaks
    assert torch.equal(leaks[1], leaks[2])  # T = 1 (0 epochs) starts from the T = 2 model


def test_ann_conversion_copies_weights_and_sets_percentile_thresholds(data):
    # a spike of a neuron with threshold λ stands for λ: the layers that read spikes (not the
    # input) get their weights times λ; BN, biases and the first conv are copied as they are
    ann = _net(spiking=False).eval()  # eval: BN running statistics stay as they are
    weights = {k: v.clone() for k, v in ann.state_dict().items()}
    method = ANNConversion(percentile=90.0, samples=10**7)
    session = attach(ann, [method])
    acts = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: acts.setdefault(n, []).append(o))
             for n, m in ann.named_modules() if isinstance(m, torch.nn.ReLU)]
    with torch.no_grad():
        for x_seq, _ in data.test:
            ann(x_seq)
    for h in hooks:
        h.remove()
    snn = session.finalize()
    assert snn.spec["spiking"] and snn.spec["neuron"] == "if"
    assert snn.spec["neuron_params"]["v_reset"] is None  # soft reset
    state = snn.state_dict()
    modules = dict(snn.named_modules())
    readers = {"features.1.conv.weight": "features.0.act", "classifier.fc.weight": "features.1.act"}
    for k, v in weights.items():
        if k in readers:
            expected = v * modules[readers[k]].v_threshold
            assert torch.allclose(state[k], expected, rtol=1e-6, atol=0), k
        else:
            assert torch.equal(state[k], v), k
    for name, outs in acts.items():
        pos = torch.cat([o.flatten() for o in outs])
        expected = torch.quantile(pos[pos > 0].double(), 0.9)
        assert float(modules[name].v_threshold) == pytest.approx(float(expected), rel=1e-6)


def test_converted_snn_approximates_its_ann_at_many_steps():
    data = load_data(DataConfig(name="digits", T=1, batch_size=64, limit=512))
    ann = _net(spiking=False, widths=(8, 16), pool="avg")  # max pooling of spikes ≠ of rates
    opt = torch.optim.Adam(ann.parameters(), lr=1e-2)
    for _ in range(3):
        for x_seq, y in data.train:
            loss = F.cross_entropy(ann(x_seq).mean(0), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    ann.eval()
    session = attach(ann, [ANNConversion(percentile=90.0)])
    for x_seq, _ in data.train:
        ann(x_seq)
    ann_pred = torch.cat([ann(x).mean(0).argmax(1) for x, _ in data.test])
    snn = session.finalize().eval()
    agree = []
    for T in (2, 32):
        pred = []
        for x_seq, _ in data.test:
            pred.append(snn(x_seq.expand(T, *x_seq.shape[1:])).mean(0).argmax(1))
            reset_state(snn)
        agree.append(float((torch.cat(pred) == ann_pred).float().mean()))
    assert agree[1] > 0.85 and agree[1] > agree[0] + 0.1  # rates converge to the ANN's ReLUs


def test_ann_conversion_refuses_an_snn_and_an_empty_stage():
    with pytest.raises(ValueError, match="needs the ANN twin"):
        attach(_net(), [ANNConversion()])
    session = attach(_net(spiking=False), [ANNConversion()])
    with pytest.raises(ValueError, match="saw no activations"):
        session.finalize()
    with pytest.raises(ValueError, match="percentile must be in"):
        ANNConversion(percentile=0)
