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
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mtlrepro import seeding
from mtlrepro.archs import arch_class
from mtlrepro.data import dataset_module, resolve_options
from mtlrepro.data.noise import check_noise
from mtlrepro.errors import ConfigError
from mtlrepro.models import encoder_class
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


TABLE_KINDS = ("method_table", "combination_grid", "architecture_grid", "flatness")
"""Outputs written as CSV + Markdown + LaTeX under ``results/tables/{study}/{kind}.*``."""
FIGURE_KINDS = ("learning_curves", "weight_trajectories", "noise_sweep", "loss_profile", "excess_risk", "flatness")
"""Outputs drawn as PNG + PDF under ``results/figures/{study}/{kind}.*`` (flatness is both)."""
PUBLISHED_SHAPES = {"rw/table4_combinations": "combination_grid", "rw/table5_architectures": "architecture_grid"}
"""The table kind a published table has the shape of (every other published table is a method table)."""


def twin_kind(published: str) -> str:
    """The output kind whose twin shows the published table ``published``."""
    return PUBLISHED_SHAPES.get(published, "method_table")


DEFAULT_OUTPUTS = ({"kind": "method_table"}, {"kind": "learning_curves"})
PAPERS = {"rw": "Random Weighting (Lin et al.)", "excess_mtl": "ExcessMTL (He et al.)"}


@dataclass(frozen=True)
class Study:
    """A named grid of runs that becomes one table or figure of a paper (and its outputs).

    ``outputs`` are mappings ``{"kind": ..., **options}``; ``published`` names a
    table of the reference folder whose numbers the twin table puts beside ours.
    """

    name: str
    title: str
    dataset: str
    archs: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    paper: str = "rw"
    reproduces: str = ""
    baseline: str = "ew"
    outputs: tuple[Mapping[str, Any], ...] = DEFAULT_OUTPUTS
    published: str | None = None
    seeds: tuple[int, ...] = ()

    @property
    def arch(self) -> str:
        """The first architecture (studies over one architecture)."""
        return self.archs[0]

    def kinds(self) -> list[str]:
        return [output["kind"] for output in self.outputs]

    def to_json(self) -> dict[str, Any]:
        """What report commands are told about the study (everything but its runs)."""
        return {
            "name": self.name,
            "title": self.title,
            "paper": self.paper,
            "paper_title": PAPERS[self.paper],
            "reproduces": self.reproduces,
            "dataset": self.dataset,
            "archs": list(self.archs),
            "baseline": self.baseline,
            "outputs": [dict(o) for o in self.outputs],
            "published": self.published,
            "published_kind": None if self.published is None else twin_kind(self.published),
            "seeds": list(self.seeds),
            "methods": list(dict.fromkeys(run.method for run in self.runs)),
            "noise_labels": list(dict.fromkeys(run.noise_label for run in self.runs)),
        }


def expand_variants(study: Mapping[str, Any], entries: Mapping[str, Any], where: str) -> tuple[list[str], dict]:
    """The study's methods with its option ``variants`` added, and the method entries they need.

    ``variants: {rlw: {distribution: [uniform, dirichlet]}}`` adds the entries
    ``rlw-uniform`` and ``rlw-dirichlet`` (RW Figure 2's five distributions are
    one study). A variant's entry is the base entry with that one option changed.
    """
    methods = list(study["methods"])
    entries = dict(entries)
    for base, options in (study.get("variants") or {}).items():
        base_entry = dict(entries.get(base) or {})
        base_entry.setdefault("weighting", base)
        for option, values in options.items():
            for value in values:
                name = variant_name(base, option, value)
                if name in entries and entries[name] != {**base_entry, option: value}:
                    raise ConfigError(
                        f"{where}.variants.{base}.{option}: method entry {name!r} already exists with other options"
                    )
                entries[name] = {**base_entry, option: value}
                if name not in methods:
                    methods.append(name)
    return methods, entries


def variant_name(base: str, option: str, value: Any) -> str:
    """The entry name of a variant: ``rlw-dirichlet`` for a string value, ``cagrad-c0p6`` for a number."""
    if isinstance(value, str):
        return f"{base}-{value}"
    return f"{base}-{option}{value}".replace(".", "p").lower()


def check_outputs(study: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], ...]:
    """The study's outputs as ``{"kind", ...}`` mappings; a kind that needs what the study lacks is refused."""
    outputs = tuple({"kind": o} if isinstance(o, str) else dict(o) for o in study.get("outputs") or DEFAULT_OUTPUTS)
    kinds = [o["kind"] for o in outputs]
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"{where}.outputs: an output kind is listed twice ({', '.join(kinds)})")
    if "noise_sweep" in kinds and len(study.get("noise") or [{}]) < 2:
        raise ConfigError(f"{where}.outputs: noise_sweep needs at least two noise levels in {where}.noise")
    if "architecture_grid" in kinds and len(study.get("archs") or [study.get("arch", "hps")]) < 2:
        raise ConfigError(f"{where}.outputs: architecture_grid needs at least two architectures in {where}.archs")
    published = study.get("published")
    if published and twin_kind(published) not in kinds:
        raise ConfigError(
            f"{where}.published: {published!r} has the shape of a {twin_kind(published)}, which {where}.outputs lacks"
        )
    return outputs


def dataset_sources(dataset: str) -> list[str]:
    """Code files a dataset's cache depends on: its module, the dataset modules it uses (transitively), and the
    cache writer."""
    from mtlrepro import data, tasks

    files = {inspect.getfile(data), inspect.getfile(seeding), inspect.getfile(tasks)}
    pending, seen = [dataset_module(dataset)], set()
    while pending:
        module = pending.pop()
        if module.__name__ in seen:
            continue
        seen.add(module.__name__)
        files.add(inspect.getfile(module))
        for value in vars(module).values():
            owner = value if inspect.ismodule(value) else sys.modules.get(getattr(value, "__module__", None) or "")
            if owner is not None and owner.__name__.startswith("mtlrepro.data.") and hasattr(owner, "__file__"):
                pending.append(owner)
    return sorted(files)


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
    """Expand every study of a schema-valid ``config``; :class:`ConfigError` on a bad name or value.

    A study's runs are the product architectures x noise levels x methods x
    seeds, in that order.
    """
    datasets_cfg = config.get("datasets") or {}
    config_entries = config.get("methods") or {}
    for name, entry in datasets_cfg.items():
        module = dataset_module(name)  # unknown dataset keys are errors too
        if (entry or {}).get("path") is not None and not getattr(module, "SOURCES", ()):
            raise ConfigError(f"datasets.{name}.path: {name} is generated, not read from files; remove the key")
    studies = {}
    for name, study in config["studies"].items():
        where = f"studies.{name}"
        dataset = study["dataset"]
        try:
            module = dataset_module(dataset)
        except ConfigError as err:
            raise ConfigError(f"{where}.dataset: {err}") from None
        try:
            encoder_class(module.ENCODER)
        except ConfigError as err:
            raise ConfigError(
                f"{where}.dataset: {dataset} trains the papers' {module.ENCODER!r} encoder, which this version "
                f"does not provide yet ({err})"
            ) from None
        archs = tuple(study.get("archs") or [study.get("arch", "hps")])
        for i, arch in enumerate(archs):
            try:
                arch_class(arch)
            except ConfigError as err:
                raise ConfigError(f"{where}.archs[{i}]: {err}") from None
        dataset_cfg = datasets_cfg.get(dataset) or {}
        data_options = resolve_options(dataset, dataset_cfg.get("options"))
        training = resolve_training(dataset_cfg.get("training"), f"datasets.{dataset}.training")
        expressions, entries = expand_variants(study, config_entries, where)
        methods = []
        for i, expression in enumerate(expressions):
            method = parse_method(expression, entries, f"{where}.methods[{i}]")
            for arch in archs:
                check_arch_supports(method, arch, f"{where}.methods[{i}]")
            for component in method.components:
                options = build_options(component.cls.Options, component.options, f"methods.{component.entry}")
                component.cls.check(options, [t.name for t in module.TASKS], f"methods.{component.entry}")
            methods.append(method)
        baseline = study.get("baseline", "ew")
        outputs = check_outputs(study, where)
        compared = {"combination_grid", "architecture_grid"} & {o["kind"] for o in outputs}
        if compared and baseline not in expressions:
            needs = ", ".join(sorted(compared))
            raise ConfigError(f"{where}.baseline: {baseline!r} is not one of the study's methods (needed by {needs})")
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
            for arch in archs
            for noise in noises
            for method in methods
            for seed in study["seeds"]
        )
        studies[name] = Study(
            name=name,
            title=study.get("title", name),
            dataset=dataset,
            archs=archs,
            runs=runs,
            paper=study.get("paper", "rw"),
            reproduces=study.get("reproduces", ""),
            baseline=baseline,
            outputs=outputs,
            published=study.get("published"),
            seeds=tuple(study["seeds"]),
        )
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
