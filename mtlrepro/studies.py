"""Studies: a config's experiment grids, expanded into runs.

A *study* is one table or figure of a paper: a dataset, an architecture, a
list of methods, a list of seeds and a list of label-noise settings. Its runs
are the cross product. A run's directory is a pure function of what
identifies it (DESIGN "The run: the unit of work")::

    results/runs/{dataset}/{arch}/{method}/{noise}/seed{seed}/

and its *spec* (:meth:`Run.spec`) holds every hyperparameter that can change
its numbers. The workflow passes the spec as key-sorted JSON in ``params`` and
declares :meth:`Run.sources` as inputs, so that Snakemake reruns a run exactly
when its spec or the code it runs changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mtlrepro import seeding, train
from mtlrepro.archs import arch_class
from mtlrepro.data import dataset_module, resolve_options
from mtlrepro.data.noise import check_noise, noise_label
from mtlrepro.errors import ConfigError
from mtlrepro.weighting import MethodSpec, parse_method

RUNS_DIR = "results/runs"
DATA_DIR = "resources/data"


@dataclass(frozen=True)
class Run:
    """One training run of a study."""

    dataset: str
    arch: str
    method: MethodSpec
    noise: Mapping[str, float]
    seed: int
    data_options: Mapping[str, Any]
    training: Mapping[str, Any]

    @property
    def noise_label(self) -> str:
        return noise_label(self.noise)

    @property
    def directory(self) -> str:
        """``results/runs/{dataset}/{arch}/{method}/{noise}/seed{seed}``."""
        return f"{RUNS_DIR}/{self.dataset}/{self.arch}/{self.method.expression}/{self.noise_label}/seed{self.seed}"

    @property
    def metrics_file(self) -> str:
        return f"{self.directory}/{train.METRICS_FILE}"

    def spec(self) -> dict[str, Any]:
        """Everything that determines this run's numbers, as plain JSON-able data."""

        def component(c: Any) -> dict[str, Any] | None:
            return None if c is None else {"entry": c.entry, "config": {"weighting": c.cls.name, **c.options}}

        return {
            "dataset": self.dataset,
            "arch": self.arch,
            "method": {
                "expression": self.method.expression,
                "loss": component(self.method.loss),
                "gradient": component(self.method.gradient),
            },
            "noise": dict(self.noise),
            "noise_label": self.noise_label,
            "seed": self.seed,
            "data_options": dict(self.data_options),
            "training": dict(self.training),
        }

    def sources(self) -> list[str]:
        """Code files this run's numbers depend on (:func:`mtlrepro.train.code_files`)."""
        return [str(path) for path in train.code_files(self.spec())]


@dataclass(frozen=True)
class Study:
    """A named grid of runs that becomes one table and one figure."""

    name: str
    title: str
    dataset: str
    arch: str
    runs: tuple[Run, ...]


def dataset_sources(dataset: str) -> list[str]:
    """Code files a dataset's cache depends on: its module and the cache writer."""
    from mtlrepro import data

    return sorted({inspect.getfile(dataset_module(dataset)), inspect.getfile(data), inspect.getfile(seeding)})


def data_file(dataset: str) -> str:
    """The tensor cache of a prepared dataset."""
    return f"{DATA_DIR}/{dataset}.pt"


def expand(config: Mapping[str, Any]) -> dict[str, Study]:
    """Expand every study of a schema-valid ``config``; :class:`ConfigError` on a bad name or value."""
    datasets_cfg = config.get("datasets") or {}
    entries = config.get("methods") or {}
    for name in datasets_cfg:
        dataset_module(name)  # unknown dataset keys are errors too
    studies = {}
    for name, study in config["studies"].items():
        where = f"studies.{name}"
        dataset = study["dataset"]
        try:
            module = dataset_module(dataset)
        except ConfigError as err:
            raise ConfigError(f"{where}.dataset: {err}") from None
        arch = study.get("arch", "hps")
        try:
            arch_class(arch)
        except ConfigError as err:
            raise ConfigError(f"{where}.arch: {err}") from None
        dataset_cfg = datasets_cfg.get(dataset) or {}
        data_options = resolve_options(dataset, dataset_cfg.get("options"))
        training = train.resolve_training(dataset_cfg.get("training"), f"datasets.{dataset}.training")
        methods = [parse_method(m, entries, f"{where}.methods[{i}]") for i, m in enumerate(study["methods"])]
        noises = [
            check_noise(n, module.TASKS, f"{where}.noise[{i}]", dataset=dataset)
            for i, n in enumerate(study.get("noise") or [{}])
        ]
        runs = tuple(
            Run(dataset, arch, method, noise, seed, data_options, training)
            for noise in noises
            for method in methods
            for seed in study["seeds"]
        )
        studies[name] = Study(name, study.get("title", name), dataset, arch, runs)
    return studies


def runs_by_directory(studies: Mapping[str, Study]) -> dict[str, Run]:
    """Every distinct run of every study, keyed by its directory (studies may share runs)."""
    found: dict[str, Run] = {}
    for study in studies.values():
        for run in study.runs:
            if run.directory in found and found[run.directory].spec() != run.spec():
                raise ConfigError(f"studies.{study.name}: run {run.directory} is defined twice with different specs")
            found[run.directory] = run
    return found
