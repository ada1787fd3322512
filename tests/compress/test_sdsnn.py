"""SD-SNN (Han et al., arXiv 2211.12219, and its released code): spine ranges, constraint,
adaptive pruning, regeneration; the channel_sparsity target mode."""

import copy
import functools
import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _exact import dyadic, dyadic_
from spikecompress.compress import attach
from spikecompress.compress.contract import TINY_MODELS as TINY
from spikecompress.compress.contract import check_method
from spikecompress.compress.method import Context
from spikecompress.compress.prune.sdsnn import SDSNN, spines_of
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.models import build
from spikecompress.snn import reset_state


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


def _net(hidden=(8,)):
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8],
                 hidden=list(hidden))


def _w(m):
    return m.parametrizations.weight.original


def _set(m, values):
    with torch.no_grad():
        _w(m).copy_(values)


def _batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(2, 8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def _train(model, session, opt, steps, first=0):
    for step in range(first, first + steps):
        x_seq, y = _batch(step)
        loss = F.cross_entropy(model(x_seq).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / 100)
        reset_state(model)


def _fresh(**kwargs):
    model = _net()
    method = SDSNN(**kwargs)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    session.bind(opt, steps_per_epoch=1)
    return model, method, session, opt


# -- (1) constraint, range growth, (2) shrink ----------------------------------------------------
def _one_layer(ct, ranges="all"):
    """conv 2 of the test net with weights in (−0.5, 0.5) and max 0.5: ranges start at ±0.5."""
    model = _net()
    method = SDSNN(count_thre=ct, ranges=ranges)
    attach(model, [method])
    conv = method.targets_[1]
    w = 0.45 * torch.tanh(torch.randn(_w(conv).shape, generator=torch.Generator().manual_seed(3)))
    w.view(-1)[0], w.view(-1)[3:5] = 0.5, 0.4
    _set(conv, w)
    method.develop(0)
    return method, conv, spines_of(conv)


def test_weights_are_clipped_into_their_range_only_after_count_thre_checks():
    method, conv, s = _one_layer(ct=2)
    assert torch.equal(s.r_pos, torch.full_like(s.r_pos, 0.5)) and (s.r_neg == -0.5).all()
    method.develop(1)
    before = _w(conv).detach().clone()
    before.view(-1)[1], before.view(-1)[2] = 0.9, -0.8
    _set(conv, before)
    method.develop(2)  # e = count_thre: no constraint yet
    assert torch.equal(_w(conv), before)
    method.develop(3)  # e > count_thre: clipped (the overshoots' streak is 1 < 2: ranges unchanged)
    w = _w(conv).detach().view(-1)
    assert w[1] == 0.5 and w[2] == -0.5
    assert ((w >= s.r_neg.view(-1)) & (w <= s.r_pos.view(-1))).all()
    assert torch.equal(w[3:], before.view(-1)[3:])


def test_range_grows_by_the_mean_overshoot_after_count_thre_consecutive_overshoots():
    method, conv, s = _one_layer(ct=2)
    for e, over in [(1, 0.1), (2, 0.2), (3, 0.3)]:
        w = _w(conv).detach().clone()
        w.view(-1)[5], w.view(-1)[6] = 0.5 + over, -0.5 - over
        _set(conv, w)
        method.develop(e)
        if e < 3:
            assert s.r_pos.view(-1)[5] == 0.5 and s.r_neg.view(-1)[6] == -0.5
    # streak counts at e = 2 and 3 (a pair with the previous check): r += (0.2 + 0.3) / 2
    assert s.r_pos.view(-1)[5].item() == pytest.approx(0.75)
    assert s.r_neg.view(-1)[6].item() == pytest.approx(-0.75)
    assert _w(conv).view(-1)[5].item() == pytest.approx(0.75)  # then clipped to the new range
    assert s.r_pos.view(-1)[7] == 0.5


def test_a_weight_shrinking_for_count_thre_checks_has_its_range_multiplied_by_075():
    method, conv, s = _one_layer(ct=2)
    # from 0.4 at e = 0: weight 3 decreases at every check, weight 4 pauses at e = 2
    for e, (a, b) in enumerate(zip([0.3, 0.2, 0.1], [0.3, 0.3, 0.2], strict=True), start=1):
        w = _w(conv).detach().clone()
        w.view(-1)[3], w.view(-1)[4] = a, b
        _set(conv, w)
        method.develop(e)
        if e == 2:
            assert s.r_pos.view(-1)[3] == 0.5 and s.r_neg.view(-1)[3] == -0.5
    assert s.r_pos.view(-1)[3].item() == pytest.approx(0.375)
    assert s.r_neg.view(-1)[3].item() == pytest.approx(-0.375)
    assert s.r_pos.view(-1)[4] == 0.5 and (s.r_pos.view(-1)[7:] == 0.5).all()


# -- (3) adaptive pruning rate -------------------------------------------------------------------
def _expected(rate, k, fc, alive, rows, alive_next):
    if fc:
        return rate + (0.5 * math.exp(-k) if k <= 23 else 5e-4) * 51.2 * alive / rows
    return rate + math.exp(-k / 5) * alive / alive_next


def test_pruning_rate_grows_by_the_adaptive_rule_and_sets_the_number_of_pruned_neurons():
    model = _net()
    method = SDSNN(count_thre=1, schedule={"conv_rate": 30.0, "fc_rate": 30.0})
    attach(model, [method])
    for e in range(3):
        method.develop(e)
    assert method.rates() == [30.0, 30.0, 30.0]
    layers = [spines_of(m) for m in method.targets_]
    history = [method.rates()]
    for e in (3, 4, 5):  # k = 0, 1, 2; no kernel can regenerate before e = 6
        before = [s.alive() for s in layers]
        rates = method.rates()
        method.develop(e)
        after = [s.alive() for s in layers]
        for i, s in enumerate(layers):
            rows = s.mask.shape[0]
            assert rows - after[i] == int(rows * rates[i] / 100)
            nxt = before[i + 1] if i + 1 < len(layers) else after[i]
            want = _expected(rates[i], e - 3, i == 2, after[i], rows, nxt)
            assert method.rates()[i] == pytest.approx(want, rel=1e-6)
        history.append(method.rates())
    for i in range(3):
        assert history[0][i] < history[1][i] < history[2][i] < history[3][i]
    assert history[1][2] == pytest.approx(30 + 0.5 * 51.2 * 6 / 8, rel=1e-6)  # 2 of 8 fc rows


# -- (4) regeneration ----------------------------------------------------------------------------
def test_a_pruned_kernel_returns_only_after_more_than_count_thre_candidate_epochs():
    model = _net(hidden=())
    method = SDSNN(count_thre=1, schedule={"conv_rate": 25.0}, include=[r"features\.1\.conv"])
    attach(model, [method])
    conv = method.targets_[0]
    s = spines_of(conv)
    w0 = torch.randn(_w(conv).shape, generator=torch.Generator().manual_seed(4)).abs() * 0.1
    _set(conv, w0 + 0.05)  # all kernel sums > 0: an all-zero kernel is never a candidate
    for e in range(4):
        method.develop(e)  # e = 3: the first pruning event (2 of 8 rows)
    r = int(s.pruned.nonzero()[0])
    assert (s.mask[r] == 0).all()
    # kernel (r, 0) a candidate at e = 4, 5, 6; kernel (r, 1) at e = 4, 6, 7, 8 (gap at 5)
    plan = {4: (0, 1), 5: (0,), 6: (0, 1), 7: (1,), 8: (1,)}
    for e, kernels in plan.items():
        w = _w(conv).detach().clone()
        for i in kernels:
            w[r, i] = 1.0  # clipped to r+ (≈ max) first: the largest kernel sum of the layer
        _set(conv, w)
        method.develop(e)
        back = [bool((s.mask[r, i] == 1).all()) for i in (0, 1)]
        assert back[0] == (e >= 6), e  # streak 0, 1, 2 > count_thre → back at the third epoch
        assert back[1] == (e >= 8), e  # the gap restarts the streak
    assert torch.equal(_w(conv)[r, 0], s.r_pos[r, 0])  # keeps its (clipped) value
    assert (s.mask[r, 2:] == 0).all() and bool(s.pruned[r])


# -- (5) the ambiguity: conv ranges develop (paper) or stay at their initial value (code) --------
@pytest.mark.parametrize("ranges", ["all", "fc"])
def test_ranges_setting_decides_whether_conv_ranges_develop(ranges):
    model = _net()
    method = SDSNN(count_thre=2, ranges=ranges, schedule={"conv_rate": 50.0})
    attach(model, [method])
    method.develop(0)
    init = [spines_of(m).r_pos.clone() for m in method.targets_]
    for e in (1, 2, 3):  # every weight shrinks: streak 1 at e = 2, 2 at e = 3 → × 0.75
        for m in method.targets_:
            _set(m, _w(m).detach() * 0.9)
        method.develop(e)
    convs, fc = method.targets_[:2], method.targets_[2]
    assert torch.allclose(spines_of(fc).r_pos, 0.75 * init[2])
    for m, r0 in zip(convs, init, strict=False):
        want = 0.75 * r0 if ranges == "all" else r0
        assert torch.allclose(spines_of(m).r_pos, want)
        s, w = spines_of(m), _w(m)
        assert ((w >= s.r_neg) & (w <= s.r_pos)).all()  # clipped into the range in both cases
    if ranges == "fc":  # constant conv ranges: the score ties, the lowest indices go first
        method.develop(4)
        method.develop(5)
        assert spines_of(convs[1]).pruned.tolist() == [True] * 4 + [False] * 4


# -- masks in the forward, dead neurons silent after BN ------------------------------------------
def test_masked_weights_never_compute_but_keep_a_dense_gradient():
    model = _net()
    method = SDSNN()
    attach(model, [method])
    ref = copy.deepcopy(model)
    conv = method.targets_[1]
    spines_of(conv).mask[0, :2] = 0
    with torch.no_grad():
        _w(ref.features[1].conv)[0, :2] = 0
    x_seq, y = _batch(0)
    out = model(x_seq)
    assert torch.equal(out, ref(x_seq))
    F.cross_entropy(out.mean(0), y).backward()
    assert _w(conv).grad[0, :2].abs().sum() > 0  # the shadow weights still learn


def test_pruned_neurons_are_exactly_silent_after_bn_in_train_and_eval():
    model, method, session, opt = _fresh(count_thre=1, schedule={"conv_rate": 30.0})
    _train(model, session, opt, 4)  # the first pruning event at step 4
    dead = method.dead_channels()["features.1.conv"]
    assert dead.any()
    seen = []
    model.features[1].bn.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    for mode in (True, False):
        model.train(mode)
        model(_batch(9)[0])
        reset_state(model)
        assert (seen[-1][:, :, dead] == 0).all()  # [T, B, C, H, W]


# -- (7) finalize: physical removal, exact, the artifact rebuilds --------------------------------
def test_finalize_removes_dead_channels_physically_and_exactly():
    model, method, session, opt = _fresh(count_thre=1, update_every=1,
                                         schedule={"conv_rate": 30.0, "fc_rate": 30.0})
    _train(model, session, opt, 6)
    dead = {k: int(v.sum()) for k, v in method.dead_channels().items()}
    assert all(dead.values())
    # dyadic weights, BN and input (tests/_exact.py): the smaller model sums other terms in
    # another order, and must still equal the gated one bit for bit on any CPU and thread count
    dyadic_(model)
    x_seq = dyadic(_batch(50)[0])
    model.eval()
    ref = model(x_seq)
    reset_state(model)
    out_model = session.finalize().eval()
    assert out_model.spec["widths"] == [4 - dead["features.0.conv"], 8 - dead["features.1.conv"]]
    assert out_model.spec["hidden"] == [8 - dead["classifier.fc0"]]
    assert torch.equal(out_model(x_seq), ref)
    reset_state(out_model)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load(save(out_model, Path(tmp) / "artifact"))
    assert torch.equal(loaded(x_seq), ref)


def test_a_residual_group_is_removed_only_where_every_producer_is_dead():
    torch.manual_seed(0)
    model = build(classes=10, **TINY["sew_resnet"])
    method = SDSNN(count_thre=18)  # the paper mode: finalize removes the dead channels only
    attach(model, [method])
    stem, conv2 = model.features.stem.conv, model.features.stage0[0].conv2
    spines_of(stem).mask[[1, 2]] = 0  # channel 1 dead in both producers, 2 only in the stem
    spines_of(conv2).mask[1] = 0
    method._gate()
    assert method.dead_channels()["features.stem.conv"].tolist() == [False, True, False, False]
    dyadic_(model)  # exact by construction (tests/_exact.py): removal must not change a bit
    x_seq = dyadic(torch.rand(2, 3, 1, 8, 8))
    model.eval()
    ref = model(x_seq)
    reset_state(model)
    out = method.finalize(model, Context())
    assert out.spec["widths"] == [3, 8]
    assert torch.equal(out(x_seq), ref)


# -- exact resume, epoch detection, configuration, (6) contract ----------------------------------
def test_killed_and_resumed_training_equals_uninterrupted():
    kw = dict(count_thre=1, update_every=1, schedule={"conv_rate": 30.0, "fc_rate": 30.0})
    model, method, session, opt = _fresh(**kw)
    _train(model, session, opt, 9)
    ref = copy.deepcopy(model.state_dict())
    model, method, session, opt = _fresh(**kw)
    _train(model, session, opt, 5)  # ranges, streaks, masks, rates live in model buffers
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), session.ctx.step))
    model, method, session, opt = _fresh(**kw)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    session.ctx.step = saved[2]
    _train(model, session, opt, 4, first=5)
    out = model.state_dict()
    assert set(out) == set(ref) and any(k.endswith(".0.r_pos") for k in out)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_checks_run_at_epoch_ends_and_need_steps_per_epoch():
    model = _net()
    method = SDSNN(count_thre=18)
    session = attach(model, [method])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(RuntimeError, match="steps_per_epoch"):
        session.after_step(progress=0.1)
    session.ctx.step = 0
    session.bind(opt, steps_per_epoch=3)
    s = spines_of(method.targets_[0])
    for step in range(1, 4):
        session.after_step(progress=step / 10)
        assert (s.r_pos != 0).all() == (step == 3)


def test_invalid_hyper_parameters_raise_one_line_errors_naming_the_field():
    for kwargs, name in [
        (dict(count_thre=0), "count_thre"), (dict(update_every=-1), "update_every"),
        (dict(ranges="conv"), "ranges"), (dict(schedule={"rate": 1}), "schedule"),
        (dict(schedule={"shrink": 0}), "schedule.shrink"),
        (dict(channel_sparsity=0.3, count_thre=5), "channel_sparsity and count_thre"),
        (dict(channel_sparsity=0.3, schedule={}), "channel_sparsity and schedule"),
        (dict(channel_sparsity=1.0), "channel_sparsity"), (dict(scope="net"), "scope"),
        (dict(schedule={"conv_q": 120}), "schedule.conv_q")]:
        with pytest.raises(ValueError, match=f"^{name}") as e:
            SDSNN(**kwargs)
        assert "\n" not in str(e.value)
    assert SDSNN(schedule={"shrink": 0.5}).schedule == {
        "conv_rate": 0.5, "fc_rate": 2.0, "conv_q": 65.0, "fc_q": 60.0, "shrink": 0.5}
    with pytest.raises(ValueError, match="read-out"):
        attach(_net(), [SDSNN(include=[r"classifier\.fc"])])


@pytest.mark.parametrize("model_name", list(TINY))
def test_contract(model_name, data):
    torch.manual_seed(0)
    check_method(SDSNN, build(classes=10, **TINY[model_name]), data)
    torch.manual_seed(0)  # a check every step: init, range update, constraint
    check_method(functools.partial(SDSNN, count_thre=1, update_every=1),
                 build(classes=10, **TINY[model_name]), data)


# -- the target mode: the driver kills the lowest spine scores, finalize removes exactly them -----
def test_target_mode_kills_the_lowest_spine_scores_along_the_ramp_and_removes_them():
    model = _net()
    method = SDSNN(channel_sparsity=0.5, update_every=100, until=1.0)  # no check: ranges stay
    session = attach(model, [method])
    assert method.count_thre is None and method.schedule is None
    s = spines_of(method.targets_[1])  # features.1.conv: 8 rows; ranges set at attach
    assert (s.r_pos > 0).all()
    wide = torch.tensor([5.0, 1.0, 4.0, 2.0, 8.0, 3.0, 7.0, 6.0]).view(8, 1, 1, 1)
    s.r_pos.copy_(wide.expand_as(s.r_pos))  # row scores ∝ (r+ + 1 − min) / span: order of wide
    s.r_neg.fill_(-1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    session.bind(opt, steps_per_epoch=100)
    session.ctx.step = 1
    # ramp 0.5·(1 − 0.7³) = 0.33 of 4 + 8 + 8: round(6.6) = 7, shares 1.3 2.6 2.6 → 1 3 3
    session.after_step(progress=0.3)
    dead = method.dead_channels()["features.1.conv"]
    assert dead.nonzero().flatten().tolist() == [1, 3, 5]  # the three lowest
    session.after_step(progress=1.0)  # 0.5: 2 4 4
    dead = method.dead_channels()["features.1.conv"]
    assert dead.nonzero().flatten().tolist() == [1, 2, 3, 5]  # they stay dead, one more
    dyadic_(model)  # exact by construction (tests/_exact.py): no tolerance survives a spike flip
    x_seq = dyadic(_batch(3)[0])
    model.eval()
    ref = model(x_seq)
    reset_state(model)
    small = session.finalize().eval()
    assert small.spec["widths"] == [2, 4] and small.spec["hidden"] == [4]
    assert torch.equal(small(x_seq), ref)  # the sums are regrouped, but nothing rounds
    assert method.removed_["channels"] == pytest.approx(10 / 20)
