"""Recipes: YAML mapped one to one onto dataclasses (Recipe → Stage → OptimizerConfig, methods).

    recipe = Recipe.from_dict(yaml.safe_load(text))   # files, shipped recipes, --set: recipe_files

Every value is type-checked against its field; unknown keys, wrong types, unknown methods and
impossible values raise a one-line ``ValueError`` naming the field path (``stages.1.methods.0.
sparsity``). Method specs are validated by constructing ``METHODS[name](**rest)`` and stored with
every field resolved, so the effective recipe pins all hyper-parameters. YAML: safe_load only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from spikecompress.compress.distill.teacher import STAGE_PREFIX
from spikecompress.compress.registry import METHODS
from spikecompress.data import DataConfig
from spikecompress.models import MODELS
from spikecompress.train.config import (
    LOSSES,
    MAX_SEED,
    OPTIMIZERS,
    SCHEDULES,
    check_count,
    check_momentum,
    check_rate,
)

RECIPE_VERSION = 1
_STAGE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
TRAIN_SPLITS = ("train", "holdout")
MAX_T = 2**31 - 1  # a torch size


class _Model: ...  # type marker: a model spec, checked against the builder MODELS[name]


class _MethodSpec: ...  # type marker: a method spec, checked against METHODS[name]


@dataclass
class OptimizerConfig:
    """Adam or SGD; ``schedule``: the learning rate over the stage (cosine | constant)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"name must be one of {list(OPTIMIZERS)}, got {self.name!r}")
        self.lr = check_rate("lr", self.lr, zero_ok=False)
        self.weight_decay = check_rate("weight_decay", self.weight_decay, zero_ok=True)
        self.momentum = check_momentum(self.momentum)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")


@dataclass
class Stage:
    """Train ``epochs`` (0: calibration / one-shot) with ``methods`` attached, then finalize.

    ``methods``: specs ``{name: <METHODS key>, <field>: value, ...}``, stored with every field of
    the method resolved. ``init``: start from this run directory (checkpoint) or artifact folder
    instead of the previous stage's finalized model (or, for the first stage, a fresh model).
    ``T``: the time steps this stage trains and is measured at (default: the data's ``T``); the
    data is re-encoded (event recordings re-binned into ``T`` frames) and the stage's artifact
    records it. A recipe of stages at decreasing ``T`` is progressive temporal pruning.
    ``train_on``: "train", or "holdout" (the samples ``data.holdout`` sets aside, which earlier
    stages never saw). ``model``: start from a freshly built model instead: the recipe's model
    spec with these keys replaced (``{spiking: false}`` is its ANN twin, ``{widths: [...]}`` a
    narrower student), or a whole spec when it names another builder; not with ``init``.
    A method's ``teacher: "stage:NAME"`` names the artifact of an earlier stage.
    """

    name: str
    epochs: int
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: str = "ce"
    methods: list[dict] = field(default_factory=list)
    init: str | None = None
    T: int | None = None
    train_on: str = "train"
    model: dict | None = None

    def __post_init__(self) -> None:
        if not _STAGE_NAME.fullmatch(self.name):
            raise ValueError(f"name must be letters, digits, '_', '.' or '-', got {self.name!r}")
        check_count("epochs", self.epochs, 0)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        self.methods = [method_spec(s, f"methods.{i}") for i, s in enumerate(self.methods)]
        if self.init is not None and not self.init:
            raise ValueError("init must be a path or null, got ''")
        if self.T is not None and (isinstance(self.T, bool) or not isinstance(self.T, int)
                                   or not 1 <= self.T <= MAX_T):
            raise ValueError(f"T must be an integer >= 1 or null (at most {MAX_T}), got {self.T!r}")
        if self.train_on not in TRAIN_SPLITS:
            raise ValueError(f"train_on must be one of {list(TRAIN_SPLITS)}, got {self.train_on!r}")
        if self.model is not None and self.init is not None:
            raise ValueError("model: a stage starts from a new model or from its init, not both")

    def build_methods(self, stage_artifact: Callable[[str], str] | None = None) -> list:
        """Fresh method instances (their runtime state empty) for one run of this stage;
        ``stage_artifact(name)``: the artifact folder of an earlier stage, for ``stage:NAME``
        teachers."""
        methods = []
        for s in self.methods:
            kwargs = _rest(s)
            if stage_artifact is not None and stage_ref(kwargs.get("teacher")) is not None:
                kwargs["teacher"] = stage_artifact(stage_ref(kwargs["teacher"]))
            methods.append(METHODS[s["name"]](**kwargs))
        return methods

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Recipe:
    """A model, its data and the stages that compress it; ``version`` is the recipe format.

    ``model``: a model spec (``{name: conv_net, widths: [...]}``); ``in_channels``,
    ``input_size`` / ``in_features`` and ``classes`` are filled from the data when absent.
    ``seed``: model initialisation and training (the data's own ``seed`` splits and shuffles).
    """

    version: int
    model: dict
    data: DataConfig
    stages: list[Stage]
    seed: int = 0

    def __post_init__(self) -> None:
        check_version(self.version)
        model = self.model if isinstance(self.model, dict) else {"name": self.model}
        self.model = _conform_keys(model, _builder_hints(model.get("name"), "model"), "model")
        if not self.stages:
            raise ValueError("stages: a recipe needs at least one stage")
        names = [s.name for s in self.stages]
        twice = [i for i, name in enumerate(names) if name in names[:i]]
        if twice:
            raise ValueError(f"stages.{twice[0]}.name: {names[twice[0]]!r} is used twice")
        check_count("seed", self.seed, 0, MAX_SEED)
        for i, stage in enumerate(self.stages):
            if stage.model is not None:
                spec = stage_model(self, stage)
                stage.model = _conform_keys(stage.model, _builder_hints(spec.get("name"),
                                            f"stages.{i}.model"), f"stages.{i}.model")
            for k, m in enumerate(stage.methods):
                ref = stage_ref(m.get("teacher"))
                if ref is not None and ref not in names[:i]:
                    raise ValueError(f"stages.{i}.methods.{k}.teacher: {m['teacher']!r} names no "
                                     f"earlier stage (earlier: {names[:i]})")
        held = [i for i, s in enumerate(self.stages) if s.train_on == "holdout"]
        if held and not self.data.holdout:
            raise ValueError(f"stages.{held[0]}.train_on: holdout needs data.holdout > 0")

    def to_dict(self) -> dict:
        """The recipe as plain YAML/JSON values (every field, method fields resolved)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """Validate a parsed YAML mapping (errors name the field path) and build the Recipe."""
        if not isinstance(d, dict):
            raise ValueError(f"a recipe must be a mapping, got {type(d).__name__}")
        check_version(d.get("version"))
        return _from_dict(cls, d, "")


def stage_model(recipe: Recipe, stage: Stage) -> dict:
    """The model spec a stage with ``model`` starts from (see ``Stage``)."""
    if stage.model.get("name", recipe.model["name"]) != recipe.model["name"]:
        return dict(stage.model)
    return {**recipe.model, **stage.model}


def stage_ref(teacher: object) -> str | None:
    """The stage name of a ``"stage:NAME"`` teacher, else None."""
    if isinstance(teacher, str) and teacher.startswith(STAGE_PREFIX):
        return teacher[len(STAGE_PREFIX):]
    return None


def _field_hints(cls: type) -> dict[str, Any]:
    """Field name → type of a recipe dataclass (model and method specs get their markers)."""
    hints = _dataclass_hints(cls)
    if cls is Recipe:
        hints["model"] = _Model
    if cls is Stage:
        hints["methods"] = list[_MethodSpec]
    return hints


# -- validation ----------------------------------------------------------------------------------
def check_version(version: object) -> None:
    if version is None:
        raise ValueError(f"version: missing; add `version: {RECIPE_VERSION}` to the recipe")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"version: expected int, got {version!r}")
    if version > RECIPE_VERSION:
        msg = f"is newer than this spikecompress reads ({RECIPE_VERSION}); upgrade spikecompress"
        raise ValueError(f"version: recipe version {version} {msg}")
    if version < 1:
        raise ValueError(f"version must be {RECIPE_VERSION}, got {version}")


def _from_dict(cls: type, d: object, path: str) -> Any:
    """Build dataclass ``cls`` from mapping ``d``: unknown keys and wrong types name their path."""
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"{path or 'recipe'}: expected a mapping, got {d!r}")
    hints = _field_hints(cls)
    kwargs = _conform_keys(d, hints, path)
    for f in dataclasses.fields(cls):
        if f.init and f.default is f.default_factory is dataclasses.MISSING and f.name not in d:
            raise ValueError(f"{path + '.' if path else ''}{f.name}: missing")
    return _construct(cls, kwargs, path, hints)


def method_spec(spec: object, path: str = "method") -> dict:
    """Validate one method spec by constructing ``METHODS[name](**rest)``; returns the spec with
    every field of the method (defaults resolved) as plain YAML values."""
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with a 'name', got {spec!r}")
    hints = {"name": str, **_dataclass_hints(_method_class(spec.get("name"), path))}
    kwargs = _rest(_conform_keys(spec, hints, path))
    method = _construct(METHODS[spec["name"]], kwargs, path, hints)
    resolved = {"name": spec["name"]}
    for name in [n for n in hints if n != "name"]:  # a value YAML cannot hold stays implicit
        value = _plain(getattr(method, name))
        if value is _NOT_PLAIN and name in kwargs:
            value = _plain(kwargs[name])
        if value is not _NOT_PLAIN:
            resolved[name] = value
    return resolved


def _conform_keys(d: dict, hints: dict[str, Any], path: str) -> dict:
    """Each value of ``d`` conformed to its hint; an unknown key names its path."""
    out = {}
    for key, value in d.items():
        sub = f"{path}.{key_name(key)}" if path else key_name(key)
        if key not in hints:
            where = path or "the recipe"
            raise ValueError(f"{sub}: unknown key in {where}; known: {sorted(hints)}")
        out[key] = _conform(sub, value, hints[key])
    return out


def key_name(key: object) -> str:
    """A mapping key as it reads in a field path: as is, or quoted when it is not plain printable
    text (a newline in a key would otherwise break a one-line message)."""
    text = str(key)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


def _construct(cls: type, kwargs: dict, path: str, hints: dict) -> Any:
    """``cls(**kwargs)``; a ValueError from its __post_init__ gets ``path`` in front, joined by
    '.' when the message starts with a field name. A TypeError there (a value of a type the
    class does not check, inside a nested mapping) is the user's too: a ValueError naming
    ``path``."""
    try:
        return cls(**kwargs)
    except TypeError as e:
        msg = " ".join(str(e).split())
        raise ValueError(f"{path or 'recipe'}: a value of the wrong type ({msg})") from None
    except ValueError as e:
        msg = " ".join(str(e).split())
        if not path or msg.startswith(path + ".") or msg.startswith(path + ":"):
            raise ValueError(msg) from None
        first = re.split(r"[ .:]", msg, maxsplit=1)[0]
        raise ValueError(f"{path}.{msg}" if first in hints else f"{path}: {msg}") from None


def _method_class(name: object, path: str) -> type:
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"{path}.name: unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def _builder_hints(name: object, path: str) -> dict[str, Any]:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"{path}.name: unknown model {name!r}; known: {sorted(MODELS)}")
    try:
        resolved = typing.get_type_hints(MODELS[name])
    except Exception:  # an unresolvable annotation: accept any value for that builder
        resolved = {}
    params = inspect.signature(MODELS[name]).parameters
    return {"name": str, **{k: resolved.get(k, Any) for k in params}}


def _dataclass_hints(cls: type) -> dict[str, Any]:
    """Init fields (no runtime ``*_`` state) → resolved type."""
    hints, fields = typing.get_type_hints(cls), dataclasses.fields(cls)
    return {f.name: hints.get(f.name, Any) for f in fields if f.init and f.name[-1] != "_"}


def _rest(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "name"}


# -- types ---------------------------------------------------------------------------------------
_NOT_PLAIN = object()
_SCALARS = {type(None): type(None), bool: bool, int: int, float: (int, float), str: str}


def _origin(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple, Sequence):
        return list
    return origin


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe plain data (tuples become lists), or ``_NOT_PLAIN``."""
    try:
        return yaml.safe_load(yaml.safe_dump(value))
    except yaml.YAMLError:
        return _NOT_PLAIN


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if hint is _Model or hint is _MethodSpec or dataclasses.is_dataclass(hint):
        return "mapping"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if _origin(hint) is list:
        args = typing.get_args(hint)
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(hint, "__name__", str(hint))


def _finite(path: str, value: int | float) -> float:
    """``value`` as a float; no setting means NaN, inf or a number beyond a float's range."""
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise ValueError(f"{path}: expected a finite float, got {value!r:.40}")
    return f


def _conform(path: str, value: Any, hint: Any) -> Any:
    """``value`` checked against ``hint`` (ints accepted as floats, '1e-3' strings too)."""
    bad = ValueError(f"{path}: expected {_type_name(hint)}, got {value!r}")
    if hint is Any or isinstance(hint, typing.TypeVar):
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            with contextlib.suppress(ValueError):
                return _conform(path, value, arg)
        raise bad
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise bad from None
    if hint in _SCALARS:
        if isinstance(value, _SCALARS[hint]) and (hint is bool or not isinstance(value, bool)):
            return _finite(path, value) if hint is float else value
        raise bad
    if _origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        item = (typing.get_args(hint) or (Any,))[0]
        return [_conform(f"{path}.{i}", v, item) for i, v in enumerate(value)]
    if hint is _MethodSpec:
        return method_spec(value, path)
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, path)
    if (hint in (_Model, dict) or typing.get_origin(hint) is dict) and not isinstance(value, dict):
        raise bad
    return value
