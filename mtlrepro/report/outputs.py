"""A study's outputs by kind: which module draws or tabulates each, from which records.

The workflow asks for ``results/tables/{paper}/{study}/{kind}.{csv,md,tex}``
and ``results/figures/{paper}/{study}/{kind}.{png,pdf}``; the ``mtlrepro table``
and ``mtlrepro figure`` commands call :func:`write_table` and
:func:`write_figure` here with the study's description (``Study.to_json()``)
and the run records (or, for flatness, the per-run analyses).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from mtlrepro.errors import ConfigError
from mtlrepro.report import flatness_report, paper_figures, paper_tables, published
from mtlrepro.report.runs import load_runs

TableFn = Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any], str], pd.DataFrame]
FigureFn = Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any], str, str], pd.DataFrame]

TABLES: dict[str, TableFn] = {
    "method_table": paper_tables.method_table,
    "combination_grid": paper_tables.combination_grid,
    "architecture_grid": paper_tables.architecture_grid,
}
FIGURES: dict[str, FigureFn] = {
    "learning_curves": paper_figures.learning_curves,
    "weight_trajectories": paper_figures.weight_trajectories,
    "noise_sweep": paper_figures.noise_sweep,
    "loss_profile": paper_figures.loss_profile,
    "excess_risk": paper_figures.excess_risk_vs_truth,
    "flatness": flatness_report.flatness_figure,
}
#: kinds whose inputs are per-run analyses rather than run records
ANALYSIS_KINDS = {"flatness"}
PRINTED_TOLERANCE = 0.005
"""Half the last printed digit of the papers' two-decimal numbers: a published value this close to a CI is in it."""


def study_options(study: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The study's description with the options of its output ``kind`` merged in (what the report functions read)."""
    options = next((o for o in study.get("outputs", []) if o.get("kind") == kind), {})
    return {**study, **{k: v for k, v in options.items() if k != "kind"}}


def _records(kind: str, paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    if kind in ANALYSIS_KINDS:
        return flatness_report.load_flatness(paths)
    return load_runs(paths)


def write_table(kind: str, paths: Sequence[str | os.PathLike[str]], study: Mapping[str, Any], prefix: str) -> None:
    """``{prefix}.csv``, ``.md`` and ``.tex`` of the study's output ``kind`` (test split unless it asks otherwise)."""
    options = study_options(study, kind)
    records = _records(kind, paths)
    if kind == "flatness":
        flatness_report.write_flatness_table(flatness_report.flatness_table(records, options), options, prefix)
        return
    if kind not in TABLES:
        raise ConfigError(f"{kind!r} is not a table (tables: {', '.join(sorted({*TABLES, 'flatness'}))})")
    split = paper_tables.study_splits(options)[0]
    table = TABLES[kind](records, options, split)
    paper_tables.write_paper_table(table, f"{prefix}.csv", f"{prefix}.md", f"{prefix}.tex")


def write_figure(kind: str, paths: Sequence[str | os.PathLike[str]], study: Mapping[str, Any], prefix: str) -> None:
    """``{prefix}.png`` and ``.pdf`` of the study's output ``kind``."""
    if kind not in FIGURES:
        raise ConfigError(f"{kind!r} is not a figure (figures: {', '.join(sorted(FIGURES))})")
    FIGURES[kind](_records(kind, paths), study_options(study, kind), f"{prefix}.png", f"{prefix}.pdf")


def _paper_names(names: Sequence[str]) -> dict[str, str]:
    """Our name -> the paper's, for the published rows or columns that name methods (others are matched as is)."""
    mapping = {}
    for name in names:
        try:
            mapping[published.our_method(str(name))] = str(name)
        except KeyError:
            continue
    return mapping


def write_twin(kind: str, paths: Sequence[str | os.PathLike[str]], study: Mapping[str, Any], prefix: str) -> None:
    """``{prefix}.csv/.md/.tex``: the study's table ``kind`` beside the published table ``study["published"]``."""
    if kind not in TABLES:
        raise ConfigError(f"{kind!r} has no published twin (tables: {', '.join(sorted(TABLES))})")
    key = study.get("published")
    if not key:
        raise ConfigError(f"studies.{study.get('name')}.published: no published table to compare with")
    options = study_options(study, kind)
    reproduced = TABLES[kind](load_runs(paths), options, paper_tables.study_splits(options)[0])
    wide = paper_tables.published_wide(published.load_published(key), kind)
    table = paper_tables.twin(
        reproduced,
        wide,
        rows=_paper_names(list(wide.index)),
        columns=_paper_names(list(wide.columns)) if kind == "combination_grid" else None,
        tolerance=PRINTED_TOLERANCE,
    )
    paper_tables.write_paper_table(table, f"{prefix}.csv", f"{prefix}.md", f"{prefix}.tex")
