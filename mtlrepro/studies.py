"""Studies: a config's experiment grids, expanded into runs.

A *study* is one table or figure of a paper: a dataset, an architecture, a
list of methods, a list of seeds and a list of label-noise settings. Its runs
are the cross product. A run's directory is a pure function of what
identifies it (DESIGN "The run: the unit of work")::

    results/runs/{dataset}/{arch}/{method}/{noise}/seed{seed}/

and its :class:`~mtlrepro.run.RunSpec` holds every hyperparameter that can
change its numbers. The workflow passes the spec as key-sorted JSON in
``params`` and declares :func:`run_sources` as inputs, so that Snakemake reruns
a run exactly when its spec or the code it runs changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mtlrepro import seeding
from mtlrepro.archs import arch_class
from mtlrepro.data import dataset_module, resolve_options
from mtlrepro.data.noise import check_noise
from mtlrepro.errors import ConfigError
from mtlrepro.options import build_options
from mtlrepro.run import MethodRef, RunSpec, code_files, resolve_training
from mtlrepro.weighting import Component, MethodSpec, parse_method

DATA_DIR = "resources/data"


def method_ref(component: Component | None) -> MethodRef | None:
    """The run-spec form of a resolved method entry."""
    if component is None:
        return None
    return MethodRef(entry=component.entry, weighting=component.cls.name, options=dict(component.options))


def run_sources(spec: RunSpec) -> list[str]:
    """Code files a run's numbers depend on (:func:`mtlrepro.run.code_files`), as strings for the workflow."""
    return [str(path) for path in code_files(spec)]


@dataclass(frozen=True)
class Study:
    """A named grid of runs that becomes one table and one figure."""

    name: str
    title: str
    dataset: str
    arch: str
    runs: tuple[RunSpec, ...]


def dataset_sources(dataset: str) -> list[str]:
    """Code files a dataset's cache depends on: its module and the cache writer."""
    from mtlrepro import data

    return sorted({inspect.getfile(dataset_module(dataset)), inspect.getfile(data), inspect.getfile(seeding)})


def data_file(dataset: str) -> str:
    """The tensor cache of a prepared dataset."""
    return f"{DATA_DIR}/{dataset}.pt"


def check_arch_supports(method: MethodSpec, arch: str, where: str) -> None:
    """Refuse representation gradients on an architecture whose heads do not share one representation."""
    gradient = method.gradient
    if gradient is None or gradient.options.get("grad_wrt") != "representation":
        return
    if not getattr(arch_class(arch), "has_shared_representation", False):
        raise ConfigError(
            f"{where}: {method.expression!r} asks for representation gradients (methods.{gradient.entry}.grad_wrt), "
            f"but architecture {arch!r} has no single representation shared by all task heads"
        )


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
        training = resolve_training(dataset_cfg.get("training"), f"datasets.{dataset}.training")
        methods = []
        for i, expression in enumerate(study["methods"]):
            method = parse_method(expression, entries, f"{where}.methods[{i}]")
            check_arch_supports(method, arch, f"{where}.methods[{i}]")
            for component in method.components:
                options = build_options(component.cls.Options, component.options, f"methods.{component.entry}")
                component.cls.check(options, [t.name for t in module.TASKS], f"methods.{component.entry}")
            methods.append(method)
        noises = [
            check_noise(n, module.TASKS, f"{where}.noise[{i}]", dataset=dataset)
            for i, n in enumerate(study.get("noise") or [{}])
        ]
        runs = tuple(
            RunSpec(
                dataset=dataset,
                arch=arch,
                method=method.expression,
                loss=method_ref(method.loss),
                gradient=method_ref(method.gradient),
                seed=seed,
                noise=dict(noise),
                data_options=data_options,
                training=training,
            )
            for noise in noises
            for method in methods
            for seed in study["seeds"]
        )
        studies[name] = Study(name, study.get("title", name), dataset, arch, runs)
    return studies


def runs_by_directory(studies: Mapping[str, Study]) -> dict[str, RunSpec]:
    """Every distinct run of every study, keyed by its directory (studies may share runs)."""
    found: dict[str, RunSpec] = {}
    for study in studies.values():
        for run in study.runs:
            if run.directory in found and found[run.directory] != run:
                raise ConfigError(f"studies.{study.name}: run {run.directory} is defined twice with different specs")
            found[run.directory] = run
    return found
