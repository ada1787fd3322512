"""Magnitude pruning ends on its target: exactly round(sparsity · n) selected weights are 0."""

import copy

import pytest
import torch

from spikecompress.compress import attach, select
from spikecompress.compress.contract import _train_steps
from spikecompress.compress.prune.magnitude import MagnitudePruning
from spikecompress.compress.prune.masks import mask_of
from spikecompress.data import DataConfig, load_data
from spikecompress.measurement.sparsity import weight_sparsity
from spikecompress.models import build


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", T=2, batch_size=64, limit=192))


@pytest.fixture(scope="module")
def trained(data):
    """A small conv net trained dense on the digits for a few steps."""
    torch.manual_seed(0)
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[8, 16])
    _train_steps(model, attach(model, []), data, 12, lr=1e-2)
    return model


def _zeros(model):
    return sum(int((m.weight == 0).sum()) for _, m in select(model))


@pytest.mark.parametrize("target", [0.5, 0.9])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_target_is_met_on_a_trained_model(target, scope, trained, data):
    model = copy.deepcopy(trained)
    names = [n for n, _ in select(model)]
    sizes = [m.weight.numel() for _, m in select(model)]
    session = attach(model, [MagnitudePruning(sparsity=target, scope=scope)])
    _train_steps(model, session, data, 6, lr=1e-3, per_epoch=3)
    plain = session.finalize()
    want = (round(target * sum(sizes)) if scope == "global"
            else sum(round(target * n) for n in sizes))
    assert _zeros(plain) == want  # kept weights are trained, non-zero
    assert abs(weight_sparsity(plain, names) - target) <= 0.01


def test_a_stage_cut_before_the_schedule_ends_is_pruned_to_the_target_at_finalize(trained, data):
    model = copy.deepcopy(trained)
    n = sum(m.weight.numel() for _, m in select(model))
    method = MagnitudePruning(sparsity=0.8, until=0.8)
    session = attach(model, [method])
    _train_steps(model, session, data, 2, lr=1e-3)  # progress 1.0 of a 2-step loop ...
    assert _zeros(model) == round(0.8 * n)
    model = copy.deepcopy(trained)
    method = MagnitudePruning(sparsity=0.8, until=0.8)
    session = attach(model, [method])
    session.after_step(progress=0.25)  # ... or a stage cut at a quarter of the schedule
    pruned_early = [~mask_of(m).mask.bool() for m in method.targets_]
    assert 0 < _zeros(model) < round(0.8 * n)
    plain = session.finalize()
    assert _zeros(plain) == round(0.8 * n)
    for z, (_, m) in zip(pruned_early, select(plain), strict=True):
        assert bool((m.weight[z] == 0).all())  # what was pruned stays pruned
