"""Read a built model's widths back from its module shapes (after channel surgery).

``respec(model)`` is ``model.spec`` with every width list replaced by what the modules now hold, so
``from_spec(respec(model))`` builds a model whose ``state_dict`` fits the pruned one exactly.
"""

from __future__ import annotations

from torch import nn


def _hidden(model: nn.Module) -> list[int]:
    """Widths of the hidden classifier layers ``classifier.fc{i}`` (not the read-out ``fc``)."""
    return [m.out_features for name, m in model.classifier.named_children()
            if name.startswith("fc") and name != "fc"]


def _convs(model: nn.Module) -> dict:
    return {"widths": [block.conv.out_channels for block in model.features],
            "hidden": _hidden(model)}


def _vgg(model: nn.Module) -> dict:
    layers: list[int | str] = []
    for block in model.features:
        layers.append(block.conv.out_channels)
        if hasattr(block, "pool"):
            layers.append("M")
    return {"widths": layers, "hidden": _hidden(model)}


def _mlp(model: nn.Module) -> dict:
    return {"widths": [block.fc.out_features for block in model.features]}


def _resnet(model: nn.Module) -> dict:
    stages = [m for name, m in model.features.named_children() if name.startswith("stage")]
    return {
        "widths": [stage[-1].conv2.out_channels for stage in stages],
        "inner_widths": [[block.conv1.out_channels for block in stage] for stage in stages],
        "hidden": _hidden(model),
    }


def _layers(model: nn.Module) -> dict:
    return model.describe()


_WIDTHS = {"layers": _layers, "mlp": _mlp, "conv_net": _convs, "conv1d_net": _convs, "vgg": _vgg,
           "resnet": _resnet, "sew_resnet": _resnet}


def respec(model: nn.Module) -> dict:
    """``model.spec`` with the width lists its modules hold now; raises ValueError for a model
    without a spec of a known family."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict) and spec.get("name") is not None and spec["name"] not in _WIDTHS:
        raise ValueError(f"respec: channel surgery does not handle {spec['name']!r} models yet "
                         f"(it handles {sorted(_WIDTHS)})")
    if not isinstance(spec, dict) or spec.get("name") not in _WIDTHS:
        raise ValueError("respec needs a model built by spikecompress.models (with a .spec)")
    return {**spec, **_WIDTHS[spec["name"]](model)}
