"""weight_sparsity / neuron_sparsity / connectivity and neuron-masked SOPs against brute force."""

import itertools

import pytest
import torch
from torch import nn

from spikecompress import snn
from spikecompress.measurement import count
from spikecompress.measurement.sparsity import (
    connections,
    connectivity,
    neuron_sparsity,
    weight_sparsity,
)
from spikecompress.models import build
from spikecompress.snn.neuron import set_spike_mask_


def _toy():
    """conv(2→3, k3, pad 1) - BN - LIF - conv(3→4, k3, stride 2) - LIF - flatten - linear."""
    torch.manual_seed(0)
    net = nn.Sequential(
        snn.Conv2d(2, 3, 3, padding=1), snn.BatchNorm2d(3), snn.LIF(tau=2.0, v_threshold=0.3),
        snn.Conv2d(3, 4, 3, stride=2), snn.LIF(tau=2.0, v_threshold=0.3), snn.Flatten(),
        snn.Linear(4 * 2 * 2, 5),
    ).eval()
    with torch.no_grad():
        net[0].weight[net[0].weight.abs() < 0.15] = 0
        net[3].weight[net[3].weight.abs() < 0.1] = 0
        net[6].weight[:, ::3] = 0
    mask1 = (torch.rand(3, 5, 5) > 0.3).float()
    mask2 = torch.ones(4, 2, 2)
    mask2[1] = 0
    mask2[2, 0, 1] = 0
    set_spike_mask_(net[2], mask1)
    set_spike_mask_(net[4], mask2)
    return net, mask1, mask2


def _conv_pairs(conv, in_shape):
    """Brute force: every (out channel, out position, in channel, tap) with an in-bounds input,
    as (o, oy, ox, i, iy, ix)."""
    c_out, c_in, k, _ = conv.weight.shape
    s, p = conv.stride[0], conv.padding[0]
    h_out = (in_shape[1] + 2 * p - k) // s + 1
    for o, oy, ox, i, ky, kx in itertools.product(
        range(c_out), range(h_out), range(h_out), range(c_in), range(k), range(k)
    ):
        iy, ix = oy * s - p + ky, ox * s - p + kx
        if 0 <= iy < in_shape[1] and 0 <= ix < in_shape[2]:
            yield o, oy, ox, i, iy, ix, ky, kx


def test_connectivity_and_sops_equal_brute_force_counts_with_neuron_masks():
    net, mask1, mask2 = _toy()
    x_seq = (torch.rand(3, 2, 2, 5, 5) > 0.5).float()  # binary input: the first conv does SOPs
    alive, dense, sops = 0, 0, 0
    acts = {}
    h0 = net[0:3](x_seq)  # spikes of the first LIF [T, B, 3, 5, 5]
    snn.reset_state(net)
    acts[0], acts[3] = x_seq, h0
    for idx, (in_shape, target_mask) in {0: ((2, 5, 5), mask1), 3: ((3, 5, 5), mask2)}.items():
        w = net[idx].weight
        for o, oy, ox, i, iy, ix, ky, kx in _conv_pairs(net[idx], in_shape):
            dense += 1
            if w[o, i, ky, kx] != 0 and target_mask[o, oy, ox] != 0:
                alive += 1
                sops += int(acts[idx][:, :, i, iy, ix].sum())
    lin = net[6].weight
    dense += lin.numel()
    alive += int((lin != 0).sum())  # the classifier feeds no neuron: every output is alive
    flat = net[0:6](x_seq).flatten(2)  # [T, B, 16]
    snn.reset_state(net)
    sops += int((flat @ (lin != 0).float().T).sum())

    assert connectivity(net, x_seq) == pytest.approx(alive / dense)
    assert sum(a for a, _ in connections(net, x_seq).values()) == alive
    assert count(net, x_seq).sops == sops


def test_neuron_mask_cuts_sops_only_into_its_neuron():
    net, _, _ = _toy()
    x_seq = (torch.rand(2, 2, 2, 5, 5) > 0.5).float()
    before = count(net, x_seq).layers["3"].sops
    set_spike_mask_(net[4], torch.zeros(4, 2, 2))  # the second conv now feeds only dead neurons
    assert count(net, x_seq).layers["3"].sops == 0 < before


def test_weight_and_neuron_sparsity_policies():
    net, mask1, mask2 = _toy()
    weights = [net[i].weight for i in (0, 3, 6)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert weight_sparsity(net) == pytest.approx(zeros / sum(w.numel() for w in weights))
    assert weight_sparsity(net, ["6"]) == 6 / 16  # columns 0, 3, ..., 15 of 16
    x_seq = torch.rand(2, 1, 2, 5, 5)
    pruned = (mask1 == 0).sum() + (mask2 == 0).sum()
    assert neuron_sparsity(net, x_seq) == pytest.approx(float(pruned) / (75 + 16))
    with pytest.raises(ValueError, match="names: no conv / linear layer called 'nope'"):
        weight_sparsity(net, ["nope"])


def test_dense_model_has_full_connectivity_and_no_pruned_neurons():
    torch.manual_seed(0)
    model = build("conv1d_net", in_channels=1, input_size=40, classes=10, widths=[4, 8, 8])
    x_seq = torch.rand(2, 3, 1, 40)
    assert connectivity(model, x_seq) == 1.0
    assert neuron_sparsity(model, x_seq) == 0.0 and weight_sparsity(model) == 0.0
