"""The run: its typed spec, its provenance and the format of its record.

A run is (dataset, architecture, method, label noise, seed, hyperparameters).
Its directory is a pure function of those (DESIGN "The run: the unit of work")::

    results/runs/{dataset}/{arch}/{method}/{noise}/seed{seed}/

and holds ``metrics.json`` (format :data:`RUN_FORMAT`), written atomically as
the job's last act, ``selected.pt`` (the selected epoch's weights, written just
before it) and ``checkpoint.pt``. Studies plan runs as
:class:`RunSpec`, training executes one, reports read the records: all three
import this module, and it imports none of them.

:func:`code_files` lists the files a run's numbers depend on (the training
core, its architecture and encoder, its methods' modules). The workflow
declares them as the run's inputs and :func:`run_provenance` hashes them, so
an edit of ``pcgrad.py`` reruns the PCGrad runs and nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtlrepro.data.noise import noise_label
from mtlrepro.errors import ConfigError
from mtlrepro.io import digest
from mtlrepro.options import build_options, require

RUN_FORMAT = "mtlrepro.run/2"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
SELECTED_FILE = "selected.pt"
"""The model weights of the selected epoch (``{"epoch", "model"}``), for analyses such as flatness."""
RUNS_DIR = "results/runs"

#: modules of the training core: every run's numbers depend on them (found by path, never imported here)
CORE_MODULES = (
    "mtlrepro.train",
    "mtlrepro.checkpoint",
    "mtlrepro.step",
    "mtlrepro.run",
    "mtlrepro.metrics",
    "mtlrepro.seeding",
    "mtlrepro.data.noise",
    "mtlrepro.weighting.base",
)


@dataclass(frozen=True)
class TrainingOptions:
    """Optimisation hyperparameters; defaults are the RW paper's Multi-MNIST setting (Sec. 5.1).

    ``selection``: report the epoch with the best validation score (Delta_p of
    every validation metric against the first epoch's) or the last epoch; the
    test split never chooses. ``noise_seed``: seed of the label corruption,
    shared by every method and seed of a study so that all of them see the same
    noisy labels. ``augment``: apply the dataset's train-time augmentation
    (NYUv2 and CityScapes: random scale-crop and flip as MTAN/LibMTL; datasets
    without one ignore it). Weight scales and representation gradients are
    options of each method (see ``docs/methods.md``).
    """

    epochs: int = 100
    batch_size: int = 256
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    selection: Literal["best_val", "last"] = "best_val"
    eval_batch_size: int = 1024
    noise_seed: int = 0
    augment: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be a positive integer")
        require(self.noise_seed >= 0, "noise_seed", self.noise_seed, "must be >= 0")
        # written so that NaN fails every test (each comparison with NaN is false)
        require(0.0 < self.lr < math.inf, "lr", self.lr, "must be a positive finite number")
        require(0.0 <= self.momentum < 1.0, "momentum", self.momentum, "must be in [0, 1)")
        require(0.0 <= self.weight_decay < math.inf, "weight_decay", self.weight_decay, "must be a finite number >= 0")


def resolve_training(values: Mapping[str, Any] | None, where: str) -> TrainingOptions:
    """Validate training options (naming the key ``where`` on error) and fill in defaults."""
    return build_options(TrainingOptions, values, where)


@dataclass(frozen=True)
class MethodRef:
    """One stage of a run's method: the config entry, the registered method and its resolved options."""

    entry: str
    weighting: str
    options: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry, "weighting": self.weighting, "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: Any, where: str = "method") -> MethodRef:
        """Rebuild a stage from :meth:`to_json`'s form; :class:`ConfigError` naming a missing, unknown or bad key."""
        _check_keys(data, where, required=("entry", "weighting"), optional=("options",))
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"run spec: {where}.options must be a JSON object, got {options!r}")
        return cls(
            entry=_string(data, "entry", where), weighting=_string(data, "weighting", where), options=dict(options)
        )


def _check_keys(data: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Refuse a spec object that is not a mapping, lacks one of ``required`` or has a key of neither list."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"run spec: {where or 'the spec'} must be a JSON object, got {data!r:.80}")
    prefix = f"{where}." if where else ""
    missing = [f"{prefix}{key}" for key in required if key not in data]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise ConfigError(f"run spec: missing key{plural} {', '.join(map(repr, missing))}")
    unknown = [f"{prefix}{key}" for key in data if key not in required + optional]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        known = ", ".join(required + optional)
        raise ConfigError(f"run spec: unknown key{plural} {', '.join(map(repr, unknown))} (known keys: {known})")


def _string(data: Mapping[str, Any], key: str, where: str = "") -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"run spec: {where + '.' if where else ''}{key} must be a non-empty string, got {value!r}")
    return value


def _mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"run spec: {key} must be a JSON object, got {value!r:.80}")
    return dict(value)


_SPEC_REQUIRED = ("dataset", "arch", "method", "seed")
_SPEC_OPTIONAL = ("noise", "noise_label", "data_options", "training")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's numbers."""

    dataset: str
    arch: str
    method: str
    """The study's method expression: an entry or ``<loss>+<gradient>``."""
    loss: MethodRef | None
    gradient: MethodRef | None
    seed: int
    noise: Mapping[str, float] = field(default_factory=dict)
    data_options: Mapping[str, Any] = field(default_factory=dict)
    training: TrainingOptions = field(default_factory=TrainingOptions)

    @property
    def stages(self) -> tuple[MethodRef, ...]:
        """The method's stages in order (loss weighting first)."""
        return tuple(m for m in (self.loss, self.gradient) if m is not None)

    @property
    def noise_label(self) -> str:
        """``clean`` or e.g. ``BR0.4``: the noise part of the run's directory."""
        return noise_label(self.noise)

    @property
    def directory(self) -> str:
        """``results/runs/{dataset}/{arch}/{method}/{noise}/seed{seed}``."""
        return f"{RUNS_DIR}/{self.dataset}/{self.arch}/{self.method}/{self.noise_label}/seed{self.seed}"

    @property
    def metrics_file(self) -> str:
        return f"{self.directory}/{METRICS_FILE}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form (the workflow passes it, key-sorted, in a job's ``params``)."""
        return {
            "dataset": self.dataset,
            "arch": self.arch,
            "method": {
                "expression": self.method,
                "loss": None if self.loss is None else self.loss.to_json(),
                "gradient": None if self.gradient is None else self.gradient.to_json(),
            },
            "noise": dict(self.noise),
            "noise_label": self.noise_label,
            "seed": self.seed,
            "data_options": dict(self.data_options),
            "training": dataclasses.asdict(self.training),
        }

    @classmethod
    def from_json(cls, data: Any) -> RunSpec:
        """Rebuild a spec from :meth:`to_json`'s form (what ``mtlrepro train --spec`` gets).

        Raises :class:`ConfigError` naming every missing or unknown key, or the
        key of a value of the wrong type; the data and training options are
        validated (and completed with defaults) as in a config.
        """
        from mtlrepro.data import resolve_options

        _check_keys(data, "", required=_SPEC_REQUIRED, optional=_SPEC_OPTIONAL)
        method = data["method"]
        _check_keys(method, "method", required=("expression",), optional=("loss", "gradient"))
        stages = {
            stage: None if method.get(stage) is None else MethodRef.from_json(method[stage], f"method.{stage}")
            for stage in ("loss", "gradient")
        }
        if stages["loss"] is None and stages["gradient"] is None:
            raise ConfigError("run spec: method.loss and method.gradient are both null; a run needs a method")
        seed = data["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"run spec: seed must be an integer >= 0, got {seed!r}")
        noise = _mapping(data, "noise")
        for task, rate in noise.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ConfigError(f"run spec: noise.{task} must be a number in [0, 1], got {rate!r}")
        dataset = _string(data, "dataset")
        spec = cls(
            dataset=dataset,
            arch=_string(data, "arch"),
            method=_string(method, "expression", "method"),
            loss=stages["loss"],
            gradient=stages["gradient"],
            seed=seed,
            noise={task: float(rate) for task, rate in noise.items()},
            data_options=resolve_options(dataset, _mapping(data, "data_options"), "run spec: data_options"),
            training=resolve_training(_mapping(data, "training"), "run spec: training"),
        )
        label = data.get("noise_label")
        if label is not None and label != spec.noise_label:
            raise ConfigError(
                f"run spec: noise_label {label!r} does not match noise {dict(noise)} (which is {spec.noise_label!r})"
            )
        return spec

    @property
    def hash(self) -> str:
        return digest(self.to_json())


def _module_file(name: str) -> Path:
    found = importlib.util.find_spec(name)
    if found is None or found.origin is None:
        raise RuntimeError(f"module {name} not found")
    return Path(found.origin)


def code_files(spec: RunSpec) -> list[Path]:
    """The code files a run's numbers depend on.

    The training core (:data:`CORE_MODULES`), the dataset module's task
    definitions, the run's architecture and encoder modules, and its methods'
    modules (with the weighting modules they import). The workflow declares
    them as inputs of the run's job; :func:`run_provenance` hashes them.
    """
    from mtlrepro.archs import arch_class
    from mtlrepro.data import dataset_module
    from mtlrepro.models import encoder_class
    from mtlrepro.weighting import method_sources

    encoder = dataset_module(spec.dataset).ENCODER
    files = {_module_file(name) for name in CORE_MODULES}
    files |= {Path(inspect.getfile(arch_class(spec.arch))), Path(inspect.getfile(encoder_class(encoder)))}
    for stage in spec.stages:
        files.update(method_sources(stage.weighting))
    return sorted(files)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def run_provenance(spec: RunSpec, data_path: str | Path) -> dict[str, Any]:
    """What a run's numbers are a function of: its spec, its data cache and its code, as hashes.

    A checkpoint is resumed only under an equal provenance, so a job that is
    rerun because its method's code or its data changed trains from scratch,
    while a killed job resumes.
    """
    package = _module_file("mtlrepro").parent
    code = {str(path.relative_to(package)): file_sha256(path) for path in code_files(spec)}
    return {"spec_hash": spec.hash, "data_sha256": file_sha256(data_path), "code_sha256": code}
