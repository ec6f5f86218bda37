"""Typed option records built from plain config mappings, with one clear error per bad key.

Datasets, architectures and weighting methods each declare their options as a
frozen dataclass whose defaults are the paper's choices. :func:`build_options`
turns a config mapping into that dataclass, rejecting unknown keys, wrong
types and values outside a ``Literal``'s choices with a :class:`ConfigError`
that names the full config key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from mtlrepro.errors import ConfigError

T = TypeVar("T")


def _check_value(where: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(where, value, inner[0])
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not a boolean")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {value!r} is not a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} is not a string")
        return value
    return value


def build_options(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """Build the options dataclass ``cls`` from ``values``; ``where`` is the config key prefix.

    Missing keys take the dataclass defaults. Raises :class:`ConfigError` for an
    unknown key, a value of the wrong type, or a value outside a ``Literal``.
    """
    values = dict(values or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            known = ", ".join(names) if names else "none"
            raise ConfigError(f"{where}.{key}: unknown option (known options: {known})")
    checked = {key: _check_value(f"{where}.{key}", value, hints[key]) for key, value in values.items()}
    try:
        options = cls(**checked)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return options


def options_dict(options: Any) -> dict[str, Any]:
    """The resolved options as a plain dict (defaults filled in), for run specs and hashing."""
    return dataclasses.asdict(options)
