import math

import pytest
import torch

from spikecompress.data import DataConfig, load_data
from spikecompress.export import save, size_bytes
from spikecompress.measurement import count, energy_pj, get_profile
from spikecompress.measurement.metrics import measure
from spikecompress.measurement.totals import count_loader
from spikecompress.models import build


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits", T=2, batch_size=128, limit=64))
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    return model, data


def test_counts_over_the_loader_sum_the_per_batch_counts(setup):
    model, data = setup
    totals, _ = count_loader(model, data.test)
    batches = [count(model, x_seq) for x_seq, _ in data.test]
    assert totals["sops"] == sum(c.sops for c in batches)
    assert totals["macs"] == sum(c.macs for c in batches)
    assert totals["samples"] == 360


def test_metrics_are_finite_and_consistent(setup, tmp_path):
    model, data = setup
    path = save(model, tmp_path / "a")
    m = measure(model, data, artifact=path, latency_repeats=2)
    assert m.size_bytes == size_bytes(path)  # the real files, not a formula
    assert m.weight_bits == 32 and m.params == sum(p.numel() for p in model.parameters())
    totals, _ = count_loader(model, data.test)
    l0 = energy_pj(totals, get_profile("45nm"), "L0")["total_pj"] / totals["samples"]
    assert m.energy_pj_per_sample["L0"] == pytest.approx(l0)
    assert m.energy_pj_per_sample["L1"] > m.energy_pj_per_sample["L0"]
    d = m.to_dict()
    for key, value in d.items():
        if isinstance(value, float):
            assert math.isfinite(value), key
    shares = [r["energy_share"] for r in m.layers.values()]
    assert sum(shares) == pytest.approx(1.0)


def test_pruned_weights_shrink_sops_and_bytes(setup):
    model, data = setup
    dense = measure(model, data, latency_repeats=1)
    pruned = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8])
    pruned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in pruned.parameters():
            if p.dim() > 1:
                p[p.abs() < p.abs().median()] = 0
    small = measure(pruned, data, latency_repeats=1)
    assert small.params_nonzero < dense.params_nonzero
    assert small.size_bytes < dense.size_bytes
    assert small.neurobench["ConnectionSparsity"] > 0.4


def test_package_is_callable_as_the_one_verb(setup):
    import spikecompress

    model, data = setup
    m = spikecompress.measure(model, data, profile="45nm-int8", latency_repeats=1)
    assert isinstance(m, spikecompress.Metrics) and m.profile == "45nm-int8"
    assert m.to_neurobench()["ParameterCount"] == m.params


def test_time_stages_cost_their_average_steps_and_keep_the_ann_twin_one_pass():
    from spikecompress.models.time_stages import average_time_steps, install_time_stages_

    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits", T=4, batch_size=64, limit=64))
    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[4, 8]).eval()
    plain = measure(model, data, latency_repeats=1)
    install_time_stages_(model, {"split": ["features.0"], "steps": [1], "transformer": "mean"})
    staged = measure(model, data, latency_repeats=1)
    assert plain.avg_time_steps == 4.0 and staged.time_steps == 4
    assert staged.avg_time_steps == average_time_steps(model, 4) < 4
    for level in ("L0", "L1"):  # the ANN twin has the same layers: one pass, the same energy
        assert staged.ann_energy_pj_per_sample[level] == pytest.approx(
            plain.ann_energy_pj_per_sample[level], rel=1e-12)
