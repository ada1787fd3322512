"""snnTorch in: the tutorial nets convert to LayerGraphs whose every Leaky spikes exactly as
snnTorch's, on random and real inputs; what does not convert is refused by name; our stack
(measure, count, save / load, spec, compression) runs on the result."""

import argparse
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecompress as sc
from _exact import dyadic
from _oracles import oracle
from spikecompress.compress import METHODS, attach
from spikecompress.data import DataConfig, load_data
from spikecompress.interop.snntorch import from_snntorch
from spikecompress.models import from_spec
from spikecompress.snn.neuron import LIF
from spikecompress.snn.surrogate import ATan, Sigmoid
from spikecompress.train import TrainConfig, Trainer

snn = oracle("snntorch")
from snntorch import surrogate, utils  # noqa: E402  (after the oracle: skipped without it)

T = 8


class Tutorial5(nn.Module):
    """snnTorch tutorial 5's FC net, smaller: its forward loops over num_steps itself."""

    def __init__(self, reset="subtract", indexed=False, flatten=False, num_steps=T):
        super().__init__()
        self.num_steps, self.indexed, self.flatten = num_steps, indexed, flatten
        self.fc1 = nn.Linear(64, 32)
        self.lif1 = snn.Leaky(beta=0.95, threshold=0.8, reset_mechanism=reset)
        self.fc2 = nn.Linear(32, 10)
        self.lif2 = snn.Leaky(beta=torch.linspace(0.5, 0.95, 10), reset_mechanism=reset)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for step in range(self.num_steps):
            x_t = x[step] if self.indexed else x
            cur1 = self.fc1(x_t.flatten(1) if self.flatten else x_t)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


def tutorial7(reset="subtract"):
    """snnTorch tutorial 7's conv net as an nn.Sequential called once per step (digits 8x8)."""
    grad = surrogate.fast_sigmoid(slope=25)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.MaxPool2d(2),
        snn.Leaky(beta=torch.linspace(0.6, 0.9, 6).view(6, 1, 1), threshold=0.5,
                  spike_grad=grad, init_hidden=True, reset_mechanism=reset),
        nn.Conv2d(6, 8, 3, padding=1), nn.MaxPool2d(2),
        snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True, reset_mechanism=reset),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 10),
        snn.Leaky(beta=0.8, threshold=0.75, spike_grad=grad, init_hidden=True, output=True,
                  reset_mechanism=reset),
    )


def _leakys(net):
    return {n: m for n, m in net.named_modules() if isinstance(m, snn.Leaky)}


def _snntorch_run(net, x_seq, per_step):
    """Every Leaky's spikes [T, B, ...] (collected per step by hooks) and the net's output."""
    got = {n: [] for n in _leakys(net)}
    hooks = [m.register_forward_hook(lambda m, a, out, n=n: got[n].append(
        out[0] if isinstance(out, tuple) else out)) for n, m in _leakys(net).items()]
    with torch.no_grad():
        if per_step:
            utils.reset(net)
            out = torch.stack([net(x)[0] for x in x_seq])
        else:
            out = net(x_seq)[0]
    for h in hooks:
        h.remove()
    return {n: torch.stack(s) for n, s in got.items()}, out


def _ours_run(model, x_seq):
    got = {n: [] for n, m in model.nodes.items() if isinstance(m, LIF)}
    hooks = [model.nodes[n].register_forward_hook(lambda m, a, out, n=n: got[n].append(out))
             for n in got]
    with torch.no_grad():
        sc.reset_state(model)
        out = model(x_seq)
    for h in hooks:
        h.remove()
    return {n: torch.cat(s) for n, s in got.items()}, out


def _assert_exact(net, model, x_seq, per_step, snn_input=None):
    """Every Leaky (paired by name) and the output equal; returns the spikes compared."""
    theirs, out = _snntorch_run(net, x_seq if snn_input is None else snn_input, per_step)
    ours, our_out = _ours_run(model, x_seq)
    assert sorted(ours) == sorted(n.replace(".", "_") for n in theirs)
    for name, spikes in theirs.items():
        assert 0 < spikes.sum() < spikes.numel(), f"{name} must spike, not always"
        assert torch.equal(ours[name.replace(".", "_")], spikes), name
    assert torch.equal(our_out, out)
    return sum(s.numel() for s in theirs.values())


def _dyadic_weights_(net):
    """Weights and biases on a short dyadic grid: every float32 sum exact in any order, so the
    time-folded full-T forward equals the per-step one bit for bit too."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.weight.copy_(dyadic(m.weight, bits=4))
                m.bias.copy_(dyadic(m.bias, bits=4))
    return net


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits", T=4, batch_size=64))


def _random_fc(B=32):
    g = torch.Generator().manual_seed(1)
    bern = (torch.rand(B // 2, 64, generator=g) < 0.5).float() * 1.5
    gauss = torch.randn(B // 2, 64, generator=g) * 2 + 1
    return torch.cat([bern, gauss])


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_tutorial5_fc_net_spikes_exactly_as_snntorch(reset, digits):
    torch.manual_seed(0)
    net = Tutorial5(reset)
    x = _random_fc()
    model = from_snntorch(net, x)
    assert model.spec["in_shape"] == [64] and [n["type"] for n in model.spec["nodes"]] == [
        "linear", "lif", "linear", "lif"]
    lif1, lif2 = model.nodes["lif1"], model.nodes["lif2"]
    assert lif1.semantics == "snntorch" and lif1.reset.v_reset == (None if reset == "subtract"
                                                                     else 0.0)
    assert float(lif1.leak) == pytest.approx(0.95) and float(lif1.v_threshold) == pytest.approx(0.8)
    assert torch.equal(lif2.leak, torch.linspace(0.5, 0.95, 10))
    x_seq = x.expand(T, *x.shape)
    n = _assert_exact(net, model, x_seq, per_step=False, snn_input=x)
    real = next(iter(digits.test))[0][0].flatten(1) * 2  # a test batch [64, 64], static
    n += _assert_exact(net, model, real.expand(T, *real.shape), per_step=False, snn_input=real)
    assert n == T * (32 + 64) * (32 + 10)
    dy, x_dy = _dyadic_weights_(copy.deepcopy(net)), dyadic(x, bits=5)  # full-T forward too
    _assert_exact(dy, from_snntorch(dy, x_dy), x_dy.expand(T, *x.shape), per_step=False,
                  snn_input=x_dy)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_tutorial7_conv_sequential_spikes_exactly_as_snntorch(reset, digits):
    torch.manual_seed(0)
    net = tutorial7(reset)
    g = torch.Generator().manual_seed(2)
    x_seq = torch.cat([(torch.rand(T, 16, 1, 8, 8, generator=g) < 0.4).float() * 3,
                       torch.randn(T, 16, 1, 8, 8, generator=g) * 2 + 1.5], dim=1)
    model = from_snntorch(net, x_seq[0])
    assert model.spec["in_shape"] == [1, 8, 8]
    assert [n["type"] for n in model.spec["nodes"]] == [
        "conv2d", "maxpool2d", "lif", "conv2d", "maxpool2d", "lif", "flatten", "linear", "lif"]
    sn = model.nodes["2"]
    assert torch.equal(sn.leak, torch.linspace(0.6, 0.9, 6)) and sn.surrogate == ATan(2.0)
    n = _assert_exact(net, model, x_seq, per_step=True)
    real = next(iter(digits.test))[0] * 4  # [4, 64, 1, 8, 8], the same image at every step
    n += _assert_exact(net, model, real, per_step=True)
    assert n == T * 32 * (6 * 16 + 8 * 4 + 10) + 4 * 64 * (6 * 16 + 8 * 4 + 10)
    dy = _dyadic_weights_(copy.deepcopy(net))
    x_dy = dyadic(x_seq, bits=5)
    _assert_exact(dy, from_snntorch(dy, x_dy[0]), x_dy, per_step=True)


def test_indexed_input_and_a_flatten_inside_forward():
    torch.manual_seed(0)
    net = Tutorial5(indexed=True, flatten=True)
    x_seq = torch.rand(T, 16, 1, 8, 8) * 4
    model = from_snntorch(net, x_seq)
    assert model.spec["in_shape"] == [1, 8, 8]
    assert [n["name"] for n in model.spec["nodes"]] == ["fc1_flatten", "fc1", "lif1", "fc2",
                                                        "lif2"]
    _assert_exact(net, model, x_seq, per_step=False, snn_input=x_seq)


def test_the_original_model_is_left_alone_and_surrogates_map():
    net = tutorial7()
    net[2].spike_grad = surrogate.atan(alpha=3.0)
    net[5].spike_grad = surrogate.sigmoid(slope=5)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = from_snntorch(net, torch.rand(4, 1, 8, 8))
    assert net.training and model.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert net[2].mem.numel() == 0  # its hidden state untouched (never run)
    assert model.nodes["2"].surrogate == ATan(3.0) and model.nodes["5"].surrogate == Sigmoid(5.0)
    assert model.nodes["8"].surrogate == ATan(2.0)  # fast_sigmoid: snnTorch's default atan


class FunctionalPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.lif1 = snn.Leaky(beta=0.9)

    def forward(self, x):
        mem = self.lif1.init_leaky()
        out = []
        for _ in range(3):
            spk, mem = self.lif1(F.max_pool2d(self.conv1(x), 2), mem)
            out.append(spk)
        return torch.stack(out)


class SynapticLoop(Tutorial5):
    def __init__(self):
        super().__init__()
        self.lif1 = snn.Synaptic(alpha=0.9, beta=0.8)

    def forward(self, x):
        syn, mem = self.lif1.init_synaptic()
        out = []
        for _ in range(3):
            spk, syn, mem = self.lif1(self.fc1(x), syn, mem)
            out.append(spk)
        return torch.stack(out)


class SharedLeaky(Tutorial5):
    def forward(self, x):
        spk1, _ = self.lif2(self.fc1(x)[:, :10])
        return self.lif2(spk1)[0]


class ReadsMembrane(Tutorial5):
    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        _, mem1 = self.lif1(self.fc1(x), mem1)
        return self.lif2(self.fc2(mem1))


@pytest.mark.parametrize("make, match", [
    (lambda: nn.Sequential(nn.Linear(64, 10), snn.Synaptic(alpha=0.9, beta=0.8, init_hidden=True)),
     r"'1' \(snntorch\._neurons\.synaptic\.Synaptic\).*only snntorch\.Leaky"),
    (lambda: nn.Sequential(nn.Linear(64, 10), snn.Leaky(0.9, init_hidden=True,
                                                        reset_mechanism="none")),
     r"'1' \(snntorch\._neurons\.leaky\.Leaky\).*reset_mechanism 'none'"),
    (lambda: nn.Sequential(nn.Linear(64, 10), snn.Leaky(0.9, init_hidden=True,
                                                        reset_delay=False)),
     r"'1' \(snntorch.*Leaky\).*reset_delay=False"),
    (lambda: nn.Sequential(nn.Linear(64, 10), snn.Leaky(0.9, init_hidden=True,
                                                        graded_spikes_factor=2.0)),
     r"'1' \(snntorch.*Leaky\).*graded_spikes_factor"),
    (lambda: nn.Sequential(nn.Linear(64, 10), snn.Leaky(0.9, init_hidden=True,
                                                        spike_grad=lambda x: (x > 0).float())),
     r"'1' \(snntorch.*Leaky\).*spike_grad"),
    (lambda: nn.Sequential(nn.Linear(64, 10), nn.ReLU(), snn.Leaky(0.9, init_hidden=True)),
     r"'1' \(torch\.nn\.modules\.activation\.ReLU\) has no spikecompress counterpart"),
    (SynapticLoop, r"'lif1' \(snntorch\._neurons\.synaptic\.Synaptic\).*only snntorch\.Leaky"),
    (SharedLeaky, r"'lif2' \(snntorch.*Leaky\) is called where 'fc1' was.*used twice"),
    (FunctionalPool,
     r"'lif1' \(snntorch\._neurons\.leaky\.Leaky\) reads a tensor that is not the output of "
     r"'conv1'.*F\.max_pool2d"),
    (ReadsMembrane, r"'fc2' \(torch\.nn\.modules\.linear\.Linear\) reads the membrane"),
])
def test_what_does_not_convert_is_refused_by_name(make, match):
    x = torch.rand(4, 1, 8, 8) if make is FunctionalPool else torch.rand(4, 64)
    with pytest.raises(ValueError, match=match) as e:
        from_snntorch(make(), x)
    assert "\n" not in str(e.value)


def test_weights_from_a_saved_snntorch_state_dict(tmp_path):
    torch.manual_seed(1)
    trained = Tutorial5()
    path = tmp_path / "snn.pt"
    torch.save(trained.state_dict(), path)
    torch.manual_seed(2)
    fresh = Tutorial5()  # other weights
    x = _random_fc()
    model = from_snntorch(fresh, x, state_dict=path)
    _assert_exact(trained, model, x.expand(T, *x.shape), per_step=False, snn_input=x)
    assert not torch.equal(fresh.fc1.weight, trained.fc1.weight)  # fresh itself untouched
    model2 = from_snntorch(fresh, x, state_dict=trained.state_dict())
    assert torch.equal(model2.nodes["fc1"].weight, model.nodes["fc1"].weight)
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"cannot load state dict '.*corrupt\.pt'"):
        from_snntorch(fresh, x, state_dict=bad)
    other = tmp_path / "other.pt"
    torch.save(tutorial7().state_dict(), other)
    with pytest.raises(ValueError, match=r"state dict '.*other\.pt' does not fit"):
        from_snntorch(fresh, x, state_dict=other)
    unsafe = tmp_path / "pickled.pt"
    torch.save({"fc1.weight": argparse.Namespace(a=1)}, unsafe)  # not weights: refused unread
    with pytest.raises(ValueError, match=r"cannot load state dict '.*pickled\.pt'"):
        from_snntorch(fresh, x, state_dict=unsafe)


@pytest.fixture(scope="module")
def converted(digits):
    """Tutorial 7 with dyadic weights (full-T forward exact too), converted on a digits batch."""
    torch.manual_seed(0)
    net = _dyadic_weights_(tutorial7())
    with torch.no_grad():
        net[0].weight.mul_(4)  # the digits' pixels are at most 1: every layer spikes
    x = next(iter(digits.test))[0][0]
    return net, from_snntorch(net, x)


def test_our_stack_runs_on_the_converted_model(converted, digits, tmp_path):
    net, model = converted
    model = copy.deepcopy(model)
    total = 0
    for x_seq, _ in digits.test:
        theirs, _ = _snntorch_run(net, x_seq, per_step=True)
        total += int(sum(s.sum() for s in theirs.values()))
    metrics = sc.measure(model, digits, latency_repeats=1)
    assert total > 0 and round(metrics.spikes_per_sample * metrics.samples) == total
    x_seq = next(iter(digits.test))[0]
    first, second = sc.count(model, x_seq), sc.count(model, x_seq)
    assert first.sops == second.sops > 0 and first.spikes == second.spikes
    model(x_seq[:2])  # leaves a membrane behind: count resets it
    assert sc.count(model, x_seq).sops == first.sops
    sc.save(model, tmp_path / "art")
    loaded = sc.load(tmp_path / "art")
    ref = _ours_run(model.eval(), x_seq)[1]
    assert torch.equal(_ours_run(loaded, x_seq)[1], ref)
    rebuilt = from_spec(model.spec).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.spec == model.spec
    assert torch.equal(_ours_run(rebuilt, x_seq)[1], ref)


def test_magnitude_pruning_and_4_bit_quantization_run_on_it(converted, digits):
    model = copy.deepcopy(converted[1])
    session = attach(model, [METHODS["magnitude"](sparsity=0.8),
                             METHODS["uniform_quant"](weight_bits=4)])
    small = load_data(DataConfig(name="digits", T=4, batch_size=64, limit=128))
    Trainer(model, small, TrainConfig(epochs=1, lr=1e-3), session=session, verbose=False).fit()
    plain = session.finalize()
    weights = [m.weight for m in plain.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.8
    assert sc.measure(plain, digits, latency_repeats=1).accuracy >= 0.0
