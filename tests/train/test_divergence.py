"""A NaN or inf loss or weight stops training at once with one line naming where; the last good
checkpoint stays usable; JSON records are strict."""

import json
import math

import pytest
import torch
from test_trainer import _Data, _model

from spikecompress.train import TrainConfig, Trainer, load_checkpoint
from spikecompress.train.checkpoint import atomic_write_json
from spikecompress.train.divergence import DivergenceError, DivergenceGuard


class _Poison:
    """A loss-only method whose loss turns NaN from a given step on (a diverging run)."""

    KIND = "loss"

    def __init__(self, at_step):
        self.at_step, self.calls = at_step, 0

    def loss(self, model, x_seq, out_seq, ctx):
        self.calls += 1
        return out_seq.new_tensor(math.nan if self.calls >= self.at_step else 0.0)


def test_a_nan_loss_stops_the_run_naming_stage_epoch_step_and_keeps_the_checkpoint(tmp_path):
    from spikecompress.compress import attach

    data = _Data()  # 6 steps per epoch
    model = _model()
    good = Trainer(model, data, TrainConfig(epochs=1, lr=1e-2), out_dir=tmp_path, verbose=False)
    good.fit()
    before, meta = load_checkpoint(tmp_path)
    session = attach(model, [_Poison(at_step=3)], stage="prune")
    bad = Trainer(model, data, TrainConfig(epochs=2, lr=1e-2), out_dir=tmp_path, session=session,
                  meta={"stage": "prune"}, verbose=False)
    with pytest.raises(DivergenceError, match=r"stage 'prune': the loss is nan at epoch 2, step 9"):
        bad.fit()
    after, meta_after = load_checkpoint(tmp_path)
    assert meta_after["step"] == meta["step"] == 6
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    model = _model()
    trainer = Trainer(model, _Data(), TrainConfig(epochs=1, lr=1e-2), out_dir=tmp_path,
                      verbose=False)
    with torch.no_grad():
        model[0].weight[0, 0] = math.inf
    with pytest.raises(DivergenceError, match=r"0\.weight holds NaN or inf"):
        trainer._save()
    assert not (tmp_path / "checkpoint.json").exists()


def test_an_exploding_finite_loss_warns_once():
    guard = DivergenceGuard("stage 'x'", explode=100.0)
    guard.loss(2.0, 0, 1)
    with pytest.warns(UserWarning, match="over 100x the first step's 2"):
        guard.loss(500.0, 0, 2)
    guard.loss(900.0, 0, 3)  # once is enough
    assert guard.warned


def test_json_records_are_strict(tmp_path):
    with pytest.raises(ValueError, match="m.json: refusing to write NaN or inf"):
        atomic_write_json(tmp_path / "m.json", {"accuracy": math.nan})
    assert not (tmp_path / "m.json").exists()
    atomic_write_json(tmp_path / "m.json", {"accuracy": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": 0.5}
