"""The channel driver and its scorers: target → keep counts (layer / global, floors), gating along
the ramp then removal, the knob pattern, and the four scorers as pure functions."""

import copy
import math

import pytest
import torch
import yaml
from torch import nn

from spikecompress.compress import METHODS, attach
from spikecompress.compress.contract import _train_steps, method_spec
from spikecompress.compress.prune.channel_mask import channel_mask
from spikecompress.compress.prune.channel_pruning import (
    ChannelDriver,
    check_window,
    ramp,
    resolve_target,
    select_channel_groups,
)
from spikecompress.compress.prune.channel_select import (
    choose_masks,
    keep_best,
    layer_prune_counts,
    prune_count,
)
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.l1_filter import filter_l1, normalised_filter_l1
from spikecompress.compress.prune.sca_scores import channel_score
from spikecompress.compress.prune.slimming import gamma_scores
from spikecompress.compress.prune.spines import Spines, spine_row_scores
from spikecompress.data import DataConfig, load_data
from spikecompress.models import build
from spikecompress.snn import reset_state


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


# -- channel_sparsity → keep counts ---------------------------------------------------------------
def test_layer_counts_hit_the_total_by_largest_remainder_and_respect_floors():
    sizes = {"a": 5, "b": 7, "c": 10, "d": 9}  # 31 channels, shares at 0.3: 1.5 2.1 3.0 2.7
    assert layer_prune_counts(sizes, 0.3) == {"a": 1, "b": 2, "c": 3, "d": 3}  # Σ = round(9.3)
    assert layer_prune_counts(sizes, 0.5) == {"a": 3, "b": 4, "c": 5, "d": 4}  # .5 ties: earliest
    assert layer_prune_counts(sizes, 0.0) == dict.fromkeys(sizes, 0)
    # floor 0.5 keeps ⌈C/2⌉: at most 2 3 5 4 can go, so 0.9 removes 14 instead of 28
    assert layer_prune_counts(sizes, 0.9, floor=0.5) == {"a": 2, "b": 3, "c": 5, "d": 4}
    for s in (0.1, 0.25, 0.4, 0.6, 0.75):  # without floors the total is always round(N·s)
        assert sum(layer_prune_counts(sizes, s).values()) == prune_count(31, s)


def test_global_masks_drop_the_lowest_scores_with_per_group_floors_and_index_ties():
    scores = {"a": _t(0.1, 0.2, 0.3, 0.4), "b": _t(5.0, 6.0, 7.0, 8.0, 9.0, 9.0)}
    masks = choose_masks(scores, 0.5, "global")  # 10 channels: the 5 lowest go, but every group
    assert masks["a"].tolist() == [0, 0, 0, 1] and masks["b"].tolist() == [0, 0, 1, 1, 1, 1]  # ≥ 1
    masks = choose_masks(scores, 0.5, "global", floor=0.5)  # a keeps its best 2
    assert masks["a"].tolist() == [0, 0, 1, 1] and masks["b"].tolist() == [0, 0, 0, 1, 1, 1]
    masks = choose_masks(scores, 0.5, "layer")
    assert masks["a"].tolist() == [0, 0, 1, 1] and masks["b"].tolist() == [0, 0, 0, 1, 1, 1]
    assert keep_best({"x": _t(1, 1, 1)}, 2)["x"].tolist() == [1, 1, 0]  # ties: lower index kept
    assert keep_best({"x": _t(1, 1), "y": _t(1, 1)}, 3)["y"].tolist() == [1, 0]  # earlier group
    ranked = {"a": _t(-math.inf, 0.2, 0.3, 0.4)}  # the driver's "already gated" mark goes first
    assert choose_masks(ranked, 0.25, "global")["a"].tolist() == [0, 1, 1, 1]


def test_ramp_is_zhu_and_gupta_cubic_between_begin_and_until():
    assert ramp(0.0, 0.4, 0.0, 0.5) == 0.0 and ramp(0.5, 0.4, 0.0, 0.5) == 0.4
    assert ramp(0.25, 0.4, 0.0, 0.5) == pytest.approx(0.4 * (1 - 0.5**3))
    assert ramp(0.1, 0.4, 0.2, 0.6) == 0.0 and ramp(0.9, 0.4, 0.2, 0.6) == 0.4
    assert ramp(0.99, 0.4, 1.0, 1.0) == 0.0 and ramp(1.0, 0.4, 1.0, 1.0) == 0.4  # a step at 1
    with pytest.raises(ValueError, match="^begin must be <= until"):
        check_window(0.6, 0.5)


def test_knob_pattern_default_paper_target_and_both():
    assert resolve_target(None, {"alpha": None}, 0.3) == 0.3  # neither: the default target
    assert resolve_target(None, {"alpha": 0.8}, 0.3) is None  # the paper's knob alone
    assert resolve_target(0.5, {"alpha": None}, 0.3) == 0.5
    with pytest.raises(ValueError, match="^channel_sparsity and alpha") as e:
        resolve_target(0.5, {"alpha": 0.8}, 0.3)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="^channel_sparsity must be"):
        resolve_target(1.0, {}, 0.3)


# -- the scorers as pure functions -----------------------------------------------------------------
def _net(**spec):
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, **spec)


def test_slimming_and_l1_scorers_on_hand_built_weights():
    model = _net(widths=[2, 3])
    groups = channel_groups(model)
    with torch.no_grad():
        model.features[0].bn.weight.copy_(torch.tensor([-0.5, 2.0]))
        model.features[0].conv.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1)
                                            * torch.ones(2, 1, 3, 3))
    assert gamma_scores(model, groups[:1])["features.0.conv"].tolist() == [0.5, 2.0]
    assert filter_l1(model, groups[:1])["features.0.conv"].tolist() == [9.0, 18.0]
    assert normalised_filter_l1(model, groups[:1])["features.0.conv"].tolist() == [
        pytest.approx(9 / 13.5), pytest.approx(18 / 13.5)]


def test_sca_and_sdsnn_scorers_on_hand_built_tensors():
    s = torch.zeros(2, 1, 2, 1)  # [T, B, C, X]
    s[0, 0, 1] = 1.0
    u = torch.tensor([0.5, -0.25]).view(1, 1, 2, 1).expand(2, 1, 2, 1)
    assert channel_score("activity", s, u).tolist() == [0.5, 0.5 * 1 + 0.25]
    assert channel_score("firing", s, u).tolist() == [0.0, 0.5]
    assert channel_score("membrane", s, u).tolist() == [0.5, 0.25]
    spines = Spines(torch.zeros(2, 3), rate=1.0)  # 2 neurons × 3 synapses
    spines.r_pos.copy_(torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]))
    spines.r_neg.copy_(-torch.ones(2, 3))
    spines.mask[1, 0] = 0  # unit(r+ + |r−|) = (r − 2) / 2: [0, .5, 1], [0, 0, 0]
    assert spine_row_scores(spines).tolist() == [1.5, 0.0]


# -- the driver on a model: monotone gating along the ramp, then exact removal -------------------
def _dyadic_(model):
    """Weights k/16 with small integers, BN with eps 0 and var 1: every sum is exact in float32,
    in any order, so the gated and the physically smaller model agree bit for bit."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias"):
                p = m._parameters.get(name)
                if p is not None:
                    p.copy_(torch.randint(-6, 7, p.shape, generator=g) / 16)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = 0.0
                m.running_mean.copy_(torch.randint(-4, 5, m.running_mean.shape, generator=g) / 8)
                m.running_var.fill_(1.0)
                m.weight.add_(1.0)  # γ around 1: every channel fires sometimes
    return model.eval()


def test_driver_gates_monotonically_along_the_ramp_and_removal_equals_the_gated_model():
    model = _dyadic_(_net(widths=[6, 8], hidden=[6]))
    groups = select_channel_groups(model, [], [])
    driver = ChannelDriver(0.5, scope="global", floor=0.0, begin=0.0, until=0.5)
    driver.attach_(model, groups)
    calls = []

    def scorer(m, gs):  # a scorer whose ranking changes at every call: gated ones must stay off
        calls.append(1)
        g = torch.Generator().manual_seed(len(calls))
        return {grp.name: torch.rand(grp.size, generator=g) for grp in gs}

    n_all, before = 20, None
    for step in range(1, 11):
        progress = step / 10
        driver.step_(model, progress, scorer)
        masks = {g.name: channel_mask(model, g) for g in groups}
        off = {(n, i) for n, m in masks.items() for i in range(len(m)) if m[i] == 0}
        assert len(off) == prune_count(n_all, ramp(progress, 0.5, 0.0, 0.5))
        assert before is None or before <= off  # once gated, always gated
        before = off
    assert len(calls) <= 5  # the scorer runs only when the count grows (up to progress 0.5)
    x = (torch.rand(4, 3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    gated = model(x)
    reset_state(model)
    small, masks, record = driver.finalize_(model, scorer, "test")
    assert torch.equal(small.eval()(x), gated)  # exact by construction (dyadic arithmetic)
    assert record["channels"] == 0.5 and record["params"] > 0
    assert small.spec["widths"] == [record["widths"][n][1] for n in
                                    ("features.0.conv", "features.1.conv")]


def test_finalize_tops_up_to_the_target_when_the_stage_had_no_steps():
    model = _net(widths=[6, 8])
    driver = ChannelDriver(0.25, scope="layer", floor=0.0)
    driver.attach_(model, select_channel_groups(model, [], []))
    small, masks, record = driver.finalize_(model, filter_l1, "test")  # one-shot
    # 14 channels, round(3.5) = 4 go: shares 1.5 and 2.0, the 4th to the larger remainder
    assert small.spec["widths"] == [6 - 2, 8 - 2]
    assert record["channels"] == 4 / 14


# -- every channel method reaches its target on a small trained model ----------------------------
TARGETS = (0.25, 0.5)
METHOD_FIELDS = {
    "slimming": {"penalty": 1e-3},
    "l1_filter": {},
    "sca": {},
    "sdsnn": {"update_every": 1},
}


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    model = _net(widths=[8, 16], hidden=[12])
    session = attach(model, [])
    _train_steps(model, session, data, 6, lr=1e-2, per_epoch=3)
    return model


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(METHOD_FIELDS))
def test_each_method_ends_within_two_points_of_its_channel_sparsity(name, target, trained, data):
    model = copy.deepcopy(trained)
    method = METHODS[name](channel_sparsity=target, **METHOD_FIELDS[name])
    before = {g.name: g.size for g in method.select(model)}
    session = attach(model, [method])
    torch.manual_seed(0)
    _train_steps(model, session, data, 6, lr=1e-3, per_epoch=3)  # SCA updates twice
    small = session.finalize()
    after = {g.name: g.size for g in channel_groups(small)}
    total = sum(before.values())
    reached = 1 - sum(after[n] for n in before) / total
    assert abs(reached - target) <= max(0.02, 1 / total), (name, reached)
    assert method.removed_["channels"] == pytest.approx(reached)


@pytest.mark.parametrize("name", list(METHOD_FIELDS))
def test_specs_round_trip_through_yaml_in_both_modes(name):
    cls = METHODS[name]
    paper = {"sca": {"alpha": 0.6}, "sdsnn": {"count_thre": 3}}.get(name, {})
    for method in (cls(), cls(channel_sparsity=0.4), cls(**paper)):
        spec = method_spec(method)
        again = yaml.safe_load(yaml.safe_dump(spec))
        assert cls(**{k: v for k, v in again.items() if k != "name"}) == method
