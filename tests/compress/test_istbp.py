"""Integer-STBP (spec quant-kd §2.5, a reconstruction): integer-only training and inference.

Defining behaviours: (1) a full train step runs no floating-point tensor op (a dispatch mode that
raises on one, shown to catch one); (2) on digits the integer training reaches a float BPTT run
with the same rectangular surrogate (measured, seed 0, 1 thread: 4 epochs, lr 0.1, MLP 64-64-10:
integer 0.903, float SGD 0.908); its gradients are the float BPTT gradients of the mirrored model;
(3) the stochastic rounding is deterministic for a seed. Plus the float mirror, the refusals and
the Session / Trainer ``train_step`` hook.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from spikecompress.compress.method import Context, check_hooks
from spikecompress.compress.prune.magnitude import MagnitudePruning
from spikecompress.compress.quant.int_ops import im2col, softmax_q12, stochastic_shift
from spikecompress.compress.quant.istbp import IntegerSTBP
from spikecompress.compress.quant.istbp_ops import _back
from spikecompress.compress.session import attach
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement.accuracy import evaluate
from spikecompress.models import build
from spikecompress.snn.layers import reset_state
from spikecompress.snn.neuron import LIF
from spikecompress.snn.surrogate import Rectangular
from spikecompress.train import TrainConfig, Trainer

RECT = {"surrogate": "rectangular", "detach_reset": True}  # the integer path's surrogate
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits", T=4, batch_size=64))


def _calibrated(model, data, batches: int = 4):
    """Random init with BN running statistics of a few batches (a data-driven start: the folded
    BN then normalizes the currents, as the float net's BN does in training)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(data.train):
            if i == batches:
                break
            model(x)
            reset_state(model)
    return model


def _mlp(data, seed=0):
    torch.manual_seed(seed)
    return _calibrated(build("mlp", in_features=64, classes=10, widths=[64], neuron_params=RECT),
                       data)


def _conv(data, seed=0):
    torch.manual_seed(seed)
    return _calibrated(build("conv_net", in_channels=1, input_size=8, classes=10, widths=[8, 16],
                             neuron_params=RECT), data)


def _sew(data, seed=0):
    torch.manual_seed(seed)
    return _calibrated(build("sew_resnet", in_channels=1, input_size=8, classes=10, widths=[4, 8],
                             blocks=[1, 1], neuron_params=RECT), data)


def _avg_conv(data, seed=0):
    torch.manual_seed(seed)
    return _calibrated(build("conv_net", in_channels=1, input_size=8, classes=10, widths=[8, 16],
                             pool="avg", neuron="if"), data)


def _session(model, lr=0.1, **knobs):
    method = IntegerSTBP(**knobs)
    session = attach(model, [method])
    session.bind(torch.optim.SGD(model.parameters(), lr=lr))
    return method, session


def _epochs(session, data, epochs):
    for _ in range(epochs):
        for x, y in data.train:
            session.train_step(x, y)
            session.after_step(0.5)


# -- (1) dtype closure ---------------------------------------------------------------------------
class NoFloat(TorchDispatchMode):
    """Raise on any op with a floating-point tensor (or Python float) in its inputs or output."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs or {}, out))[0]:
            if isinstance(t, float) or (isinstance(t, torch.Tensor) and (
                    t.is_floating_point() or t.is_complex())):
                raise AssertionError(f"floating-point op in the integer path: {func}")
        return out


def test_the_dispatch_mode_catches_a_float_op():
    x = torch.arange(4, dtype=torch.int32)
    with NoFloat():
        assert torch.equal((x << 1) >> 1, x)  # integer ops pass
        with pytest.raises(AssertionError, match="floating-point op"):
            x * 0.5  # noqa: B018
        with pytest.raises(AssertionError, match="floating-point op"):
            torch.ones(2)


@pytest.mark.parametrize("make", [_mlp, _conv, _avg_conv, _sew])
def test_a_full_train_step_runs_integer_ops_only(make, digits):
    model = make(digits)
    method, _ = _session(model)
    x, y = next(iter(digits.train))
    codes = method.encode(x)  # the input boundary: the one float op, outside the step
    before = {k: v.clone() for k, v in method.weights_.items()}
    ctx = Context(lr_at=lambda step: 0.1)
    with NoFloat():
        loss, out = method.train_step(model, codes, y, ctx)
    assert not out.is_floating_point() and out.shape == (4, 64, 10) and loss > 0
    assert str(out.dtype).startswith("torch.int")
    assert all(v.dtype == torch.int8 for v in method.weights_.values())
    changed = sum(int((method.weights_[k] != before[k]).sum()) for k in before)
    assert changed > 0  # forward, backward and update really ran


# -- (2) accuracy and gradients against float BPTT -----------------------------------------------
def test_integer_training_reaches_float_bptt_on_digits(digits):
    torch.manual_seed(0)
    model = _mlp(digits)
    float_model = copy.deepcopy(model)
    start = evaluate(model, digits.test, CPU)["accuracy"]
    _, session = _session(model, lr=0.1)
    _epochs(session, digits, 4)
    integer = evaluate(session.finalize(), digits.test, CPU)["accuracy"]

    opt = torch.optim.SGD(float_model.parameters(), lr=0.1)  # same init, surrogate, lr, batches
    for _ in range(4):
        float_model.train()
        for x, y in digits.train:
            loss = F.cross_entropy(float_model(x).mean(0), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            reset_state(float_model)
    floating = evaluate(float_model, digits.test, CPU)["accuracy"]
    print(f"digits MLP, 4 epochs: start {start:.3f} integer {integer:.3f} float {floating:.3f}")
    assert start < 0.5  # the start is untrained: the accuracy is learned
    assert integer >= 0.85 and integer >= floating - 0.03, (integer, floating)


@pytest.mark.parametrize("make", [_mlp, _conv])
def test_integer_gradients_are_the_float_bptt_gradients_of_the_mirror(make, digits):
    """The integer BPTT ΔW (× its exponent / (T·B)) points where autograd's gradient of the float
    mirror points, with the same rectangular window and a detached reset."""
    model = make(digits)
    method, _ = _session(model)
    for m in model.modules():
        if isinstance(m, LIF):
            assert m.surrogate == Rectangular(1.0) and m.reset.detach
    x, y = next(iter(digits.train))
    out, f = method.integer_forward(method.encode(x))
    T, B, K = out.shape
    p = softmax_q12(out.sum(0, dtype=torch.int64), f, T)
    g = (p - ((y[:, None] == torch.arange(K)).long() << 12)).int()
    _back(method, method._ops, (g.unsqueeze(0).expand(T, B, K), -12), False)
    model.eval()
    F.cross_entropy(model(x).mean(0), y).backward()
    for syn in method.synapses():
        dw, ew, db, eb = syn.grad
        got = dw.double().flatten() * 2.0**ew / (T * B)
        want = syn.module.weight.grad.double().flatten()
        assert F.cosine_similarity(got, want, dim=0) > 0.95, syn.name
        assert 0.8 < got.norm() / want.norm() < 1.25, syn.name
        bias = syn.bn.bias if syn.bn is not None else syn.module.bias
        got_b = db.double() * 2.0**eb / (T * B)
        assert F.cosine_similarity(got_b, bias.grad.double(), dim=0) > 0.95, syn.name


# -- (3) determinism -----------------------------------------------------------------------------
def test_stochastic_rounding_is_deterministic_for_a_seed(digits):
    batches = [b for _, b in zip(range(3), digits.train, strict=False)]

    def run(seed):
        method, session = _session(_mlp(digits), seed=seed)
        for x, y in batches:
            session.train_step(x, y)
            session.after_step(0.5)
        return method.weights_, method.rng_

    (a, ra), (b, rb), (c, _) = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(ra, rb)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the rounding is really stochastic


# -- the float mirror and the lowering -----------------------------------------------------------
def test_the_float_model_is_the_exact_image_of_the_integer_network(digits):
    model = _conv(digits)
    method, session = _session(model)
    _epochs(session, digits, 1)
    model = session.finalize().eval()
    for syn in method.synapses():
        fw = int(method.exps_[syn.index])
        w = method.weights_[syn.name]
        assert w.dtype == torch.int8 and int(w.abs().max()) <= 127
        assert torch.equal(syn.module.weight, w.float() * 2.0**-fw)  # exact dyadic values
        if syn.bn is not None:  # BN is an exact per-channel shift
            z = torch.randint(-2**12, 2**12, (2, 3, syn.bn.num_features, 4, 4)).float() / 64
            shifted = z + syn.bn.bias.view(-1, 1, 1)
            assert torch.equal(syn.bn(z), shifted)
    agree = total = 0
    for x, _ in digits.test:
        logits, _f = method.integer_forward(method.encode(x))
        out = model(x)
        reset_state(model)
        agree += int((logits.sum(0).argmax(1) == out.sum(0).argmax(1)).sum())
        total += x.shape[1]
    assert agree / total >= 0.99  # measured 1.0: the mirror differs only by membrane roundings
    # lowering the finalized model again gives the same integer network (the artifact suffices)
    again = IntegerSTBP()
    attach(copy.deepcopy(model), [again])
    for syn in method.synapses():
        fw, fw2 = int(method.exps_[syn.index]), int(again.exps_[syn.index])
        assert torch.equal(method.weights_[syn.name].long() << (fw2 - fw),
                           again.weights_[syn.name].long())


def test_input_codes_are_exact_for_digits(digits):
    method, _ = _session(_mlp(digits))
    x = next(iter(digits.train))[0]
    codes = method.encode(x)
    assert method.input_exp_ == 4 and codes.dtype == torch.int8  # grey levels k / 16
    assert torch.equal(codes.float() / 16, x)


def test_im2col_matches_conv():
    x = torch.randint(-5, 5, (2, 3, 7, 6), dtype=torch.int8)
    w = torch.randint(-5, 5, (4, 3, 3, 3), dtype=torch.int8)
    cols, (h, wd) = im2col(x, (3, 3), (2, 2), (1, 1))
    got = (cols.long() @ w.reshape(4, -1).t().long()).reshape(2, h, wd, 4).permute(0, 3, 1, 2)
    want = F.conv2d(x.double(), w.double(), stride=2, padding=1)
    assert torch.equal(got.double(), want)


def test_integer_softmax_is_close_to_the_float_one():
    torch.manual_seed(0)
    z = torch.randint(-3000, 3000, (32, 10))  # sums over T = 4 of logits in units 2^-8
    got = softmax_q12(z, 8, 4).double() / 4096
    want = torch.softmax(z.double() / 256 / 4, dim=1)
    assert (got - want).abs().max() < 0.03 and (got.sum(1) - 1).abs().max() < 0.01


def test_updates_are_the_stated_fixed_point_steps():
    gen = torch.Generator().manual_seed(0)
    g = torch.tensor([8, -16, 24])
    sgd = IntegerSTBP(update="sgd")  # lr · 2^(frac + e) / count · g = 2^-3 · g: exact, no draw
    assert sgd._scaled(g, -2, 4, 0.125, 4, gen).tolist() == [1, -2, 3]
    norm = IntegerSTBP()  # lr · 2^frac · g / 2^bitlen(max|g|) = 0.5 · 2^4 · g / 2^5
    assert norm._scaled(g, -2, 4, 0.5, 4, gen).tolist() == [2, -4, 6]
    draws = stochastic_shift(torch.ones(20000, dtype=torch.int64), 2, gen)  # SR(1/4)
    assert set(draws.tolist()) == {0, 1} and abs(draws.double().mean() - 0.25) < 0.02


# -- bad input and refusals ----------------------------------------------------------------------
@pytest.mark.parametrize("knobs,field", [
    ({"weight_bits": 9}, "weight_bits"), ({"input_bits": 1.5}, "input_bits"),
    ({"error_bits": True}, "error_bits"), ({"window": 0}, "window"),
    ({"lr_scale": float("inf")}, "lr_scale"), ({"update": "adam"}, "update"),
    ({"seed": -1}, "seed"),
])
def test_bad_knobs_give_one_line_errors_naming_the_field(knobs, field):
    with pytest.raises(ValueError) as info:
        IntegerSTBP(**knobs)
    assert str(info.value).startswith(field) and "\n" not in str(info.value)


@pytest.mark.parametrize("spec,names", [
    ({"name": "mlp", "widths": [8], "neuron": "plif"}, "features.0.act"),
    ({"name": "mlp", "widths": [8], "neuron_params": {"tau": 3.0}}, "tau"),
    ({"name": "mlp", "widths": [8], "spiking": False}, "ReLU"),
    ({"name": "resnet", "widths": [4], "blocks": [1], "hidden": []}, "BasicBlock"),
])
def test_models_the_integer_datapath_cannot_run_are_refused(spec, names):
    extra = {"in_features": 64} if spec["name"] == "mlp" else {"in_channels": 1, "input_size": 8}
    model = build(classes=10, **extra, **spec)
    with pytest.raises(ValueError) as info:
        attach(model, [IntegerSTBP()])
    assert str(info.value).startswith("istbp:") and names in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_batches_are_refused(digits):
    model = _mlp(digits)
    method, session = _session(model)
    x, y = next(iter(digits.train))
    with pytest.raises(ValueError, match=r"^y must be integer labels"):
        session.train_step(x, y.float())
    with pytest.raises(ValueError, match="^x_seq: integer_forward takes int8 codes"):
        method.integer_forward(x)
    unbound = attach(_mlp(digits), [IntegerSTBP()])
    with pytest.raises(ValueError, match="Session.bind"):
        unbound.train_step(x, y)


# -- the train_step hook -------------------------------------------------------------------------
@dataclass
class Stepper:
    NAME: ClassVar[str] = "stepper"
    KIND: ClassVar[str] = "loss"
    calls: int = 0

    def train_step(self, model, x_seq, y, ctx):
        self.calls += 1
        assert ctx.lr_at(ctx.step) == 0.25  # the loop's schedule reaches the method
        return 0.5, torch.zeros(x_seq.shape[0], x_seq.shape[1], 10)


@dataclass
class OtherStepper(Stepper):
    NAME: ClassVar[str] = "other_stepper"


def test_the_trainer_calls_train_step_in_place_of_its_own_step():
    data = load_data(DataConfig(name="digits", T=2, batch_size=64, limit=128))
    model = build("mlp", in_features=64, classes=10, widths=[8])
    before = copy.deepcopy(model.state_dict())
    stepper = Stepper()
    session = attach(model, [stepper])
    cfg = TrainConfig(epochs=1, lr=0.25, schedule="constant", seed=0)
    result = Trainer(model, data, cfg, session=session, verbose=False).fit()
    assert stepper.calls == len(data.train) and session.ctx.step == stepper.calls
    assert result["history"][0]["train_loss"] == 0.5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no float step


def test_two_train_step_methods_or_a_combination_are_refused():
    model = build("mlp", in_features=64, classes=10, widths=[8])
    with pytest.raises(ValueError) as info:
        attach(model, [Stepper(), OtherStepper()])
    msg = str(info.value)
    assert "stepper and other_stepper" in msg and "train_step" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="istbp trains the model itself .* magnitude"):
        attach(model, [IntegerSTBP(), MagnitudePruning()])


def test_train_step_signature_is_checked():
    class Bad:
        KIND = "loss"

        def train_step(self, model, x_seq):
            return 0.0, x_seq

    with pytest.raises(ValueError, match=r"Bad.train_step must take \(model, x_seq, y, ctx\)"):
        check_hooks(Bad())
