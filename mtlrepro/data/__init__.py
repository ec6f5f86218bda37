"""Datasets: a registry of dataset modules and the tensor cache they are prepared into.

A dataset module (one per registry name, e.g. :mod:`mtlrepro.data.multi_digits`)
defines:

- ``NAME``: its registry name;
- ``TASKS``: a tuple of :class:`~mtlrepro.tasks.Task` (name, kind, classes);
- ``ENCODER``: the name of the shared encoder the papers use for it;
- ``STAND_IN``: ``None`` for the paper's own data, otherwise a one-line label
  saying what the data stands in for; every table and figure prints it;
- ``MULTI_INPUT``: whether every task has its own inputs (Office, XTREME);
- ``Options``: a frozen dataclass of preprocessing/generation options;
- ``SOURCES``, ``MANUAL``, ``fetch(directory) -> root`` and ``check_root(root)``
  when the data is downloaded (:mod:`mtlrepro.data.download`); absent for
  generated stand-ins;
- ``build(options, root) -> dict[str, SplitSet]``: a pure, seeded function
  returning the ``"train"``, ``"val"`` and ``"test"`` splits, each a
  :class:`Split` (one target tensor per task) or, multi-input, one
  :class:`Split` per task;
- ``describe(options, root) -> dict``: provenance of the raw source
  (files, checksums, versions);
- optionally ``augment(x, y, generator)``: train-time batch augmentation.

:func:`prepare` writes the splits to a cache file atomically, with the options
they were built with and a checksum of their tensors; :func:`load` memory-maps
them back and refuses a damaged cache, or one built with other options than
the run expects, naming the file and how to rebuild it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import shlex
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from mtlrepro.errors import ConfigError, DataError
from mtlrepro.io import canonical_json, save_torch_atomic
from mtlrepro.options import build_options, options_dict
from mtlrepro.tasks import Task, check_target

SPLITS = ("train", "val", "test")
CACHE_FORMAT = "mtlrepro.data/3"
_FIELDS = ("x", "y", "source")
#: what torch.load raises on a truncated, garbage or foreign file (weights-only loading executes nothing)
_UNREADABLE = (
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    zipfile.BadZipFile,
)

#: registry name -> module path; one module per dataset family
DATASETS: dict[str, str] = {
    # the papers' data (downloaded, verified, preprocessed)
    "multi_mnist": "mtlrepro.data.multi_mnist",
    "multi_fashion": "mtlrepro.data.multi_fashion",
    "multi_fashion_mnist": "mtlrepro.data.multi_fashion_mnist",
    "nyuv2": "mtlrepro.data.nyuv2",
    "cityscapes": "mtlrepro.data.cityscapes",
    "celeba": "mtlrepro.data.celeba",
    "office31": "mtlrepro.data.office31",
    "office_home": "mtlrepro.data.office_home",
    "pawsx": "mtlrepro.data.pawsx",
    "udpos": "mtlrepro.data.udpos",
    "sarcos": "mtlrepro.data.sarcos",
    # offline stand-ins (generated; each says what it stands in for)
    "multi_digits": "mtlrepro.data.multi_digits",
    "dense_scenes": "mtlrepro.data.dense_scenes",
    "street_scenes": "mtlrepro.data.street_scenes",
    "digit_domains": "mtlrepro.data.digit_domains",
    "face_attributes": "mtlrepro.data.face_attributes",
    "paraphrase_standin": "mtlrepro.data.paraphrase_standin",
    "pos_standin": "mtlrepro.data.pos_standin",
    "arm_dynamics": "mtlrepro.data.arm_dynamics",
}


@dataclass
class Split:
    """One split of a dataset: inputs ``x`` [N x ...] and one target tensor per task, ``y`` (a tuple).

    In a multi-input dataset every task has its own ``Split`` whose ``y`` holds
    that task's targets only. ``source`` [N x k] records, for every example,
    the indices of the raw source items it was built from (for leakage
    checks); ``None`` if not applicable.
    """

    x: Tensor
    y: tuple[Tensor, ...]
    source: Tensor | None = None

    def __post_init__(self) -> None:
        self.y = tuple(self.y)
        n = int(self.x.shape[0])
        for t, target in enumerate(self.y):
            if int(target.shape[0]) != n:
                raise ValueError(f"target {t} has {target.shape[0]} examples but x has {n}")

    def __len__(self) -> int:
        return int(self.x.shape[0])


SplitSet = Split | tuple[Split, ...]
"""A split of a single-input dataset (one ``Split``) or of a multi-input one (one ``Split`` per task)."""


@dataclass
class MTLData:
    """A prepared multi-task dataset: splits, tasks and provenance."""

    name: str
    tasks: tuple[Task, ...]
    splits: dict[str, SplitSet]
    stand_in: str | None
    options: dict[str, Any]
    meta: dict[str, Any]

    @property
    def multi_input(self) -> bool:
        """Whether every task has its own inputs (Office, PAWS-X, UD-POS)."""
        return isinstance(self.splits["train"], tuple)

    def task_split(self, split: str, t: int) -> tuple[Tensor, Tensor]:
        """Inputs and targets of task ``t`` in ``split``: ``(x, y_t)``."""
        part = self.splits[split]
        if isinstance(part, tuple):
            return part[t].x, part[t].y[0]
        return part.x, part.y[t]


def as_input(x: Tensor) -> Tensor:
    """Stored inputs as a model reads them: uint8 images as float in [0, 1], token ids (other integers) as int64,
    anything else as float32."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.is_floating_point():
        return x.float()
    return x.long()


def dataset_module(name: str) -> ModuleType:
    """Import the module of dataset ``name``; :class:`ConfigError` if it is unknown."""
    if name not in DATASETS:
        raise ConfigError(f"dataset {name!r} is unknown (known datasets: {', '.join(sorted(DATASETS))})")
    return importlib.import_module(DATASETS[name])


def resolve_options(name: str, values: Mapping[str, Any] | None, where: str | None = None) -> dict[str, Any]:
    """Validate dataset options against the module's ``Options`` and fill in defaults.

    ``where`` is the key named in messages (default ``datasets.<name>.options``).
    """
    module = dataset_module(name)
    return options_dict(build_options(module.Options, values, where or f"datasets.{name}.options"))


def _entry(split: Split) -> dict[str, Any]:
    return {"x": split.x, "y": list(split.y), "source": split.source}


def _entries(part: Any) -> list[Any]:
    """The stored entries of one split: one (single-input) or one per task (multi-input)."""
    return list(part) if isinstance(part, list) else [part]


def splits_sha256(splits: Mapping[str, Any]) -> str:
    """sha256 over the tensors of every split: position, dtype, shape and bytes of each, in a fixed order.

    ``splits`` maps each split to a stored entry ``{"x", "y": [per-task targets], "source"}``, or to a list of
    entries (one per task) for a multi-input dataset.
    """
    sha = hashlib.sha256()
    for split in SPLITS:
        for i, entry in enumerate(_entries(splits[split])):
            named = [("x", entry["x"]), *((f"y{t}", y) for t, y in enumerate(entry["y"])), ("source", entry["source"])]
            for key, tensor in named:
                if tensor is None:
                    sha.update(f"{split}.{i}.{key}:none\n".encode())
                    continue
                tensor = tensor.detach().cpu().contiguous()
                sha.update(f"{split}.{i}.{key}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
                sha.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return sha.hexdigest()


def _check_built(name: str, module: ModuleType, splits: Mapping[str, Any]) -> None:
    """Refuse splits that do not fit the module's declaration (every split, multi-input layout, target layouts)."""
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(f"dataset {name}: build() returned no {', '.join(missing)} split")
    tasks = tuple(module.TASKS)
    for split in SPLITS:
        part = splits[split]
        multi = isinstance(part, tuple)
        if multi != bool(getattr(module, "MULTI_INPUT", False)) or (multi and len(part) != len(tasks)):
            raise DataError(
                f"dataset {name}: build() returned a {split} split that does not match MULTI_INPUT "
                f"({'one Split per task' if module.MULTI_INPUT else 'one Split'} expected)"
            )
        pairs = [(task, p.y[0], len(p)) for task, p in zip(tasks, part, strict=True)] if multi else None
        if pairs is None:
            if len(part.y) != len(tasks):
                raise DataError(f"dataset {name}: the {split} split has {len(part.y)} targets for {len(tasks)} tasks")
            pairs = [(task, y, len(part)) for task, y in zip(tasks, part.y, strict=True)]
        for task, y, n in pairs:
            try:
                check_target(task, y, n)
            except ValueError as err:
                raise DataError(f"dataset {name}, {split} split: {err}") from None


def prepare(
    name: str,
    values: Mapping[str, Any] | None,
    out: str | Path,
    *,
    raw: str | Path | None = None,
    path: str | Path | None = None,
    progress: bool = False,
) -> Path:
    """Build dataset ``name`` with ``values`` as options and write its cache to ``out`` atomically.

    A dataset with raw sources reads them from ``path`` when given (data the
    user already has: checked with the module's ``check_root``), otherwise it
    downloads, verifies and unpacks them into ``raw`` (the module's ``fetch``).
    Generated data (stand-ins) needs neither.

    The cache records the resolved options, the source's provenance and a
    sha256 of the splits' tensors (:func:`splits_sha256`); the same source
    and options give a byte-identical file.
    """
    module = dataset_module(name)
    options = build_options(module.Options, values, f"datasets.{name}.options")
    root = None
    if getattr(module, "SOURCES", ()):
        if path is not None:
            root = Path(path)
            module.check_root(root)
        elif raw is not None:
            root = module.fetch(Path(raw), progress=progress)
        else:
            raise DataError(f"dataset {name} needs its raw data: give a download directory or `datasets.{name}.path`")
    splits = module.build(options, root)
    _check_built(name, module, splits)
    tensors = {s: [_entry(p) for p in splits[s]] if isinstance(splits[s], tuple) else _entry(splits[s]) for s in SPLITS}
    payload = {
        "format": CACHE_FORMAT,
        "name": name,
        "options": options_dict(options),
        "meta": module.describe(options, root),
        "splits": tensors,
        "splits_sha256": splits_sha256(tensors),
    }
    out = Path(out)
    save_torch_atomic(out, payload)
    return out


def rebuild_hint(name: str, path: Path, options: Mapping[str, Any] | None) -> str:
    """How to rebuild the cache of ``name`` at ``path`` (with ``options`` when known)."""
    given = "'...'" if options is None else shlex.quote(canonical_json(dict(options)))
    out = shlex.quote(str(path))
    return f"rebuild it (delete {out} and rerun snakemake, or: mtlrepro prepare {name} --options {given} --out {out})"


def _show(options: Mapping[str, Any], keys: list[str]) -> str:
    return "{" + ", ".join(f"{key}: {json.dumps(options[key]) if key in options else '(none)'}" for key in keys) + "}"


def _differing(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ (as JSON values: a tuple equals a list, 1 equals 1.0), in ``expected``'s order."""

    def plain(value: Any) -> Any:
        return json.loads(json.dumps(value))

    keys = list(dict.fromkeys([*expected, *recorded]))
    return [k for k in keys if k not in recorded or k not in expected or plain(recorded[k]) != plain(expected[k])]


def _read_payload(name: str, path: Path, options: Mapping[str, Any] | None) -> Any:
    """``torch.load`` of a cache (tensors only, nothing executed); :class:`DataError` if it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's warning about a foreign pickle protocol
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except PermissionError as err:
        raise DataError(f"data cache {path} cannot be read ({err.strerror}): make it readable") from None
    except _UNREADABLE as err:
        raise DataError(
            f"data cache {path} is damaged (torch cannot read it: {type(err).__name__}): "
            + rebuild_hint(name, path, options)
        ) from None


def _check_payload(name: str, path: Path, payload: Any, options: Mapping[str, Any] | None) -> None:
    """Refuse a payload that is not an intact cache of dataset ``name`` (format, keys, tensors, checksum)."""

    recorded = payload.get("options") if isinstance(payload, dict) else None
    known = options if options is not None else recorded if isinstance(recorded, dict) else None

    def damaged(what: str) -> DataError:
        return DataError(f"data cache {path} is damaged ({what}): {rebuild_hint(name, path, known)}")

    if not isinstance(payload, dict):
        raise damaged(f"it holds a {type(payload).__name__}, not a data cache")
    fmt = payload.get("format")
    if fmt != CACHE_FORMAT:
        if isinstance(fmt, str) and fmt.startswith("mtlrepro.data/"):
            raise DataError(
                f"data cache {path} has format {fmt!r} of another mtlrepro version (this one reads {CACHE_FORMAT!r}): "
                + rebuild_hint(name, path, known)
            )
        raise damaged("it is not an mtlrepro data cache")
    if payload.get("name") != name:
        raise DataError(
            f"data cache {path} holds dataset {payload.get('name')!r}, not {name!r}: "
            f"give the cache of {name}, or {rebuild_hint(name, path, known)}"
        )
    missing = [key for key in ("options", "meta", "splits", "splits_sha256") if key not in payload]
    if missing:
        raise damaged(f"no {', '.join(missing)}")
    if not isinstance(payload["options"], dict) or not isinstance(payload["meta"], dict):
        raise damaged("its options or provenance is not a mapping")
    splits = payload["splits"]
    for split in SPLITS:
        part = splits.get(split) if isinstance(splits, dict) else None
        entries = _entries(part) if isinstance(part, (dict, list)) else [None]
        for fields in entries:
            if not isinstance(fields, dict) or set(fields) != set(_FIELDS) or not isinstance(fields["y"], list):
                raise damaged(f"split {split!r} is missing or malformed")
            tensors = [fields["x"], *fields["y"]]
            if not all(isinstance(t, Tensor) for t in tensors) or not isinstance(
                fields["source"], (Tensor, type(None))
            ):
                raise damaged(f"split {split!r} holds something other than tensors")
    if splits_sha256(splits) != payload["splits_sha256"]:
        raise damaged("its tensors do not match their sha256")


def load(name: str, path: str | Path, options: Mapping[str, Any] | None = None) -> MTLData:
    """Read the cache of dataset ``name`` from ``path`` and check it.

    ``options``, when given, are the resolved data options the caller expects
    (a run spec's ``data_options``): the cache must have been built with
    exactly these. Raises :class:`DataError` naming the file, with the way to
    rebuild it, when it is missing, damaged (unreadable, truncated, not a
    mapping, keys missing, checksum mismatch), of another dataset or format,
    or built with other options.

    The tensors are memory-mapped from the file (``torch.load(mmap=True)``):
    a run reads the pages its batches touch, and its private memory does not
    grow with the dataset.
    """
    path = Path(path)
    if not path.is_file():
        given = "'...'" if options is None else shlex.quote(canonical_json(dict(options)))
        raise DataError(
            f"data cache {path} does not exist: build it (rerun snakemake, "
            f"or: mtlrepro prepare {name} --options {given} --out {shlex.quote(str(path))})"
        )
    payload = _read_payload(name, path, options)
    _check_payload(name, path, payload, options)
    if options is not None:
        differing = _differing(payload["options"], options)
        if differing:
            raise DataError(
                f"data cache {path} was built with options {_show(payload['options'], differing)} "
                f"but the run expects {_show(options, differing)}: {rebuild_hint(name, path, options)}"
            )
    module = dataset_module(name)
    splits: dict[str, SplitSet] = {}
    for s in SPLITS:
        part = payload["splits"][s]
        splits[s] = tuple(Split(**e) for e in part) if isinstance(part, list) else Split(**part)
    return MTLData(
        name=name,
        tasks=tuple(module.TASKS),
        splits=splits,
        stand_in=module.STAND_IN,
        options=payload["options"],
        meta=payload["meta"],
    )
