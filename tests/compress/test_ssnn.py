"""SSNN (spec pruning.md §4.2, §12.6): stages at shrinking T, temporal transformers between them,
early classifiers for training only (models/time_stages.py, compress/temporal/ssnn.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.parametrize import is_plain
from spikecompress.compress.temporal.ssnn import SSNN, auto_split
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.measurement.counters import count
from spikecompress.models import build, from_spec
from spikecompress.models.time_stages import (
    StagedSequential,
    TemporalTransformer,
    average_time_steps,
    group_sizes,
    install_time_stages_,
    layer_steps,
)
from spikecompress.snn import reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _conv(widths=(4, 8, 8), **kw):
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=list(widths), **kw)


def _x(T=4, B=6, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.rand(T, B, 1, 8, 8, generator=g)


def _run(model, x):
    out = model(x)
    reset_state(model)
    return out


# -- the temporal transformer ---------------------------------------------------------------------
def test_groups_are_consecutive_and_as_even_as_possible_first_groups_longer():
    assert group_sizes(5, 2) == [3, 2]
    assert group_sizes(7, 3) == [3, 2, 2]
    assert group_sizes(4, 4) == [1, 1, 1, 1]
    assert group_sizes(4, 1) == [4]
    with pytest.raises(ValueError, match="T_out=3"):
        group_sizes(2, 3)


def test_mean_tt_averages_each_group_5_to_2_as_3_plus_2():
    x = torch.randn(5, 2, 3)
    out = TemporalTransformer(2, 2, "mean")(x)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out[0], x[:3].mean(0))
    torch.testing.assert_close(out[1], x[3:].mean(0))


def test_max_tt_spikes_if_any_step_of_the_group_spiked():
    x = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    out = TemporalTransformer(2, 2, "max")(x[:, None])  # [5, 1, 4] -> [2, 1, 4]
    assert torch.equal(out[:, 0], torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0]]))


def test_learnable_tt_starts_at_the_mean_and_its_weights_are_a_softmax_per_group():
    x = torch.randn(5, 2, 3)
    tt = TemporalTransformer(2, 2, "learnable", T_in=5)
    torch.testing.assert_close(tt(x), TemporalTransformer(2, 2, "mean")(x))
    with torch.no_grad():
        tt.logits.copy_(torch.tensor([0.0, 1.0, 2.0, -1.0, 3.0]))
    w = tt.weights()
    assert [len(v) for v in w] == [3, 2] and all(abs(float(v.sum()) - 1) < 1e-6 for v in w)
    want = torch.stack([(w[0].view(3, 1, 1) * x[:3]).sum(0), (w[1].view(2, 1, 1) * x[3:]).sum(0)])
    torch.testing.assert_close(tt(x), want)
    assert not torch.allclose(tt(x), TemporalTransformer(2, 2, "mean")(x))  # the weights matter


@pytest.mark.parametrize("kind", ["mean", "max", "learnable", "learnable-random"])
@pytest.mark.parametrize("T_in,T_out", [(4, 1), (5, 2), (6, 3), (3, 3)])
def test_identical_steps_pass_through_unchanged(kind, T_in, T_out):
    learnable = kind.startswith("learnable")
    tt = TemporalTransformer(2, T_out, kind.split("-")[0], T_in if learnable else None)
    if kind == "learnable-random":
        with torch.no_grad():
            tt.logits.copy_(3 * torch.randn(T_in, generator=torch.Generator().manual_seed(1)))
    spikes = (torch.rand(1, 4, 5, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    real = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(3))
    for frame in (spikes, real):
        out = tt(frame.expand(T_in, -1, -1))
        assert out.shape == (T_out, 4, 5)
        torch.testing.assert_close(out, frame.expand(T_out, -1, -1), rtol=1e-6, atol=1e-6)
    if not learnable:  # spikes: exactly the input
        assert torch.equal(tt(spikes.expand(T_in, -1, -1)), spikes.expand(T_out, -1, -1))


def test_shrinking_to_more_steps_than_the_input_has_is_an_error_naming_the_stage():
    model = _conv()
    install_time_stages_(model, {"split": ["features.0", "features.1"], "steps": [3, 1]})
    with pytest.raises(ValueError, match="time stage 2: cannot shrink T=2 to 3 steps"):
        model(_x(T=2))
    with pytest.raises(ValueError, match="time stage 2"):
        average_time_steps(model, 2)


# -- installing stages --------------------------------------------------------------------------
def _keep_input(seen: dict, key, steps_only: bool = False):
    def hook(module, inputs):  # returns None: the input is not replaced
        seen[key] = inputs[0].shape[0] if steps_only else inputs[0]

    return hook


def _record_T(model):
    """Hooks that record the T (leading dim) seen by every conv / linear layer."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            handles.append(m.register_forward_pre_hook(_keep_input(seen, name, True)))
    return seen, handles


def test_stage_i_processes_exactly_T_i_steps():
    model = _conv()
    SSNN(steps=[3, 1], split=["features.0", "features.1"]).attach(model, None)
    seen, handles = _record_T(model)
    out = _run(model, _x(T=5))
    for h in handles:
        h.remove()
    assert out.shape == (1, 6, 10)
    assert seen == {"features.0.conv": 5, "features.1.conv": 3, "features.2.conv": 1,
                    "classifier.fc": 1}
    assert layer_steps(model, 5) == seen


def test_state_dict_keys_of_the_network_are_unchanged_and_iteration_too():
    model = _conv()
    keys = set(model.state_dict())
    install_time_stages_(model, {"split": ["features.1"], "steps": [1], "transformer": "learnable",
                                "T": 4})
    assert isinstance(model.features, StagedSequential) and len(model.features) == 3
    assert set(model.state_dict()) == keys | {"time_stages.tts.0.logits"}
    assert model.spec["time_stages"] == {"split": ["features.1"], "steps": [1],
                                         "transformer": "learnable", "T": 4}
    assert is_plain(model)  # no hooks: Session.finalize accepts it


@pytest.mark.parametrize(
    "config,match",
    [
        ({"split": ["features.0"], "steps": [2, 1]}, "one per cut"),
        ({"split": ["features.0", "features.1"], "steps": [1, 2]}, "must not increase"),
        ({"split": ["features.0"], "steps": [1], "transformer": "learnable"}, "T .*required"),
        ({"split": ["features.0"], "steps": [1], "transformer": "sum"}, "transformer"),
        ({"split": ["features"], "steps": [1]}, "parent is a Network"),
        ({"split": ["features.9"], "steps": [1]}, "no module"),
        ({"split": ["features.1", "features.0"], "steps": [2, 1]}, "forward order"),
    ],
)
def test_bad_configs_are_one_line_errors(config, match):
    with pytest.raises(ValueError, match=match) as e:
        install_time_stages_(_conv(), config)
    assert "\n" not in str(e.value)


def test_a_cut_inside_a_residual_block_is_refused():
    torch.manual_seed(0)
    model = build(classes=10, **TINY["sew_resnet"])
    with pytest.raises(ValueError, match="parent is a SEWBlock"):
        install_time_stages_(model, {"split": ["features.stage0.0.conv1"], "steps": [1]})


# -- average time steps, counting ----------------------------------------------------------------
def test_average_time_steps_by_hand():
    model = _conv()  # 3 convs + the read-out
    assert average_time_steps(model, 4) == 4.0
    install_time_stages_(model, {"split": ["features.0"], "steps": [1]})
    assert average_time_steps(model, 4) == (1 * 4 + 3 * 1) / 4
    torch.manual_seed(0)
    sew = build(classes=10, **TINY["sew_resnet"])  # stem 1, stage0.0 2 | stage1.0 3, fc 1
    install_time_stages_(sew, {"split": ["features.stage0.0"], "steps": [2]})
    assert average_time_steps(sew, 4) == (3 * 4 + 4 * 2) / 7
    model = _conv(hidden=[16])  # 3 convs | fc0, fc
    install_time_stages_(model, {"split": ["features.0", "features.2"], "steps": [3, 1]})
    assert average_time_steps(model, 5) == (1 * 5 + 2 * 3 + 2 * 1) / 5


def test_counted_sops_drop_and_the_layer_after_a_tt_does_macs():
    model = _conv()
    x = _x(T=4, B=8)
    dense = count(model, x)
    install_time_stages_(model, {"split": ["features.0"], "steps": [1]})
    staged = count(model, x)
    assert dense.layers["features.1.conv"].input_kind == "binary"
    assert staged.layers["features.1.conv"].input_kind == "real"  # group means of spikes
    assert staged.layers["features.1.conv"].sops == 0 and staged.layers["features.1.conv"].macs > 0
    assert staged.layers["features.0.conv"].macs == dense.layers["features.0.conv"].macs
    assert dense.sops > 0 and staged.sops < dense.sops
    model = _conv()
    install_time_stages_(model, {"split": ["features.0"], "steps": [1], "transformer": "max"})
    binary = count(model, x)  # the max TT passes spikes: SOPs stay SOPs, at T = 1
    assert binary.layers["features.1.conv"].input_kind == "binary"
    assert binary.layers["features.1.conv"].macs == 0
    assert 0 < binary.layers["features.1.conv"].sops < dense.layers["features.1.conv"].sops
    assert binary.macs == dense.macs


# -- the method ---------------------------------------------------------------------------------
def test_default_split_cuts_the_feature_blocks_into_near_equal_groups():
    assert auto_split(_conv(), 2) == ["features.1"]  # blocks 0 1 | 2 + classifier
    assert auto_split(_conv(), 3) == ["features.0", "features.1"]
    assert auto_split(_conv((4, 4, 4, 4, 4)), 3) == ["features.1", "features.3"]
    torch.manual_seed(0)
    mlp = build(classes=10, **TINY["mlp"])  # one block: the classifier is the second stage
    assert auto_split(mlp, 2) == ["features.0"]
    with pytest.raises(ValueError, match="3 stages need at least 2 feature blocks"):
        auto_split(mlp, 3)
    sew = build(classes=10, **{**TINY["sew_resnet"], "blocks": [2, 1]})
    assert auto_split(sew, 2) == ["features.stage0.0"]  # stem, stage0.0 | stage0.1, stage1.0


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"steps": [1, 2]}, "must not increase"),
        ({"steps": [0]}, "positive ints"),
        ({"split": ["features.0"], "steps": [2, 1]}, "one module name per step"),
        ({"transformer": "learnable"}, "T .*required"),
        ({"T": 1, "steps": [2]}, "T must be an int >= steps"),
        ({"early_loss": "mse"}, "early_loss"),
        ({"early_weight": -1.0}, "early_weight"),
    ],
)
def test_hyper_parameters_are_checked(kw, match):
    with pytest.raises(ValueError, match=f"ssnn: .*{match}"):
        SSNN(**kw)


def test_early_loss_is_the_weighted_ce_of_each_head_on_its_stage_output():
    model = _conv()
    method = SSNN(steps=[2, 1], split=["features.0", "features.1"], early_weight=0.5)
    session = attach(model, [method])
    x, y = _x(T=4), torch.arange(6) % 10
    seen = {}
    hooks = [tt.register_forward_pre_hook(_keep_input(seen, k))
             for k, tt in enumerate(model.time_stages.tts)]
    out = model(x)
    for h in hooks:
        h.remove()
    want = sum(0.5 * F.cross_entropy(model.ssnn_heads[k](seen[k]).mean(0), y) for k in range(2))
    torch.testing.assert_close(session.loss(x, out, y), want)
    assert seen[0].shape[0] == 4 and seen[1].shape[0] == 2
    assert session.loss(x, out, y) == 0  # consumed: no forward since
    reset_state(model)
    method.early_loss = "tet"
    out = model(x)
    tet = sum(0.5 * F.cross_entropy(model.ssnn_heads[k](seen[k]).flatten(0, 1), y.repeat(T))
              for k, T in ((0, 4), (1, 2)))
    torch.testing.assert_close(session.loss(x, out, y), tet)
    out = model(x)
    with pytest.raises(ValueError, match="labels"):
        session.loss(x, out)


def test_early_loss_trains_the_heads_the_first_stage_and_the_learnable_tt():
    model = _conv()
    session = attach(model, [SSNN(steps=[1], split=["features.0"], transformer="learnable",
                                  T=4)])
    x, y = _x(T=4), torch.arange(6) % 10
    early = session.loss(x, model(x), y)
    early.backward()
    assert model.ssnn_heads[0].fc.weight.grad.abs().sum() > 0
    assert model.features[0].conv.weight.grad.abs().sum() > 0  # deep supervision of stage 1
    assert model.features[1].conv.weight.grad is None  # the early loss does not reach stage 2
    model.zero_grad()
    reset_state(model)
    F.cross_entropy(model(x).mean(0), y).backward()
    assert model.time_stages.tts[0].logits.grad.abs().sum() > 0


def test_removing_the_early_classifiers_leaves_the_output_unchanged(data):
    model = _conv()
    session = attach(model, [SSNN(steps=[1], split=["features.1"])])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for (x, y), _ in zip(data.train, range(2), strict=False):
        out = model(x)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x, out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reset_state(model)
    model.eval()
    x = next(iter(data.test))[0]
    before = _run(model, x)
    assert "ssnn_heads.0.fc.weight" in model.state_dict()
    plain = session.finalize()
    assert torch.equal(_run(plain, x), before)
    assert not hasattr(plain, "ssnn_heads") and is_plain(plain)
    assert not any(k.startswith("ssnn_heads") for k in plain.state_dict())
    assert isinstance(plain.features, StagedSequential) and before.shape[0] == 1


@pytest.mark.parametrize("transformer", ["mean", "learnable"])
def test_artifact_round_trip_reinstalls_the_stages(tmp_path, transformer):
    model = _conv()
    install_time_stages_(model, {"split": ["features.0", "features.1"], "steps": [2, 1],
                                "transformer": transformer, "T": 4})
    if transformer == "learnable":
        with torch.no_grad():
            for tt in model.time_stages.tts:
                tt.logits.copy_(torch.randn(tt.logits.shape))
    model.eval()
    x = _x(T=4)
    loaded = load(save(model, tmp_path / "a"))
    assert loaded.spec["time_stages"] == model.spec["time_stages"]
    assert torch.equal(_run(loaded, x), _run(model, x))
    rebuilt = from_spec(copy.deepcopy(model.spec))
    assert set(rebuilt.state_dict()) == set(model.state_dict())


def test_heads_are_in_the_state_dict_so_a_resumed_run_continues_exactly():
    x, y = _x(T=4), torch.arange(6) % 10
    runs = []
    for seed in (0, 1):  # the second model starts elsewhere and is restored from the first
        model = _conv()
        session = attach(model, [SSNN(steps=[1], split=["features.0"], seed=seed)])
        runs.append((model, session))
    a, b = runs[0][0], runs[1][0]
    assert not torch.equal(a.ssnn_heads[0].fc.weight, b.ssnn_heads[0].fc.weight)
    b.load_state_dict(a.state_dict())
    losses = [session.loss(x, model(x), y) for model, session in runs]
    assert torch.equal(losses[0], losses[1])


def test_head_initialisation_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    one, two = _conv(), _conv()
    torch.set_rng_state(state)
    SSNN(steps=[1], split=["features.0"]).attach(one, None)
    assert torch.equal(torch.get_rng_state(), state)
    SSNN(steps=[1], split=["features.0"]).attach(two, None)
    assert torch.equal(one.ssnn_heads[0].fc.weight, two.ssnn_heads[0].fc.weight)


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    model = build(classes=10, **TINY[model_name])
    plain = check_method(SSNN, model, data)
    assert plain.spec["time_stages"]["steps"] == [1]
    assert average_time_steps(plain, 2) < 2
