"""``norm: bntt`` in every builder: BN sites, spec round trip, the artifact, measurement,
BN folding and integer lowering (refused by name), and training."""

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _exact import power_of_four_var
from spikecompress.export import load, save, to_integer
from spikecompress.measurement.counters import count
from spikecompress.measurement.energy import energy_pj
from spikecompress.measurement.profiles import PROFILES
from spikecompress.models import MODELS, build, from_spec
from spikecompress.models.bn_fold import fold_batchnorm_
from spikecompress.snn import BNTT, BNTT1d, BNTT2d, reset_state
from spikecompress.snn.neuron import set_spike_mask_

STEPS = 3
ARCHS = {
    "conv_net": dict(in_channels=1, input_size=8, widths=[6, 8], hidden=[5]),
    "conv1d_net": dict(in_channels=1, input_size=40, widths=[6, 6, 8], hidden=[5]),
    "mlp": dict(in_features=64, widths=[12, 8]),
    "vgg": dict(in_channels=3, input_size=8, widths=[6, "M", 8, "M"], hidden=[5]),
    "resnet": dict(in_channels=1, input_size=8, widths=[6, 8], blocks=[1, 1], hidden=[5]),
    "sew_resnet": dict(in_channels=1, input_size=8, widths=[6, 8], blocks=[1, 1]),
}


def _build(name, seed=0, **kw):
    torch.manual_seed(seed)
    return build(name, classes=10, **{**ARCHS[name], **kw})


def _randomise_(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BNTT):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _x(model, T=STEPS, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, *model.in_shape, generator=g)


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_bn_site_holds_a_bntt_and_the_spec_round_trips(name):
    plain, model = _build(name), _build(name, norm="bntt", steps=STEPS)
    assert set(model.spec) == {"name", *inspect.signature(MODELS[name]).parameters}
    assert (plain.spec["norm"], plain.spec["steps"]) == ("bn", None)
    assert (model.spec["norm"], model.spec["steps"]) == ("bntt", STEPS)
    bns = {n: m for n, m in plain.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    bntts = {n: m for n, m in model.named_modules() if isinstance(m, BNTT)}
    assert bns and set(bns) == set(bntts)  # the same places, the same names
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for n, bn in bns.items():
        want = BNTT2d if isinstance(bn, nn.BatchNorm2d) else BNTT1d
        assert type(bntts[n]) is want and bntts[n].num_features == bn.num_features, n
        assert bntts[n].steps == STEPS
    assert model(_x(model)).shape == (STEPS, 2, 10)
    rebuilt = from_spec(json.loads(json.dumps(model.spec)))
    assert rebuilt.spec == model.spec
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_the_default_is_unchanged_and_a_spec_without_norm_builds_the_same_model():
    model = _build("conv_net")
    old = {k: v for k, v in model.spec.items() if k not in ("norm", "steps")}  # an older spec
    again = from_spec(old)
    assert again.spec == model.spec
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    same = build("conv_net", classes=10, **ARCHS["conv_net"], norm="bn", steps=None)
    assert all(torch.equal(a, b) for a, b in
               zip(model.state_dict().values(), same.state_dict().values(), strict=True))


def test_an_older_artifact_without_norm_keys_still_loads(tmp_path):
    model = _build("conv_net").eval()
    save(model, tmp_path / "a")
    spec_file = tmp_path / "a" / "spec.json"
    doc = json.loads(spec_file.read_text())
    del doc["model"]["norm"], doc["model"]["steps"]
    spec_file.write_text(json.dumps(doc))
    loaded = load(tmp_path / "a")
    x = _x(model)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("kw, message", [
    (dict(norm="batch"), r"^norm must be one of \['bn', 'bntt'\], got 'batch'$"),
    (dict(norm="bntt"), r"^steps must be an int >= 1 .*when norm is 'bntt', got None$"),
    (dict(norm="bntt", steps=0), r"^steps must be an int >= 1, got 0$"),
    (dict(norm="bntt", steps=2.0), r"^steps must be an int >= 1, got 2.0$"),
    (dict(steps=4), r"^steps is only for norm 'bntt'.*got 4$"),
])
@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_bad_norm_options_are_one_line_errors_naming_the_field(name, kw, message):
    with pytest.raises(ValueError, match=message):
        _build(name, **kw)


def test_a_wrong_T_is_refused_naming_the_first_bntt():
    model = _build("conv_net", norm="bntt", steps=STEPS)
    with pytest.raises(ValueError, match=r"^BNTT2d: x_seq has T = 2 time steps .*steps = 3"):
        model(_x(model, T=2))


def test_artifact_round_trip_is_exact(tmp_path):
    model = _randomise_(_build("vgg", norm="bntt", steps=STEPS)).eval()
    save(model, tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.spec == model.spec
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]), k
    x = _x(model)
    reset_state(model)
    assert torch.equal(loaded(x), model(x))
    loaded.train()  # the loaded statistics keep updating row by row
    loaded(_x(model, B=4))
    assert int(loaded.features[0].bn.num_batches_tracked) == 1


def _identity_norms_(model):
    """Every BN / BNTT the identity in eval, exactly: γ 1, β 0, μ 0, float32(σ² + ε) = 1."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm | BNTT):
                m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.copy_(power_of_four_var(torch.ones_like(m.running_var), m.eps,
                                                      lo=0, hi=0))
    return model.eval()


def test_counts_and_energy_treat_bntt_as_bn():
    """A BNTT model and its BN twin computing the same function (both norms the identity) have
    the same SOPs, MACs, spikes and energy, also with pruned neurons behind a norm."""
    bn = _identity_norms_(_build("conv_net", widths=[6, 8], hidden=[5]))
    bntt = _identity_norms_(_build("conv_net", widths=[6, 8], hidden=[5], norm="bntt",
                                   steps=STEPS))
    for model in (bn, bntt):
        set_spike_mask_(model.features[0].act,
                        (torch.arange(6) % 2).float().view(6, 1, 1).expand(6, 8, 8))
    x = (_x(bn, B=4) < 0.5).float()
    assert torch.equal(bn(x), bntt(x))
    reset_state(bn), reset_state(bntt)
    a, b = count(bn, x), count(bntt, x)
    for key in ("sops", "macs", "dense_macs", "spikes", "neuron_updates", "weights",
                "weights_zero"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.layers == b.layers
    assert a.sops > 0
    profile = PROFILES["45nm"]
    assert energy_pj(a.to_dict(), profile) == energy_pj(b.to_dict(), profile)


def test_folding_and_integer_lowering_refuse_a_bntt_by_name():
    model = _build("conv_net", norm="bntt", steps=STEPS)
    with pytest.raises(ValueError, match=r"^features\.0\.bn: BNTT2d \(one BatchNorm per time "
                                         r"step\) cannot be folded"):
        fold_batchnorm_(model)
    with pytest.raises(ValueError, match=r"^features\.0\.bn: BNTT2d"):
        fold_batchnorm_(model, strict=False)
    assert "folded_bn" not in model.spec
    with pytest.raises(ValueError, match=r"^features\.0\.bn: BNTT2d \(one BatchNorm per time "
                                         r"step\) cannot be lowered to the integer SNN"):
        to_integer(model)


@pytest.mark.parametrize("name", ["conv_net", "mlp"])
def test_a_bntt_model_trains_a_few_steps_on_random_data(name):
    model = _build(name, norm="bntt", steps=STEPS).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(STEPS, 8, *model.in_shape, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    gamma0 = model.features[0].bn.weight.detach().clone()
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reset_state(model)
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    bn = model.features[0].bn
    assert not torch.equal(bn.weight.detach(), gamma0)
    assert int(bn.num_batches_tracked) == 4
    assert not torch.equal(bn.running_mean[0], bn.running_mean[1])  # each step its own statistics
    model.eval()
    assert torch.isfinite(model(x)).all()
