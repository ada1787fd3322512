"""Neurons with another framework's update (snn.semantics): bit-exact against that framework."""

import pytest
import torch

from _oracles import oracle
from spikecompress.snn import IF, LIF, PLIF


def _x(T=12, B=8, C=40):
    g = torch.Generator().manual_seed(0)
    return torch.randn(T, B, C, generator=g) * 1.5


@pytest.mark.parametrize("kind, kw", [
    ("lif", {"tau": 2.0}),
    ("lif", {"tau": 3.0, "decay_input": False, "v_reset": None}),
    ("lif", {"tau": 5.0, "v_reset": -0.3, "v_threshold": 0.7}),
    ("if", {"v_reset": 0.2}),
    ("plif", {"init_tau": 3.0}),
])
def test_spikingjelly_update_is_bit_exact(kind, kw):
    sjn = oracle("spikingjelly.activation_based.neuron")
    sj_cls = {"lif": sjn.LIFNode, "if": sjn.IFNode, "plif": sjn.ParametricLIFNode}[kind]
    sj = sj_cls(step_mode="m", **kw)
    ours = {"lif": LIF, "if": IF, "plif": PLIF}[kind](**kw, semantics="spikingjelly")
    if kind == "plif":
        ours.w.data.copy_(sj.w.data)
    x = _x()
    ref = sj(x)
    assert ref.sum() > 30
    assert torch.equal(ours(x), ref)


@pytest.mark.parametrize("mechanism, v_reset", [("subtract", None), ("zero", 0.0)])
def test_snntorch_leaky_is_bit_exact(mechanism, v_reset):
    snn = oracle("snntorch")
    beta = torch.linspace(0.5, 0.95, 40)
    leaky = snn.Leaky(beta=beta, threshold=0.8, reset_mechanism=mechanism)
    x = _x()
    mem = leaky.reset_mem()
    ref = []
    for step in x:
        spk, mem = leaky(step, mem)
        ref.append(spk)
    ours = LIF(decay_input=False, v_threshold=0.8, v_reset=v_reset, semantics="snntorch")
    ours.leak = beta.clone()
    out = ours(x)
    assert torch.stack(ref).sum() > 50
    assert torch.equal(out, torch.stack(ref))


def test_ties_fire_in_spikingjelly_and_not_in_snntorch():
    # dyadic: the charge reaches the threshold exactly at step 2
    x = torch.tensor([0.5, 0.5, 0.0]).view(3, 1, 1)
    sj = IF(v_threshold=1.0, semantics="spikingjelly")
    assert sj(x).flatten().tolist() == [0.0, 1.0, 0.0]
    snt = LIF(decay_input=False, v_threshold=1.0, v_reset=None, semantics="snntorch")
    snt.leak = torch.tensor(1.0)
    assert snt(x).flatten().tolist() == [0.0, 0.0, 0.0]
    # snnTorch's reset lags one step: 0.75 + 0.5 = 1.25 fires at step 1, its reset lands at step 2
    snt.v = None
    out = snt(torch.tensor([0.75, 0.5, 0.0, 0.0]).view(4, 1, 1)).flatten().tolist()
    assert out == [0.0, 1.0, 0.0, 0.0] and snt.v.item() == 0.25


@pytest.mark.parametrize("semantics", ["spikingjelly", "snntorch"])
def test_single_step_equals_multi_step_and_state_carries_over(semantics):
    def make():
        n = LIF(tau=2.0, decay_input=False, v_reset=None, semantics=semantics, record_v=True)
        n.leak = torch.tensor(0.75) if semantics == "snntorch" else None
        return n
    x = _x(T=6)
    full = make()(x)
    step = make()
    assert torch.equal(torch.stack([step.single_step(xt) for xt in x]), full)
    halves = make()
    assert torch.equal(torch.cat([halves(x[:3]), halves(x[3:])]), full)
    assert halves.v_seq.shape == (3, 8, 40)


def test_semantics_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="semantics must be one of"):
        LIF(semantics="norse-ish")
    with pytest.raises(ValueError, match="IF: semantics 'snntorch' is snnTorch's Leaky"):
        IF(semantics="snntorch")
    with pytest.raises(ValueError, match="v_reset 0.5"):
        LIF(v_reset=0.5, semantics="snntorch")
    with pytest.raises(ValueError, match="needs its decay β in `leak`"):
        LIF(semantics="snntorch")(torch.zeros(2, 1, 3))
