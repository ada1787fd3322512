"""Other frameworks' neurons are refused by name where we cannot see their spikes or state."""

import pytest
import torch
from torch import nn

from _oracles import oracle
from spikecompress.measurement.counters import count
from spikecompress.measurement.spikes import SpikeMonitor
from spikecompress.snn import reset_state
from spikecompress.snn.foreign import foreign_modules


def _nets():
    snn = oracle("snntorch")
    norse = oracle("norse.torch")
    sj_layer = oracle("spikingjelly.activation_based.layer")
    sj_neuron = oracle("spikingjelly.activation_based.neuron")
    return {
        "snntorch": nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True)),
        "norse": norse.SequentialState(nn.Linear(4, 3), norse.LIFCell(), norse.LILinearCell(3, 2)),
        "spikingjelly": nn.Sequential(sj_layer.Linear(4, 3), sj_neuron.LIFNode(step_mode="m")),
    }


@pytest.mark.parametrize("framework", ["snntorch", "norse", "spikingjelly"])
def test_counters_refuse_foreign_neurons_by_name(framework):
    net = _nets()[framework]
    match = rf"count: module '1' \({framework}\..*\) is a {framework} module"
    with pytest.raises(ValueError, match=match):
        count(net, torch.rand(2, 1, 4))
    with pytest.raises(ValueError, match=rf"SpikeMonitor: module '1' .*from_{framework}"):
        with SpikeMonitor(net):
            pass


def test_reset_state_refuses_what_it_cannot_reset_and_resets_spikingjelly():
    nets = _nets()
    with pytest.raises(ValueError, match=r"reset_state: module '1' \(snntorch\._neurons"):
        reset_state(nets["snntorch"])
    with pytest.raises(ValueError, match=r"reset_state: module '1' \(norse\..*LIFCell\)"):
        reset_state(nets["norse"])
    sj = nets["spikingjelly"]
    sj(torch.rand(2, 1, 4) * 4)
    assert isinstance(sj[1].v, torch.Tensor)
    reset_state(sj)
    assert not isinstance(sj[1].v, torch.Tensor) or not sj[1].v.any()


def test_plain_layers_of_a_framework_are_not_refused():
    sj_layer = oracle("spikingjelly.activation_based.layer")
    net = nn.Sequential(sj_layer.Conv2d(1, 2, 3, step_mode="m"), sj_layer.Flatten(step_mode="m"),
                        nn.Linear(8, 2))
    assert foreign_modules(net) == []
    counts = count(net, torch.full((1, 1, 1, 4, 4), 0.5))  # not 0/1: counted as MACs
    assert counts.macs == 1 * 2 * 9 * 4 + 8 * 2  # a real input: every product is a MAC
