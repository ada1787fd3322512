"""Validation of model-spec values: one-line ``ValueError`` messages that name the offending key.

Every helper returns the value in its canonical JSON form (plain ``int``/``float``/``bool``/``str``,
lists instead of tuples), so a builder can store exactly what it returns in ``model.spec``.
"""

from __future__ import annotations

from collections.abc import Sequence


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """An ``int`` (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: object, above: float) -> float:
    """A real number ``> above``, returned as ``float``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > above:
        raise ValueError(f"{name} must be a number > {above}, got {value!r}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    """A ``bool`` (0/1 and strings are refused, so a typo in a YAML file does not pass silently)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_int_list(name: str, value: object, min_len: int = 0, minimum: int = 1) -> list[int]:
    """A list (or tuple) of at least ``min_len`` ints, each ``>= minimum``."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) < min_len:
        raise ValueError(f"{name} must be a list of at least {min_len} ints, got {value!r}")
    return [check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value)]


def check_size(name: str, value: object, dims: int) -> tuple[int | list[int], tuple[int, ...]]:
    """An input size: one int (the same along every spatial dim) or a list of ``dims`` ints.

    Returns (the value for the spec, the size as a tuple of ``dims`` ints).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = check_int(name, value)
        return size, (size,) * dims
    sizes = check_int_list(name, value, min_len=dims)
    if len(sizes) != dims:
        raise ValueError(f"{name} must be an int or a list of {dims} ints, got {value!r}")
    return sizes, tuple(sizes)


def check_nonempty_output(name: str, size: tuple[int, ...]) -> None:
    """Refuse a spatial size that pooling or striding has shrunk to nothing."""
    if min(size) < 1:
        raise ValueError(f"{name} shrinks the input to an empty feature map {list(size)}")
