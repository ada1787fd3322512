"""Exit-aware measurement (SEENN, spec pruning.md §4.3, §12.4): SEENN-I's exit rule on hand-built
logits, AET, causality of truncated runs, and measure() following the steps actually run."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from _exact import dyadic_
from spikecompress.data import DataConfig, load_data
from spikecompress.export import load, save
from spikecompress.measurement import count, measure
from spikecompress.measurement.early_exit import (
    average_exit_step,
    early_exit_predict,
    exit_measure,
    exit_steps,
)
from spikecompress.models import build
from spikecompress.models.exit_policy import exit_scores, install_exit_policy_
from spikecompress.snn import reset_state
from spikecompress.snn.losses import task_loss

_SKIP = {"latency_ms", "size_bytes"}  # timing noise; spec.json records the policy's config


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=4, batch_size=64, limit=192))


@pytest.fixture(scope="module")
def trained(data):
    """A tiny MLP trained for 3 epochs with TET, so its early steps are often confident. Its
    weights and BN are then made dyadic (tests/_exact.py; the digits inputs are k/16 already):
    the tests below compare runs of different shapes (a prefix of the steps, one sample, a subset
    of the batch) that sum in different orders, bit for bit, on any CPU and thread count."""
    torch.manual_seed(0)
    model = build("mlp", in_features=64, classes=10, widths=[32])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for x_seq, y in data.train:
            loss = task_loss(model(x_seq), y, "tet")
            opt.zero_grad()
            loss.backward()
            opt.step()
            reset_state(model)
    return dyadic_(model).eval()


def _with_policy(model, config):
    m = copy.deepcopy(model)
    install_exit_policy_(m, config)
    return m


def _conf(alpha, score="max_softmax"):
    return {"kind": "confidence", "alpha": alpha, "score": score, "temperature": 1.0}


# -- SEENN-I's rule on hand-built logits ---------------------------------------------------------
def _hand_logits():
    """[T=4, B=4, K=2] with known max-softmax exits at α = 0.8: sample 0 at t=1 (margin 2),
    sample 1 at t=2 (margin 1 per step, sum 2), sample 2 at t=4 (margin 0.5 per step: sums 0.5,
    1, 1.5, 2 → softmax 0.62, 0.73, 0.82 at t=3), sample 3 never confident (zeros): T."""
    out = torch.zeros(4, 4, 2)
    out[:, 0, 0] = 2.0
    out[:, 1, 1] = 1.0
    out[:, 2, 0] = 0.5
    return out


def test_hand_built_exits_and_aet():
    steps, preds = exit_steps(_hand_logits(), alpha=0.8)
    assert steps.tolist() == [1, 2, 3, 4]
    assert preds.tolist() == [0, 1, 0, 0]
    assert steps.dtype == torch.int64
    assert average_exit_step(steps) == 2.5  # (1 + 2 + 3 + 4) / 4
    # AET weighs samples, not distinct steps: three samples at 1 and one at 4 → 7 / 4
    assert average_exit_step(torch.tensor([1, 1, 1, 4])) == 1.75


def test_cumulative_sum_not_mean_decides():
    out = torch.zeros(3, 1, 2)
    out[:, 0, 0] = 1.0  # every step the same margin 1: mean softmax 0.731 at every t
    mean_conf = exit_scores(out.cumsum(0) / torch.arange(1, 4).view(3, 1, 1))
    assert (mean_conf < 0.8).all()  # a mean rule would wait until T = 3
    steps, _ = exit_steps(out, alpha=0.8)
    assert steps.tolist() == [2]  # the sum [2, 0] at t = 2 gives 0.881 > 0.8


def test_exit_step_non_decreasing_in_alpha_and_extremes():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(6, 200, 10, generator=g) * 2
    for score in ("max_softmax", "entropy"):
        prev = torch.ones(200, dtype=torch.long)
        for alpha in torch.linspace(0, 1.2, 25).tolist():
            steps, _ = exit_steps(out, alpha, score)
            assert (steps >= prev).all()
            prev = steps
        assert (exit_steps(out, 0.0, score)[0] == 1).all()
        assert (exit_steps(out, 1.01, score)[0] == 6).all()
        assert (exit_steps(out, 1.0, score)[0] == 6).all()
    saturated = torch.zeros(6, 3, 10)
    saturated[:, :, 0] = 100.0  # softmax is exactly 1.0 in float32: only a strict > waits
    assert exit_scores(saturated[0]).eq(1).all()
    assert (exit_steps(saturated, 1.0)[0] == 6).all()
    mid = exit_steps(out, 0.9)[0]
    assert 1 < average_exit_step(mid) < 6  # the sweep above goes through real exits


def test_alpha_zero_exits_at_one_even_for_uniform_logits():
    out = torch.zeros(3, 5, 4)  # uniform softmax: the entropy score is exactly 0
    assert exit_scores(out[0], "entropy").eq(0).all()
    for score in ("max_softmax", "entropy"):
        assert exit_steps(out, 0.0, score)[0].tolist() == [1] * 5


def test_entropy_score_and_temperature():
    z = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    s = exit_scores(z, "entropy")
    assert s[0] == 0 and s[1] > 0.999
    sharp, soft = exit_scores(z[1:], "max_softmax", 0.5), exit_scores(z[1:], "max_softmax", 50.0)
    assert soft < sharp  # a higher temperature flattens the softmax
    with pytest.raises(ValueError, match="score"):
        exit_scores(z, "margin")


def test_alpha_one_accuracy_equals_full_t(trained, data):
    x_seq, y = next(iter(data.test))
    out = trained(x_seq)
    reset_state(trained)
    steps, preds = exit_steps(out, 1.0)
    assert (steps == 4).all()
    assert torch.equal(preds, out.mean(0).argmax(1))  # argmax of the sum = argmax of the mean
    # (exact: the logits are dyadic, so the sum and the mean by 4 never round)
    m = _with_policy(trained, _conf(1.0))
    full = measure(trained, data, latency_repeats=1)
    assert measure(m, data, latency_repeats=1).accuracy == full.accuracy


# -- causality: a run of x_seq[:t] is the first t steps of the full run ---------------------------
def _per_step_manual(model, x_seq):
    """Per step: SOPs, MACs of every Linear and spikes of every neuron, from one full run."""
    seen, handles = [], []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_pre_hook(
                lambda mod, inp: seen.append(("syn", mod, inp[0].detach()))))
        elif hasattr(m, "v_threshold"):
            handles.append(m.register_forward_hook(
                lambda mod, inp, out: seen.append(("spk", mod, out.detach()))))
    out = model(x_seq)
    reset_state(model)
    for h in handles:
        h.remove()
    T = x_seq.shape[0]
    sops, macs, spikes = torch.zeros(T), torch.zeros(T), torch.zeros(T)
    for kind, mod, x in seen:
        if kind == "spk":
            spikes += x.flatten(1).sum(1)
            continue
        nnz_in = (mod.weight != 0).sum(0).double()  # per input feature: weights it feeds
        ops = ((x != 0).double() * nnz_in).flatten(1).sum(1)  # [T]
        binary = bool(((x == 0) | (x == 1)).all())
        (sops if binary else macs).add_(ops.float())
    return out, sops.cumsum(0), macs.cumsum(0), spikes.cumsum(0)


def test_truncated_run_equals_prefix_of_full_run_and_its_manual_count(trained, data):
    x_seq = next(iter(data.test))[0][:, :16]
    out, sops, macs, spikes = _per_step_manual(trained, x_seq)
    assert sops[-1] > 0 and macs[-1] > 0
    for t in range(1, 5):
        assert torch.equal(trained(x_seq[:t]), out[:t])
        reset_state(trained)
        c = count(trained, x_seq[:t])
        assert (c.sops, c.macs, c.spikes) == (int(sops[t - 1]), int(macs[t - 1]),
                                              int(spikes[t - 1]))


# -- measure() with an exit policy ---------------------------------------------------------------
def _figures(metrics) -> dict:
    return {k: v for k, v in metrics.to_dict().items() if k not in _SKIP}


def test_policy_exiting_at_T_measures_as_the_plain_model(trained, data):
    plain = measure(trained, data, latency_repeats=1)
    m = _with_policy(trained, _conf(2.0))
    got = measure(m, data, latency_repeats=1)
    assert got.avg_time_steps == 4.0 and got.time_steps == 4
    assert _figures(got) == _figures(plain)


class _Prefix:
    """Test data whose samples are cut to their first t steps."""

    def __init__(self, loader, t):
        self.loader, self.t = loader, t

    def __iter__(self):
        return ((x[: self.t], y) for x, y in self.loader)


def test_policy_exiting_at_one_measures_as_the_model_at_T1(trained, data):
    at_one = measure(trained, SimpleNamespace(test=_Prefix(data.test, 1)), latency_repeats=1)
    m = _with_policy(trained, _conf(0.0))
    got = measure(m, data, latency_repeats=1)
    assert got.avg_time_steps == 1.0 and got.time_steps == 4 and at_one.time_steps == 1
    want = _figures(at_one)
    got_fig = _figures(got)
    for key in ("time_steps", "latency_ms"):
        want.pop(key, None), got_fig.pop(key, None)
    assert got_fig == want  # SOPs, spikes, energies (the twin's too), accuracy, layers


class _EveryOther(nn.Module):
    """A hand-made policy: sample b exits at 1 + (b mod T) (within its batch)."""

    def forward(self, x_seq, out_seq):
        T, B = out_seq.shape[:2]
        steps = torch.arange(B) % T + 1
        return steps, out_seq.cumsum(0)[steps - 1, torch.arange(B)].argmax(-1)


def test_mixed_exits_count_each_sample_over_its_own_steps(trained, data):
    m = copy.deepcopy(trained)
    m.exit_policy = _EveryOther()
    got = measure(m, data, latency_repeats=1)
    sops = macs = spikes = correct = n = steps_sum = 0
    for x_seq, y in data.test:
        out = trained(x_seq)
        reset_state(trained)
        for b in range(x_seq.shape[1]):
            t = b % 4 + 1
            c = count(trained, x_seq[:t, b : b + 1])
            sops, macs, spikes = sops + c.sops, macs + c.macs, spikes + c.spikes
            correct += int(out[:t, b].sum(0).argmax() == y[b])
            n, steps_sum = n + 1, steps_sum + t
    assert got.samples == n
    assert got.sops_per_sample == pytest.approx(sops / n, rel=1e-12)
    assert got.macs_per_sample == pytest.approx(macs / n, rel=1e-12)
    assert got.spikes_per_sample == pytest.approx(spikes / n, rel=1e-12)
    assert got.avg_time_steps == pytest.approx(steps_sum / n)
    assert got.accuracy == correct / n
    plain = measure(trained, data, latency_repeats=1)  # the twin is one pass per sample either way
    assert got.ann_energy_pj_per_sample == pytest.approx(plain.ann_energy_pj_per_sample)
    assert got.sops_per_sample < plain.sops_per_sample


def _policy_config(hidden=8, t_max=6):
    return {"kind": "policy", "in_shape": [64], "hidden": hidden, "t_max": t_max, "pool": None}


def test_policy_network_macs_are_counted_exactly(trained, data):
    torch.manual_seed(1)
    m = _with_policy(trained, _policy_config())
    pol = m.exit_policy
    acc, t, _ = exit_measure(m, data.test)
    want_policy = want_snn = 0
    for x_seq, _ in data.test:
        f = pol.features(x_seq)  # [B, 64]
        h = pol.net.relu(pol.net.fc0(f))  # [B, 8]
        want_policy += int((f != 0).sum()) * 8 + int((h != 0).sum()) * 6  # dense weights
        steps = pol.choose(x_seq)
        for s in steps.unique().tolist():
            idx = (steps == s).nonzero()[:, 0]
            want_snn += count(trained, x_seq[: s, idx]).macs
    assert t["policy_macs"] == want_policy > 0
    assert t["macs"] == want_snn + want_policy
    got = measure(m, data, latency_repeats=1)
    assert got.layers["exit_policy.net.fc0"]["macs"] > 0
    # the ANN twin is the SNN's, not the policy's: the same as the plain model's
    plain = measure(trained, data, latency_repeats=1)
    assert got.ann_energy_pj_per_sample == pytest.approx(plain.ann_energy_pj_per_sample)
    assert 1 <= got.avg_time_steps <= 4 and acc == got.accuracy


@pytest.mark.parametrize("config", [_conf(0.9), _conf(0.5, "entropy"), _policy_config()])
def test_artifact_round_trip_keeps_the_policy(trained, data, tmp_path, config):
    torch.manual_seed(2)
    m = _with_policy(trained, config)
    before = measure(m, data, latency_repeats=1)
    loaded = load(save(m, tmp_path / "a"))
    assert loaded.spec["exit_policy"] == m.spec["exit_policy"]
    assert type(loaded.exit_policy) is type(m.exit_policy)
    after = measure(loaded, data, latency_repeats=1)
    assert (after.accuracy, after.avg_time_steps) == (before.accuracy, before.avg_time_steps)
    assert after.sops_per_sample == before.sops_per_sample


def test_early_exit_predict_is_deterministic_and_needs_a_policy(trained, data):
    x_seq = next(iter(data.test))[0]
    with pytest.raises(ValueError, match="no exit_policy"):
        early_exit_predict(trained, x_seq)
    m = _with_policy(trained, _conf(0.9))
    m.train()
    p1, s1 = early_exit_predict(m, x_seq)
    p2, s2 = early_exit_predict(m, x_seq)
    assert torch.equal(p1, p2) and torch.equal(s1, s2) and m.training
    assert math.isclose(average_exit_step(s1), float(s1.double().mean()))


# -- the fixed policy (LitE-SNN's searched T*) ----------------------------------------------------
def test_fixed_policy_runs_exactly_its_steps(trained, data, tmp_path):
    at_two = measure(trained, SimpleNamespace(test=_Prefix(data.test, 2)), latency_repeats=1)
    m = _with_policy(trained, {"kind": "fixed", "steps": 2})
    got = measure(m, data, latency_repeats=1)
    assert got.avg_time_steps == 2.0 and got.time_steps == 4
    want, got_fig = _figures(at_two), _figures(got)
    for key in ("time_steps", "latency_ms"):
        want.pop(key, None), got_fig.pop(key, None)
    assert got_fig == want  # the model run at T = 2: accuracy, SOPs, spikes, energies
    x_seq = next(iter(data.test))[0]
    preds, steps = early_exit_predict(m, x_seq)
    assert (steps == 2).all() and torch.equal(preds, trained(x_seq)[:2].sum(0).argmax(-1))
    reset_state(trained)
    loaded = load(save(m, tmp_path / "a"))
    assert loaded.spec["exit_policy"] == {"kind": "fixed", "steps": 2}
    assert measure(loaded, data, latency_repeats=1).avg_time_steps == 2.0


def test_fixed_policy_longer_than_T_runs_to_the_end_and_is_validated(trained, data):
    m = _with_policy(trained, {"kind": "fixed", "steps": 9})
    assert measure(m, data, latency_repeats=1).avg_time_steps == 4.0
    for bad, match in [({"kind": "fixed"}, "needs 'steps'"), ({"kind": "fixed", "steps": 0},
                       "steps must be an int >= 1"), ({"kind": "fixed", "steps": 2, "alpha": 1},
                                                     "unknown key")]:
        with pytest.raises(ValueError, match=match):
            install_exit_policy_(copy.deepcopy(trained), bad)
