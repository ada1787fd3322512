"""BNTT (Kim & Panda 2021): one BatchNorm per time step, γ only, eps 1e-4, momentum 0.1."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikecompress import snn
from spikecompress.snn import BNTT, BatchNorm2d, BNTT1d, BNTT2d


def _ref_step(x, mean, var, gamma, eps=1e-4):
    """Eval BN of one step in float64: γ (x − μ) / sqrt(σ² + ε), channels in dim 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return gamma.view(shape) * (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)


def test_it_is_exported_and_owns_steps_independent_gammas_and_statistics():
    assert snn.BNTT is BNTT and snn.BNTT1d is BNTT1d and snn.BNTT2d is BNTT2d
    m = BNTT2d(5, steps=3)
    assert (m.eps, m.momentum, m.num_features, m.steps) == (1e-4, 0.1, 5, 3)
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    assert set(m.state_dict()) == {"weight", "running_mean", "running_var", "num_batches_tracked"}
    assert m.weight.shape == m.running_mean.shape == m.running_var.shape == (3, 5)
    assert torch.equal(m.weight.detach(), torch.ones(3, 5))
    assert torch.equal(m.running_mean, torch.zeros(3, 5))
    assert torch.equal(m.running_var, torch.ones(3, 5))
    assert int(m.num_batches_tracked) == 0
    # independent storage: moving one step's γ moves nothing else
    with torch.no_grad():
        m.weight[1, 2] = 7.0
    assert int((m.weight != 1).sum()) == 1


def test_there_is_no_beta():
    m = BNTT1d(4, steps=2)
    assert m.bias is None
    assert "bias" not in dict(m.named_parameters()) and "bias" not in m.state_dict()
    # a channel constant over the batch normalises to exactly 0 in training: no shift is added
    x = torch.full((2, 6, 4), 3.0)
    assert torch.equal(m.train()(x), torch.zeros_like(x))


def test_training_normalises_each_step_with_its_own_batch_statistics():
    torch.manual_seed(0)
    m = BNTT2d(3, steps=4).double().train()
    with torch.no_grad():
        m.weight.uniform_(0.5, 2.0)
    x = torch.randn(4, 5, 3, 2, 2, dtype=torch.float64) * torch.arange(1.0, 5.0).view(4, 1, 1, 1, 1)
    y = m(x)
    for t in range(4):
        dims = (0, 2, 3)
        mean, var = x[t].mean(dims), x[t].var(dims, unbiased=False)
        torch.testing.assert_close(y[t], _ref_step(x[t], mean, var, m.weight[t].detach()),
                                   rtol=1e-12, atol=1e-12)
        n = x[t].numel() // 3
        torch.testing.assert_close(m.running_mean[t], 0.1 * mean, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(m.running_var[t], 0.9 + 0.1 * var * n / (n - 1),
                                   rtol=1e-12, atol=1e-15)
    assert int(m.num_batches_tracked) == 1


def test_a_training_forward_updates_only_the_rows_of_the_steps_whose_inputs_changed():
    torch.manual_seed(1)
    x = torch.randn(3, 6, 2, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[1] = x2[1] * 3.0 + 1.0  # only step 1 differs
    a, b = BNTT1d(2, steps=3).double().train(), BNTT1d(2, steps=3).double().train()
    ya, yb = a(x), b(x2)
    for name in ("running_mean", "running_var"):
        ra, rb = getattr(a, name), getattr(b, name)
        assert torch.equal(ra[0], rb[0]) and torch.equal(ra[2], rb[2]), name
        assert not torch.equal(ra[1], rb[1]), name
    # step 1's statistics come from step 1's inputs alone: mean 3·μ + 1, variance 9·σ²
    torch.testing.assert_close(b.running_mean[1], 0.1 * x2[1].mean((0, 2)), rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(b.running_mean[1] - 0.1, 3 * a.running_mean[1], rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(b.running_var[1] - 0.9, 9 * (a.running_var[1] - 0.9), rtol=1e-12,
                               atol=1e-15)
    # and the other steps' outputs do not see step 1
    assert torch.equal(ya[0], yb[0]) and torch.equal(ya[2], yb[2])


def test_eval_uses_each_steps_own_running_statistics_and_gamma():
    torch.manual_seed(2)
    m = BNTT2d(3, steps=2).double().eval()
    with torch.no_grad():
        m.weight.uniform_(0.5, 2.0)
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 3, 3, 3, dtype=torch.float64)
    y = m(x)
    for t in range(2):
        want = _ref_step(x[t], m.running_mean[t], m.running_var[t], m.weight[t].detach())
        torch.testing.assert_close(y[t], want, rtol=1e-12, atol=1e-12)
    assert int(m.num_batches_tracked) == 0
    before = m.running_mean.clone()
    m(x)
    assert torch.equal(m.running_mean, before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eval_with_tied_rows_equals_a_standard_batchnorm_without_bias(dtype):
    torch.manual_seed(3)
    c, steps = 4, 3
    gamma, mean, var = torch.rand(c) + 0.5, torch.randn(c), torch.rand(c) + 0.5
    bntt = BNTT2d(c, steps).to(dtype).eval()
    bn = BatchNorm2d(c, eps=1e-4).to(dtype).eval()
    with torch.no_grad():
        bntt.weight.copy_(gamma.expand(steps, c))
        bntt.running_mean.copy_(mean.expand(steps, c))
        bntt.running_var.copy_(var.expand(steps, c))
        bn.weight.copy_(gamma)
        bn.bias.zero_()
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    x = torch.randn(steps, 5, c, 3, 3, dtype=dtype)
    got, want = bntt(x), bn(x)
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        ref = torch.stack([_ref_step(x[t], mean.double(), var.double(), gamma.double())
                           for t in range(steps)])
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(got, want)


def test_gradients_reach_only_the_gamma_row_of_each_step():
    m = BNTT1d(2, steps=3).train()
    x = torch.randn(3, 8, 2)
    m(x)[1].pow(2).sum().backward()  # a loss on step 1 only
    g = m.weight.grad
    assert torch.equal(g[0], torch.zeros(2)) and torch.equal(g[2], torch.zeros(2))
    assert bool((g[1] != 0).all())


def test_a_wrong_number_of_steps_is_one_line_naming_the_module_and_both_numbers():
    m = BNTT2d(3, steps=4)
    with pytest.raises(ValueError, match=r"^BNTT2d: x_seq has T = 3 time steps .* steps = 4") as e:
        m(torch.randn(3, 2, 3, 4, 4))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^BNTT1d: .*T = 5.*steps = 2"):
        BNTT1d(3, steps=2)(torch.randn(5, 2, 3))


@pytest.mark.parametrize("make, shape, message", [
    (lambda: BNTT2d(3, 2), (2, 4, 3, 5), "[T, B, C, H, W]"),
    (lambda: BNTT1d(3, 2), (2, 4, 3, 5, 5), "[T, B, C] or [T, B, C, L]"),
    (lambda: BNTT1d(3, 2), (2, 4, 5), "num_features = 3"),
])
def test_bad_inputs_are_refused_by_shape(make, shape, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make()(torch.randn(*shape))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_features=0, steps=2), "num_features must be an int >= 1"),
    (dict(num_features=3, steps=0), "steps must be an int >= 1"),
    (dict(num_features=3, steps=True), "steps must be an int >= 1"),
    (dict(num_features=3, steps=2, eps=0.0), "eps must be a number > 0"),
    (dict(num_features=3, steps=2, momentum=1.5), "momentum must be a number in"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=f"^BNTT2d: {message}"):
        BNTT2d(**kwargs)


def test_keep_channels_slices_every_steps_gamma_and_statistics():
    m = BNTT1d(4, steps=2)
    with torch.no_grad():
        m.weight.copy_(torch.arange(8.0).view(2, 4))
        m.running_mean.copy_(torch.arange(8.0).view(2, 4) + 10)
        m.running_var.copy_(torch.arange(8.0).view(2, 4) + 20)
    m.keep_channels_(torch.tensor([0, 3]))
    assert m.num_features == 2 and isinstance(m.weight, nn.Parameter)
    assert torch.equal(m.weight.detach(), torch.tensor([[0.0, 3.0], [4.0, 7.0]]))
    assert torch.equal(m.running_mean, torch.tensor([[10.0, 13.0], [14.0, 17.0]]))
    assert torch.equal(m.running_var, torch.tensor([[20.0, 23.0], [24.0, 27.0]]))
    assert m(torch.randn(2, 3, 2)).shape == (2, 3, 2)


def test_it_matches_functional_batch_norm_per_step_in_float32_training():
    """The folded [B, T·C] call is one F.batch_norm per (step, channel): same statistics."""
    torch.manual_seed(4)
    m = BNTT2d(2, steps=2).train()
    x = torch.randn(2, 6, 2, 3, 3)
    y = m(x)
    for t in range(2):
        rm, rv = torch.zeros(2), torch.ones(2)
        want = F.batch_norm(x[t], rm, rv, torch.ones(2), None, True, 0.1, 1e-4)
        torch.testing.assert_close(y[t], want)
        torch.testing.assert_close(m.running_mean[t], rm)
        torch.testing.assert_close(m.running_var[t], rv)
