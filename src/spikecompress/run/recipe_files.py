"""Recipe files: YAML text ⇄ ``Recipe``, the recipes shipped in the package, ``--set`` overrides.

    recipe = load_recipe("magnitude_qat", overrides=["stages.1.epochs=2"])  # file or shipped name
    text = dump_yaml(recipe)                                               # load(dump(r)) == r
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from spikecompress import recipes
from spikecompress.data import DataError, check_data
from spikecompress.run.folders import load_model
from spikecompress.run.recipe import Recipe, Stage, check_version, key_name


def dump_yaml(recipe: Recipe) -> str:
    """The recipe as YAML text; ``Recipe.from_dict(yaml.safe_load(text)) == recipe``."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None, width=100)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming one key twice (PyYAML keeps the last
    silently), pointing at the second occurrence's line. A merge key's (``<<: *base``) values
    may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if twice:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_YAML_VALUES = 100_000  # a recipe has hundreds; more is an alias bomb or not a recipe


class YAMLSizeError(yaml.YAMLError):
    """YAML nested too deeply or expanding (through aliases) to too many values."""


def load_yaml(text: str) -> object:
    """``yaml.safe_load`` refusing duplicate keys (:class:`UniqueKeyLoader`), nesting deeper than
    Python's recursion limit and documents that expand to more than MAX_YAML_VALUES values."""
    try:
        value = yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise YAMLSizeError("nested too deeply") from None
    _check_size(value)
    return value


def _check_size(value: object) -> None:
    """Count the values of a loaded document, each alias counted again where it is used."""
    stack, count = [value], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise YAMLSizeError(f"more than {MAX_YAML_VALUES} values (aliases expanding?)")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_yaml(text: str, source: str) -> dict:
    """Safe YAML (duplicate keys refused) with one-line errors naming ``source`` and the line;
    the top must be a mapping."""
    try:
        d = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
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
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})"
                             ) from None
        except OSError as e:
            raise ValueError(f"cannot read recipe file {path}: {e.strerror}") from None
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
    d, given = copy.deepcopy(recipe_dict), set()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or key_name(key) != key:
            raise ValueError(f"--set expects path=value (e.g. stages.0.epochs=2), got {item!r}")
        if key in given:
            raise ValueError(f"--set {key} is given twice; give each path once")
        given.add(key)
        try:
            value = load_yaml(text)
        except yaml.YAMLError as e:
            why = " ".join(str(getattr(e, "problem", None) or "invalid YAML").split())
            raise ValueError(f"{key}: cannot parse the value {text!r}: {why}") from None
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


# -- checks before the first stage ---------------------------------------------------------------
def check_run(recipe: Recipe, out_dir: str | Path | None = None) -> None:
    """Everything about ``recipe`` that can fail after the stages before it trained, checked
    before the first stage starts: every stage's data at its own T fits the machine's memory
    (``data.check_data``) and every stage's ``init`` loads (:func:`check_init`)."""
    for i, stage in enumerate(recipe.stages):
        if stage.T is None:
            check_data(recipe.data)
            continue
        try:
            check_data(replace(recipe.data, T=stage.T))
        except ValueError as e:
            raise DataError(f"stages.{i}.T: {e}") from None
    check_init(recipe, out_dir)


def check_init(recipe: Recipe, out_dir: str | Path | None = None) -> None:
    """Load (and drop) every stage's ``init`` model now, so that a missing or broken artifact or
    checkpoint is a one-line error naming ``stages.<i>.init`` before any training, not after the
    stages before it ran. Skipped: a stage that ``out_dir`` holds finished (a resumed run does
    not read its init again), and an init that an earlier stage of this run writes
    (``<out_dir>/stages/<j>-<name>`` or its ``artifact/``)."""
    out = None if out_dir is None else Path(out_dir)
    for i, stage in enumerate(recipe.stages):
        if stage.init is None:
            continue
        if out is not None and (_finished(_stage_folder(out, i, stage))
                                or _written_by_run(Path(stage.init), out, recipe.stages[:i])):
            continue
        load_model(stage.init, f"stages.{i}.init")


def _stage_folder(out: Path, index: int, stage: Stage) -> Path:
    return out / "stages" / f"{index}-{stage.name}"  # as run/stages.py names it


def _finished(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() and (folder / "artifact" / "spec.json").is_file()


def _written_by_run(init: Path, out: Path, earlier: Sequence[Stage]) -> bool:
    target = init.expanduser().resolve()
    for j, stage in enumerate(earlier):
        folder = _stage_folder(out, j, stage).resolve()
        if target in (folder, folder / "artifact"):
            return True
    return False
