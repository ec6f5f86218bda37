"""Weighting methods: a registry discovered from the modules of this package.

Adding a method means adding one module here (say ``pcgrad.py``) that defines
one :class:`~mtlrepro.weighting.base.LossWeighting` or
:class:`~mtlrepro.weighting.base.GradientAggregator` subclass whose ``name``
is the module's name (helpers shared by several methods live in modules whose
name starts with ``_``). Nothing else in the package changes, so no other run is
invalidated by the new file.

In a config, ``methods`` holds named *entries*: an entry's key is the name
used in studies and run directories, ``weighting`` names the registered method
(default: the key itself) and the other keys are that method's options. A study
refers to an entry, or to a combination ``<loss entry>+<gradient entry>``
(RW paper, Table 4), e.g. ``rlw+rgw``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from mtlrepro.errors import ConfigError
from mtlrepro.options import build_options, options_dict
from mtlrepro.weighting.base import (
    GRADIENT,
    LOSS,
    GradientAggregator,
    LossWeighting,
    Method,
    WeightedGradientOptions,
)

_NOT_METHODS = {"base"}


@cache
def registry() -> dict[str, type[Method]]:
    """Registered name -> method class, from every method module of this package."""
    found: dict[str, type[Method]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_METHODS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, (LossWeighting, GradientAggregator))
            and not inspect.isabstract(obj)
            and obj.__module__ == module.__name__
        ]
        if len(classes) != 1 or classes[0].name != info.name:
            raise RuntimeError(f"{module.__name__} must define exactly one method class named {info.name!r}")
        found[info.name] = classes[0]
    return found


@dataclass(frozen=True)
class Component:
    """One resolved method entry: entry name, method class and its options (defaults filled)."""

    entry: str
    cls: type[Method]
    options: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.cls.kind

    @property
    def sources(self) -> list[Path]:
        """The method's module file and the weighting modules it imports from (see :func:`method_sources`)."""
        return method_sources(self.cls.name)

    def build(self, n_tasks: int, generator: torch.Generator) -> Method:
        """Instantiate the method for ``n_tasks`` tasks with a private random ``generator``."""
        options = build_options(self.cls.Options, self.options, f"methods.{self.entry}")
        return self.cls(n_tasks, options, generator)


def method_sources(name: str) -> list[Path]:
    """The module file of registered method ``name`` and the weighting modules it imports from.

    These are declared as inputs of the method's train jobs, so editing
    ``rlw.py`` (or the sampler it uses) reruns the RLW runs and no other.
    """
    module = sys.modules[registry()[name].__module__]
    names = {module.__name__} | {
        getattr(obj, "__module__", "")
        for obj in vars(module).values()
        if getattr(obj, "__module__", "").startswith(f"{__name__}.")
    }
    names |= {
        obj.__name__
        for obj in vars(module).values()
        if inspect.ismodule(obj) and obj.__name__.startswith(f"{__name__}.")
    }
    return sorted(Path(inspect.getfile(sys.modules[n])) for n in names)


def resolve_entry(entry: str, config: Mapping[str, Any] | None) -> Component:
    """Resolve method entry ``entry`` of the config's ``methods`` section (or a bare method name)."""
    values = dict(config or {})
    name = values.pop("weighting", entry)
    methods = registry()
    if name not in methods:
        raise ConfigError(
            f"methods.{entry}: unknown weighting method {name!r} (known methods: {', '.join(sorted(methods))})"
        )
    cls = methods[name]
    where = f"methods.{entry}"
    if issubclass(cls, LossWeighting) and values.get("grad_wrt", "params") != "params":
        raise ConfigError(
            f"{where}.grad_wrt: {values['grad_wrt']!r} is not possible: {name} is a loss weighting, and a loss "
            "weighting run on representation gradients would leave the shared encoder without its gradient "
            "(LibMTL issue #83); give grad_wrt to the gradient method of a combination instead"
        )
    options = build_options(cls.Options, values, where)
    check_gradient_options(cls, options, where)
    return Component(entry=entry, cls=cls, options=options_dict(options))


def check_gradient_options(cls: type[Method], options: Any, where: str) -> None:
    """Refuse representation/parameter modes a gradient method cannot run in, naming the key."""
    if not issubclass(cls, GradientAggregator):
        return
    mode = options.grad_wrt
    if cls.representation_only and mode != "representation":
        raise ConfigError(f"{where}.grad_wrt: {mode!r} is not possible: {cls.name} works on the representation only")
    if cls.params_only and mode != "params":
        raise ConfigError(f"{where}.grad_wrt: {mode!r} is not possible: {cls.name} works on parameter gradients only")
    if (
        mode == "representation"
        and options.rep_reduce == "batch_sum"
        and not issubclass(cls.Options, WeightedGradientOptions)
    ):
        raise ConfigError(
            f"{where}.rep_reduce: 'batch_sum' is not possible: {cls.name} does not produce task weights that "
            "could be applied to the per-example gradients"
        )


@dataclass(frozen=True)
class MethodSpec:
    """A study's method: a loss weighting, a gradient aggregator, or one of each."""

    expression: str
    loss: Component | None
    gradient: Component | None

    @property
    def components(self) -> tuple[Component, ...]:
        return tuple(c for c in (self.loss, self.gradient) if c is not None)


def parse_method(expression: str, entries: Mapping[str, Any], where: str) -> MethodSpec:
    """Parse ``expression`` (``name`` or ``loss+grad``) against the config's method ``entries``.

    A name not listed in ``entries`` may still be a registered method used with
    its paper's defaults. ``where`` is the config key reported in errors.
    """
    parts = expression.split("+")
    if len(parts) > 2 or not all(parts):
        raise ConfigError(f"{where}: {expression!r} is not a method or a combination '<loss>+<gradient>'")
    components = []
    for part in parts:
        if part not in entries and part not in registry():
            known = sorted(set(entries) | set(registry()))
            raise ConfigError(f"{where}: unknown method {part!r} (known methods: {', '.join(known)})")
        components.append(resolve_entry(part, entries.get(part)))
    kinds = [c.kind for c in components]
    if len(parts) == 2 and kinds != [LOSS, GRADIENT]:
        raise ConfigError(
            f"{where}: in the combination {expression!r} the first method must be a loss weighting and the "
            f"second a gradient aggregator (got {kinds[0]} + {kinds[1]})"
        )
    loss = next((c for c in components if c.kind == LOSS), None)
    gradient = next((c for c in components if c.kind == GRADIENT), None)
    return MethodSpec(expression=expression, loss=loss, gradient=gradient)


def build_stage(ref: Any, n_tasks: int, generator: torch.Generator) -> Method:
    """Instantiate a run spec's method stage (a :class:`~mtlrepro.run.MethodRef`) for ``n_tasks`` tasks."""
    component = resolve_entry(ref.entry, {"weighting": ref.weighting, **ref.options})
    return component.build(n_tasks, generator)
