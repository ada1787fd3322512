import pytest
import torch

from spikecompress.snn import IF, LIF, PLIF, ATan, Rectangular, Sigmoid, Triangle, reset_state


def _seq(values, channels=1):
    """A [T, B=1, C] input from a list of per-step values."""
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1).expand(-1, 1, channels).clone()


def test_lif_hand_computed_trajectory_with_tie_on_threshold():
    # tau=2, decay_input: H = V + (X − V)/2. X=2 from V=0 gives H = 1.0 exactly: ties fire (eq. 5).
    lif = LIF(tau=2.0, v_threshold=1.0, v_reset=0.0, record_v=True).double()
    s = lif(_seq([1.0, 1.0, 2.0, 2.0, 0.5]))
    assert s.flatten().tolist() == [0, 0, 1, 1, 0]
    assert lif.h_seq.flatten().tolist() == [0.5, 0.75, 1.375, 1.0, 0.25]
    assert lif.v_seq.flatten().tolist() == [0.5, 0.75, 0.0, 0.0, 0.25]


def test_soft_reset_subtracts_threshold():
    lif = LIF(tau=2.0, v_threshold=1.0, v_reset=None, record_v=True).double()
    s = lif(_seq([1.0, 1.0, 2.0, 2.0, 0.5]))
    assert s.flatten().tolist() == [0, 0, 1, 1, 0]
    assert lif.h_seq.flatten().tolist() == [0.5, 0.75, 1.375, 1.1875, 0.34375]
    assert lif.v_seq.flatten().tolist() == [0.5, 0.75, 0.375, 0.1875, 0.34375]


def test_hard_reset_to_nonzero_v_reset_without_input_decay():
    # decay_input=False: H = V − (V − V_reset)/τ + X, V[-1] = V_reset = −0.5.
    lif = LIF(tau=2.0, v_reset=-0.5, decay_input=False, record_v=True).double()
    s = lif(_seq([1.0, 0.75, 0.875, 0.0]))
    assert lif.h_seq.flatten().tolist() == [0.5, 0.75, 1.0, -0.5]
    assert s.flatten().tolist() == [0, 0, 1, 0]
    assert lif.v_seq.flatten().tolist() == [0.5, 0.75, -0.5, -0.5]


def test_if_integrates_without_leak_and_per_channel_thresholds():
    neuron = IF(v_threshold=torch.tensor([1.0, 0.5])).double()
    s = neuron(_seq([0.6, 0.6, 0.6, 0.6], channels=2))  # [T=4, B=1, C=2]
    assert s[:, 0, 0].tolist() == [0, 1, 0, 1]
    assert s[:, 0, 1].tolist() == [1, 1, 1, 1]


def test_per_channel_tau_equals_separate_scalar_neurons():
    x = torch.rand(6, 3, 2, 5) * 2  # [T, B, C, L]
    joint = LIF(tau=torch.tensor([2.0, 5.0]), v_threshold=torch.tensor([1.0, 0.7]))(x)
    for c, (tau, vth) in enumerate([(2.0, 1.0), (5.0, 0.7)]):
        assert torch.equal(joint[:, :, c], LIF(tau=tau, v_threshold=vth)(x[:, :, c]))


def test_per_channel_parameter_must_match_channel_dim():
    with pytest.raises(ValueError, match="3 channels"):
        LIF(v_threshold=torch.ones(3))(torch.rand(2, 1, 4, 5))


CONFIGS = [
    dict(),
    dict(v_reset=None),
    dict(detach_reset=True),
    dict(v_reset=None, detach_reset=True, decay_input=False),
    dict(
        v_reset=-0.2, tau=torch.tensor([1.5, 3.0, 8.0]), v_threshold=torch.tensor([1.0, 0.4, 0.7])
    ),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("surrogate", [ATan(), Sigmoid(), Triangle(), Rectangular()])
@pytest.mark.parametrize("record_v", [False, True])  # the kernel stores H only when recording
def test_multistep_equals_step_loop_forward_and_gradients(kwargs, surrogate, record_v):
    """The fused BPTT kernel gives the same spikes and gradients as plain autograd step by step."""
    lif = LIF(surrogate=surrogate, record_v=record_v, **kwargs).double()
    lif.v_threshold.requires_grad_(True)
    lif.tau.requires_grad_(True)
    x = (torch.randn(6, 2, 3, 4, dtype=torch.float64) * 1.5).requires_grad_(True)
    w = torch.randn(6, 2, 3, 4, dtype=torch.float64)
    params = [x, lif.v_threshold, lif.tau]

    s_fused = lif(x)
    g_fused = torch.autograd.grad((s_fused * w).sum(), params)
    reset_state(lif)
    s_loop = torch.stack([lif.single_step(x[t]) for t in range(6)])
    g_loop = torch.autograd.grad((s_loop * w).sum(), params)

    assert torch.equal(s_fused, s_loop)
    assert 0.05 < s_fused.mean() < 0.95  # both spiking and silent steps are exercised
    for a, b in zip(g_fused, g_loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("batch", [1, 6000])  # one slice; several slices (dynamics.CHUNK_ELEMENTS)
def test_inference_path_equals_the_autograd_kernel(kwargs, batch):
    """Without grad the neurons skip the autograd node: the same spikes and final membrane."""
    lif = LIF(**kwargs)
    x = torch.randn(4, batch, 3, 4, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        s_fast, v_fast = lif(x), lif.v
    reset_state(lif)
    s_ref = lif(x.requires_grad_(True))
    assert s_ref.grad_fn is not None and s_fast.grad_fn is None
    assert torch.equal(s_fast, s_ref.detach()) and torch.equal(v_fast, lif.v)
    assert 0.02 < s_fast.mean() < 0.95


def test_plif_learns_tau_and_matches_step_loop():
    plif = PLIF(init_tau=3.0, channels=3).double()
    assert torch.allclose(plif.tau, torch.full((3,), 3.0, dtype=torch.float64))
    x = torch.randn(5, 2, 3, dtype=torch.float64) * 2
    w = torch.randn(5, 2, 3, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad((plif(x) * w).sum(), [plif.w])
    reset_state(plif)
    s_loop = torch.stack([plif.single_step(x[t]) for t in range(5)])
    (g_loop,) = torch.autograd.grad((s_loop * w).sum(), [plif.w])
    torch.testing.assert_close(g_fused, g_loop)
    assert g_fused.abs().sum() > 0


def test_state_persists_until_reset():
    lif = LIF()
    x = torch.rand(3, 2, 8) * 1.2
    first = lif(x)
    carried = lif(x)  # continues from the membrane left by the first call
    assert not torch.equal(first, carried)
    reset_state(lif)
    assert lif.v is None
    assert torch.equal(lif(x), first)


def test_state_reinitialised_when_batch_shape_changes():
    lif = LIF()
    lif(torch.rand(3, 4, 8))
    small = torch.rand(3, 2, 8)
    out = lif(small)
    assert torch.equal(out, LIF()(small))


def test_state_is_not_a_buffer_and_not_saved():
    lif = LIF(v_threshold=torch.ones(4))
    lif(torch.rand(2, 1, 4))
    assert set(lif.state_dict()) == {"tau", "v_threshold"}


def test_record_v_off_keeps_nothing():
    lif = LIF()
    lif(torch.rand(3, 2, 4))
    assert lif.v_seq is None and lif.h_seq is None


def test_spikes_are_binary_in_input_dtype_and_shape():
    x = torch.randn(4, 2, 3, 5, 5) * 3
    s = LIF()(x)
    assert s.shape == x.shape and s.dtype == x.dtype
    assert set(s.unique().tolist()) <= {0.0, 1.0}


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="tau"):
        LIF(tau=0.5)
    with pytest.raises(ValueError, match="init_tau"):
        PLIF(init_tau=1.0)
    with pytest.raises(ValueError, match=r"expected x_seq of shape \[T, B, ...\], got \(4,\)"):
        LIF()(torch.rand(4))
