"""Weight + membrane quantization on the integer grid: uniform_quant(membrane_bits), MINT, scales.

Exact by construction: on the integer grid every conv / linear sum adds integer codes times
integer inputs (spikes, or the quantized network input) below 2^24, and the membrane arithmetic
is integer-valued float64 (``snn.integer``), so no result depends on summation order or kernels.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from spikecompress.compress.quant.mint import MINT
from spikecompress.compress.quant.quantizers import WeightQuantizer, least_squares_scale, max_scale
from spikecompress.compress.quant.uniform import UniformQuantization
from spikecompress.compress.session import attach
from spikecompress.export import load, save
from spikecompress.models import build, from_spec
from spikecompress.models.bn_fold import fold_batchnorm_
from spikecompress.snn import reset_state
from spikecompress.snn.neuron import LIF

torch.set_num_threads(1)


def _conv1d(**kw):
    torch.manual_seed(0)
    return build("conv1d_net", in_channels=1, input_size=40, classes=10, widths=[8, 8],
                 hidden=[16], **kw)


def _data(n=16, T=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(T, n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train(model, session, x, y, steps=3, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(x).mean(0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reset_state(model)
    return session


def _run(model, x):
    with torch.no_grad():
        out = model(x)
    reset_state(model)
    return out


def _neurons(model):
    return [m for m in model.modules() if isinstance(m, LIF)]


# -- BatchNorm folding ---------------------------------------------------------------------------

def test_bn_fold_matches_eval_batchnorm_in_float64_and_rebuilds_from_spec():
    model = _conv1d().double()
    model.train()
    x = _data()[0].double()
    for _ in range(3):
        model(x)
        reset_state(model)
    model.eval()
    ref = [model.features[0].bn(model.features[0].conv(x))]
    paths = fold_batchnorm_(model)
    assert paths == ["classifier.bn0", "features.0.bn", "features.1.bn"]
    got = model.features[0].conv(x)
    assert torch.allclose(got, ref[0], rtol=0, atol=1e-12)  # float64: one rounding apart
    rebuilt = from_spec(model.spec).double()
    rebuilt.load_state_dict(model.state_dict())  # same keys: BN gone, conv biases present
    assert isinstance(rebuilt.features[0].bn, torch.nn.Identity)


def test_bn_fold_refuses_a_batchnorm_in_a_residual_block_by_name():
    model = build("sew_resnet", in_channels=1, input_size=8, classes=10, widths=[4, 8],
                  blocks=[1, 1])
    with pytest.raises(ValueError, match=r"^features\.\S+: a BatchNorm"):
        fold_batchnorm_(model)


# -- scales --------------------------------------------------------------------------------------

def test_lsq_scale_gradient_is_round_minus_value_inside_and_qmax_outside():
    w = torch.tensor([0.30, -0.07, 0.011, 2.0, -3.0], dtype=torch.float64)
    q = WeightQuantizer(w, bits=3, scale="lsq").double()
    with torch.no_grad():
        q.scale.fill_(0.25)
    q(w).sum().backward()
    z = w / 0.25
    inside = z.abs() <= 3
    expected = torch.where(inside, z.round() - z, torch.sign(z) * 3).sum() * q.grad_factor
    assert torch.allclose(q.scale.grad, expected, rtol=1e-12, atol=0)
    assert q.grad_factor == 1 / math.sqrt(5 * 3)


def test_least_squares_scale_never_fits_worse_than_max_and_beats_it_at_2_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 32, dtype=torch.float64) * torch.rand(64, 1, dtype=torch.float64)
    for bits in (2, 3, 4):
        for per_channel in (False, True):
            errs = []
            for s in (max_scale(w, bits, per_channel), least_squares_scale(w, bits, per_channel)):
                m = 2 ** (bits - 1) - 1
                view = s.view(-1, 1) if s.dim() else s
                errs.append(float(((w - (w / view).round().clamp(-m, m) * view) ** 2).sum()))
            assert errs[1] <= errs[0]
            if bits == 2:
                assert errs[1] < 0.9 * errs[0]


def test_two_bit_max_scale_zeroes_most_weights_least_squares_keeps_them():
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    zero = {mode: float((WeightQuantizer(w, 2, scale=mode)(w) == 0).float().mean())
            for mode in ("max", "least_squares")}
    assert zero["max"] > 0.8 and zero["least_squares"] < 0.6


# -- the membrane on the integer grid ------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("scale", ["max", "lsq", "least_squares"])
def test_membrane_quant_finalize_and_artifact_keep_every_output_bit_for_bit(
        per_channel, scale, tmp_path):
    model = _conv1d()
    x, y = _data()
    session = _train(model, attach(model, [UniformQuantization(
        weight_bits=4, per_channel=per_channel, scale=scale, membrane_bits=4)]), x, y)
    model.eval()
    before = _run(model, x)
    final = session.finalize()
    assert torch.equal(_run(final, x), before)
    loaded = load(save(final, tmp_path / "a"))
    assert torch.equal(_run(loaded, x), before)
    for name, m in final.named_modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear)):
            s = m.weight_scale.view(-1, *([1] * (m.weight.dim() - 1))) if per_channel else \
                m.weight_scale
            codes = (m.weight / s).round()
            assert torch.equal(codes * s + 0.0, m.weight), name  # weight = scale · codes exactly
            assert int(codes.abs().max()) <= 7, name


def test_stored_membrane_is_always_on_its_grid_within_its_bits():
    model = _conv1d(neuron_params={"v_reset": None})
    x, y = _data()
    session = _train(model, attach(model, [UniformQuantization(weight_bits=4, membrane_bits=3)]),
                     x, y)
    final = session.finalize().eval()
    for n in _neurons(final):
        n.record_v = True
    with torch.no_grad():
        final(x)
    for n in _neurons(final):
        u = (n.v_seq.double() / n.membrane_scale.double()).round()
        assert torch.equal((u * n.membrane_scale.double()).float(), n.v_seq)  # on the grid
        assert int(u.abs().max()) <= 3
        theta = math.ceil(float(n.v_threshold) / float(n.membrane_scale))
        assert theta <= 3  # membrane_range 1: the grid holds the threshold
    reset_state(final)


def _tie_model():
    """A finalized MINT MLP (IF neurons) set by hand: input scale 1, weight grid 1/4, V_th 1, so
    the threshold is θ = 4 grid steps and the charge at t = 0 is exactly the accumulator."""
    model = build("mlp", in_features=4, classes=2, widths=[3], neuron="if")
    session = attach(model, [MINT(weight_bits=4, membrane_bits=8, edge_bits=None)])
    model(torch.ones(1, 1, 4))
    reset_state(model)
    final = session.finalize().eval()
    fc, n = final.features[0].fc, final.features[0].act
    with torch.no_grad():
        fc.input_scale.fill_(1.0)
        fc.weight_scale.fill_(0.25)
        fc.weight.copy_(torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0], [2, 2, 0, 0]]) * 0.25)
        fc.bias.zero_()
        n.input_grid.fill_(0.25)
        n.membrane_scale.fill_(0.25)
    return final


def test_spikes_fire_on_exact_threshold_ties_and_not_one_step_below():
    final = _tie_model()
    spikes = final.features(torch.ones(1, 1, 4))  # accumulators 4, 3, 4 against θ = 4
    reset_state(final)
    assert spikes.flatten().tolist() == [1.0, 0.0, 1.0]


def test_membrane_bad_input_is_one_line_naming_the_field():
    cases = [({"membrane_bits": 1}, "membrane_bits"), ({"membrane_bits": 17}, "membrane_bits"),
             ({"membrane_bits": 4, "membrane_range": 0.5}, "membrane_range"),
             ({"membrane_bits": 4, "mode": "ptq"}, "membrane_bits needs mode qat"),
             ({"weight_bits": 9}, "weight_bits"), ({"scale": "mse"}, "scale"),
             ({"membrane_bits": 4, "include": ["features.0.conv"]}, "include"),
             ({"membrane_bits": 4, "input_bits": 1}, "input_bits")]
    for kwargs, field in cases:
        with pytest.raises(ValueError, match=field) as e:
            UniformQuantization(**kwargs)
        assert "\n" not in str(e.value)


def test_residual_networks_are_refused_by_module_name():
    model = build("sew_resnet", in_channels=1, input_size=8, classes=10, widths=[4, 8],
                  blocks=[1, 1])
    for method in (UniformQuantization(membrane_bits=4), MINT()):
        with pytest.raises(ValueError, match=r"^features\.") as e:
            attach(model, [method])
        assert "\n" not in str(e.value)


def test_hard_reset_to_a_nonzero_potential_is_refused_by_name():
    model = _conv1d(neuron_params={"v_reset": -0.5})
    with pytest.raises(ValueError, match=r"^features\.0\.act: .*v_reset=-0.5"):
        attach(model, [UniformQuantization(membrane_bits=4)])


# -- MINT ----------------------------------------------------------------------------------------

def test_mint_weights_and_membrane_share_one_scale_parameter_that_learns_from_both():
    model = _conv1d()
    x, y = _data()
    mint = MINT(weight_bits=4, membrane_bits=4)
    attach(model, [mint])
    layers = [m for m in model.modules() if hasattr(m, "weight_quant")]
    scales = mint.shared_scales()
    assert len(scales) == len(layers) == 4
    for layer, s in zip(layers, scales, strict=True):
        assert layer.weight_quant.scale is s and isinstance(s, torch.nn.Parameter)
    neurons = _neurons(model)
    assert all(n.grid_source[0] is layer for n, layer in zip(neurons, layers, strict=False))
    assert all(getattr(n, "membrane_scale", None) is None for n in neurons)  # unit = the grid

    def grads(detach_membrane):
        for n in neurons:
            n.membrane_scale = None
        if detach_membrane:  # the same unit, as a constant: only the weight path reaches s
            model(x)
            reset_state(model)
            for n in neurons:
                n.membrane_scale = n.grid_source[0].grid_.detach().clone()
        model.zero_grad()
        out = model(x)
        F.cross_entropy(out.mean(0), y).backward()
        reset_state(model)
        return out.detach(), [s.grad.clone() for s in scales]

    out_both, both = grads(False)
    out_weight, weight_only = grads(True)
    assert torch.equal(out_both, out_weight)  # the same forward
    assert any(not torch.equal(a, b) for a, b in zip(both[:3], weight_only[:3], strict=True))


def test_mint_threshold_is_an_integer_of_the_shared_grid_after_finalize(tmp_path):
    model = _conv1d()
    x, y = _data()
    session = _train(model, attach(model, [MINT(weight_bits=2, membrane_bits=2)]), x, y)
    final = session.finalize().eval()
    for n in _neurons(final):
        assert torch.equal(n.membrane_scale, n.input_grid)
    out = _run(final, x)
    assert torch.equal(_run(load(save(final, tmp_path / "m")), x), out)


def test_mint_bad_input():
    for kwargs, field in [({"weight_bits": 0}, "weight_bits"), ({"membrane_bits": 1},
                          "membrane_bits"), ({"edge_bits": 12}, "edge_bits"),
                          ({"tanh": "yes"}, "tanh")]:
        with pytest.raises(ValueError, match=field):
            MINT(**kwargs)


# -- the integer SNN agrees with the fake-quant model bit for bit --------------------------------

def _lowered_cases():
    conv1d = ("conv1d_net", {"in_channels": 1, "input_size": 40, "widths": [8, 8],
                             "hidden": [16], "neuron_params": {"v_threshold": 0.25}}, (1, 40))
    conv2d = ("conv_net", {"in_channels": 1, "input_size": 8, "widths": [4, 8], "pool": "avg",
                           "neuron": "if", "neuron_params": {"v_reset": None, "v_threshold": 0.25}},
              (1, 8, 8))
    mlp = ("mlp", {"in_features": 64, "widths": [32], "neuron": "plif",
                   "neuron_params": {"v_threshold": 0.25}}, (64,))
    return [(conv1d, {"name": "u", "weight_bits": 4, "membrane_bits": 4}),
            (conv1d, {"name": "u", "weight_bits": 2, "membrane_bits": 3, "per_channel": True,
                      "scale": "lsq"}),
            (conv2d, {"name": "u", "weight_bits": 3, "membrane_bits": 8,
                      "scale": "least_squares"}),
            (mlp, {"name": "m", "weight_bits": 2, "membrane_bits": 2}),
            (conv1d, {"name": "m", "weight_bits": 4, "membrane_bits": 4})]


@pytest.mark.parametrize("case", _lowered_cases(), ids=lambda c: f"{c[0][0]}-{c[1]}")
def test_integer_snn_gives_the_fake_quant_spikes_and_logits_bit_for_bit(case, tmp_path):
    from spikecompress.export import load_integer, save_integer, to_integer
    (family, spec, shape), cfg = case
    torch.manual_seed(0)
    model = build(family, classes=10, **spec)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 32, *shape, generator=g) * 4 - 1
    y = torch.randint(0, 10, (32,), generator=g)
    kw = {k: v for k, v in cfg.items() if k != "name"}
    method = UniformQuantization(**kw) if cfg["name"] == "u" else MINT(**kw)
    final = _train(model, attach(model, [method]), x, y).finalize().eval()
    neurons = [n for n in final.modules() if getattr(n, "membrane_bits", None) is not None]
    seen = []
    hooks = [n.register_forward_hook(lambda m, i, o: seen.append(o)) for n in neurons]
    with torch.no_grad():
        logits = final(x)
    for h in hooks:
        h.remove()
    reset_state(final)
    program = to_integer(final)
    assert torch.equal(program.logits(x), logits)
    acc, spikes = program(program.encode(x), record=True)
    assert acc.dtype == torch.int64
    assert torch.equal(acc.float() * program.scale, logits)
    assert len(spikes) == len(seen) == len(neurons)
    for int_s, fake_s in zip(spikes.values(), seen, strict=True):
        assert torch.equal(int_s, fake_s.long())  # every spiking layer, every step and sample
    assert sum(int(s.sum()) for s in seen) > 0
    save_integer(program, tmp_path)
    assert torch.equal(load_integer(tmp_path).logits(x), logits)


def test_measure_reports_the_integer_membrane_and_uses_the_int8_profile():
    from spikecompress.data import DataConfig, load_data
    from spikecompress.measurement import measure
    data = load_data(DataConfig(name="digits", T=2, batch_size=64, limit=64))
    results = {}
    for bits in (8, 2):
        torch.manual_seed(0)
        model = build("mlp", in_features=64, classes=10, widths=[16])
        x, y = next(iter(data.train))
        session = _train(model, attach(model, [UniformQuantization(membrane_bits=bits)]), x, y,
                         steps=1)
        results[bits] = measure(session.finalize().eval(), data, latency_repeats=1)
    m8, m2 = results[8], results[2]
    assert (m8.membrane_bits, m2.membrane_bits) == (8, 2)
    assert m8.profile == m2.profile == "45nm-int8"
    assert m8.weight_bits == 4
    # L1 counts membrane reads and writes at b_u bits: fewer bits, less memory energy
    assert m2.energy_pj_per_sample["L1"] < m8.energy_pj_per_sample["L1"]
