"""Recipes shipped with spikecompress: ``spikecompress run <name>`` reads ``<name>.yaml`` here."""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """Names of the shipped recipes (file names without ``.yaml``)."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def read_text(name: str) -> str:
    """The YAML text of the shipped recipe ``name``; FileNotFoundError naming the known ones."""
    if name not in names():
        raise FileNotFoundError(f"no shipped recipe {name!r} (shipped: {names()})")
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text()
