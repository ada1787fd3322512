"""LitE-SNN (spec pruning.md §4.4): the CompConv mixture, the per-frame op count, the expected
Bit-SynOps cost (differentiable, monotone), the search with and without the budget penalty, the
repair, finalize (sparsity, bit grid, fixed exit policy, artifact) and the recipe run."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.parametrize import is_plain
from spikecompress.compress.quant.fake_quant import quantize
from spikecompress.compress.temporal.lite_snn import TIME, LiteSNN
from spikecompress.compress.temporal.lite_snn_space import (
    CompConv,
    pruned_variants,
    synops_per_frame,
)
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.measurement import count, measure
from spikecompress.models import build
from spikecompress.run.recipe import Recipe
from spikecompress.run.stages import run_recipe
from spikecompress.snn import reset_state
from spikecompress.snn.losses import task_loss


@pytest.fixture(scope="module")
def data2():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


@pytest.fixture(scope="module")
def data4():
    return load_data(DataConfig(name="digits", T=4, batch_size=64, limit=192))


@pytest.fixture(scope="module")
def trained(data4):
    """An MLP 64-32-32-10 trained 5 epochs with TET on digits at T = 4 (every prefix usable)."""
    torch.manual_seed(0)
    model = build("mlp", in_features=64, classes=10, widths=[32, 32])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        for x_seq, y in data4.train:
            loss = task_loss(model(x_seq), y, "tet")
            opt.zero_grad()
            loss.backward()
            opt.step()
            reset_state(model)
    return model


def _search(model, method, data, steps, lr=1e-2, total=None):
    """Attach ``method`` and train ``steps`` Adam steps (logits at lr · lr_scale) of a stage of
    ``total`` steps (default: ``steps``)."""
    session = attach(model, [method])
    groups = session.param_groups()
    claimed = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in claimed]
    extra = [{"params": g["params"], "lr": lr * g["lr_scale"]} for g in groups]
    opt = torch.optim.Adam([{"params": rest}, *extra], lr=lr)
    session.bind(opt, total_steps=total or steps)
    n = 0
    while n < steps:
        for x_seq, y in data.train:
            out = model(x_seq)
            loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            session.after_step((n + 1) / (total or steps))
            reset_state(model)
            n += 1
            if n == steps:
                break
    return session


def _one_hot_(param, index, value=40.0):
    with torch.no_grad():
        param.fill_(-value)
        param[index] = value


def _set_all(model, method, r, b, t):
    for c in method._comp:
        if c is not None:
            _one_hot_(c.alpha_r, r)
            _one_hot_(c.alpha_b, b)
    _one_hot_(getattr(model, TIME).beta, t)


# -- the CompConv parametrization -----------------------------------------------------------------
def test_pruned_variants_zero_exactly_the_smallest_magnitudes():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    for r, v in zip([0.0, 0.5, 0.75], pruned_variants(w, [0.0, 0.5, 0.75]), strict=True):
        assert int((v == 0).sum()) == round(r * w.numel())
        kept = v != 0
        if r > 0:  # every kept |w| is at least every pruned |w|
            assert w[kept].abs().min() >= w[~kept].abs().max()
        assert torch.equal(v[kept], w[kept])


def test_compconv_mixes_the_candidates_and_passes_the_gradient_straight_through():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(1), requires_grad=True)
    comp = CompConv([0.0, 0.5], [8, 2], "cpu")
    with torch.no_grad():
        comp.alpha_r.copy_(torch.tensor([0.3, -0.2]))
        comp.alpha_b.copy_(torch.tensor([-1.0, 0.5]))
    p, q = torch.softmax(comp.alpha_r, 0), torch.softmax(comp.alpha_b, 0)
    variants = pruned_variants(w.detach(), [0.0, 0.5])
    want = sum(p[j] * q[k] * quantize(variants[j], b, False)
               for j in range(2) for k, b in enumerate([8, 2]))
    out = comp(w)
    assert torch.allclose(out, want, atol=1e-6)
    g = torch.randn_like(w)
    (out * g).sum().backward()
    assert torch.allclose(w.grad, g)  # identity STE
    assert comp.alpha_r.grad.abs().min() > 0 and comp.alpha_b.grad.abs().min() > 0
    comp.choice.copy_(torch.tensor([1, 1]))  # derived: exactly Q_2(W ⊙ M_0.5)
    assert torch.equal(comp(w), quantize(variants[1], 2, False))


def test_ops_per_frame_equal_the_exact_counter_on_dense_weights(data4):
    torch.manual_seed(0)
    model = build(classes=10, **TINY["conv_net"])
    for m in model.modules():  # strong enough that every layer of the fresh net spikes
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data.fill_(8.0)
    x_seq = next(iter(data4.test))[0]
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, i[0]))
             for n, m in model.named_modules() if n in ("features.0.conv", "features.1.conv",
                                                         "classifier.fc")]
    model.eval()
    model(x_seq)
    for h in hooks:
        h.remove()
    reset_state(model)
    counts = count(model, x_seq)  # the repo's exact counter (no zero weight in a fresh model)
    frames = x_seq.shape[0] * x_seq.shape[1]
    for name, x in seen.items():
        rec = counts.layers[name]
        ours = float(synops_per_frame(model.get_submodule(name), x)) * frames
        assert ours == rec.sops + rec.macs > 0, name


# -- the expected cost ----------------------------------------------------------------------------
def _attached(data, steps=(1, 2, 4), model="conv_net"):
    torch.manual_seed(0)
    net = build(classes=10, **TINY[model])
    method = LiteSNN(candidates={"steps": list(steps)})
    attach(net, [method])
    x_seq, y = next(iter(data.train))
    net.train()
    method.loss(net, x_seq, net(x_seq), SimpleNamespace(y=y))  # counts the ops, keeps the T
    reset_state(net)
    return net, method, method._batch_ops("cpu"), int(x_seq.shape[0])


def test_expected_cost_is_differentiable_in_every_logit(data4):
    net, method, ops, T = _attached(data4)
    with torch.no_grad():  # away from the uniform start, so no gradient vanishes by symmetry
        for c in method._comp:
            c.alpha_r.copy_(torch.tensor([0.1, -0.3, 0.2]))
            c.alpha_b.copy_(torch.tensor([0.4, 0.0, -0.2]))
    cost = method.expected_cost(net, ops, T)
    cost.backward()
    logits = [p for c in method._comp for p in (c.alpha_r, c.alpha_b)]
    logits.append(getattr(net, TIME).beta)
    for p in logits:
        assert p.grad is not None and (p.grad != 0).all()
    # pushing every logit down its gradient lowers the cost
    with torch.no_grad():
        for p in logits:
            p -= 0.1 * p.grad.sign()
    assert method.expected_cost(net, ops, T) < cost


def test_expected_cost_grows_with_steps_bits_and_kept_fraction(data4):
    net, method, ops, T = _attached(data4)
    ratios, bits, steps = [0.0, 0.5, 0.75], [8, 4, 2], [1, 2, 4]

    def cost(r, b, t):
        _set_all(net, method, r, b, t)
        return float(method.expected_cost(net, ops, T).detach())

    for r in range(3):
        for b in range(3):
            by_t = [cost(r, b, t) for t in range(3)]
            assert by_t[0] < by_t[1] < by_t[2]
            # one-hot everywhere: the closed form T_m / T · b / 32 · (1 − r)
            want = steps[2] / T * bits[b] / 32 * (1 - ratios[r])
            assert by_t[2] == pytest.approx(want, rel=1e-9)
    for t in range(3):
        assert cost(2, 0, t) < cost(1, 0, t) < cost(0, 0, t)  # more pruning, cheaper
        assert cost(0, 2, t) < cost(0, 1, t) < cost(0, 0, t)  # fewer bits, cheaper


def test_steps_above_the_input_T_are_dropped(data2):
    net, method, ops, T = _attached(data2)
    time = getattr(net, TIME)
    with torch.no_grad():  # the search "wants" T = 4, but the input has T = 2
        time.beta.copy_(torch.tensor([0.0, 1.0, 5.0]))
    assert time.probs(2)[2] == 0 and method.argmax_pick(net, 2)["t"] == [1]
    method.repair = False
    method.derive(net)  # the derived T* is the best step the input has
    assert int(method.choices_["steps"]) == 2
    lone = build(classes=10, **TINY["mlp"])
    attach(lone, [LiteSNN(candidates={"steps": [4]})])
    with pytest.raises(ValueError, match="no step candidate"):
        getattr(lone, TIME).probs(2)


# -- the search -----------------------------------------------------------------------------------
def _cheapest_share(method, model) -> tuple[float, float]:
    """(share of the argmax choices that are their axis's cheapest candidate, chance level):
    over every layer's ratio and bits and the step."""
    pick = method.argmax_pick(model)
    hits = sum(r == 2 for r in pick["r"]) + sum(b == 2 for b in pick["b"]) + (pick["t"] == [0])
    return hits / (len(pick["r"]) + len(pick["b"]) + 1), 1 / 3


def test_without_the_penalty_the_search_does_not_prefer_the_cheapest(trained, data4):
    shares = []
    for lr in (5e-3, 1e-2):  # two search speeds; the data order is fixed, so seeds are moot
        model = copy.deepcopy(trained)
        method = LiteSNN(mu=0.0, search=1.0, repair=False)
        _search(model, method, data4, steps=12, lr=lr)
        share, chance = _cheapest_share(method, model)
        shares.append(share)
        # it moves: the accuracy-driven gradients pick the dense, full-T candidates
        assert method.argmax_pick(model)["r"] == [0, 0, 0]
    assert sum(shares) / len(shares) <= chance


@pytest.mark.parametrize("budget", [0.05, 0.02])
def test_with_a_large_penalty_the_derived_network_is_under_budget(trained, data4, budget):
    model = copy.deepcopy(trained)
    method = LiteSNN(mu=100.0, budget=budget, search=1.0, repair=False)
    _search(model, method, data4, steps=12)
    assert method.derived_  # derived at the last step, argmax only (repair off)
    assert float(method.choices_["cost"]) <= budget
    assert float(method.choices_["argmax_cost"]) == float(method.choices_["cost"])
    free = LiteSNN(mu=0.0, search=1.0, repair=False)  # the same search without the penalty
    _search(copy.deepcopy(trained), free, data4, steps=12)
    assert float(free.choices_["cost"]) > 2 * budget  # the penalty, not the search, made it fit


def test_repair_makes_an_over_budget_choice_fit(data4):
    net, method, _, _ = _attached(data4)
    _set_all(net, method, 0, 0, 2)  # the most expensive configuration: 8 bits · T/T = 0.25
    over = method.argmax_pick(net)
    assert method.pick_cost(net, over) == pytest.approx(0.25)
    method.budget = 0.05
    with torch.no_grad():  # 8 and 4 bits nearly as likely: the bits are the cheap thing to move
        for c in method._comp:
            c.alpha_b.copy_(torch.tensor([3.0, 2.9, 0.0]))
    pick = method.derive(net)
    assert method.pick_cost(net, pick) <= 0.05 < float(method.choices_["argmax_cost"])
    assert float(method.choices_["cost"]) == pytest.approx(method.pick_cost(net, pick))
    # the cheap-in-log-probability moves first: every layer's bits 8 → 4 → 2 (0.0625 > 0.05),
    # then T 4 → 2 (0.03125); the pinned ratios (±40 logits) never move
    assert pick == {"r": [0, 0, 0], "b": [2, 2, 2], "t": [1]}
    method.repair = False
    assert method.derive(net) == over


def test_fine_tune_phase_trains_the_weights_at_the_derived_step(data4):
    torch.manual_seed(0)
    model = build(classes=10, **TINY["conv_net"])
    method = LiteSNN(search=0.5)
    _search(model, method, data4, steps=4)
    assert method.derived_
    comps = [c for c in method._comp if c is not None]
    assert all(c.alpha_r.grad is None and c.alpha_b.grad is None for c in comps)  # frozen
    x_seq, y = next(iter(data4.train))
    out = model(x_seq)
    reset_state(model)
    t = int(method.choices_["steps"])
    want = F.cross_entropy(out[:t].mean(0), y)
    assert torch.allclose(method.loss(model, x_seq, out, SimpleNamespace(y=y)), want)


# -- finalize, measure, artifact, contract, recipe ------------------------------------------------
def test_finalize_bakes_sparsity_bits_and_the_fixed_exit(data4, tmp_path):
    torch.manual_seed(0)
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[8, 16])
    method = LiteSNN(repair=False)
    session = _search(model, method, data4, steps=1, total=10)  # ops known, still searching
    assert not method.derived_
    with torch.no_grad():
        for c, (r, b) in zip([c for c in method._comp if c is not None],
                             [(1, 1), (2, 2), (0, 0)], strict=True):
            _one_hot_(c.alpha_r, r)
            _one_hot_(c.alpha_b, b)
        _one_hot_(getattr(model, TIME).beta, 1)
    model = session.finalize().eval()
    assert is_plain(model) and not hasattr(model, TIME)
    assert model.spec["exit_policy"] == {"kind": "fixed", "steps": 2}
    for name, ratio, bits in [("features.0.conv", 0.5, 4), ("features.1.conv", 0.75, 2),
                              ("classifier.fc", 0.0, 8)]:
        w = model.get_submodule(name).weight
        assert method.choices_[name].tolist() == [ratio, bits]
        zeros = float((w == 0).float().mean())
        assert ratio <= zeros <= ratio + 0.1, name  # the mask, plus values rounded to 0
        assert w.unique().numel() <= 2**bits - 1, name
    got = measure(model, data4, latency_repeats=1)
    assert got.avg_time_steps == 2.0 and got.time_steps == 4
    loaded = load(save(model, tmp_path / "a"))
    x_seq = next(iter(data4.test))[0]
    assert torch.equal(loaded(x_seq), model(x_seq))
    reset_state(model), reset_state(loaded)
    after = measure(loaded, data4, latency_repeats=1)
    assert (after.accuracy, after.avg_time_steps) == (got.accuracy, got.avg_time_steps)
    assert after.size_bytes == got.size_bytes


@pytest.mark.parametrize("name", list(TINY))
def test_contract_on_the_tiny_models(data2, name):
    torch.manual_seed(0)
    out = check_method(LiteSNN, build(classes=10, **TINY[name]), data2)
    assert out.exit_policy.config["steps"] in (1, 2)  # 4 is above the data's T = 2


def test_recipe_search_then_fine_tune(tmp_path, monkeypatch):
    from spikecompress.compress.registry import METHODS

    monkeypatch.setitem(METHODS, "lite_snn", LiteSNN)
    recipe = Recipe.from_dict({
        "version": 1,
        "model": {"name": "conv_net", "widths": [4, 8]},
        "data": {"name": "digits", "T": 2, "batch_size": 64, "limit": 128},
        "stages": [
            {"name": "dense", "epochs": 1, "optimizer": {"name": "adam", "lr": 1e-2}},
            {"name": "lite", "epochs": 2, "optimizer": {"lr": 1e-2},
             "methods": [{"name": "lite_snn", "budget": 0.05, "search": 0.5}]},
        ],
    })
    result = run_recipe(recipe, tmp_path / "run", verbose=False)
    m = result["metrics"]
    steps = load(result["artifact"]).spec["exit_policy"]["steps"]
    assert m["avg_time_steps"] == min(steps, 2) and 1 <= m["weight_bits"] <= 8
    assert m["size_bytes"] < result["stages"]["dense"]["size_bytes"]


def test_hyper_parameters_are_validated():
    assert LiteSNN().candidates == {"ratios": [0.0, 0.5, 0.75], "bits": [8, 4, 2],
                                    "steps": [1, 2, 4]}
    for bad, match in [({"candidates": {"bits": [16]}}, "candidates.bits"),
                       ({"candidates": {"ratios": [0.5, 0.5]}}, "candidates.ratios"),
                       ({"candidates": {"steps": [0]}}, "candidates.steps"),
                       ({"candidates": {"T": [1]}}, "candidates must be"),
                       ({"budget": 1.5}, "budget"), ({"mu": -1}, "mu"), ({"search": 0}, "search"),
                       ({"repair": 1}, "repair")]:
        with pytest.raises(ValueError, match=match):
            LiteSNN(**bad)
