"""Recipe files: YAML text ⇄ ``Recipe``, the recipes shipped in the package, ``--set`` overrides.

    recipe = load_recipe("magnitude_qat", overrides=["stages.1.epochs=2"])  # file or shipped name
    text = dump_yaml(recipe)                                               # load(dump(r)) == r
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import yaml

from spikecompress import recipes
from spikecompress.run.recipe import Recipe, check_version


def dump_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text; ``Recipe.from_dict(yaml.safe_load(text)) == recipe``."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None, width=100)


def parse_yaml(text: str, source: str) -> dict:
    """``yaml.safe_load`` with one-line errors naming ``source``; the top must be a mapping."""
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"{source}: invalid YAML{where}: {problem}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{source}: a recipe must be a YAML mapping, got {type(d).__name__}")
    return d


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in ``spikecompress/recipes`` (usable as a path)."""
    return recipes.names()


def read_recipe_text(path_or_name: str | Path) -> tuple[str, str]:
    """(YAML text, source label) of a recipe file, or of a shipped recipe given by its name."""
    path = Path(path_or_name)
    if path.is_file():
        return path.read_text(), str(path)
    if path.exists() or path.suffix or len(path.parts) > 1:
        raise FileNotFoundError(f"recipe file {path} not found")
    name, shipped = str(path_or_name), recipes.names()
    if name in shipped:
        return recipes.read_text(name), name
    raise FileNotFoundError(
        f"no recipe file {name!r} and no shipped recipe of that name ({shipped})"
    )


def load_recipe(path_or_name: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe file (or shipped recipe name), apply ``--set`` overrides, validate it."""
    text, source = read_recipe_text(path_or_name)
    d = parse_yaml(text, source)
    check_version(d.get("version"))  # a newer format may not fit the overrides' schema
    return Recipe.from_dict(apply_overrides(d, overrides))


# -- overrides -----------------------------------------------------------------------------------
def apply_overrides(recipe_dict: dict, overrides: Sequence[str]) -> dict:
    """``recipe_dict`` with each ``"a.b.c=value"`` applied, validated and resolved (a new dict).

    The value is parsed with ``yaml.safe_load`` (ints, floats, bools, null, ``[lists]``); list
    items are addressed by index (``stages.1.methods.0.sparsity=0.5``). The result is checked as a
    whole by ``Recipe.from_dict``, so unknown keys, wrong types (``stages.0.epochs: expected int,
    got 'abc'``) and impossible values raise a one-line ValueError naming the path.
    """
    d = copy.deepcopy(recipe_dict)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects path=value (e.g. stages.0.epochs=2), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"{key}: cannot parse the value {text!r}") from None
        node, parts = d, key.split(".")
        for depth, part in enumerate(parts):
            path, at = ".".join(parts[: depth + 1]), part
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(f"{path}: no item {part!r} (the list has {len(node)} items)")
                at = int(part)
            elif not isinstance(node, dict):
                raise ValueError(f"{path}: {path.rpartition('.')[0]} is {node!r}, not a mapping")
            if depth == len(parts) - 1:
                node[at] = value
                break
            if isinstance(node, dict) and node.get(at) is None:
                node[at] = {}  # stages.0.optimizer.lr on a stage that names no optimizer
            node = node[at]
    return Recipe.from_dict(d).to_dict()
