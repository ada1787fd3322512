"""Model builders: spiking MLP, small CNN, 1-D CNN, VGG, Spiking ResNet, SEW-ResNet and the AutoSNN
backbone (the architecture ``compress.search.autosnn`` searches).

Every builder takes explicit widths (a pruned width list rebuilds the smaller model), is T-agnostic
(x_seq [T, B, ...] → per-step logits [T, B, classes]), and has ``spiking=False`` for the ANN twin.
A built model carries ``model.spec``, a JSON-serialisable dict (``"name"`` plus every builder
argument, resolved), and ``from_spec(model.spec)`` rebuilds it.

    model = build("conv_net", in_channels=1, input_size=8, classes=10, widths=[16, 32, 64])
    twin = from_spec({**model.spec, "spiking": False})

Neurons: ``neuron`` is "lif", "if" or "plif"; ``neuron_params`` a flat dict of that neuron's
arguments (lif: tau, v_threshold, v_reset (null = soft reset), decay_input, detach_reset; if: no
tau or decay_input; plif: init_tau instead of tau), "surrogate" (a name of ``snn.SURROGATES``) with
that surrogate's own fields ("alpha"; "width" for rectangular), and "per_channel" (one tau /
v_threshold / PLIF decay per channel). Omitted keys take defaults; the spec records all of them.

Normalisation: ``norm`` is "bn" (default: one BatchNorm over time and batch before each neuron) or
"bntt" (Batch Normalization Through Time, ``snn.BNTT``: one BatchNorm per time step, γ only, Kim &
Panda 2021), which needs ``steps``, the T the model runs at (``steps`` is null for "bn").
"""

from __future__ import annotations

import inspect

from torch import nn

from spikecompress.models.autosnn_net import autosnn_net
from spikecompress.models.bn_fold import install_folded_bn_
from spikecompress.models.common import Network
from spikecompress.models.conv1d_net import conv1d_net
from spikecompress.models.conv_net import conv_net
from spikecompress.models.exit_policy import install_exit_policy_
from spikecompress.models.layer_graph import LayerGraph, layers
from spikecompress.models.mlp import mlp
from spikecompress.models.resnet import resnet, sew_resnet
from spikecompress.models.time_stages import install_time_stages_
from spikecompress.models.tsc import install_tsc_
from spikecompress.models.ttfs import install_ttfs_
from spikecompress.models.vgg import VGG_WIDTHS, vgg

MODELS = {
    "mlp": mlp,
    "conv_net": conv_net,
    "conv1d_net": conv1d_net,
    "vgg": vgg,
    "resnet": resnet,
    "sew_resnet": sew_resnet,
    "autosnn_net": autosnn_net,
    "layers": layers,
}

# Structure a compression method installs on a built model (an early-exit policy, time stages),
# recorded in ``model.spec`` under its key: key → ``install(model, config)``, which adds the
# structure (its tensors then live in the state_dict) and writes ``model.spec[key] = config``.
# ``from_spec`` builds the network from the other keys, then runs these installers.
EXTRAS: dict = {
    "folded_bn": install_folded_bn_,
    "exit_policy": install_exit_policy_,
    "time_stages": install_time_stages_,
    "tsc": install_tsc_,
    "ttfs": install_ttfs_,
}


def build(name: str, **spec) -> nn.Module:
    """Build the model ``MODELS[name]`` from its keyword arguments.

    Unknown names, unknown or missing keys and bad values raise a one-line ``ValueError`` that
    names them. The model's ``spec`` records every argument, defaults resolved.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r} (known: {sorted(MODELS)})")
    params = inspect.signature(MODELS[name]).parameters
    for key in spec:
        if key not in params:
            raise ValueError(f"{key!r} is not a spec key of model {name!r} (known: {list(params)})")
    missing = [k for k, p in params.items() if p.default is p.empty and k not in spec]
    if missing:
        raise ValueError(f"model {name!r} needs spec keys {missing}")
    return MODELS[name](**spec)


def from_spec(spec: dict) -> nn.Module:
    """Rebuild a model from ``model.spec`` (or any dict with ``"name"`` and builder arguments)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a model spec must be a dict with a 'name' key, got {spec!r}")
    rest = {k: v for k, v in spec.items() if k != "name" and k not in EXTRAS}
    model = build(spec["name"], **rest)
    for key, install in EXTRAS.items():
        if spec.get(key) is not None:
            install(model, spec[key])
    return model


__all__ = [
    "EXTRAS", "MODELS", "VGG_WIDTHS", "LayerGraph", "Network", "autosnn_net", "build",
    "conv1d_net", "conv_net", "from_spec", "layers", "mlp", "resnet", "sew_resnet", "vgg",
]
