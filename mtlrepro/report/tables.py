"""The summary table of one study: mean ± std over seeds, average accuracy and Δp vs a baseline.

Every number is computed from the *final* block of each run (the epoch picked
by the run's selection rule, e.g. best validation accuracy). Per seed, the
average accuracy is the mean of the per-task accuracies and Δp is the RW
paper's relative improvement (Sec. 5) of that seed's metrics over the
baseline method's metrics *averaged over its seeds*; the table reports the
mean (and, for metrics, the sample std, ``ddof=1``) of those per-seed values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from mtlrepro.errors import DataError
from mtlrepro.io import write_text_atomic
from mtlrepro.metrics import HIGHER, delta_p
from mtlrepro.report.runs import (
    Directions,
    check_one_run_per_seed,
    dataset_info,
    methods_in_order,
    runs_frame,
    source,
)

AVG_METRIC = "acc"
"""The metric averaged over tasks for the ``avg`` columns (accuracy, in percent)."""


def _per_seed(runs: Sequence[Mapping[str, Any]], split: str, directions: Directions) -> pd.DataFrame:
    """Wide frame: index (method, seed) in study order, columns (task, metric) in declared order."""
    for run in runs:
        if run["final"].get(split) is None:
            raise DataError(f"{source(run)}: no final {split!r} metrics to tabulate")
    long = runs_frame(runs)
    long = long[long["split"] == split]
    wide = long.pivot(index=["method", "seed"], columns=["task", "metric"], values="value")
    columns = pd.MultiIndex.from_tuples(
        [(task, metric) for task, metrics in directions.items() for metric in metrics], names=["task", "metric"]
    )
    order = {method: i for i, method in enumerate(methods_in_order(runs))}
    rows = sorted(wide.index, key=lambda key: (order[key[0]], key[1]))
    return wide.loc[rows, columns]


def _nested(row: pd.Series) -> dict[str, dict[str, float]]:
    """A (task, metric)-indexed row as task -> metric -> value."""
    nested: dict[str, dict[str, float]] = {}
    for (task, metric), value in row.items():
        nested.setdefault(task, {})[metric] = float(value)
    return nested


def _average(wide: pd.DataFrame, metric: str) -> pd.Series:
    """Per (method, seed): mean of ``metric`` over the tasks that report it (NaN if none does)."""
    picked = [column for column in wide.columns if column[1] == metric]
    if not picked:
        return pd.Series(np.nan, index=wide.index, dtype="float64")
    return wide[picked].mean(axis=1)


def _delta_p(wide: pd.DataFrame, baseline: str, directions: Directions) -> pd.Series:
    """Per (method, seed): Δp (percent) against the baseline's mean over seeds; NaN without baseline."""
    methods = wide.index.get_level_values("method")
    if baseline not in set(methods):
        return pd.Series(np.nan, index=wide.index, dtype="float64")
    reference = _nested(wide.loc[methods == baseline].mean(axis=0))
    try:
        values = [delta_p(_nested(row), reference, directions) for _, row in wide.iterrows()]
    except ValueError as err:
        raise DataError(f"baseline {baseline!r}: {err}") from None
    result = pd.Series(values, index=wide.index, dtype="float64")
    result[methods == baseline] = 0.0
    return result


def summary_table(runs: Sequence[Mapping[str, Any]], baseline: str = "ew", split: str = "test") -> pd.DataFrame:
    """One row per method (in order of first appearance in ``runs``), statistics over seeds.

    Columns: ``{task}_{metric}_mean`` and ``{task}_{metric}_std`` for every
    declared task metric, ``avg_mean`` / ``avg_std`` (average accuracy over
    tasks, computed per seed), ``n_seeds`` and ``delta_p`` (percent, mean over
    seeds; NaN when ``baseline`` has no runs here, exactly 0.0 on its own row).
    Standard deviations use ``ddof=1`` and are NaN for a single seed. Methods
    may have different seed sets; ``n_seeds`` shows it. The index is ``method``;
    ``attrs`` records ``split`` and ``baseline``.
    """
    info = dataset_info(runs)
    check_one_run_per_seed(runs)
    wide = _per_seed(runs, split, info.directions)
    methods = methods_in_order(runs)
    by_method = wide.groupby(level="method", sort=False)
    mean = by_method.mean().reindex(methods)
    std = by_method.std(ddof=1).reindex(methods)

    table = pd.DataFrame(index=pd.Index(methods, name="method"))
    for task, metrics in info.directions.items():
        for metric in metrics:
            table[f"{task}_{metric}_mean"] = mean[(task, metric)]
            table[f"{task}_{metric}_std"] = std[(task, metric)]
    avg = _average(wide, AVG_METRIC).groupby(level="method", sort=False)
    table["avg_mean"] = avg.mean().reindex(methods)
    table["avg_std"] = avg.std(ddof=1).reindex(methods)
    table["n_seeds"] = by_method.size().reindex(methods).astype("int64")
    table["delta_p"] = _delta_p(wide, baseline, info.directions).groupby(level="method", sort=False).mean()
    table.attrs.update(split=split, baseline=baseline)
    return table


# --------------------------------------------------------------------------- writing


def format_cell(mean: float, std: float) -> str:
    """``91.23 ± 0.45``; just the mean when ``std`` is NaN; ``n/a`` when the mean is NaN."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def format_delta_p(value: float) -> str:
    """``+1.04%`` (always signed); ``n/a`` when NaN (no baseline in the study)."""
    return "n/a" if math.isnan(value) else f"{value:+.2f}%"


def _seeds_line(runs: Sequence[Mapping[str, Any]], baseline: str, has_baseline: bool) -> str:
    seed_sets = {
        method: sorted(run["run"]["seed"] for run in runs if run["run"]["method"] == method)
        for method in methods_in_order(runs)
    }
    every = sorted({seed for seeds in seed_sets.values() for seed in seeds})
    listed = ", ".join(map(str, every))
    counts = sorted({len(seeds) for seeds in seed_sets.values()})
    if len({tuple(seeds) for seeds in seed_sets.values()}) == 1:
        n = counts[0]
        over = f"Mean ± std over {n} seed{'s' if n != 1 else ''} (seeds: {listed})"
    else:
        over = (
            f"Mean ± std over {counts[0]}–{counts[-1]} seeds per method "
            f"(seeds: {listed}; methods differ in their seeds, see column n)"
        )
    rules = ", ".join(dict.fromkeys(str(run["selection"]["rule"]) for run in runs))
    delta = f"Δp relative to {baseline.upper()} (RW paper, Sec. 5)"
    if not has_baseline:
        delta += f": n/a, no {baseline.upper()} runs in this study"
    return f"{over}; model selected by {rules}; {delta}"


def markdown_table(df: pd.DataFrame, runs: Sequence[Mapping[str, Any]], title: str) -> str:
    """The Markdown text of :func:`write_table` (title, dataset, stand-in note, legend line, table)."""
    info = dataset_info(runs)
    split = df.attrs.get("split", "test")
    baseline = df.attrs.get("baseline", "ew")
    headers = ["Method"]
    for task, metrics in info.directions.items():
        for metric, direction in metrics.items():
            headers.append(f"{task} {metric} {'↑' if direction == HIGHER else '↓'}")
    headers += [f"Avg {AVG_METRIC} ↑", "n", "Δp"]
    rows = []
    for method, row in df.iterrows():
        cells = [str(method)]
        for task, metrics in info.directions.items():
            for metric in metrics:
                cells.append(format_cell(row[f"{task}_{metric}_mean"], row[f"{task}_{metric}_std"]))
        cells += [
            format_cell(row["avg_mean"], row["avg_std"]),
            str(int(row["n_seeds"])),
            format_delta_p(row["delta_p"]),
        ]
        rows.append(cells)
    body = tabulate(
        rows,
        headers=headers,
        tablefmt="pipe",
        disable_numparse=True,
        colalign=["left"] + ["right"] * (len(headers) - 1),
    )
    lines = [f"# {title}", "", f"Dataset: `{info.name}` ({split} split)", ""]
    if info.stand_in is not None:
        lines += [f"**Stand-in data: {info.stand_in}**", ""]
    lines += [_seeds_line(runs, baseline, baseline in df.index), "", body, ""]
    return "\n".join(lines)


def write_table(
    df: pd.DataFrame,
    runs: Sequence[Mapping[str, Any]],
    title: str,
    out_csv: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
) -> None:
    """Write the summary table ``df`` (from :func:`summary_table`) as CSV and Markdown, atomically.

    The CSV holds the ``method`` index and the plain numeric columns (NaN as
    empty cells); the Markdown adds the title, dataset, stand-in note and the
    seeds / selection rule / Δp legend line, with ``mean ± std`` cells.
    """
    write_text_atomic(out_csv, df.to_csv())
    write_text_atomic(out_md, markdown_table(df, runs, title))
