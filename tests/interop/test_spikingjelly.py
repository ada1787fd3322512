"""from_spikingjelly: SpikingJelly 2.0 models converted exactly, and usable by our whole stack.

The nets are written as SpikingJelly's tutorials write them (the single-layer FC net, the conv
"CSNN"), plus a residual net with a SEW block (spikes added after the neurons, convs in
``SeqToANNContainer``) and a Spiking-ResNet block (``out += x`` before the neuron), each in
multi-step and single-step mode, with every neuron variant that converts (LIF with and without
``decay_input``, soft reset, ``v_reset`` ≠ 0, ``detach_reset``, IF, PLIF) and BatchNorm in eval
mode with non-trivial running statistics. Exactness is ``torch.equal`` on every neuron layer's
spikes (forward hooks on both models, paired by name) and on the outputs.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikecompress as sc
from _oracles import oracle
from spikecompress.compress.prune.groups import channel_groups
from spikecompress.compress.prune.surgery import consumer_inputs, remove_channels_
from spikecompress.data import DataConfig, load_data
from spikecompress.data.api import Data
from spikecompress.data.loader import Loader
from spikecompress.interop.common import qualified
from spikecompress.interop.spikingjelly import from_spikingjelly
from spikecompress.models import from_spec
from spikecompress.models.layer_graph import LayerGraph

sj = oracle("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402

T, B = 4, 4


# ----------------------------------------------------------------------------- the nets


class SNN(nn.Module):
    """SpikingJelly's single-layer FC tutorial net (single-step as written there)."""

    def __init__(self, tau: float = 2.0):
        super().__init__()
        self.layer = nn.Sequential(
            layer.Flatten(),
            layer.Linear(28 * 28, 10, bias=False),
            neuron.LIFNode(tau=tau, surrogate_function=surrogate.ATan()),
        )

    def forward(self, x: torch.Tensor):
        return self.layer(x)


class CSNN(nn.Module):
    """SpikingJelly's conv tutorial net (its layer stack; ``forward`` takes x_seq, see
    ``TutorialCSNN`` for the tutorial's own forward)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, channels, kernel_size=3, padding=1, bias=False),
            layer.BatchNorm2d(channels),
            neuron.IFNode(surrogate_function=surrogate.ATan()),
            layer.MaxPool2d(2, 2),  # 14 * 14
            layer.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            layer.BatchNorm2d(channels),
            neuron.IFNode(surrogate_function=surrogate.ATan()),
            layer.MaxPool2d(2, 2),  # 7 * 7
            layer.Flatten(),
            layer.Linear(channels * 7 * 7, channels * 4 * 4, bias=False),
            neuron.IFNode(surrogate_function=surrogate.ATan()),
            layer.Linear(channels * 4 * 4, 10, bias=False),
            neuron.IFNode(surrogate_function=surrogate.ATan()),
        )
        functional.set_step_mode(self, step_mode="m")

    def forward(self, x_seq: torch.Tensor):
        return self.conv_fc(x_seq)


class TutorialCSNN(CSNN):
    """The tutorial's forward: repeat a static image T times, return the firing rate."""

    def forward(self, x: torch.Tensor):
        x_seq = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
        return self.conv_fc(x_seq).mean(0)


def _conv_bn(c: int, container: bool) -> nn.Module:
    if container:
        return layer.SeqToANNContainer(nn.Conv2d(c, c, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(c))
    return nn.Sequential(layer.Conv2d(c, c, 3, padding=1, bias=False), layer.BatchNorm2d(c))


class SEWBlock(nn.Module):
    """SEW ResNet's basic block with the ADD connection: the spikes plus the block's input."""

    def __init__(self, c: int, container: bool):
        super().__init__()
        self.conv1 = _conv_bn(c, container)
        self.sn1 = neuron.ParametricLIFNode(init_tau=3.0, v_reset=None,
                                            surrogate_function=surrogate.Sigmoid(alpha=3.0))
        self.conv2 = _conv_bn(c, container)
        self.sn2 = neuron.LIFNode(tau=2.5, decay_input=False, v_reset=0.25, v_threshold=0.75)

    def forward(self, x):
        out = self.sn1(self.conv1(x))
        out = self.sn2(self.conv2(out))
        return out + x


class SpikingBlock(nn.Module):
    """Spiking ResNet's basic block: the residual added before the second neuron."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = layer.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = layer.BatchNorm2d(c)
        self.sn1 = neuron.IFNode(v_reset=None, surrogate_function=surrogate.PiecewiseQuadratic())
        self.conv2 = layer.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = layer.BatchNorm2d(c)
        self.sn2 = neuron.LIFNode(tau=3.0, v_reset=-0.5, detach_reset=True,
                                  surrogate_function=surrogate.ATan(alpha=3.0))

    def forward(self, x):
        out = self.sn1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.sn2(out)


class ResNet(nn.Module):
    def __init__(self, step_mode: str, c: int = 4):
        super().__init__()
        self.stem = nn.Sequential(layer.Conv2d(1, c, 3, padding=1, bias=False),
                                  layer.BatchNorm2d(c),
                                  neuron.LIFNode(tau=2.0, v_reset=None, detach_reset=True))
        self.block1 = SEWBlock(c, container=step_mode == "m")
        self.pool = layer.MaxPool2d(2)
        self.block2 = SpikingBlock(c)
        self.head = nn.Sequential(layer.AdaptiveAvgPool2d((2, 2)), layer.Flatten(),
                                  layer.Dropout(0.2), layer.Linear(4 * c, 10),
                                  neuron.IFNode(v_reset=None))
        functional.set_step_mode(self, step_mode)

    def forward(self, x):
        return self.head(self.block2(self.pool(self.block1(self.stem(x)))))


def _activate(net: nn.Module, gain: float) -> nn.Module:
    """Weights scaled so every layer fires; BN in eval with non-trivial statistics."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.mul_(gain)
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.75)
                m.bias.copy_(torch.rand(c, generator=g) * 0.5)
    return net.eval()


NETS = {"fc": lambda mode: _set_mode(SNN(), mode), "csnn": lambda mode: _set_mode(CSNN(), mode),
        "resnet": ResNet}
GAINS = {"fc": 12.0, "csnn": 3.0, "resnet": 2.5}


def _set_mode(net: nn.Module, mode: str) -> nn.Module:
    functional.set_step_mode(net, mode)
    return net


def _net(kind: str, mode: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _activate(NETS[kind](mode), GAINS[kind])


# ----------------------------------------------------------------------------- inputs


def _digits28(x: torch.Tensor) -> torch.Tensor:
    """Digits [..., 8, 8] upsampled ×3 and padded to 28 × 28."""
    x = x.repeat_interleave(3, -1).repeat_interleave(3, -2)
    return F.pad(x, (2, 2, 2, 2))


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits", T=T))


def _inputs(digits) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x_digits = _digits28(next(iter(digits.test))[0][:, :B])  # [T, B, 1, 28, 28]
    return {"bernoulli": (torch.rand(T, B, 1, 28, 28, generator=g) < 0.4).float(),
            "gaussian": torch.randn(T, B, 1, 28, 28, generator=g) * 1.5,
            "digits": x_digits * 2.0}


def _spikes_sj(net, x_seq, mode, names):
    """SpikingJelly's outputs and every neuron layer's spikes [T, B, ...] (by module path)."""
    seen = {n: [] for n in names}
    mods = dict(net.named_modules())
    handles = [mods[n].register_forward_hook(lambda _m, _i, o, n=n: seen[n].append(o.clone()))
               for n in names]
    functional.reset_net(net)
    with torch.no_grad():
        out = net(x_seq) if mode == "m" else torch.stack([net(x) for x in x_seq])
    functional.reset_net(net)
    for h in handles:
        h.remove()
    return out, {n: torch.stack(v) if mode == "s" else v[0] for n, v in seen.items()}


def _spikes_ours(model, x_seq, names):
    seen = {}
    handles = [model.nodes[qualified(n)].register_forward_hook(
        lambda _m, _i, o, n=n: seen.__setitem__(n, o.clone())) for n in names]
    sc.reset_state(model)
    with torch.no_grad():
        out = model(x_seq)
    sc.reset_state(model)
    for h in handles:
        h.remove()
    return out, seen


def _neuron_names(net):
    kinds = (neuron.LIFNode, neuron.IFNode, neuron.ParametricLIFNode)
    return [n for n, m in net.named_modules() if isinstance(m, kinds)]


def _example(mode):
    x = torch.rand(T, B, 1, 28, 28)
    return x if mode == "m" else x[0]


# ----------------------------------------------------------------------------- exactness


CASES = [("fc", "s"), ("fc", "m"), ("csnn", "m"), ("csnn", "s"), ("resnet", "m"),
         ("resnet", "s")]


@pytest.mark.parametrize("kind,mode", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_every_layer_spikes_exactly(kind, mode, digits):
    net = _net(kind, mode)
    ours = from_spikingjelly(net, _example(mode))
    assert isinstance(ours, LayerGraph) and not ours.training
    names = _neuron_names(net)
    assert names and all(qualified(n) in ours.nodes for n in names)
    compared = 0
    for what, x_seq in _inputs(digits).items():
        out_sj, theirs = _spikes_sj(net, x_seq, mode, names)
        out, mine = _spikes_ours(ours, x_seq, names)
        assert torch.equal(out_sj, out), (what, (out_sj - out).abs().max())
        for n in names:
            assert torch.equal(theirs[n], mine[n]), (what, n)
            assert theirs[n].sum() > 0, f"{n} is silent on {what}: the test proves nothing"
            compared += theirs[n].numel()
    assert compared >= 3 * T * B * 10  # three inputs, at least the 10 read-out neurons


def test_spikes_the_tutorial_step_loop_gives():
    """A single-step model is called once per step by its user, reset before each sample."""
    net = _net("fc", "s")
    ours = from_spikingjelly(net, torch.rand(3, 1, 28, 28))
    x_seq = torch.rand(6, 3, 1, 28, 28)
    functional.reset_net(net)
    with torch.no_grad():
        expected = torch.stack([net(x_seq[t]) for t in range(6)])
    functional.reset_net(net)
    sc.reset_state(ours)
    assert torch.equal(ours(x_seq), expected) and expected.sum() > 0


def test_model_is_left_as_it_was_and_mode_carries_over():
    net = _net("resnet", "m").train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ours = from_spikingjelly(net, _example("m"))
    assert ours.training and net.training  # converted in train mode, checked in eval
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(isinstance(m.v, torch.Tensor) for m in net.modules()
                   if isinstance(m, neuron.BaseNode))  # state reset
    assert ours.nodes["block1_sn1"].w.requires_grad
    assert torch.equal(ours.nodes["block1_sn1"].w, net.block1.sn1.w)
    assert ours.nodes["block1_sn2"].reset.v_reset == 0.25
    assert ours.nodes["stem_2"].reset.v_reset is None and ours.nodes["stem_2"].reset.detach
    assert ours.spec["nodes"][-1]["surrogate"] == "sigmoid"  # SpikingJelly's default


def test_multistep_containers_expand_child_by_child():
    """Single-step modules in a MultiStepContainer run multi-step; a SeqToANNContainer folds."""
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.MultiStepContainer(layer.Flatten(), layer.Linear(16, 8), neuron.LIFNode()),
        layer.SeqToANNContainer(nn.Linear(8, 4)), neuron.IFNode(step_mode="m"))
    with torch.no_grad():
        net[0][1].weight.mul_(4)
        net[1][0].weight.mul_(4)
    ours = from_spikingjelly(net, torch.rand(3, 2, 1, 4, 4))
    assert list(ours.nodes) == ["0_0", "0_1", "0_2", "1_0", "2"]
    x_seq = torch.rand(5, 3, 1, 4, 4) * 2
    out, spikes = _spikes_sj(net, x_seq, "m", ["0.2", "2"])
    assert all(s.sum() > 0 for s in spikes.values())
    assert torch.equal(_spikes_ours(ours, x_seq, [])[0], out)


class Aliased(nn.Module):
    """``a += x`` also changes ``t``, which fx cannot see: the check must catch it."""

    def __init__(self):
        super().__init__()
        self.fc = layer.Linear(4, 4, step_mode="m")
        self.sn = neuron.IFNode(step_mode="m")

    def forward(self, x):
        a = self.fc(x)
        t = a
        a += x
        return self.sn(t)


def test_a_conversion_that_differs_is_refused():
    """fx reads ``a += x`` as a new tensor; the check on the example sees ``t`` changed too."""
    with pytest.raises(ValueError, match=r"does not reproduce Aliased on the example \(max "
                                         r"\|difference\| 1\); the first layer that differs "
                                         r"is 'sn'"):
        from_spikingjelly(Aliased(), torch.rand(2, 3, 4) + 1)


def test_attributes_set_after_construction_carry_over():
    net = _net("csnn", "m")
    net.conv_fc[2].v_threshold = 0.5  # SpikingJelly checks its arguments at init only
    net.conv_fc[6].v_reset = None
    ours = from_spikingjelly(net, _example("m"))
    assert ours.nodes["conv_fc_2"].v_threshold.item() == 0.5
    assert ours.nodes["conv_fc_6"].reset.v_reset is None


# ----------------------------------------------------------------------------- refusals


class Gate(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) * x


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def _seq(*mods, mode="m"):
    net = nn.Sequential(*mods)
    functional.set_step_mode(net, mode)
    return net


def _twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = layer.Linear(4, 4)
            self.sn = neuron.IFNode(step_mode="m")

        def forward(self, x):
            return self.sn(self.fc(self.sn(self.fc(x))))
    return Twice()


def _mixed():
    return nn.Sequential(layer.Linear(4, 4), neuron.IFNode(step_mode="m"), layer.Linear(4, 4),
                         neuron.IFNode(step_mode="s"))


REFUSED = {
    "klif": (lambda: _seq(layer.Linear(4, 4), neuron.KLIFNode()), r"'1' \(.*KLIFNode\)"),
    "gate": (lambda: _seq(layer.Linear(4, 4), neuron.IFNode(), nn.Sequential(Gate())),
             r"'2\.0' \(.*Gate\).*torch\.sigmoid"),
    "tutorial forward": (lambda: TutorialCSNN(), r"'' \(.*TutorialCSNN\).*Tensor\.unsqueeze"),
    "control flow": (lambda: _seq(layer.Linear(4, 4), neuron.IFNode(), Branchy()),
                     r"'2' \(.*Branchy\).*torch\.fx cannot trace"),
    "called twice": (_twice, r"'fc' \(.*Linear\).*called twice"),
    "ws conv": (lambda: _seq(layer.WSConv2d(1, 2, 3), neuron.IFNode()),
                r"'0' \(.*WSConv2d\)"),
    "surrogate": (lambda: _seq(layer.Linear(4, 4), neuron.IFNode(
        surrogate_function=surrogate.Erf())), r"'1' \(.*IFNode\).*surrogate Erf"),
    "not spiking": (lambda: _seq(layer.Linear(4, 4), neuron.IFNode(
        surrogate_function=surrogate.ATan(spiking=False))), r"'1' \(.*IFNode\).*spiking=False"),
    "subclass": (lambda: _seq(layer.Linear(4, 4), neuron.SimpleLIFNode(2.0, True)),
                 r"'1' \(.*SimpleLIFNode\)"),
    "mixed modes": (_mixed, r"mixes single-step and multi-step neurons \('3' .*'1'"),
    "plain conv on x_seq": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3),
                                                  neuron.IFNode(step_mode="m")),
                            r"'0' \(.*Conv2d\).*x_seq \[T, B, \.\.\.\] directly"),
    "flatten over time": (lambda: nn.Sequential(nn.Flatten(), layer.Linear(16, 4),
                                                neuron.IFNode(step_mode="m")),
                          r"'0' \(.*Flatten\).*start_dim=2"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unknown_modules_are_refused_by_name(case):
    make, pattern = REFUSED[case]
    x = torch.rand(2, 3, 1, 4, 4) if case in ("ws conv", "plain conv on x_seq",
                                              "flatten over time") else torch.rand(2, 3, 4)
    if case == "tutorial forward":
        x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match=pattern) as e:
        from_spikingjelly(make(), x)
    assert "\n" not in str(e.value)


def test_bad_arguments():
    net = _net("csnn", "m")
    with pytest.raises(ValueError, match=r"step_mode='s', but .* step_mode 'm'"):
        from_spikingjelly(net, _example("m"), step_mode="s")
    with pytest.raises(ValueError, match=r"x_seq \[T, B, \.\.\.\], got shape \[28, 28\]"):
        from_spikingjelly(net, torch.rand(28, 28))
    for wrong in (torch.rand(4, 1, 28, 28), torch.rand(2, 2, 1, 20, 20)):
        with pytest.raises(ValueError, match=r"CSNN does not run on the example of shape \["):
            from_spikingjelly(net, wrong)
    with pytest.raises(TypeError, match="example must be a float tensor"):
        from_spikingjelly(net, torch.ones(2, 2, 1, 28, 28, dtype=torch.long))
    with pytest.raises(ValueError, match="no SpikingJelly neuron"):
        from_spikingjelly(nn.Sequential(layer.Linear(4, 4)), torch.rand(2, 4))
    plain = from_spikingjelly(nn.Sequential(nn.Linear(4, 4)), torch.rand(2, 3, 4),
                                         step_mode="m")
    assert list(plain.nodes) == ["0"]


# ----------------------------------------------------------------------------- state dicts


def test_state_dict_from_a_file_a_checkpoint_and_refusals(tmp_path):
    trained = _net("csnn", "m", seed=0)
    x_seq = torch.rand(T, B, 1, 28, 28)
    path = tmp_path / "csnn.pth"
    torch.save(trained.state_dict(), path)
    ckpt = tmp_path / "checkpoint.pth"  # the tutorial's checkpoint layout
    torch.save({"net": trained.state_dict(), "epoch": 3, "max_test_acc": 0.9}, ckpt)
    expected = _spikes_sj(trained, x_seq, "m", [])[0]
    for source in (path, str(ckpt), trained.state_dict()):
        fresh = CSNN().eval()
        ours = from_spikingjelly(fresh, _example("m"), state_dict=source)
        assert torch.equal(_spikes_ours(ours, x_seq, [])[0], expected)
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot load state dict '.*corrupt\.pth'"):
        from_spikingjelly(CSNN(), _example("m"), state_dict=bad)
    with pytest.raises(ValueError, match=r"state dict '.*missing\.pth'"):
        from_spikingjelly(CSNN(), _example("m"), state_dict=tmp_path / "missing.pth")
    small = CSNN(channels=2).state_dict()
    with pytest.raises(ValueError, match=r"does not fit CSNN: other shapes \['conv_fc.0.weight'"):
        from_spikingjelly(CSNN(), _example("m"), state_dict=small)


# ----------------------------------------------------------------------------- our stack


def _digits28_data(digits, n_train: int = 128, n_test: int = 64) -> Data:
    """The digits, upsampled to 28 × 28 for the tutorial nets."""
    def loader(src, n, shuffle):
        return Loader(_digits28(src.x[:n]), src.y[:n], T=T, batch_size=32, shuffle=shuffle,
                      encoding="direct", seed=0)
    return Data(train=loader(digits.train, n_train, True), test=loader(digits.test, n_test, False),
                input_shape=(1, 28, 28), classes=10, name="digits28")


def test_measure_save_load_and_spec(digits, tmp_path):
    net = _net("resnet", "m")
    ours = from_spikingjelly(net, _example("m"))
    data = _digits28_data(digits)
    metrics = sc.measure(ours, data, latency_repeats=1)
    names = _neuron_names(net)
    total = 0.0
    for x_seq, _ in data.test:
        total += sum(float(s.sum()) for s in _spikes_sj(net, x_seq, "m", names)[1].values())
    assert metrics.samples == 64 and total > 0
    assert metrics.spikes_per_sample * metrics.samples == pytest.approx(total, rel=1e-9)
    x_seq = next(iter(data.test))[0]
    expected = _spikes_ours(ours, x_seq, [])[0]
    sc.save(ours, tmp_path / "artifact")
    assert torch.equal(_spikes_ours(sc.load(tmp_path / "artifact"), x_seq, [])[0], expected)
    rebuilt = from_spec(ours.spec)
    rebuilt.load_state_dict(ours.state_dict())
    assert torch.equal(_spikes_ours(rebuilt.eval(), x_seq, [])[0], expected)


def test_channel_groups_map_multistep_flatten_to_linear_columns():
    """The bug of the issue: SpikingJelly's multi-step flatten → Linear grouped as 8 columns."""
    c = 4
    torch.manual_seed(0)
    ours = from_spikingjelly(CSNN(channels=c).eval(), _example("m"))
    groups = {g.name: g for g in channel_groups(ours)}
    conv2 = groups["nodes.conv_fc_4"]
    assert conv2.size == c and conv2.bns == ["nodes.conv_fc_5"]
    assert conv2.neurons == ["nodes.conv_fc_6"] and conv2.consumers == ["nodes.conv_fc_9"]
    cols = consumer_inputs(ours, {"nodes.conv_fc_4": [1]})
    assert cols == {"nodes.conv_fc_9": list(range(49, 98))}  # channel 1: its 7 × 7 columns
    remove_channels_(ours, {"nodes.conv_fc_4": [1]})
    assert ours.nodes.conv_fc_9.in_features == (c - 1) * 7 * 7
    assert ours.spec["nodes"][9]["in_features"] == (c - 1) * 7 * 7
    assert ours(torch.rand(2, 2, 1, 28, 28)).shape == (2, 2, 10)


def test_compression_runs_on_the_converted_model(digits):
    torch.manual_seed(0)
    ours = from_spikingjelly(CSNN().eval(), _example("m")).train()
    data = _digits28_data(digits, n_train=64, n_test=32)
    methods = [sc.METHODS["magnitude"](sparsity=0.8), sc.METHODS["uniform_quant"](weight_bits=4)]
    session = sc.attach(ours, methods)
    sc.Trainer(ours, data, sc.TrainConfig(epochs=1, lr=1e-3), session=session,
               verbose=False).fit()
    final = session.finalize()
    weights = [m.weight for m in final.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    zeros, n = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
    assert zeros == round(0.8 * n)  # magnitude pruning's exact count: 80 % of every weight
    assert final(next(iter(data.test))[0]).shape == (T, 32, 10)


def test_synop_counter_agrees_with_count():
    op_counter = oracle("spikingjelly.activation_based.op_counter")
    net = _net("csnn", "m")
    ours = from_spikingjelly(net, _example("m"))
    x_seq = (torch.rand(T, B, 1, 28, 28) < 0.5).float()  # binary input: every layer is SOPs
    counter = op_counter.SynOpCounter()
    functional.reset_net(net)
    with torch.no_grad(), op_counter.DispatchCounterMode([counter]):
        net(x_seq)
    functional.reset_net(net)
    dense = sc.count(ours, x_seq, count_zero_weights=True)
    assert counter.get_total() == dense.sops > 0
    per_layer = counter.get_counts()
    paths = {f"nodes.{qualified(n)}": n for n, _ in net.named_modules()}
    synaptic = [(name, rec) for name, rec in dense.layers.items() if rec.kind == "synaptic"]
    assert len(synaptic) == 4
    for name, rec in synaptic:
        assert sum(per_layer[f"CSNN.{paths[name]}"].values()) == rec.sops, name


# ----------------------------------------------------------------------------- surrogates


SURROGATES = [(surrogate.ATan(alpha=3.0), "atan"), (surrogate.Sigmoid(alpha=5.0), "sigmoid"),
              (surrogate.PiecewiseQuadratic(alpha=2.0), "triangle"),
              (surrogate.Rect(alpha=2.0), "rectangular")]


@pytest.mark.parametrize("theirs,kind", SURROGATES, ids=[k for _, k in SURROGATES])
def test_surrogate_gradients_match(theirs, kind):
    net = _seq(layer.Linear(3, 3), neuron.IFNode(surrogate_function=theirs))
    ours = from_spikingjelly(net, torch.rand(2, 2, 3))
    mine = ours.nodes["1"].surrogate
    assert ours.spec["nodes"][1]["surrogate"] == kind
    x = torch.linspace(-1.5, 1.5, 601).requires_grad_()  # no point on Rect's edges ±0.25
    g_sj, = torch.autograd.grad(theirs(x).sum(), x)
    g_ours, = torch.autograd.grad(mine(x).sum(), x)
    assert torch.equal(theirs(x), mine(x))
    assert torch.allclose(g_sj, g_ours, rtol=1e-6, atol=1e-7) and g_sj.max() > 0
