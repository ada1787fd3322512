import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

from spikecompress.compress import METHODS, Session, attach, is_plain, schedule_value, select
from spikecompress.compress.prune.magnitude import MagnitudePruning
from spikecompress.models import build
from spikecompress.snn import reset_state


def _model():
    torch.manual_seed(0)
    return build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])


def _train(model, session, steps, lr=1e-2, first=0, total=None):
    """Steps first..first+steps-1 of a stage of ``total`` steps."""
    total = total or steps
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(first)
    for step in range(first, first + steps):
        x_seq = torch.rand(2, 8, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        out = model(x_seq)
        loss = F.cross_entropy(out.mean(0), y) + session.loss(x_seq, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.after_step(progress=(step + 1) / total)
        reset_state(model)


def test_schedules_are_pure_functions_of_progress():
    assert schedule_value("cubic", 0.0, 0, 0.9) == 0
    assert schedule_value("cubic", 1.0, 0, 0.9) == pytest.approx(0.9)
    assert schedule_value("cubic", 0.5, 0, 1.0) == pytest.approx(1 - 0.5**3)
    assert schedule_value("linear", 0.25, 0, 1.0) == 0.25
    assert schedule_value("cosine", 0.5, 0, 1.0) == pytest.approx(0.5)
    assert schedule_value("steps", 0.6, 0, 1.0, n=4) == 0.5
    assert schedule_value("constant", 0.1, 0, 0.7) == 0.7
    assert schedule_value("linear", 0.9, 0, 1.0, begin=0.0, until=0.5) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        schedule_value("exp", 0.5, 0, 1)


def test_select_defaults_to_conv_and_linear_and_names_bad_patterns():
    names = [n for n, _ in select(_model())]
    assert names == ["features.0.conv", "features.1.conv", "classifier.fc"]
    assert [n for n, _ in select(_model(), exclude=[r"classifier\..*"])] == names[:2]
    with pytest.raises(ValueError, match="no layer selected"):
        select(_model(), include=["nothing"])
    with pytest.raises(ValueError, match="include: invalid regex"):
        select(_model(), include=["("])
    aux = _model()
    aux.exit_policy = torch.nn.Sequential(torch.nn.Linear(4, 2))  # a network beside the SNN
    assert [n for n, _ in select(aux)] == names  # never picked implicitly
    assert [n for n, _ in select(aux, include=[r"exit_policy\..*"])] == ["exit_policy.0"]


@pytest.mark.parametrize("schedule", ["constant", "cubic"])
def test_magnitude_pruning_reaches_target_and_pruned_weights_stay_zero_through_adam(schedule):
    model = _model()
    method = MagnitudePruning(sparsity=0.75, schedule=schedule, until=0.5)
    session = attach(model, [method])
    _train(model, session, steps=6, total=12)
    assert method.current_sparsity() == pytest.approx(0.75, abs=1e-3)
    zero_before = {n: (m.weight == 0).clone() for n, m in select(model)}
    _train(model, session, steps=6, first=6, total=12)  # after `until`: Adam must revive nothing
    for n, m in select(model):
        assert torch.equal(m.weight == 0, zero_before[n])
    plain = session.finalize()
    assert is_plain(plain) and not any("parametrizations" in k for k in plain.state_dict())
    total = sum(m.weight.numel() for _, m in select(plain))
    zeros = sum(int((m.weight == 0).sum()) for _, m in select(plain))
    assert zeros == round(0.75 * total)


def test_layer_scope_prunes_every_layer_to_the_target():
    model = _model()
    attach(model, [MagnitudePruning(sparsity=0.5, scope="layer", schedule="constant")])
    for _, m in select(model):
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_session_rejects_invalid_combinations_and_double_finalize():
    model = _model()
    with pytest.raises(ValueError, match="attached twice"):
        attach(model, [MagnitudePruning(), MagnitudePruning()])
    session = attach(model, [])
    session.finalize()
    with pytest.raises(RuntimeError, match="already finalized"):
        session.finalize()
    with pytest.raises(ValueError, match="progress"):
        attach(_model(), []).after_step(progress=1.5)


def test_methods_table_is_literal_and_named():
    for name, cls in METHODS.items():
        assert cls.NAME == name and cls.KIND in ("channels", "masks", "quant", "time", "loss")
        assert cls.PAPER  # `spikecompress list` shows it


def test_bad_hyper_parameters_name_the_field():
    with pytest.raises(ValueError, match="sparsity"):
        MagnitudePruning(sparsity=1.0)
    with pytest.raises(ValueError, match="scope"):
        MagnitudePruning(scope="row")


def test_session_state_round_trips_tensors_lists_dicts_and_scalars():
    from dataclasses import dataclass, field

    @dataclass
    class Stateful:
        KIND = "loss"
        t_: torch.Tensor = field(default_factory=lambda: torch.zeros(2), init=False)
        ts_: list = field(default_factory=list, init=False)
        d_: dict = field(default_factory=dict, init=False)
        n_: int = field(default=0, init=False)  # a class-level default: still saved

    a = Stateful()
    a.t_, a.ts_, a.d_, a.n_ = torch.ones(2), [torch.arange(3)], {"w": torch.full((1,), 7.0)}, 5
    tensors, scalars = Session(_model(), [a]).state_dict()
    b = Stateful()
    Session(_model(), [b]).load_state_dict(tensors, scalars)
    assert torch.equal(b.t_, a.t_) and torch.equal(b.ts_[0], a.ts_[0])
    assert torch.equal(b.d_["w"], a.d_["w"]) and b.n_ == 5
    assert Session(_model(), [Stateful()]).state_dict()[1]["0.n_"] == 0


def test_method_param_groups_get_their_own_learning_rate_in_the_trainer():
    from spikecompress.train.loop import make_optimizer

    class Grouped:
        KIND = "loss"

        def param_groups(self, model, ctx):
            return [{"params": [model.classifier.fc.weight], "lr_scale": 10.0}]

    model = _model()
    session = attach(model, [Grouped()])
    opt = make_optimizer(model, "adam", 1e-3, 0.0, 0.9, session.param_groups())
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    session.bind(opt, total_steps=10, steps_per_epoch=5)
    assert session.ctx.lr_at(3) == 1e-3 and session.ctx.total_steps == 10


def test_a_misspelt_hook_or_a_wrong_signature_is_refused_at_attach():
    @dataclasses.dataclass
    class Misspelt:
        KIND = "masks"

        def after_steps(self, model, ctx):  # never called: the hook is after_step
            pass

    @dataclasses.dataclass
    class Finalise:
        KIND = "masks"

        def finalise(self, model, ctx):
            return model

    @dataclasses.dataclass
    class WrongArgs:
        KIND = "loss"

        def loss(self, model, out_seq):
            return out_seq.sum()

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    for cls, message in [(Misspelt, "Misspelt.after_steps looks like a misspelt hook 'after_step'"),
                         (Finalise, "Finalise.finalise looks like a misspelt hook 'finalize'"),
                         (WrongArgs, "WrongArgs.loss must take (model, x_seq, out_seq, ctx)")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            attach(model, [cls()])


def test_a_model_with_nan_weights_is_refused_before_any_method_runs():
    model = build("mlp", in_features=4, widths=[3], classes=2)
    with torch.no_grad():
        model.classifier.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"model: classifier\.fc\.weight holds NaN or inf"):
        attach(model, [METHODS["magnitude"](sparsity=0.5)])
