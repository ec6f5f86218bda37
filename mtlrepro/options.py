"""Typed option records built from plain config mappings, with one clear error per bad key.

Datasets, architectures and weighting methods each declare their options as a
frozen dataclass whose defaults are the paper's choices. :func:`build_options`
turns a config mapping into that dataclass, rejecting unknown keys, wrong
types, non-finite numbers (NaN and infinities: a JSON schema ``minimum`` lets
NaN through, since every comparison with it is false) and values outside a
``Literal``'s choices with a :class:`ConfigError` that names the full config
key. An options dataclass checks its value ranges in ``__post_init__``, with
:func:`require` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from mtlrepro.errors import ConfigError

T = TypeVar("T")


class OptionValueError(ValueError):
    """One option's value is out of its range; raised by an options dataclass, named in full by build_options."""

    def __init__(self, name: str, value: Any, requirement: str) -> None:
        super().__init__(f"{name} {requirement}, got {value!r}")
        self.name = name
        self.value = value
        self.requirement = requirement


def require(ok: bool, name: str, value: Any, requirement: str) -> None:
    """In an options dataclass's ``__post_init__``: refuse ``value`` of field ``name`` unless ``ok``.

    ``requirement`` completes "``name`` ...", e.g. ``"must be in [0, 1)"``;
    write the test so that NaN fails it (``not 0 <= x < 1``, not ``x < 0 or x >= 1``).
    """
    if not ok:
        raise OptionValueError(name, value, requirement)


def _check_finite(where: str, value: Any) -> None:
    """Refuse NaN and infinities anywhere in ``value`` (numbers, and inside lists and mappings)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(f"{where}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(f"{where}[{i}]", item)


def _check_value(where: str, value: Any, annotation: Any) -> Any:
    _check_finite(where, value)
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
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{where}: {value!r} is not a finite number") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} is not a string")
        return value
    return value


def build_options(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """Build the options dataclass ``cls`` from ``values``; ``where`` is the config key prefix.

    Missing keys take the dataclass defaults. Raises :class:`ConfigError` for an
    unknown key, a value of the wrong type, a NaN or infinite number, a value
    outside a ``Literal``, or a value the dataclass refuses (``ValueError`` in
    ``__post_init__``; :class:`OptionValueError` names the field in full).
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
    except OptionValueError as err:
        raise ConfigError(f"{where}.{err.name}: {err.value!r} {err.requirement}") from None
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return options


def options_dict(options: Any) -> dict[str, Any]:
    """The resolved options as a plain dict (defaults filled in), for run specs and hashing."""
    return dataclasses.asdict(options)
