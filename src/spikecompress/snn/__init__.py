"""The spiking engine: neurons, surrogate gradients, time folding and input encoders."""

from spikecompress.snn.bntt import BNTT, BNTT1d, BNTT2d
from spikecompress.snn.encoding import ENCODERS, encode
from spikecompress.snn.layers import (
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool1d,
    MaxPool2d,
    SeqWrap,
    check_x_seq,
    fold,
    reset_state,
    seq_apply,
    unfold,
)
from spikecompress.snn.neuron import IF, LIF, NEURONS, PLIF
from spikecompress.snn.surrogate import SURROGATES, ATan, Rectangular, Sigmoid, Surrogate, Triangle

__all__ = [
    "BNTT", "ENCODERS", "IF", "LIF", "NEURONS", "PLIF", "SURROGATES", "ATan", "AdaptiveAvgPool2d",
    "AvgPool1d", "AvgPool2d", "BNTT1d", "BNTT2d", "BatchNorm1d", "BatchNorm2d", "Conv1d",
    "Conv2d", "Dropout", "Flatten", "Linear", "MaxPool1d", "MaxPool2d", "Rectangular", "SeqWrap",
    "Sigmoid", "Surrogate", "Triangle", "check_x_seq", "encode", "fold", "reset_state",
    "seq_apply", "unfold",
]
