"""Norse models in (``interop.from_norse``): exact spikes and read-out, refusals, our whole stack.

Models whose layers Norse calls per step (cells, ``Lift``, a loop) convert to a per-step graph
and are bit-identical with any weights. The multi-step model below also calls a ``Linear`` on
x_seq directly (one GEMM over T·B rows), so its weights are put on a short dyadic grid
(``_exact.dyadic_``), where sums do not round in any order. The neurons' parameters are never
dyadic: their elementwise updates round identically on both sides.
"""

import warnings

import pytest
import torch
from torch import nn

import spikecompress as sc
from _exact import dyadic, dyadic_
from _oracles import oracle
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.surgery import remove_channels_
from spikecompress.compress.registry import METHODS
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.interop.norse import from_norse
from spikecompress.models import from_spec
from spikecompress.snn import reset_state
from spikecompress.snn.norse_neurons import NorseLI, NorseLIF, NorseLIFBox
from spikecompress.train import TrainConfig, Trainer

nt = oracle("norse.torch")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits", T=4))


def _lif(v_th=0.3, tau_mem_inv=90.0):
    """Non-default LIFParameters: every field that the update reads differs from Norse's."""
    return nt.LIFParameters(tau_syn_inv=torch.tensor(60.0),
                            tau_mem_inv=torch.as_tensor(tau_mem_inv), v_leak=torch.tensor(0.05),
                            v_th=torch.as_tensor(v_th), v_reset=torch.tensor(-0.1))


def _li():
    return nt.LIParameters(tau_syn_inv=torch.tensor(70.0), tau_mem_inv=torch.tensor(110.0),
                           v_leak=torch.tensor(0.02))


def _cell_net(seed: int = 1) -> nn.Module:
    """Norse's tutorial shape: conv → LIFCell → pool → flatten → linear → LIFCell → LILinearCell,
    with per-channel thresholds and time constants."""
    torch.manual_seed(seed)
    net = nt.SequentialState(
        nn.Conv2d(1, 8, 3, padding=1), nt.LIFCell(_lif(v_th=torch.linspace(0.2, 0.5, 8)
                                                         .view(8, 1, 1)), dt=0.005),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 32),
        nt.LIFCell(_lif(tau_mem_inv=torch.linspace(60.0, 140.0, 32)), dt=0.005),
        nt.LILinearCell(32, 10, _li(), dt=0.005))
    with torch.no_grad():
        net[0].weight.mul_(4.0)
        net[4].weight.mul_(6.0)
    return net.eval()


def _steps(net: nn.Module, x_seq: torch.Tensor, kinds) -> tuple[torch.Tensor, dict]:
    """Norse per step with the state carried: (stacked outputs, {module index: its outputs})."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.setdefault(n, []).append(
        out[0] if isinstance(out, tuple) else out)) for n, m in net.named_children()
        if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            state, outs = None, []
            for x in x_seq:
                out, state = net(x, state)
                outs.append(out)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(outs), {n: torch.stack(v) if len(v) > 1 else v[0]
                               for n, v in seen.items()}


def _ours(model: nn.Module, x_seq: torch.Tensor) -> tuple[torch.Tensor, dict]:
    seen = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out))
               for n, m in model.nodes.items()]
    try:
        reset_state(model)
        with torch.no_grad():
            out = model(x_seq)
        reset_state(model)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def _inputs(digits):
    random = dyadic(torch.rand(6, 5, 1, 8, 8) * 2)  # random, on a dyadic grid
    real = next(iter(digits.test))[0][:, :48]  # digits: multiples of 1/16
    return {"random": random, "digits": real}


@pytest.mark.filterwarnings("error::RuntimeWarning")  # bit-identical: no warning
def test_cell_net_spikes_and_readout_equal_norse_per_step(digits):
    net = _cell_net()
    model = from_norse(net, _inputs(digits)["digits"][0])
    assert model.spec["per_step"] is True
    assert [n["type"] for n in model.spec["nodes"]] == [
        "conv2d", "norse_lif", "maxpool2d", "flatten", "linear", "norse_lif", "linear",
        "norse_li"]
    assert model.nodes["1"].v_threshold.shape == (8,) and model.nodes["5"].dt == 0.005
    assert torch.equal(model.nodes["6_linear"].weight, net[6].input_weights)
    for what, x_seq in _inputs(digits).items():
        expected, theirs = _steps(net, x_seq, (nt.LIFCell, nt.LILinearCell))
        out, ours = _ours(model, x_seq)
        assert torch.equal(out, expected), what
        for layer in ("1", "5", "6"):
            assert torch.equal(ours[layer], theirs[layer]), (what, layer)
        rate = ours["5"].mean().item()
        assert 0.02 < rate < 0.9 and 0.02 < ours["1"].mean().item() < 0.9, (what, rate)


def test_multi_step_and_loop_forms_equal_norse(digits):
    box = nt.LIFBoxParameters(tau_mem_inv=torch.tensor(150.0), v_leak=torch.tensor(0.1),
                              v_th=torch.tensor(0.25), v_reset=torch.tensor(0.0))
    torch.manual_seed(2)
    multi = dyadic_(nt.SequentialState(
        nt.Lift(nn.Conv2d(1, 6, 3, padding=1)), nt.LIF(_lif(), dt=0.004),
        nt.Lift(nn.AvgPool2d(2)), nn.Flatten(2), nn.Linear(96, 24),
        nt.Lift(nt.LIFBoxCell(box, dt=0.004)), nt.Lift(nn.Linear(24, 10)), nt.LI(_li(), dt=0.004),
    )).eval()
    with torch.no_grad():
        multi[0].lifted_module.weight.mul_(4.0)
        multi[4].weight.mul_(6.0)
    dyadic_(multi)

    class Loop(nn.Module):  # a module calling cells in a loop over time, as in Norse's tutorials
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 20)
            self.lif = nt.LIFCell(_lif(), dt=0.01)
            self.out = nt.LILinearCell(20, 10, _li(), dt=0.01)

        def forward(self, x_seq):
            s1 = s2 = None
            outs = []
            for x in x_seq:
                z, s1 = self.lif(self.fc(x.flatten(1)), s1)
                v, s2 = self.out(z, s2)
                outs.append(v)
            return torch.stack(outs)

    torch.manual_seed(3)
    loop = Loop()
    with torch.no_grad():
        loop.fc.weight.mul_(8.0)
    inputs = _inputs(digits)
    for net, names, spiking in ((multi, ("1", "5", "7"), NorseLIF), (loop, ("lif", "out"), None)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            model = from_norse(net, inputs["digits"])
        if spiking is not None:
            assert isinstance(model.nodes["5"], NorseLIFBox) and isinstance(model.nodes["7"],
                                                                           NorseLI)
        for what, x_seq in inputs.items():
            seen = {}
            handles = [net.get_submodule(n).register_forward_hook(
                lambda _m, _i, out, n=n, seen=seen: seen.setdefault(n, []).append(
                    out[0] if isinstance(out, tuple) else out)) for n in names]
            with torch.no_grad():
                expected = net(x_seq)
            for h in handles:
                h.remove()
            expected = expected[0] if isinstance(expected, tuple) else expected
            out, ours = _ours(model, x_seq)
            assert torch.equal(out, expected), what
            for n in names:
                theirs = seen[n][0] if len(seen[n]) == 1 else torch.stack(seen[n])
                assert torch.equal(ours[n], theirs), (what, n)
            assert ours[names[-2]].sum() > 0  # the last spiking layer fires


def test_dt_times_tau_rounded_as_norse_does():
    """A Python-number τ⁻¹ (LIFBoxCell keeps it as given) makes Norse multiply dt · τ⁻¹ in
    doubles; where float32 rounds that product differently, dt becomes 1 and τ⁻¹ the product."""
    tau = next(t for t in (101.3 + 0.01 * k for k in range(1000))
               if torch.tensor(0.001 * t) != 0.001 * torch.tensor(t))
    cell = nt.LIFBoxCell(nt.LIFBoxParameters(tau_mem_inv=tau, v_leak=torch.tensor(0.0),
                                             v_th=torch.tensor(0.05)), dt=0.001)
    model = from_norse(cell, torch.rand(3, 7))
    neuron = model.nodes["root"]
    assert neuron.dt == 1.0 and neuron.tau_mem_inv == torch.tensor(0.001 * tau)
    x_seq = torch.rand(30, 3, 7)
    expected, _ = _steps(nt.SequentialState(cell), x_seq, ())
    out, _ = _ours(model, x_seq)
    assert torch.equal(out, expected) and out.sum() > 0


@pytest.mark.parametrize("net, example, match", [
    (lambda: nt.SequentialState(nn.Linear(4, 4), nt.LSNNCell(4, 4)), (2, 4),
     r"module '1' \(norse\.torch\.module\.lsnn\.LSNNCell\) has no spikecompress"),
    (lambda: nt.SequentialState(nn.Linear(4, 4), nt.LIFAdExCell()), (2, 4),
     r"module '1' \(norse\..*\.LIFAdExCell\) has no spikecompress"),
    (lambda: nt.SequentialState(nn.Linear(4, 4), nn.ReLU(), nt.LIFCell()), (2, 4),
     r"module '1' \(torch\..*\.ReLU\) has no spikecompress"),
    (lambda: nt.SequentialState(nn.Linear(4, 4), nt.LIFCell(nt.LIFParameters(method="adjoint"))),
     (2, 4), r"'1' \(norse\..*LIFCell\).*method 'adjoint'"),
    (lambda: nt.SequentialState(nn.Linear(4, 4), nt.LIFCell(), nt.LIF()), (2, 4),
     "mixes single-step cells"),
    (lambda: nt.SequentialState(nn.Conv1d(4, 4, 1), nt.LIF()), (3, 2, 4, 5),
     r"'0' \(torch\..*Conv1d\).*Lift"),
])
def test_refusals_name_the_module_and_its_class(net, example, match):
    with pytest.raises(ValueError, match=match) as e:
        from_norse(net(), torch.rand(*example))
    assert "\n" not in str(e.value)


def test_a_decoder_over_time_is_refused():
    class MaxOverTime(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nt.SequentialState(nn.Linear(4, 3), nt.LI())

        def forward(self, x_seq):
            return self.net(x_seq)[0].max(0).values

    with pytest.raises(ValueError, match=r"MaxOverTime\) .*a decoder such as a max over time"):
        from_norse(MaxOverTime(), torch.rand(5, 2, 4))


def test_state_dict_file_is_loaded_first(tmp_path, digits):
    net = _cell_net()
    torch.save(net.state_dict(), tmp_path / "norse.pt")
    fresh = _cell_net(seed=9)
    assert not torch.equal(fresh[0].weight, net[0].weight)
    x_seq = _inputs(digits)["digits"]
    model = from_norse(fresh, x_seq[0], state_dict=tmp_path / "norse.pt")
    assert torch.equal(_ours(model, x_seq)[0], _steps(net, x_seq, ())[0])
    with pytest.raises(ValueError, match="missing"):
        from_norse(fresh, x_seq[0], state_dict={"0.weight": net[0].weight})


def test_our_stack_measures_groups_saves_and_compresses(tmp_path, digits):
    net = _cell_net()
    model = from_norse(net, _inputs(digits)["digits"][0])
    # measure: every Norse spike counted, and the read-out Linear's SOPs are visible
    norse_spikes = 0
    for x_seq, _ in digits.test:
        _, seen = _steps(net, x_seq, (nt.LIFCell,))
        norse_spikes += int(sum(s.sum() for s in seen.values()))
    metrics = sc.measure(model, digits, latency_repeats=1)
    assert round(metrics.spikes_per_sample * metrics.samples) == norse_spikes > 0
    counts = sc.count(model, _inputs(digits)["digits"])
    readout = counts.layers["nodes.6_linear"]
    assert readout.sops > 0 and readout.input_kind == "binary"
    assert "nodes.6" not in counts.layers  # the non-spiking read-out is not a neuron layer
    # channel groups: found, without recursing through the neurons
    groups = {g.name: g for g in channel_groups(model)}
    assert groups["nodes.0"].neurons == ["nodes.1"] and groups["nodes.4"].consumers == [
        "nodes.6_linear"]
    # save / load
    sc.save(model, tmp_path / "artifact")
    loaded = sc.load(tmp_path / "artifact")
    x_seq = _inputs(digits)["random"]
    assert torch.equal(_ours(loaded, x_seq)[0], _ours(model, x_seq)[0])
    # surgery slices the per-channel Norse buffers and rewrites the spec
    remove_channels_(model, {"nodes.0": [1, 3], "nodes.4": [0]})
    assert model.nodes["1"].v_threshold.shape == (6,) and model.nodes["5"].tau_mem_inv.shape == (
        31,)
    rebuilt = from_spec(model.spec)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(_ours(rebuilt, x_seq)[0], _ours(model, x_seq)[0])
    # magnitude 0.8 + 4-bit quantization: the read-out's weights are pruned too
    model = from_norse(net, _inputs(digits)["digits"][0])
    session = attach(model, [METHODS["magnitude"](sparsity=0.8, scope="layer",
                                                  schedule="constant"),
                             METHODS["uniform_quant"](weight_bits=4)])
    Trainer(model, digits, TrainConfig(epochs=1, lr=1e-3, seed=0), session=session,
            verbose=False).fit()
    model = session.finalize()
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    readout = model.nodes["6_linear"].weight
    assert zeros >= 0.8 and (readout == 0).float().mean() >= 0.8
    assert all(len(torch.unique(row)) <= 16 for row in readout)  # 4-bit codes per channel


def test_reset_state_clears_membrane_and_current():
    neuron = NorseLIF(tau_syn_inv=60.0, tau_mem_inv=90.0, dt=0.005)
    x = torch.rand(4, 2, 3)
    first = neuron(x)
    assert neuron.v is not None and neuron.i is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reset_state(neuron)
    assert neuron.v is None and neuron.i is None
    assert torch.equal(neuron(x), first)


def test_a_tie_with_the_threshold_does_not_fire_as_in_norse():
    """dt = 1, τ_mem⁻¹ = 1/2: the first charge is x / 2, exactly the threshold for x = 2 v_th."""
    p = nt.LIFParameters(tau_syn_inv=torch.tensor(1.0), tau_mem_inv=torch.tensor(0.5),
                         v_th=torch.tensor(0.25))
    cell = nt.LIFCell(p, dt=1.0)
    x_seq = torch.tensor([0.5, 0.75, 0.5]).view(3, 1, 1).expand(3, 2, 3).contiguous()
    expected, _ = _steps(nt.SequentialState(cell), x_seq, ())
    out, _ = _ours(from_norse(cell, x_seq[0]), x_seq)
    assert expected[0].sum() == 0 and torch.equal(out, expected)
