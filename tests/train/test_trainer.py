import json

import pytest
import torch
from torch import nn

from spikecompress import snn
from spikecompress.compress import Session
from spikecompress.snn.losses import task_loss
from spikecompress.train import CheckpointError, TrainConfig, Trainer
from spikecompress.train import checkpoint as ckpt


class _Loader:
    """A minimal loader honouring the Trainer's protocol: set_epoch, __len__, __iter__."""

    def __init__(self, x, y, T, batch_size, shuffle):
        self.x, self.y, self.T, self.bs, self.shuffle, self.epoch = x, y, T, batch_size, shuffle, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return (len(self.y) + self.bs - 1) // self.bs

    def __iter__(self):
        g = torch.Generator().manual_seed(100 + self.epoch)
        n = len(self.y)
        idx = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for i in range(0, len(idx), self.bs):
            b = idx[i : i + self.bs]
            x = self.x[b]
            x_seq = (torch.rand((self.T, *x.shape), generator=g) < x).float()  # [T, B, F] Poisson
            yield x_seq, self.y[b]


class _Data:
    def __init__(self, n=96):
        g = torch.Generator().manual_seed(0)
        self.y = torch.randint(0, 3, (n,), generator=g)
        centers = torch.rand(3, 12, generator=g)
        x = (centers[self.y] + 0.1 * torch.randn(n, 12, generator=g)).clamp(0, 1)
        self.train = _Loader(x, self.y, 4, 16, True)
        self.test = _Loader(x, self.y, 4, 32, False)


def _model():
    torch.manual_seed(1)
    return nn.Sequential(
        snn.Linear(12, 32), snn.BatchNorm1d(32), snn.LIF(), snn.Dropout(0.2), snn.Linear(32, 3)
    )


class _Crash(Session):
    """A session whose after_step raises at a given step, as if the process were killed."""

    def __init__(self, at_step):
        super().__init__(nn.Identity(), [])
        self.at_step, self.steps = at_step, 0

    def loss(self, x_seq, out_seq, y=None):
        return 0.0

    def after_step(self, progress, epoch=None):
        self.steps += 1
        if self.steps == self.at_step:
            raise KeyboardInterrupt


def test_training_learns_and_reports_metrics(tmp_path):
    metrics = Trainer(_model(), _Data(), TrainConfig(epochs=8, lr=2e-2), verbose=False).fit()
    assert metrics["accuracy"] > 0.9
    assert 0 < metrics["firing_rate"] < 1 and metrics["spikes_per_sample"] > 0
    assert set(metrics["layers"]) == {"2"}
    assert len(metrics["history"]) == 8


@pytest.mark.parametrize("crash_at,every", [(9, 0), (9, 4), (13, 1)])
def test_killed_run_resumes_to_identical_weights(tmp_path, crash_at, every):
    cfg = TrainConfig(epochs=3, lr=1e-2, checkpoint_every=every)  # 6 steps per epoch
    ref = _model()
    Trainer(ref, _Data(), cfg, out_dir=tmp_path / "ref", verbose=False).fit()

    model = _model()
    with pytest.raises(KeyboardInterrupt):
        crash = _Crash(crash_at)
        Trainer(model, _Data(), cfg, tmp_path / "run", session=crash, verbose=False).fit()
    resumed = _model()  # a fresh process: fresh weights, fresh RNG
    torch.manual_seed(12345)
    metrics = Trainer(resumed, _Data(), cfg, out_dir=tmp_path / "run", verbose=False).fit()

    assert metrics["resumed"]
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert len(metrics["history"]) == 3


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=1, lr=1e-2)
    Trainer(_model(), _Data(), cfg, out_dir=tmp_path, verbose=False).fit()
    before = json.loads((tmp_path / ckpt.POINTER).read_text())

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "atomic_write_json", dies)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), _Data(), TrainConfig(epochs=2, lr=1e-2), tmp_path, verbose=False).fit()
    assert json.loads((tmp_path / ckpt.POINTER).read_text()) == before
    tensors, meta = ckpt.load_checkpoint(tmp_path)
    assert meta["epoch"] == 1 and any(k.startswith("model.") for k in tensors)
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_is_safetensors_and_json_only(tmp_path):
    Trainer(_model(), _Data(), TrainConfig(epochs=1), out_dir=tmp_path, verbose=False).fit()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "checkpoint.json" and names[1].endswith(".safetensors") and len(names) == 2


def test_corrupt_or_mismatched_checkpoint_errors_name_the_file(tmp_path):
    (tmp_path / ckpt.POINTER).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint file .*checkpoint.json"):
        ckpt.load_checkpoint(tmp_path)
    run = tmp_path / "run"
    Trainer(_model(), _Data(), TrainConfig(epochs=1), out_dir=run, verbose=False).fit()
    other = nn.Sequential(snn.Linear(12, 8), snn.LIF(), snn.Linear(8, 3))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        Trainer(other, _Data(), TrainConfig(epochs=2), out_dir=run, verbose=False).fit()


def test_tet_loss_is_mean_of_per_step_cross_entropy():
    out_seq = torch.randn(4, 5, 3)
    y = torch.randint(0, 3, (5,))
    expected = torch.stack([nn.functional.cross_entropy(out_seq[t], y) for t in range(4)]).mean()
    torch.testing.assert_close(task_loss(out_seq, y, "tet"), expected)
    torch.testing.assert_close(
        task_loss(out_seq, y, "ce"), nn.functional.cross_entropy(out_seq.mean(0), y)
    )


@pytest.mark.parametrize(
    "field,value", [("optimizer", "adamw"), ("loss", "mse"), ("lr", 0.0), ("device", "tpu")]
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
