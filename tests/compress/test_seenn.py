"""SEENN (spec pruning.md §4.3, §12.4): the method's contract in both modes, SEENN-II's reward and
REINFORCE policy (learns per-input steps on a hand-built SNN stand-in), the frozen SNN, and a
recipe run whose final metrics report fewer average steps than T."""

import copy
import functools
import json

import pytest
import torch
from torch import nn

from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.temporal.seenn import SEENN, prefix_correct, reward
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement import measure
from spikecompress.measurement.early_exit import average_exit_step, early_exit_predict
from spikecompress.models import build
from spikecompress.models.exit_policy import ConfidenceExit, PolicyExit
from spikecompress.snn import reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


@pytest.mark.parametrize("model_name", list(TINY))
@pytest.mark.parametrize("mode", ["confidence", "policy"])
def test_contract_in_both_modes(mode, model_name, data):
    torch.manual_seed(0)
    model = build(classes=10, **TINY[model_name])
    final = check_method(functools.partial(SEENN, mode=mode), model, data)
    kind = ConfidenceExit if mode == "confidence" else PolicyExit
    assert isinstance(final.exit_policy, kind)
    assert final.spec["exit_policy"]["kind"] == mode


def test_hyper_parameters_are_validated_and_resolved():
    m = SEENN(mode="policy", policy={"hidden": 4})
    assert m.policy["hidden"] == 4 and m.policy["power"] == 2.0 and m.policy["penalty"] == 1.0
    for bad, match in [({"mode": "exit"}, "mode"), ({"alpha": -0.1}, "alpha"),
                       ({"score": "margin"}, "score"), ({"temperature": 0}, "temperature"),
                       ({"policy": {"hiden": 4}}, "unknown"), ({"policy": {"momentum": 1}},
                                                               "momentum"),
                       ({"policy": {"baseline": "none"}}, "baseline"),
                       ({"freeze_snn": 1}, "freeze_snn")]:
        with pytest.raises(ValueError, match=match):
            SEENN(**bad)


def test_reward_values():
    correct = torch.tensor([True, True, True, False, False])
    steps = torch.tensor([1, 2, 4, 1, 4])
    r = reward(correct, steps, T=4)
    assert r.tolist() == [1 - 1 / 16, 1 - 4 / 16, 0.0, -1.0, -1.0]
    r = reward(correct, steps, T=4, power=1.0, penalty=0.5)
    assert r.tolist() == [0.75, 0.5, 0.0, -0.5, -0.5]


def test_prefix_correct_uses_the_cumulative_sum():
    out = torch.tensor([[[0.0, 2.0]], [[3.0, 0.0]]])  # t=1 says 1; the sum [3, 2] at t=2 says 0
    assert prefix_correct(out, torch.tensor([0])).tolist() == [[False], [True]]


class StandIn(nn.Module):
    """An 'SNN' of fixed outputs: easy inputs (x[..., 0] > 0) are right (class 0) from t = 1, hard
    ones are wrong until the cumulative sum turns at t = T."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))  # a weight the frozen SNN must keep
        self.in_shape, self.spec = (4,), {}

    def forward(self, x_seq):
        T, B = x_seq.shape[:2]
        hard = x_seq[0, :, 0] <= 0  # [B]
        out = torch.zeros(T, B, 2)
        out[:, :, 0] = 1.0
        out[:, hard] = torch.tensor([0.0, 1.0])  # wrong at every t < T ...
        out[-1, hard] = torch.tensor([float(T), 0.0])  # ... right at T: [T, T − 1]
        return out * self.w


def _batch(g, T=4, B=64):
    x = torch.randn(B, 4, generator=g)
    return x.expand(T, B, 4), torch.zeros(B, dtype=torch.long)  # [T, B, 4]


def test_policy_learns_one_step_for_easy_and_T_for_hard_inputs():
    torch.manual_seed(0)
    model = StandIn()
    method = SEENN(mode="policy", policy={"hidden": 16, "entropy_bonus": 0.0})
    session = attach(model, [method])
    assert not model.w.requires_grad  # frozen while the policy trains
    opt = torch.optim.Adam(model.exit_policy.parameters(), lr=0.03)
    g = torch.Generator().manual_seed(0)
    x_seq, y = _batch(g)
    assert prefix_correct(model(x_seq), y)[:, x_seq[0, :, 0] > 0].all()  # easy: right from t=1
    for _ in range(150):
        x_seq, y = _batch(g)
        loss = session.loss(x_seq, model(x_seq), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=0.5)
    model = session.finalize()
    assert model.w.requires_grad and model.w.item() == 1.0
    x_seq, y = _batch(g, B=512)
    preds, steps = early_exit_predict(model, x_seq)
    easy, far = x_seq[0, :, 0] > 0, x_seq[0, :, 0].abs() > 0.2  # away from the boundary
    assert (steps[easy & far] == 1).all() and (steps[~easy & far] == 4).all()
    assert (steps[easy] == 1).float().mean() > 0.9 and (steps[~easy] == 4).float().mean() > 0.9
    assert (preds == y).float().mean() > 0.9
    assert 1 < average_exit_step(steps) < 4
    assert torch.equal(early_exit_predict(model, x_seq)[1], steps)  # argmax: deterministic


def test_policy_is_T_agnostic_and_refuses_T_above_t_max():
    torch.manual_seed(0)
    model = StandIn()
    session = attach(model, [SEENN(mode="policy", policy={"t_max": 3})])
    x3, y = _batch(torch.Generator().manual_seed(0), T=3)
    assert model.exit_policy.logits(x3[:2]).shape == (64, 2)  # actions above T masked
    session.loss(x3, model(x3), y)  # T = t_max: fine
    x4, _ = _batch(torch.Generator().manual_seed(0), T=4)
    with pytest.raises(ValueError, match="t_max"):
        session.loss(x4, model(x4), y)
    with pytest.raises(ValueError, match="labels"):
        session.loss(x3, model(x3))
    assert (model.exit_policy.choose(x4) <= 3).all()  # inference caps at t_max


def test_frozen_snn_keeps_weights_and_bn_statistics(data):
    torch.manual_seed(0)
    model = build(classes=10, **TINY["conv_net"])
    before = copy.deepcopy(model.state_dict())
    method = SEENN(mode="policy")
    session = attach(model, [method])
    policy0 = copy.deepcopy(model.exit_policy.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for p in model.exit_policy.parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)  # decay must not move it
    model.train()
    for x_seq, y in data.train:
        out = model(x_seq)
        loss = nn.functional.cross_entropy(out.mean(0), y) + session.loss(x_seq, out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reset_state(model)
    assert method.updates_ == len(data.train) and torch.isfinite(method.baseline_)
    model = session.finalize()
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # weights and BN running statistics
    assert any(not torch.equal(after[f"exit_policy.{k}"], v) for k, v in policy0.items())
    assert all(p.requires_grad for p in model.parameters())
    assert not model._forward_pre_hooks


def test_unfrozen_snn_trains(data):
    torch.manual_seed(0)
    model = build(classes=10, **TINY["mlp"])
    before = copy.deepcopy(model.features.state_dict())
    session = attach(model, [SEENN(mode="policy", freeze_snn=False)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_seq, y = next(iter(data.train))
    out = model(x_seq)
    (nn.functional.cross_entropy(out.mean(0), y) + session.loss(x_seq, out, y)).backward()
    opt.step()
    after = session.finalize().features.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())


def test_policy_initialisation_is_seeded_and_leaves_the_global_rng(data):
    torch.manual_seed(0)
    a, b = build(classes=10, **TINY["mlp"]), build(classes=10, **TINY["mlp"])
    state = torch.random.get_rng_state()
    attach(a, [SEENN(mode="policy")])
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)
    attach(b, [SEENN(mode="policy")])
    sa, sb = a.exit_policy.state_dict(), b.exit_policy.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    attach(b, [SEENN(mode="policy", policy={"seed": 1})])
    assert not torch.equal(sa["net.fc0.weight"], b.exit_policy.state_dict()["net.fc0.weight"])


def test_running_baseline_resumes_exactly(data):
    """Two steps, a 'checkpoint' (model, session state, RNG), two more: equal to four at once."""

    def steps(model, session, opt, batches):
        for x_seq, y in batches:
            out = model(x_seq)
            loss = session.loss(x_seq, out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            reset_state(model)

    batches = list(data.train)[:2] * 2
    torch.manual_seed(0)
    ref = build(classes=10, **TINY["mlp"])
    start = copy.deepcopy(ref.state_dict())
    s = attach(ref, [SEENN(mode="policy")])
    opt = torch.optim.SGD(ref.exit_policy.parameters(), lr=0.5)
    steps(ref, s, opt, batches[:2])
    ckpt = (copy.deepcopy(ref.state_dict()), s.state_dict(), torch.random.get_rng_state())
    steps(ref, s, opt, batches[2:])
    model = build(classes=10, **TINY["mlp"])
    model.load_state_dict(start)
    s2 = attach(model, [SEENN(mode="policy")])
    model.load_state_dict(ckpt[0])
    s2.load_state_dict(*ckpt[1])
    torch.random.set_rng_state(ckpt[2])
    steps(model, s2, torch.optim.SGD(model.exit_policy.parameters(), lr=0.5), batches[2:])
    assert torch.equal(s2.methods[0].baseline_, s.methods[0].baseline_)
    for k, v in ref.exit_policy.state_dict().items():
        assert torch.equal(model.exit_policy.state_dict()[k], v), k


def test_recipe_tet_then_policy_reports_fewer_steps_than_T(tmp_path, monkeypatch):
    from spikecompress.compress import registry
    from spikecompress.run.recipe import Recipe
    from spikecompress.run.stages import run_recipe

    monkeypatch.setitem(registry.METHODS, "seenn", SEENN)
    recipe = Recipe.from_dict({
        "version": 1,
        "model": {"name": "mlp", "widths": [32]},
        "data": {"name": "digits", "T": 4, "batch_size": 64, "limit": 256},
        "stages": [
            {"name": "dense", "epochs": 3, "loss": "tet", "optimizer": {"name": "adam",
                                                                        "lr": 1e-2}},
            {"name": "exit", "epochs": 2, "optimizer": {"name": "adam", "lr": 1e-2},
             "methods": [{"name": "seenn", "mode": "policy"}]},
        ],
    })
    result = run_recipe(recipe, tmp_path / "run", verbose=False)
    final = json.loads((tmp_path / "run/metrics.json").read_text())
    dense = result["stages"]["dense"]
    assert final["time_steps"] == 4 and final["avg_time_steps"] < 4
    assert final["sops_per_sample"] < dense["sops_per_sample"]
    assert final["accuracy"] > dense["accuracy"] - 0.1
    spec = json.loads((tmp_path / "run/artifact/spec.json").read_text())
    assert spec["model"]["exit_policy"]["kind"] == "policy"
    from spikecompress.export import load

    again = measure(load(tmp_path / "run/artifact"), _digits_T4(), latency_repeats=1)
    assert again.avg_time_steps == final["avg_time_steps"]
    assert again.accuracy == final["accuracy"]


def _digits_T4():
    return load_data(DataConfig(name="digits", T=4, batch_size=64, limit=256))
