"""AutoSNN (Na et al., ICML 2022): the fitness ranks by accuracy at λ = 0 and by spikes at equal
accuracy when λ < 0, the spike count covers every spiking layer and every time step, the search is
deterministic, the search set never trains the supernet, the result is a real model that saves,
loads and rebuilds from its spec, and an unbuildable search space is a one-line error."""

import json
import random

import pytest
import torch

from spikecompress.compress import METHODS, AutoSNN, attach
from spikecompress.compress.contract import _train_steps
from spikecompress.compress.search.autosnn import (
    PAPER_LAMBDA,
    SUPERNET,
    evaluate_arch,
    evolve,
    fitness,
    rank,
    sample_keys,
)
from spikecompress.compress.search.space import Supernet
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.models import build, from_spec
from spikecompress.run.recipe import Recipe
from spikecompress.snn import NEURONS, reset_state

SMALL = {"stem": 4, "widths": [[4], [6, 6]], "iterations": 3, "population": 4, "mutations": 2,
         "crossovers": 1, "top_k": 2}


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=3, batch_size=64, limit=192))


def _conv_net(**kw):
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8], **kw)


def _searched(data, steps=3, **knobs):
    """A stage on the tiny conv net: attach, ``steps`` supernet steps, finalize."""
    model = _conv_net()
    method = AutoSNN(**{**SMALL, **knobs})
    session = attach(model, [method])
    _train_steps(model, session, data, steps)
    return session.finalize(), method


def test_registered_with_the_papers_lambda():
    assert METHODS["autosnn"] is AutoSNN and AutoSNN().fitness_lambda == PAPER_LAMBDA == -0.08


def test_lambda_zero_ranks_by_accuracy_only():
    records = [(0.80, 10.0), (0.95, 5000.0), (0.90, 1.0), (0.95, 20.0)]
    assert rank(records, 0.0, 100.0) == [1, 3, 2, 0]  # ties (0.95) keep their order
    assert [fitness(a, s, 0.0, 7.0) for a, s in records] == [a for a, _ in records]
    # a whole search at λ = 0 picks the most accurate architecture it evaluated, whatever its spikes
    acc = {}

    def evaluate(arch):
        rng = random.Random(" ".join(arch))
        acc[arch] = (round(rng.random(), 3), rng.uniform(1, 1e4))
        return acc[arch]

    result = evolve(evaluate, ["a", "b", "c"], 4, lam=0.0, seed=1)
    assert result.evaluated == acc
    assert acc[result.best][0] == max(a for a, _ in acc.values())


def test_equal_accuracy_negative_lambda_prefers_fewer_spikes():
    records = [(0.9, 300.0), (0.9, 100.0), (0.9, 200.0)]
    assert rank(records, -0.08, 200.0) == [1, 2, 0]
    assert fitness(0.9, 100.0, -0.08, 200.0) > 0.9 > fitness(0.9, 300.0, -0.08, 200.0)
    # S_ref scales every fitness alike: the ranking does not depend on it
    assert rank(records, -0.08, 1.0) == rank(records, -0.08, 1e6)
    # a silent network cannot win on λ < 0: spikes are floored at 1 per sample
    assert fitness(0.1, 0.0, -0.08, 100.0) == fitness(0.1, 1.0, -0.08, 100.0) < 0.9

    def evaluate(arch):  # every architecture equally accurate, spikes = its cells' cost
        return 0.5, float(sum({"a": 1, "b": 10, "c": 100}[c] for c in arch))

    result = evolve(evaluate, ["a", "b", "c"], 3, seed=0, iterations=5, population=6,
                    mutations=2, crossovers=2, top_k=3)
    fewest = min(s for _, s in result.evaluated.values())
    assert result.evaluated[result.best][1] == fewest


def test_spike_count_covers_every_spiking_layer_and_every_time_step():
    model = _conv_net(neuron_params={"v_threshold": 0.1})  # low threshold: every layer fires
    method = AutoSNN(**SMALL)
    attach(model, [method])
    net = getattr(model, SUPERNET).eval()
    arch = ("srb_k3", "skip", "scb_k5")  # a residual cell, a widening skip (conv1×1), a conv block
    torch.manual_seed(1)
    x = torch.rand(40, 4, 1, 8, 8)  # [N, T, ...] as the search set stores it
    y = torch.randint(0, 10, (40,))
    acc, spikes = evaluate_arch(net, arch, x, y, batch=16)  # three chunks

    standalone = net.extract(arch, "inherit").eval()  # the same path as a real model
    per_layer, per_step = {}, torch.zeros(4)

    def count(name):
        def hook(module, inputs, out):  # out [T, B, ...]: spikes of one layer, every step
            per_layer[name] = per_layer.get(name, 0.0) + float(out.sum())
            per_step.add_(out.sum(dim=tuple(range(1, out.dim()))))
        return hook

    hooks = [m.register_forward_hook(count(name)) for name, m in standalone.named_modules()
             if isinstance(m, tuple(NEURONS.values()))]
    with torch.no_grad():
        out = standalone(x.transpose(0, 1))
    for h in hooks:
        h.remove()
    reset_state(standalone)
    manual = sum(per_layer.values()) / len(y)
    assert spikes == manual  # integer spike totals: exact
    assert acc == int((out.mean(0).argmax(1) == y).sum()) / len(y)
    # stem + the residual cell's 2 + the skip's 1 + the conv block's 2 neurons, all firing
    assert len(per_layer) == 6 and all(v > 0 for v in per_layer.values())
    assert bool((per_step > 0).all())  # every time step contributes
    assert spikes > max(per_layer.values()) / len(y) and spikes > float(per_step[-1]) / len(y)


def test_search_is_deterministic_with_a_fixed_seed(data):
    a, ma = _searched(data)
    b, mb = _searched(data)
    assert a.spec == b.spec and ma.result_ == mb.result_
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(ma.result_["history"]) == SMALL["iterations"]
    # the evolution alone: the same seed draws the same candidates in the same order
    def evaluate(arch):
        return 0.5, float(len(set(arch)))

    runs = [evolve(evaluate, ["a", "b", "c", "d"], 4, seed=s) for s in (3, 3, 4)]
    assert list(runs[0].evaluated) == list(runs[1].evaluated) != list(runs[2].evaluated)


def test_held_out_samples_never_train_the_supernet(data):
    model = _conv_net()
    method = AutoSNN(**SMALL)
    session = attach(model, [method])
    net = getattr(model, SUPERNET)
    trained_on = set()
    forward = Supernet.forward

    def spy(self, x_seq):
        if self.training:
            trained_on.update(sample_keys(x_seq))
        return forward(self, x_seq)

    Supernet.forward = spy
    try:
        _train_steps(model, session, data, 6)  # two epochs: every sample is seen twice
    finally:
        Supernet.forward = forward
    held = set(method.held_keys_.tolist())
    assert held and trained_on and not held & trained_on
    assert len(held) == len(method.held_y_) == method.held_x_.shape[0]  # each sample kept once
    assert 0.1 < len(held) / (len(held) + len(trained_on)) < 0.3  # search_fraction 0.2
    assert net.training


def test_finalized_model_saves_loads_and_rebuilds_from_its_spec(data, tmp_path):
    model, method = _searched(data)
    model.eval()
    assert model.spec["name"] == "autosnn_net" and not hasattr(model, SUPERNET)
    cells = [c for stage in model.spec["cells"] for c in stage]
    assert cells == method.result_["arch"]  # the chosen architecture is recorded in the spec
    x = next(iter(data.test))[0]
    out = model(x)
    reset_state(model)
    loaded = load(save(model, tmp_path / "artifact")).eval()
    assert loaded.spec == model.spec and torch.equal(loaded(x), out)
    rebuilt = from_spec(json.loads(json.dumps(model.spec))).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(x), out)


def test_inherit_copies_the_supernet_path_and_scratch_is_a_function_of_the_seed(data):
    model = _conv_net()
    attach(model, [AutoSNN(**SMALL)])
    net = getattr(model, SUPERNET).eval()
    arch = ("scb_k3", "srb_k5", "skip")
    x = torch.rand(3, 5, 1, 8, 8)
    net.set_arch(arch)
    with torch.no_grad():
        want = net(x)
    reset_state(net)
    assert torch.equal(net.extract(arch, "inherit")(x), want)
    a, b, c = (net.extract(arch, "scratch", seed=s).state_dict() for s in (0, 0, 1))
    w = "features.stage1.0.conv1.weight"
    assert torch.equal(a[w], b[w]) and not torch.equal(a[w], c[w])
    assert not torch.equal(a[w], net.state_dict()["features.stage1.0.ops.srb_k5.conv1.weight"])


def test_a_one_dimensional_input_searches_one_dimensional_cells():
    torch.manual_seed(0)
    model = build("conv1d_net", in_channels=1, input_size=40, classes=10)
    method = AutoSNN(**SMALL)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    session.bind(opt, total_steps=2)
    x, y = torch.rand(2, 64, 1, 40), torch.randint(0, 10, (64,))
    for step in range(2):
        session.train_step(x, y)
        session.after_step(progress=(step + 1) / 2)
    found = session.finalize()
    assert found.spec["dims"] == 1 and found.in_shape == (1, 40)
    assert found(x).shape == (2, 64, 10)


@pytest.mark.parametrize("knobs, message", [
    ({"candidates": ["scb_k3", "scb_k7"]}, "candidates: unknown cell 'scb_k7' at index 1"),
    ({"candidates": []}, "candidates must be a non-empty list"),
    ({"candidates": ["skip", "skip"]}, "candidates: cell 'skip' is listed twice"),
    ({"widths": [[4], []]}, "widths[1] must be a list of at least 1 ints"),
    ({"pool": "median"}, "pool must be one of"),
    ({"fitness_lambda": 0.5}, "fitness_lambda must be a number in [-10, 0]"),
    ({"mutations": 8, "crossovers": 8}, "must not exceed population"),
    ({"init": "random"}, "init must be one of"),
])
def test_an_invalid_search_space_is_a_one_line_error_naming_the_field(knobs, message):
    with pytest.raises(ValueError) as info:
        AutoSNN(**knobs)
    assert message in str(info.value) and "\n" not in str(info.value)
    recipe = {"version": 1, "model": {"name": "conv_net"}, "data": {"name": "digits"},
              "stages": [{"name": "search", "epochs": 1,
                          "methods": [{"name": "autosnn", **knobs}]}]}
    with pytest.raises(ValueError) as info:
        Recipe.from_dict(recipe)
    field = next(iter(knobs)) if len(knobs) == 1 else "mutations"
    assert str(info.value).startswith("stages.0.methods.0") and field in str(info.value)


def test_a_stage_that_pools_below_one_pixel_is_refused_at_attach():
    with pytest.raises(ValueError) as info:  # 8 -> 4 -> 2 -> 1 -> (0)
        attach(_conv_net(), [AutoSNN(widths=[[4], [4], [4], [4]])])
    msg = str(info.value)
    assert msg.startswith("autosnn.widths: the pooling after stage 3 would shrink the 1×1 map")
    assert "\n" not in msg
    with pytest.raises(ValueError, match=r"^autosnn: the mlp model takes flat inputs"):
        attach(build("mlp", in_features=64, classes=10), [AutoSNN()])
    with pytest.raises(ValueError, match=r"^autosnn: the conv_net model is an ANN"):
        attach(_conv_net(spiking=False), [AutoSNN()])


def test_finalize_without_held_out_samples_says_so():
    model = _conv_net()
    session = attach(model, [AutoSNN(**SMALL)])
    with pytest.raises(RuntimeError, match="autosnn: no held-out sample was seen"):
        session.finalize()
