"""Datasets: a registry of dataset modules and the tensor cache they are prepared into.

A dataset module (one per dataset family, e.g. :mod:`mtlrepro.data.multi_digits`)
defines:

- ``NAME``: its registry name;
- ``TASKS``: a tuple of :class:`Task` (name, number of classes, loss, metrics);
- ``ENCODER``: the name of the shared encoder the papers use for it;
- ``STAND_IN``: ``None`` for the paper's own data, otherwise a one-line label
  saying what the data stands in for; every table and figure prints it;
- ``Options``: a frozen dataclass of generation/preprocessing options;
- ``describe(options) -> dict``: provenance of the raw source (version, checksum);
- ``build(options) -> dict[str, Split]``: a pure, seeded function returning the
  ``"train"``, ``"val"`` and ``"test"`` splits.

:func:`prepare` writes the splits to a cache file atomically and
:func:`load` reads them back.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from mtlrepro.errors import ConfigError, DataError
from mtlrepro.io import save_torch_atomic
from mtlrepro.options import build_options, options_dict

SPLITS = ("train", "val", "test")

#: registry name -> module path; one module per dataset family
DATASETS: dict[str, str] = {
    "multi_digits": "mtlrepro.data.multi_digits",
}


@dataclass(frozen=True)
class Task:
    """One task of a dataset: its output size, loss and metrics (name -> direction)."""

    name: str
    n_classes: int
    loss: str = "cross_entropy"
    metrics: Mapping[str, str] = field(default_factory=lambda: {"acc": "higher"})


@dataclass
class Split:
    """One split: inputs ``x`` [N x ...] and labels ``y`` [N x T] (one column per task).

    ``source`` [N x k] records, for every example, the indices of the raw
    source items it was built from (for leakage checks); ``None`` if not applicable.
    """

    x: Tensor
    y: Tensor
    source: Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class MTLData:
    """A prepared multi-task dataset: splits, tasks and provenance."""

    name: str
    tasks: tuple[Task, ...]
    splits: dict[str, Split]
    stand_in: str | None
    options: dict[str, Any]
    meta: dict[str, Any]


def dataset_module(name: str) -> ModuleType:
    """Import the module of dataset ``name``; :class:`ConfigError` if it is unknown."""
    if name not in DATASETS:
        raise ConfigError(f"dataset {name!r} is unknown (known datasets: {', '.join(sorted(DATASETS))})")
    return importlib.import_module(DATASETS[name])


def resolve_options(name: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate dataset options against the module's ``Options`` and fill in defaults."""
    module = dataset_module(name)
    return options_dict(build_options(module.Options, values, f"datasets.{name}.options"))


def prepare(name: str, values: Mapping[str, Any] | None, out: str | Path) -> Path:
    """Build dataset ``name`` with ``values`` as options and write its cache to ``out`` atomically."""
    module = dataset_module(name)
    options = build_options(module.Options, values, f"datasets.{name}.options")
    splits = module.build(options)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(f"dataset {name}: build() returned no {', '.join(missing)} split")
    payload = {
        "format": "mtlrepro.data/1",
        "name": name,
        "options": options_dict(options),
        "meta": module.describe(options),
        "splits": {s: {"x": splits[s].x, "y": splits[s].y, "source": splits[s].source} for s in SPLITS},
    }
    out = Path(out)
    save_torch_atomic(out, payload)
    return out


def load(name: str, path: str | Path) -> MTLData:
    """Read the cache of dataset ``name`` from ``path``; :class:`DataError` if missing or foreign."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset {name}: cache file {path} does not exist; run `mtlrepro prepare {name}` first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != "mtlrepro.data/1" or payload.get("name") != name:
        raise DataError(f"dataset {name}: {path} is not a cache of this dataset")
    module = dataset_module(name)
    splits = {s: Split(**payload["splits"][s]) for s in SPLITS}
    return MTLData(
        name=name,
        tasks=tuple(module.TASKS),
        splits=splits,
        stand_in=module.STAND_IN,
        options=payload["options"],
        meta=payload["meta"],
    )
