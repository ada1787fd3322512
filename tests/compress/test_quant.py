import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from spikecompress.compress import attach, is_plain, select
from spikecompress.compress.prune.magnitude import MagnitudePruning
from spikecompress.compress.prune.masks import mask_of
from spikecompress.compress.quant.fake_quant import quantize, quantize_codes
from spikecompress.compress.quant.quantizers import WeightQuantizer, least_squares_scale
from spikecompress.compress.quant.uniform import UniformQuantization
from spikecompress.compress.quant.weight_sharing import (
    SharedWeights,
    WeightSharing,
    cluster,
    compression_ratio,
    kmeans_1d,
    shared_of,
)
from spikecompress.export import read_spec, save, size_bytes
from spikecompress.export.codec import encode
from spikecompress.models import build
from spikecompress.snn import reset_state


def _model(widths=(4, 8)):
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=list(widths))


def _batch(g):
    return torch.rand(2, 8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def _train(model, session, steps=3, opt=None):
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        x_seq, y = _batch(g)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / steps)
        reset_state(model)


def _grads_through(model):
    """One backward with cached parametrizations → {layer: (grad of W_eff, grad of original)}."""
    targets = select(model)
    x_seq, y = _batch(torch.Generator().manual_seed(1))
    model.zero_grad()
    with parametrize.cached():
        w_eff = {n: m.weight for n, m in targets}
        for w in w_eff.values():
            w.retain_grad()
        F.cross_entropy(model(x_seq).mean(0), y).backward()
    reset_state(model)
    return {n: (w_eff[n].grad, m.parametrizations.weight.original.grad) for n, m in targets}


def _distinct(t):
    return torch.unique(t).numel()


@pytest.mark.parametrize("per_channel", [False, True])
def test_qat_forward_is_quantized_and_gradient_is_straight_through(per_channel):
    model = _model()
    attach(model, [UniformQuantization(weight_bits=3, per_channel=per_channel, scale="max")])
    for _, m in select(model):
        original = m.parametrizations.weight.original
        assert torch.equal(m.weight, quantize(original.detach(), 3, per_channel))
        assert not torch.equal(m.weight, original)
    for g_eff, g_orig in _grads_through(model).values():
        assert g_eff is not None and g_eff.abs().sum() > 0
        assert torch.equal(g_orig, g_eff)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_finalized_uniform_weights_hold_at_most_2b_minus_1_values(bits):
    model = _model()
    session = attach(model, [UniformQuantization(weight_bits=bits, per_channel=False,
                                                 scale="max")])
    _train(model, session)
    plain = session.finalize()
    assert is_plain(plain) and not any("parametrizations" in k for k in plain.state_dict())
    for _, m in select(plain):
        assert _distinct(m.weight) <= 2**bits - 1
        codes, scale = quantize_codes(m.weight, bits, False)
        assert torch.equal(codes.float() * scale, m.weight)  # exactly on the grid


def test_per_channel_grid_is_per_output_channel():
    model = _model()
    session = attach(model, [UniformQuantization(weight_bits=2, per_channel=True)])
    _train(model, session)
    for _, m in select(session.finalize()):
        rows = m.weight.detach().flatten(1)  # [C_out, fan_in]
        scale = rows.abs().amax(1)  # ternary: each row is {-s_c, 0, s_c}
        assert torch.all(scale > 0) and _distinct(scale) > 1
        assert torch.all((rows == 0) | (rows.abs() == scale[:, None]))


def test_one_bit_gives_two_values_plus_and_minus_s():
    w = torch.randn(6, 5)
    q = quantize(w, 1, per_channel=False)
    s = w.abs().mean()
    assert torch.allclose(q.unique(), torch.stack([-s, s]))
    model = _model()
    session = attach(model, [UniformQuantization(weight_bits=1, per_channel=False)])
    _train(model, session)
    for _, m in select(session.finalize()):
        lo, hi = m.weight.unique()
        assert lo == -hi and hi > 0


def test_ptq_changes_nothing_during_training_and_rounds_at_finalize():
    model, twin = _model(), _model()
    method = UniformQuantization(weight_bits=4, mode="ptq", per_channel=False, scale="max")
    session = attach(model, [method])
    assert is_plain(model)
    _train(model, session)
    _train(twin, attach(twin, []))
    state, twin_state = model.state_dict(), twin.state_dict()
    assert all(torch.equal(state[k], twin_state[k]) for k in state)
    trained = {n: m.weight.detach().clone() for n, m in select(model)}
    for n, m in select(session.finalize()):
        assert torch.equal(m.weight, quantize(trained[n], 4, False))


@pytest.mark.parametrize("bits", [1, 4])
def test_fake_quant_value_is_exactly_on_the_grid(bits):
    w = torch.randn(64, 32, requires_grad=True)
    out = WeightQuantizer(w, bits)(w)
    assert torch.equal(out, quantize(w.detach(), bits, False))
    assert _distinct(out) <= (2 if bits == 1 else 2**bits - 1)
    assert not torch.signbit(out[out == 0]).any()


def test_artifact_bytes_shrink_to_about_b_over_32(tmp_path):
    sizes, specs = {}, {}
    u4 = UniformQuantization(weight_bits=4, per_channel=False)
    for name, methods in [("fp32", []), ("u4", [u4]), ("ws16", [WeightSharing(clusters=16)])]:
        model = _model((32, 64))
        session = attach(model, methods)
        _train(model, session, steps=2)
        path = save(session.finalize(), tmp_path / name)
        sizes[name], specs[name] = size_bytes(path), read_spec(path)["tensors"]
        if name != "fp32":
            w = dict(select(model))["features.1.conv"].weight  # [64, 32, 3, 3]
            stored = sum(p.numel() * p.element_size() for p in encode("w", w)[0].values())
            assert stored <= w.numel() * 4 / 8 + 16 * 4  # 4-bit indices + codebook
    # uniform: b-bit codes beside the weight_scale buffer; k-means: a 16-entry codebook
    for name, fmt in (("u4", "scaled_codes"), ("ws16", "codebook")):
        entry = specs[name]["features.1.conv.weight"]
        assert entry["format"] == fmt and entry["bits"] == 4
        assert sizes[name] < 0.25 * sizes["fp32"]  # BN, neuron and spec bytes stay float


def test_kmeans_linear_init_is_deterministic_sorted_and_spans_the_weights():
    v = torch.randn(500)
    c, idx = kmeans_1d(v, 16)
    c2, idx2 = kmeans_1d(v.clone(), 16)
    assert torch.equal(c, c2) and torch.equal(idx, idx2)
    assert torch.all(c[1:] >= c[:-1]) and v.min() <= c.min() and c.max() <= v.max()
    assert torch.equal(idx, torch.searchsorted((c[1:] + c[:-1]) / 2, v))  # nearest centroid
    for j in range(16):
        assert torch.allclose(v[idx == j].mean(), c[j])
    w = torch.tensor([0.0, -1.0, 0.0, 1.0, 0.9, -0.2])
    assert cluster(w, 2).tolist() == [2, 0, 2, 1, 1, 0]  # zeros get slot k: not clustered


def test_shared_weights_gradient_is_the_sum_over_the_cluster():
    idx = torch.tensor([0, 1, 0, 2, 1, 0])
    w = torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0, 2.0], requires_grad=True)
    out = SharedWeights(idx, 2)(w)  # slot 2 = not clustered → 0
    assert out.tolist() == [2.0, 3.0, 2.0, 0.0, 3.0, 2.0]
    g = torch.tensor([1.0, 10.0, 2.0, 7.0, 20.0, 3.0])
    out.backward(g)
    assert w.grad.tolist() == [6.0, 30.0, 6.0, 0.0, 30.0, 6.0]


def test_centroid_sgd_step_is_lr_times_summed_member_gradients_and_indices_stay():
    model = _model()
    method = WeightSharing(clusters=8)
    attach(model, [method])
    targets = select(model)
    indices = {n: shared_of(m).indices.clone() for n, m in targets}
    before = {n: method.centroids(m) for n, m in targets}
    for _, m in targets:  # attach set each member weight to its centroid
        assert torch.allclose(m.parametrizations.weight.original, m.weight)
    grads = _grads_through(model)
    lr = 0.1
    torch.optim.SGD(model.parameters(), lr=lr).step()
    for n, m in targets:
        g_eff, g_orig = grads[n]
        g_c = torch.zeros(9).index_add_(0, indices[n], g_eff.reshape(-1))[:8]
        assert torch.allclose(g_orig.reshape(-1), torch.cat([g_c, torch.zeros(1)])[indices[n]])
        assert torch.allclose(method.centroids(m), before[n] - lr * g_c, atol=1e-6)
        assert _distinct(m.weight) <= 8


def test_weight_sharing_trains_with_adam_keeps_indices_and_finalizes_to_k_values():
    model = _model()
    method = WeightSharing(clusters=4)
    session = attach(model, [method])
    targets = select(model)
    indices = {n: shared_of(m).indices.clone() for n, m in targets}
    before = {n: method.centroids(m) for n, m in targets}
    _train(model, session)
    for n, m in targets:
        assert torch.equal(shared_of(m).indices, indices[n])
        assert not torch.equal(method.centroids(m), before[n])
    plain = session.finalize()
    assert is_plain(plain)
    for n, m in select(plain):
        flat = m.weight.reshape(-1)
        assert _distinct(flat) <= 4
        for j in range(4):
            assert _distinct(flat[indices[n] == j]) <= 1  # a cluster is one value


def test_weight_sharing_ptq_touches_nothing_until_finalize():
    model, twin = _model(), _model()
    session = attach(model, [WeightSharing(clusters=4, mode="ptq")])
    assert is_plain(model)
    _train(model, session)
    _train(twin, attach(twin, []))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(),
                                                 strict=True))
    a = session.finalize()
    b = attach(copy.deepcopy(twin), [WeightSharing(clusters=4, mode="ptq")]).finalize()
    for (_, m), (_, m2) in zip(select(a), select(b), strict=True):
        assert torch.equal(m.weight, m2.weight) and _distinct(m.weight) <= 4


@pytest.mark.parametrize("quant", [UniformQuantization(weight_bits=4, per_channel=False),
                                   UniformQuantization(weight_bits=1, per_channel=False),
                                   UniformQuantization(weight_bits=4, mode="ptq", scale="max",
                                                       per_channel=False),
                                   WeightSharing(clusters=4)], ids=repr)
@pytest.mark.parametrize("quant_first", [False, True])
def test_composition_with_magnitude_pruning_keeps_zeros(quant, quant_first):
    model = _model()
    prune = MagnitudePruning(sparsity=0.5, schedule="constant")
    methods = [quant, prune] if quant_first else [prune, quant]
    session = attach(model, [copy.deepcopy(m) for m in methods])
    _train(model, session)
    pruned = {n: mask_of(m).mask == 0 for n, m in select(model)}
    plain = session.finalize()
    assert is_plain(plain)
    levels = 2 if getattr(quant, "weight_bits", 0) == 1 else 15 if quant.NAME[0] == "u" else 4
    for n, m in select(plain):
        assert torch.all(m.weight[pruned[n]] == 0)
        assert _distinct(m.weight[m.weight != 0]) <= levels


def test_compression_ratio_matches_deep_compression_formula():
    assert compression_ratio(1000, 16) == pytest.approx(1000 * 32 / (1000 * 4 + 16 * 32))
    assert compression_ratio(10, 2, float_bits=16) == pytest.approx(160 / (10 + 32))


@pytest.mark.parametrize("make, field", [
    (lambda: UniformQuantization(weight_bits=0), "weight_bits"),
    (lambda: UniformQuantization(weight_bits=9), "weight_bits"),
    (lambda: UniformQuantization(weight_bits=True), "weight_bits"),
    (lambda: UniformQuantization(per_channel="yes"), "per_channel"),
    (lambda: UniformQuantization(mode="int"), "mode"),
    (lambda: UniformQuantization(edge_bits=0), "edge_bits"),
    (lambda: WeightSharing(clusters=1), "clusters"),
    (lambda: WeightSharing(clusters=257), "clusters"),
    (lambda: WeightSharing(mode="train"), "mode"),
])
def test_bad_fields_raise_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


@pytest.mark.parametrize("membrane_bits", [None, 4])
def test_edge_bits_apply_to_the_first_and_last_layer_only(membrane_bits):
    model = _model((4, 8, 8))
    session = attach(model, [UniformQuantization(weight_bits=2, edge_bits=8, per_channel=False,
                                                 scale="max", membrane_bits=membrane_bits)])
    _train(model, session, steps=1)
    layers = select(session.finalize())
    for i, (_, m) in enumerate(layers):
        codes = (m.weight / m.weight_scale).round()
        top = int(codes.abs().max())
        assert (top > 1) == (i in (0, len(layers) - 1))  # 8-bit edges use more than ternary
        assert top <= (127 if i in (0, len(layers) - 1) else 1)


def test_lsq_starts_from_the_least_squares_scale_or_the_papers_rule():
    w = torch.randn(8, 27)
    learned = WeightQuantizer(w, 4, per_channel=True, scale="lsq")
    assert torch.equal(learned.scale.detach(), least_squares_scale(w, 4, True))
    paper = WeightQuantizer(w, 4, per_channel=True, scale="lsq", lsq_init="paper")
    assert torch.allclose(paper.scale.detach(), w.abs().mean(1) * 2 / 7 ** 0.5)
    with pytest.raises(ValueError, match="lsq_init"):
        WeightQuantizer(w, 4, scale="lsq", lsq_init="mean")
