"""Tables in the papers' shape: method table, combination grid, architecture grid and their published twins.

* :func:`method_table` — RW Tables 1, 3, 6, 7 and 8: one row per method (the
  baseline first), one column per task metric with its direction, Δp against
  the baseline, and the paper's best-per-group marks (``*`` best among the
  loss-weighting methods, ``†`` best among the gradient methods).
* :func:`combination_grid` — RW Table 4: gradient method (``Vanilla`` = none) x
  loss weighting (``EW`` = none), Δp against the study's baseline; the best cell
  of each row is bold, as in the paper.
* :func:`architecture_grid` — RW Table 5: method x architecture, Δp against the
  baseline method on the baseline architecture (HPS); the best cell of each
  architecture is bold, as in the paper.
* :func:`twin` — any of the above beside the published numbers: published,
  reproduced mean, its CI, the difference and whether the published value lies
  in the CI.

Every number comes from each run's ``final`` block: the epoch its selection
rule picked on the validation split. Nothing here looks at the per-epoch test
values, so a run whose test curve peaks elsewhere is still tabulated at its
selected epoch. The statistics (mean ± std, seeded percentile bootstrap CIs,
paired/Welch t-tests, Holm within a table, Δp with its bootstrap CI) come from
:mod:`mtlrepro.report.stats`; Δp is the RW paper's relative improvement
(Lin et al., "Reasonable Effectiveness of Random Weighting", Sec. 5;
:func:`mtlrepro.metrics.delta_p`).

Each builder returns a tidy :class:`pandas.DataFrame` (the numbers, written
as-is to CSV) whose ``attrs`` carry what the renderers print around it (title,
dataset, stand-in label, footer). :func:`write_paper_table` writes any of them
as CSV + Markdown + LaTeX, atomically.

Study keys read here (a plain mapping, as passed by the workflow):

``name``, ``title``, ``paper``, ``reproduces``
    printed in the header (``title`` falls back to ``name``).
``baseline``
    the reference method of Δp and of the tests (default ``"ew"``).
``seeds``
    the study's seeds; a method that lacks one of them is noted under the table.
``methods`` (optional)
    method expressions in the order the table lists them (default: order of
    first appearance in the runs). The baseline always comes first.
``labels`` (optional)
    display name per method / loss / gradient entry / architecture, e.g.
    ``{"rlw": "RLW", "mgda": "MGDA-UB", "hps": "HPS"}`` (default: the name itself).
``groups`` (optional)
    method -> ``"loss"`` / ``"gradient"`` / ``"combination"`` / ``"baseline"``,
    overriding the group read from the run spec (see :func:`method_group`).
``splits`` (optional)
    the splits to tabulate, ``["test"]`` by default; add ``"val"`` for the
    validation twin of a table (:func:`study_splits`; one table per split).
``bootstrap_seed`` (optional)
    seed of every bootstrap in the table (default 0); each cell derives its own
    stream with :func:`mtlrepro.report.stats.cell_seed`.
``baseline_arch`` (architecture grid)
    the architecture of the Δp reference (default ``"hps"``).
``archs`` (architecture grid, optional)
    column order (default: order of first appearance; the baseline architecture first).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tabulate import tabulate

from mtlrepro.errors import DataError
from mtlrepro.io import write_text_atomic
from mtlrepro.metrics import HIGHER
from mtlrepro.report import stats
from mtlrepro.report.runs import SPLITS, Directions, check_one_run_per_seed, dataset_info, methods_in_order, source

KIND_METHOD = "method_table"
KIND_COMBINATION = "combination_grid"
KIND_ARCHITECTURE = "architecture_grid"
KIND_TWIN = "twin"

GROUP_BASELINE = "baseline"
GROUP_LOSS = "loss"
GROUP_GRADIENT = "gradient"
GROUP_COMBINATION = "combination"
GROUPS = (GROUP_BASELINE, GROUP_LOSS, GROUP_GRADIENT, GROUP_COMBINATION)

MARKS = {GROUP_LOSS: "*", GROUP_GRADIENT: "†"}
"""The paper's best-per-group marks: ``*`` best loss-weighting method, ``†`` best gradient method."""
LATEX_MARKS = {"*": r"$^{*}$", "†": r"$^{\dagger}$"}
MARK_LEGEND = (
    "* best among loss-weighting methods, † best among gradient methods (by mean; "
    "the baseline and loss+gradient combinations are not marked)"
)

VANILLA = "Vanilla"
"""Row of the combination grid for methods without a gradient stage."""
EW = "EW"
"""Column of the combination grid for methods without a loss weighting (or with plain EW)."""
EW_WEIGHTING = "ew"
"""Registered name of equal weighting: a loss stage that is EW counts as no loss weighting."""

DELTA_P = "delta_p"
"""Column key of Δp (as in the published CSVs of ``shared/reference``)."""
STAT_FIELDS = ("mean", "std", "ci_low", "ci_high")

Nested = dict[str, dict[str, float]]


# --------------------------------------------------------------------------- study and runs


@dataclass(frozen=True)
class MetricColumn:
    """One task metric as a table column: ``key`` is ``{task}_{metric}`` (the CSV column prefix)."""

    task: str
    metric: str
    direction: str

    @property
    def key(self) -> str:
        """``{task}_{metric}``, e.g. ``seg_miou`` (the published CSVs' column names)."""
        return f"{self.task}_{self.metric}"

    @property
    def arrow(self) -> str:
        """``↑`` when higher is better, ``↓`` when lower is better."""
        return "↑" if self.direction == HIGHER else "↓"


def metric_columns(directions: Directions) -> list[MetricColumn]:
    """The table's metric columns, in the dataset's declaration order."""
    return [MetricColumn(task, metric, d) for task, metrics in directions.items() for metric, d in metrics.items()]


def study_splits(study: Mapping[str, Any]) -> list[str]:
    """The splits a study tabulates (``study["splits"]``, default ``["test"]``); one table each."""
    splits = list(study.get("splits") or ["test"])
    bad = [split for split in splits if split not in SPLITS]
    if bad or len(set(splits)) != len(splits):
        raise DataError(f"study {_study_name(study)}: 'splits' must be distinct values of {list(SPLITS)}, got {splits}")
    return splits


def _study_name(study: Mapping[str, Any]) -> str:
    """The study's name, quoted, for error messages."""
    return repr(study.get("name", "<study>"))


def _labels(study: Mapping[str, Any]) -> dict[str, str]:
    """Display names from ``study["labels"]`` (name -> label)."""
    return {str(k): str(v) for k, v in (study.get("labels") or {}).items()}


@dataclass(frozen=True)
class Stages:
    """A run's method stages: config entry names and registered weightings (``None`` when absent)."""

    loss_entry: str | None
    loss_weighting: str | None
    gradient_entry: str | None
    gradient_weighting: str | None


def method_stages(run: Mapping[str, Any]) -> Stages:
    """The loss / gradient stages of a run, from ``spec.method`` (``{"loss", "gradient"}``).

    A run file without them is read from its method expression when that is a
    combination ``loss+grad``; a single name without a spec is refused
    (:class:`DataError` naming the file), since only the spec says its kind.
    """
    method = (run.get("spec") or {}).get("method")
    if isinstance(method, Mapping) and ("loss" in method or "gradient" in method):
        loss, grad = method.get("loss"), method.get("gradient")
        return Stages(
            loss_entry=None if loss is None else str(loss.get("entry")),
            loss_weighting=None if loss is None else str(loss.get("weighting", loss.get("entry"))),
            gradient_entry=None if grad is None else str(grad.get("entry")),
            gradient_weighting=None if grad is None else str(grad.get("weighting", grad.get("entry"))),
        )
    expression = str(run["run"]["method"])
    if "+" in expression:
        loss_name, grad_name = expression.split("+", 1)
        return Stages(loss_name, loss_name, grad_name, grad_name)
    raise DataError(
        f"{source(run)}: 'spec.method' (its loss and gradient stages) is missing, "
        f"so the kind of method {expression!r} is unknown"
    )


def _plain_loss(stages: Stages) -> bool:
    """No loss weighting, or plain equal weighting."""
    return stages.loss_entry is None or stages.loss_weighting == EW_WEIGHTING or stages.loss_entry == EW_WEIGHTING


def method_group(run: Mapping[str, Any], baseline: str, overrides: Mapping[str, str] | None = None) -> str:
    """The best-mark group of a run's method (RW Table 1's "loss" and "gradient" blocks).

    ``baseline`` for the study's baseline; ``gradient`` for a gradient stage on
    its own (or after plain EW); ``loss`` for a loss stage on its own;
    ``combination`` for a loss weighting followed by a gradient method. An entry
    of ``overrides`` (method -> group) wins.
    """
    name = run["run"]["method"]
    if overrides and name in overrides:
        group = overrides[name]
        if group not in GROUPS:
            raise DataError(f"study 'groups': group of {name!r} must be one of {list(GROUPS)}, got {group!r}")
        return group
    if name == baseline:
        return GROUP_BASELINE
    stages = method_stages(run)
    if stages.gradient_entry is not None:
        return GROUP_GRADIENT if _plain_loss(stages) else GROUP_COMBINATION
    return GROUP_LOSS


def _final(run: Mapping[str, Any], split: str) -> Nested:
    """A run's ``final[split]`` metrics (its selected epoch); DataError naming the file when absent."""
    values = run["final"].get(split)
    if values is None:
        raise DataError(f"{source(run)}: no final {split!r} metrics (selected epoch) to tabulate")
    return {task: {metric: float(v) for metric, v in metrics.items()} for task, metrics in values.items()}


def _per_seed(
    runs: Sequence[Mapping[str, Any]], split: str, key: Callable[[Mapping[str, Any]], Hashable]
) -> dict[Hashable, dict[int, Nested]]:
    """Cell key -> seed -> the run's final metrics on ``split``; one run per (key, seed)."""
    table: dict[Hashable, dict[int, Nested]] = {}
    where: dict[tuple[Hashable, int], str] = {}
    for run in runs:
        cell, seed = key(run), int(run["run"]["seed"])
        if (cell, seed) in where:
            raise DataError(
                f"{source(run)}: {cell!r} seed {seed} also comes from {where[(cell, seed)]}; "
                "a table needs one run per cell and seed (one noise level, one architecture)"
            )
        where[(cell, seed)] = source(run)
        table.setdefault(cell, {})[seed] = _final(run, split)
    return {cell: dict(sorted(seeds.items())) for cell, seeds in table.items()}


def _ordered(found: Sequence[str], preferred: Sequence[str] | None, first: str | None = None) -> list[str]:
    """``found`` in ``preferred`` order (unknown ones after, in order found), ``first`` in front."""
    found = list(dict.fromkeys(found))
    order = [name for name in dict.fromkeys(preferred or []) if name in found]
    order += [name for name in found if name not in order]
    if first is not None and first in order:
        order.remove(first)
        order.insert(0, first)
    return order


def _single_noise(runs: Sequence[Mapping[str, Any]]) -> None:
    """A table compares methods at one noise level; refuse runs that mix levels (DataError naming a file)."""
    first = runs[0]["run"]["noise"]
    for run in runs:
        if run["run"]["noise"] != first:
            raise DataError(
                f"{source(run)}: noise {run['run']['noise']!r} differs from {first!r} in {source(runs[0])}; "
                "a table covers one noise level"
            )


def _first_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Method -> its first run (where its spec, hence its stages, is read)."""
    first: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        first.setdefault(run["run"]["method"], run)
    return first


def _selection_rule(runs: Sequence[Mapping[str, Any]]) -> str:
    """The runs' selection rule(s) with their description, e.g. ``best_val (highest mean ...)``."""
    rules = []
    for run in runs:
        selection = run["selection"]
        text = str(selection["rule"])
        if selection.get("description"):
            text += f" ({selection['description']})"
        rules.append(text)
    return "; ".join(dict.fromkeys(rules))


def _missing_seeds_note(study: Mapping[str, Any], seeds_of: Mapping[str, Sequence[int]]) -> str | None:
    """A note naming the study seeds some cell has no run for; None when every cell has them all."""
    expected = [int(s) for s in study.get("seeds") or []]
    missing = {
        name: [s for s in expected if s not in seeds] for name, seeds in seeds_of.items() if set(expected) - set(seeds)
    }
    if not missing:
        return None
    listed = "; ".join(f"{name}: {', '.join(map(str, s))}" for name, s in missing.items())
    return f"Seeds of the study without a run: {listed}."


def _bootstrap_seed(study: Mapping[str, Any]) -> int:
    """The study's bootstrap seed (``bootstrap_seed``, default 0)."""
    return int(study.get("bootstrap_seed", 0))


def _require_baseline(per_seed: Mapping[Hashable, Any], baseline: Hashable, study: Mapping[str, Any]) -> None:
    """DataError when the Δp / test reference has no runs."""
    if baseline not in per_seed:
        raise DataError(
            f"study {_study_name(study)}: baseline {baseline!r} has no runs among the tabulated ones "
            f"(have: {', '.join(map(str, per_seed))})"
        )


def _delta_p(
    method: Mapping[int, Nested], baseline: Mapping[int, Nested], directions: Directions, seed: int, what: str
) -> stats.CellStats:
    """:func:`stats.delta_p_distribution`, its ValueError turned into a DataError saying where."""
    try:
        return stats.delta_p_distribution(method, baseline, directions, seed)
    except ValueError as err:
        raise DataError(f"{what}: {err}") from None


def _common_attrs(
    kind: str,
    runs: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    split: str,
    footer: str,
    notes: Sequence[str | None],
) -> dict[str, Any]:
    """The ``attrs`` every table carries for its renderers."""
    info = dataset_info(runs)
    return {
        "kind": kind,
        "name": str(study.get("name", "")),
        "title": str(study.get("title") or study.get("name") or kind),
        "paper": str(study.get("paper", "")),
        "reproduces": str(study.get("reproduces", "")),
        "dataset": info.name,
        "stand_in": info.stand_in,
        "split": split,
        "baseline": str(study.get("baseline", "ew")),
        "labels": _labels(study),
        "footer": footer,
        "notes": [note for note in notes if note],
    }


def _constant_columns(frame: pd.DataFrame, split: str, selection: str, stand_in: str | None) -> None:
    """The context every CSV row carries: split, selection rule, stand-in label (empty when real data)."""
    frame["split"] = split
    frame["selection"] = selection
    frame["stand_in"] = stand_in if stand_in is not None else ""


# --------------------------------------------------------------------------- method table


def method_table(runs: Sequence[Mapping[str, Any]], study: Mapping[str, Any], split: str = "test") -> pd.DataFrame:
    """RW Tables 1/3/6/7/8: per method, every task metric and Δp over seeds, tested against the baseline.

    One row per method (index ``method``; the baseline first, then the study's
    order). Columns: ``label``, ``group`` (:func:`method_group`), ``n_seeds``,
    ``seeds``; per metric key ``{task}_{metric}``: ``_mean``, ``_std``
    (``ddof=1``), ``_ci_low``/``_ci_high`` (seeded bootstrap 95% CI), ``_p`` (the
    test against the baseline) and ``_p_holm`` (Holm-adjusted over every
    method x metric test of this table; NaN on the baseline row and where no
    test could run); ``test`` (the test(s) of the row), ``delta_p_mean``,
    ``delta_p_std``, ``delta_p_ci_low``, ``delta_p_ci_high`` (percent),
    ``delta_p_ci_method``, ``marks`` (``"{key}:*;delta_p:†"``, as the
    ``best_marks`` column of the published CSVs), ``split``, ``selection``,
    ``stand_in``. Values are each run's ``final[split]`` (its selected epoch).
    """
    info = dataset_info(runs)
    _single_noise(runs)
    check_one_run_per_seed(runs)
    baseline = str(study.get("baseline", "ew"))
    boot = _bootstrap_seed(study)
    columns = metric_columns(info.directions)
    per_seed = _per_seed(runs, split, lambda run: run["run"]["method"])
    _require_baseline(per_seed, baseline, study)
    methods = _ordered(methods_in_order(runs), study.get("methods"), first=baseline)
    overrides = study.get("groups") or {}
    first_run = _first_runs(runs)
    labels = _labels(study)
    base = per_seed[baseline]
    base_seeds = list(base)

    rows: list[dict[str, Any]] = []
    comparisons: list[stats.Comparison] = []
    p_cells: list[tuple[int, str]] = []
    p_values: list[float] = []
    for i, method in enumerate(methods):
        seeds = list(per_seed[method])
        row: dict[str, Any] = {
            "method": method,
            "label": labels.get(method, method),
            "group": method_group(first_run[method], baseline, overrides),
            "n_seeds": len(seeds),
            "seeds": " ".join(map(str, seeds)),
        }
        tests: list[str] = []
        for column in columns:
            values = [per_seed[method][s][column.task][column.metric] for s in seeds]
            where = f"study {_study_name(study)}, method {method!r}, {column.key}"
            try:
                cell = stats.summarise(values, stats.cell_seed(boot, KIND_METHOD, split, method, column.key))
                comparison = None
                if method != baseline:
                    reference = [base[s][column.task][column.metric] for s in base_seeds]
                    comparison = stats.compare(values, reference, seeds, base_seeds)
            except ValueError as err:
                raise DataError(f"{where}: {err}") from None
            for field in STAT_FIELDS:
                row[f"{column.key}_{field}"] = getattr(cell, field)
            p = math.nan
            if comparison is not None:
                comparisons.append(comparison)
                tests.append(comparison.test)
                p = comparison.p_value
                p_cells.append((i, column.key))
                p_values.append(p)
            row[f"{column.key}_p"] = p
            row[f"{column.key}_p_holm"] = math.nan
        row["test"] = " / ".join(dict.fromkeys(tests))
        delta = _delta_p(
            per_seed[method],
            base,
            info.directions,
            stats.cell_seed(boot, KIND_METHOD, split, method, DELTA_P),
            f"study {_study_name(study)}, method {method!r}",
        )
        for field in STAT_FIELDS:
            row[f"{DELTA_P}_{field}"] = getattr(delta, field)
        row[f"{DELTA_P}_ci_method"] = delta.ci_method
        rows.append(row)

    for (i, key), adjusted in zip(p_cells, stats.holm(p_values) if p_values else [], strict=True):
        rows[i][f"{key}_p_holm"] = float(adjusted)
    table = pd.DataFrame(rows).set_index("method")
    table["marks"] = _marks(table, columns)
    selection = _selection_rule(runs)
    _constant_columns(table, split, selection, info.stand_in)

    counts = [len(per_seed[m]) for m in methods]
    footer = stats.footer(
        counts[0] if len(set(counts)) == 1 else counts,
        selection,
        stats.tests_used(comparisons) if comparisons else stats.TEST_NA,
        baseline=labels.get(baseline, baseline),
    )
    table.attrs.update(
        _common_attrs(
            KIND_METHOD,
            runs,
            study,
            split,
            footer,
            [_missing_seeds_note(study, {m: list(per_seed[m]) for m in methods})],
        )
    )
    table.attrs["columns"] = [
        {"key": c.key, "task": c.task, "metric": c.metric, "direction": c.direction} for c in columns
    ]
    return table


def best_marks(table: pd.DataFrame, keys: Sequence[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Method -> [(column key, mark)]: the best mean of each group per column (ties all marked).

    ``keys`` lists (column key, direction); the table needs ``group`` and
    ``{key}_mean`` columns. Only the ``loss`` (``*``) and ``gradient`` (``†``)
    groups are marked; NaN means never win.
    """
    marks: dict[str, list[tuple[str, str]]] = {str(method): [] for method in table.index}
    for key, direction in keys:
        for group, mark in MARKS.items():
            means = table.loc[table["group"] == group, f"{key}_mean"].dropna()
            if means.empty:
                continue
            best = means.max() if direction == HIGHER else means.min()
            for method in means.index[means == best]:
                marks[str(method)].append((key, mark))
    return marks


def _marks(table: pd.DataFrame, columns: Sequence[MetricColumn]) -> list[str]:
    """The ``marks`` column: ``key:mark`` pairs per method, in column order."""
    keys = [(c.key, c.direction) for c in columns] + [(DELTA_P, HIGHER)]
    marks = best_marks(table, keys)
    return [";".join(f"{key}:{mark}" for key, mark in marks[str(method)]) for method in table.index]


def parse_marks(text: Any) -> dict[str, str]:
    """``"a:*;b:†"`` -> ``{"a": "*", "b": "†"}`` (the ``marks`` / published ``best_marks`` format)."""
    if not isinstance(text, str) or not text.strip():
        return {}
    return dict(item.rsplit(":", 1) for item in text.split(";") if item)


# --------------------------------------------------------------------------- grids


def _delta_rows(
    per_seed: Mapping[Hashable, Mapping[int, Nested]],
    cells: Sequence[Hashable],
    reference: Hashable,
    directions: Directions,
    study: Mapping[str, Any],
    kind: str,
    split: str,
) -> list[dict[str, Any]]:
    """Δp statistics (and seeds) of each grid cell against the ``reference`` cell."""
    boot = _bootstrap_seed(study)
    rows = []
    for cell in cells:
        labels = cell if isinstance(cell, tuple) else (cell,)
        delta = _delta_p(
            per_seed[cell],
            per_seed[reference],
            directions,
            stats.cell_seed(boot, kind, split, *labels),
            f"study {_study_name(study)}, cell {cell!r}",
        )
        row: dict[str, Any] = {"n_seeds": delta.n, "seeds": " ".join(map(str, per_seed[cell]))}
        for field in STAT_FIELDS:
            row[f"{DELTA_P}_{field}"] = getattr(delta, field)
        row[f"{DELTA_P}_ci_method"] = delta.ci_method
        rows.append(row)
    return rows


def _best_within(frame: pd.DataFrame, by: str) -> pd.Series:
    """True on the highest Δp mean within each ``by`` group (ties all True)."""
    best = frame.groupby(by, sort=False)[f"{DELTA_P}_mean"].transform("max")
    return (frame[f"{DELTA_P}_mean"] == best) & best.notna()


def _grid_footer(counts: Sequence[int], selection: str, reference: str) -> str:
    """:func:`stats.footer` for a Δp grid: no per-cell test, the CI is the inference."""
    text = stats.footer(
        counts[0] if len(set(counts)) == 1 else list(counts),
        selection,
        "none per cell: Δp with its bootstrap 95% CI over seeds (CI in the CSV)",
        correction=None,
        baseline=reference,
    )
    return text.replace(", uncorrected", "")


def combination_cell(run: Mapping[str, Any]) -> tuple[str, str]:
    """(gradient method, loss weighting) of a run in the combination grid.

    ``loss+grad`` -> (grad, loss); a gradient method alone -> (grad, ``EW``); a
    loss weighting alone -> (``Vanilla``, loss); ``ew`` -> (``Vanilla``, ``EW``).
    Entry names come from the run spec (:func:`method_stages`).
    """
    stages = method_stages(run)
    gradient = stages.gradient_entry if stages.gradient_entry is not None else VANILLA
    loss = EW if _plain_loss(stages) else str(stages.loss_entry)
    return gradient, loss


def combination_grid(runs: Sequence[Mapping[str, Any]], study: Mapping[str, Any], split: str = "test") -> pd.DataFrame:
    """RW Table 4: Δp of every (gradient method, loss weighting) cell against the study's baseline.

    One row per filled cell, in grid order (``Vanilla`` first, then gradient
    methods in the study's order; ``EW`` first, then loss weightings). Columns:
    ``gradient_method``, ``loss_method``, ``method`` (the run's expression),
    ``n_seeds``, ``seeds``, ``delta_p_mean``, ``delta_p_std``,
    ``delta_p_ci_low``, ``delta_p_ci_high``, ``delta_p_ci_method``, ``best``
    (highest Δp of its gradient-method row, bold in the paper), ``split``,
    ``selection``, ``stand_in``. Two methods falling in one cell (e.g. ``pcgrad``
    and ``ew+pcgrad``) are refused.
    """
    info = dataset_info(runs)
    _single_noise(runs)
    check_one_run_per_seed(runs)
    baseline = str(study.get("baseline", "ew"))
    per_seed = _per_seed(runs, split, lambda run: run["run"]["method"])
    _require_baseline(per_seed, baseline, study)
    methods = _ordered(methods_in_order(runs), study.get("methods"), first=baseline)
    first_run = _first_runs(runs)
    cell_of: dict[str, tuple[str, str]] = {}
    owner: dict[tuple[str, str], str] = {}
    for method in methods:
        cell = combination_cell(first_run[method])
        if cell in owner:
            raise DataError(
                f"{source(first_run[method])}: method {method!r} and {owner[cell]!r} both fill the "
                f"combination-grid cell {cell}"
            )
        owner[cell] = method
        cell_of[method] = cell
    rows_order = _ordered([c[0] for c in cell_of.values()], None, first=VANILLA)
    columns_order = _ordered([c[1] for c in cell_of.values()], None, first=EW)
    ordered = sorted(methods, key=lambda m: (rows_order.index(cell_of[m][0]), columns_order.index(cell_of[m][1])))
    stats_rows = _delta_rows(per_seed, ordered, baseline, info.directions, study, KIND_COMBINATION, split)
    frame = pd.DataFrame(
        [
            {"gradient_method": cell_of[m][0], "loss_method": cell_of[m][1], "method": m, **row}
            for m, row in zip(ordered, stats_rows, strict=True)
        ]
    )
    frame["best"] = _best_within(frame, "gradient_method")
    selection = _selection_rule(runs)
    _constant_columns(frame, split, selection, info.stand_in)
    labels = _labels(study)
    frame.attrs.update(
        _common_attrs(
            KIND_COMBINATION,
            runs,
            study,
            split,
            _grid_footer(list(frame["n_seeds"]), selection, labels.get(baseline, baseline)),
            [_missing_seeds_note(study, {m: list(per_seed[m]) for m in ordered})],
        )
    )
    frame.attrs.update(row_key="gradient_method", column_key="loss_method", rows=rows_order, columns=columns_order)
    return frame


def architecture_grid(runs: Sequence[Mapping[str, Any]], study: Mapping[str, Any], split: str = "test") -> pd.DataFrame:
    """RW Table 5: Δp of every (method, architecture) against the baseline method on ``study["baseline_arch"]``.

    One row per filled cell (methods in the study's order, the baseline first;
    architectures with the baseline one first). Columns: ``method``, ``arch``,
    ``n_seeds``, ``seeds``, ``delta_p_mean``, ``delta_p_std``,
    ``delta_p_ci_low``, ``delta_p_ci_high``, ``delta_p_ci_method``, ``best``
    (highest Δp of its architecture column, bold in the paper), ``split``,
    ``selection``, ``stand_in``.
    """
    info = dataset_info(runs)
    _single_noise(runs)
    baseline = str(study.get("baseline", "ew"))
    baseline_arch = str(study.get("baseline_arch", "hps"))
    per_seed = _per_seed(runs, split, lambda run: (run["run"]["method"], run["run"]["arch"]))
    _require_baseline(per_seed, (baseline, baseline_arch), study)
    methods = _ordered(methods_in_order(runs), study.get("methods"), first=baseline)
    archs = _ordered(list(dict.fromkeys(run["run"]["arch"] for run in runs)), study.get("archs"), first=baseline_arch)
    cells = [(m, a) for m in methods for a in archs if (m, a) in per_seed]
    stats_rows = _delta_rows(
        per_seed, cells, (baseline, baseline_arch), info.directions, study, KIND_ARCHITECTURE, split
    )
    frame = pd.DataFrame([{"method": m, "arch": a, **row} for (m, a), row in zip(cells, stats_rows, strict=True)])
    frame["best"] = _best_within(frame, "arch")
    selection = _selection_rule(runs)
    _constant_columns(frame, split, selection, info.stand_in)
    labels = _labels(study)
    reference = f"{labels.get(baseline, baseline)} on {labels.get(baseline_arch, baseline_arch)}"
    frame.attrs.update(
        _common_attrs(
            KIND_ARCHITECTURE,
            runs,
            study,
            split,
            _grid_footer(list(frame["n_seeds"]), selection, reference),
            [_missing_seeds_note(study, {f"{m} on {a}": list(per_seed[(m, a)]) for m, a in cells})],
        )
    )
    frame.attrs.update(row_key="method", column_key="arch", rows=methods, columns=archs, baseline_arch=baseline_arch)
    return frame


# --------------------------------------------------------------------------- published twin


@dataclass(frozen=True)
class Cell:
    """One reproduced number of a table: its (row, column) names, mean and CI."""

    row: str
    column: str
    mean: float
    ci_low: float
    ci_high: float
    n_seeds: int


def reproduced_cells(table: pd.DataFrame) -> list[Cell]:
    """The numbers of any table of this module as (row, column) cells.

    Method table: row = method, column = metric key (``{task}_{metric}``) or
    ``delta_p``. Combination grid: row = gradient method, column = loss
    weighting. Architecture grid: row = method, column = architecture.
    """
    kind = table.attrs.get("kind")
    if kind == KIND_METHOD:
        keys = [c["key"] for c in table.attrs["columns"]] + [DELTA_P]
        return [
            Cell(
                str(method),
                key,
                float(row[f"{key}_mean"]),
                float(row[f"{key}_ci_low"]),
                float(row[f"{key}_ci_high"]),
                int(row["n_seeds"]),
            )
            for method, row in table.iterrows()
            for key in keys
        ]
    if kind in (KIND_COMBINATION, KIND_ARCHITECTURE):
        row_key, column_key = table.attrs["row_key"], table.attrs["column_key"]
        return [
            Cell(
                str(row[row_key]),
                str(row[column_key]),
                float(row[f"{DELTA_P}_mean"]),
                float(row[f"{DELTA_P}_ci_low"]),
                float(row[f"{DELTA_P}_ci_high"]),
                int(row["n_seeds"]),
            )
            for _, row in table.iterrows()
        ]
    raise ValueError(f"not a table of mtlrepro.report.paper_tables (attrs kind {kind!r})")


def published_wide(reference: pd.DataFrame, kind: str) -> pd.DataFrame:
    """A published CSV of ``shared/reference`` (as read by pandas) in the wide form :func:`twin` takes.

    Method tables (``method, group, <metrics...>, delta_p, best_marks``) ->
    index method, one column per number; Table 4 (``gradient_method,
    loss_method, delta_p``) and Table 5 (``method, architecture, delta_p``) ->
    pivoted to rows x columns of Δp.
    """
    if kind == KIND_METHOD:
        wide = reference.set_index("method").drop(columns=["group", "best_marks"], errors="ignore")
        return wide.apply(pd.to_numeric, errors="coerce")
    if kind == KIND_COMBINATION:
        return reference.pivot(index="gradient_method", columns="loss_method", values=DELTA_P)
    if kind == KIND_ARCHITECTURE:
        return reference.pivot(index="method", columns="architecture", values=DELTA_P)
    raise ValueError(f"unknown table kind {kind!r}")


def _normalise(name: str) -> str:
    """Name used to match reproduced and published names: lower case, only letters, digits and dots."""
    return re.sub(r"[^0-9a-z.]", "", str(name).lower())


def _matcher(published: Sequence[Any], explicit: Mapping[str, str] | None) -> Callable[[str], Any | None]:
    """A function mapping a reproduced name to a published one (explicit map first, else normalised name)."""
    by_norm: dict[str, Any] = {}
    for name in published:
        by_norm.setdefault(_normalise(name), name)
    exact = set(published)

    def match(name: str) -> Any | None:
        """The published name for reproduced ``name``, or None."""
        if explicit and name in explicit:
            target = explicit[name]
            return target if target in exact else None
        return by_norm.get(_normalise(name))

    return match


def twin(
    reproduced: pd.DataFrame,
    published: pd.DataFrame,
    rows: Mapping[str, str] | None = None,
    columns: Mapping[str, str] | None = None,
    tolerance: float = 0.0,
) -> pd.DataFrame:
    """The published-vs-reproduced twin of a table of this module.

    ``published`` is wide (index = published row names, columns = published
    column names; :func:`published_wide` makes it from a reference CSV). Each
    reproduced cell (:func:`reproduced_cells`) is matched by name: through
    ``rows`` / ``columns`` (reproduced name -> published name) where given,
    otherwise case- and punctuation-insensitively (``imtl_l`` = ``IMTL-L``).
    ``tolerance`` widens the CI on both sides when testing membership (e.g.
    0.005 for numbers printed with two decimals).

    Columns: ``row``, ``column`` (reproduced names), ``published_row``,
    ``published_column`` (matched names, empty when none), ``published``,
    ``reproduced_mean``, ``ci_low``, ``ci_high``, ``difference`` (reproduced
    minus published), ``published_in_ci`` (nullable boolean: NA, a blank CSV
    cell, when there is no published value or no CI), ``n_seeds``.
    """
    cells = reproduced_cells(reproduced)
    match_row = _matcher(list(published.index), rows)
    match_column = _matcher(list(published.columns), columns)
    records = []
    for cell in cells:
        prow, pcol = match_row(cell.row), match_column(cell.column)
        value = math.nan
        if prow is not None and pcol is not None:
            raw = published.loc[prow, pcol]
            value = float(raw) if pd.notna(raw) else math.nan
        in_ci: Any = pd.NA
        if not math.isnan(value) and not math.isnan(cell.ci_low):
            in_ci = cell.ci_low - tolerance <= value <= cell.ci_high + tolerance
        records.append(
            {
                "row": cell.row,
                "column": cell.column,
                "published_row": "" if prow is None else str(prow),
                "published_column": "" if pcol is None else str(pcol),
                "published": value,
                "reproduced_mean": cell.mean,
                "ci_low": cell.ci_low,
                "ci_high": cell.ci_high,
                "difference": cell.mean - value,
                "published_in_ci": in_ci,
                "n_seeds": cell.n_seeds,
            }
        )
    frame = pd.DataFrame(records)
    frame["published_in_ci"] = frame["published_in_ci"].astype("boolean")
    frame.attrs.update({k: v for k, v in reproduced.attrs.items() if k not in ("rows", "columns")})
    frame.attrs.update(kind=KIND_TWIN, twin_of=reproduced.attrs.get("kind"), tolerance=tolerance)
    return frame


# --------------------------------------------------------------------------- rendering


def _decimals(values: Sequence[float]) -> int:
    """2 decimals for numbers of magnitude >= 1 (accuracies, angles), 4 below (depth errors), as the paper."""
    finite = [abs(v) for v in values if not math.isnan(v)]
    return 4 if finite and max(finite) < 1 else 2


def _number(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` decimals, ``n/a`` when NaN."""
    return "n/a" if math.isnan(value) else f"{value:.{decimals}f}"


def _signed_percent(value: float) -> str:
    """``+1.23%`` (always signed), ``n/a`` when NaN."""
    return "n/a" if math.isnan(value) else f"{value:+.2f}%"


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {
    "±": r"$\pm$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "†": r"$^\dagger$",
    "Δ": r"$\Delta$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "×": r"$\times$",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and the table's symbols as math (±, ↑, ↓, †, Δ)."""
    out = "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    for symbol, latex in _LATEX_UNICODE.items():
        out = out.replace(symbol, latex)
    return out


@dataclass(frozen=True)
class _Rendered:
    """A table as display strings: headers, rows (Markdown and LaTeX variants) and text around it."""

    headers: list[str]
    rows: list[list[str]]
    latex_rows: list[list[str]]
    header_lines: list[str]
    footer_lines: list[str]


def _label(table: pd.DataFrame, name: str) -> str:
    """Display name of ``name`` (study ``labels``, else the name)."""
    return str(table.attrs.get("labels", {}).get(name, name))


def _header_lines(table: pd.DataFrame, twin_header: bool = False) -> list[str]:
    """Lines printed above a table (what it reproduces, dataset, split; the stand-in warning of a twin)."""
    attrs = table.attrs
    lines = []
    what = [f"dataset `{attrs.get('dataset')}`", f"{attrs.get('split')} split"]
    if attrs.get("reproduces"):
        what.insert(0, f"reproduces {attrs['reproduces']}")
    lines.append("; ".join(what))
    if twin_header and attrs.get("stand_in"):
        lines.append(
            f"The reproduction's data is a STAND-IN ({attrs['stand_in']}): the published numbers are on the "
            "paper's dataset, so differences and CI membership compare different data."
        )
    return lines


def _footer_lines(table: pd.DataFrame, extra: Sequence[str] = ()) -> list[str]:
    """Lines printed under a table: the statistics footer, legends, notes and the stand-in label."""
    attrs = table.attrs
    lines = [str(attrs.get("footer", "")), *extra, *attrs.get("notes", [])]
    if attrs.get("stand_in"):
        lines.append(f"Stand-in data: {attrs['stand_in']}")
    return [line for line in lines if line]


def _render_method(table: pd.DataFrame) -> _Rendered:
    """Display cells of a method table: ``mean ± std`` with marks, Δp as a signed percent."""
    columns = [MetricColumn(c["task"], c["metric"], c["direction"]) for c in table.attrs["columns"]]
    headers = ["Method"] + [f"{c.task} {c.metric} {c.arrow}" for c in columns] + ["Δp ↑"]
    decimals = {c.key: _decimals(list(table[f"{c.key}_mean"])) for c in columns}
    rows, latex_rows = [], []
    for _, row in table.iterrows():
        marks = parse_marks(row["marks"])
        cells, latex = [str(row["label"])], [latex_escape(str(row["label"]))]
        for c in columns:
            mean, std, d = float(row[f"{c.key}_mean"]), float(row[f"{c.key}_std"]), decimals[c.key]
            text = _number(mean, d) + ("" if math.isnan(std) or math.isnan(mean) else f" ± {_number(std, d)}")
            mark = marks.get(c.key, "")
            cells.append(text + (f" {mark}" if mark else ""))
            latex.append(latex_escape(text) + LATEX_MARKS.get(mark, ""))
        delta = _signed_percent(float(row[f"{DELTA_P}_mean"]))
        mark = marks.get(DELTA_P, "")
        cells.append(delta + (f" {mark}" if mark else ""))
        latex.append(latex_escape(delta) + LATEX_MARKS.get(mark, ""))
        rows.append(cells)
        latex_rows.append(latex)
    baseline = _label(table, table.attrs.get("baseline", "ew"))
    extra = [
        f"Cells: mean ± std over seeds; Δp: RW paper Sec. 5 relative improvement over {baseline} (percent). "
        "95% CIs and Holm-adjusted p-values are in the CSV.",
        f"Marks: {MARK_LEGEND}.",
    ]
    return _Rendered(headers, rows, latex_rows, _header_lines(table), _footer_lines(table, extra))


def _render_grid(table: pd.DataFrame) -> _Rendered:
    """Display cells of a Δp grid (rows x columns), best cells bold, ``–`` where not run."""
    row_key, column_key = table.attrs["row_key"], table.attrs["column_key"]
    row_names, column_names = table.attrs["rows"], table.attrs["columns"]
    corner = "Gradient \\ Loss" if table.attrs["kind"] == KIND_COMBINATION else "Method \\ Architecture"
    headers = [corner] + [_label(table, c) for c in column_names]
    lookup = {(str(r[row_key]), str(r[column_key])): r for _, r in table.iterrows()}
    rows, latex_rows = [], []
    for name in row_names:
        cells, latex = [_label(table, name)], [latex_escape(_label(table, name))]
        for column in column_names:
            record = lookup.get((name, column))
            if record is None:
                cells.append("–")
                latex.append("--")
                continue
            text = _signed_percent(float(record[f"{DELTA_P}_mean"]))
            bold = bool(record["best"])
            cells.append(f"**{text}**" if bold else text)
            latex.append(f"\\textbf{{{latex_escape(text)}}}" if bold else latex_escape(text))
        rows.append(cells)
        latex_rows.append(latex)
    best = "of each row" if table.attrs["kind"] == KIND_COMBINATION else "of each architecture"
    extra = [
        "Cells: Δp (RW paper Sec. 5, percent), mean over seeds; std and 95% CI in the CSV. "
        f"Bold: the best Δp {best}, as in the paper; – : not run."
    ]
    return _Rendered(headers, rows, latex_rows, _header_lines(table), _footer_lines(table, extra))


def _render_twin(table: pd.DataFrame) -> _Rendered:
    """Display cells of a published-vs-reproduced twin."""
    headers = ["Row", "Column", "Published", "Reproduced", "95% CI", "Difference", "Published in CI"]
    rows, latex_rows = [], []
    for _, r in table.iterrows():
        is_delta = r["column"] == DELTA_P or table.attrs.get("twin_of") in (KIND_COMBINATION, KIND_ARCHITECTURE)
        d = 2 if is_delta else _decimals([float(r["reproduced_mean"]), float(r["published"])])
        in_ci = r["published_in_ci"]
        column = str(r["column"])
        cells = [
            _label(table, str(r["row"])),
            "Δp" if column == DELTA_P else _label(table, column),
            _number(float(r["published"]), d),
            _number(float(r["reproduced_mean"]), d),
            f"[{_number(float(r['ci_low']), d)}, {_number(float(r['ci_high']), d)}]",
            "" if math.isnan(float(r["difference"])) else f"{float(r['difference']):+.{d}f}",
            "" if pd.isna(in_ci) else ("yes" if in_ci else "no"),
        ]
        rows.append(cells)
        latex_rows.append([latex_escape(c) for c in cells])
    tolerance = float(table.attrs.get("tolerance", 0.0))
    extra = [
        "Published: the paper's number; Reproduced: mean over seeds with its 95% bootstrap CI; "
        "Difference = reproduced − published; Published in CI blank where the paper has no such number"
        + (f" (CI widened by ±{tolerance:g} for rounding)." if tolerance else ".")
    ]
    return _Rendered(headers, rows, latex_rows, _header_lines(table, twin_header=True), _footer_lines(table, extra))


def _render(table: pd.DataFrame) -> _Rendered:
    """Display form of any table of this module, by its ``attrs['kind']``."""
    kind = table.attrs.get("kind")
    if kind == KIND_METHOD:
        return _render_method(table)
    if kind in (KIND_COMBINATION, KIND_ARCHITECTURE):
        return _render_grid(table)
    if kind == KIND_TWIN:
        return _render_twin(table)
    raise ValueError(f"not a table of mtlrepro.report.paper_tables (attrs kind {kind!r})")


def _title(table: pd.DataFrame) -> str:
    """The table's title (a twin's says 'published vs reproduced')."""
    title = str(table.attrs.get("title", ""))
    if table.attrs.get("kind") == KIND_TWIN:
        title += " — published vs reproduced"
    return title


def render_markdown(table: pd.DataFrame) -> str:
    """Markdown of any table of this module: title, context line, table, footer, stand-in label."""
    rendered = _render(table)
    body = tabulate(
        rendered.rows,
        headers=rendered.headers,
        tablefmt="pipe",
        disable_numparse=True,
        colalign=["left"] + ["right"] * (len(rendered.headers) - 1),
    )
    lines = [f"# {_title(table)}", ""]
    for line in rendered.header_lines:
        lines += [f"**{line}**" if "STAND-IN" in line else line, ""]
    lines += [body, ""]
    for line in rendered.footer_lines:
        lines += [f"**{line}**" if line.startswith("Stand-in data") else line, ""]
    return "\n".join(lines)


def render_latex(table: pd.DataFrame) -> str:
    """LaTeX of any table of this module: a ``tabular`` (booktabs rules, :meth:`DataFrame.to_latex`) and its notes."""
    rendered = _render(table)
    display = pd.DataFrame(rendered.latex_rows, columns=[latex_escape(h) for h in rendered.headers])
    tabular = display.to_latex(index=False, escape=False, column_format="l" + "r" * (len(rendered.headers) - 1))
    lines = [
        "% " + _title(table),
        "% requires \\usepackage{booktabs}",
        "\\begin{center}",
        f"\\textbf{{{latex_escape(_title(table))}}}\\\\[2pt]",
        *[f"{{\\small {latex_escape(line).replace('`', '')}}}\\\\" for line in rendered.header_lines],
        tabular.rstrip("\n"),
        "\\end{center}",
        *[f"{{\\footnotesize {latex_escape(line)}}}\\par" for line in rendered.footer_lines],
        "",
    ]
    return "\n".join(lines)


def write_paper_table(
    table: pd.DataFrame,
    out_csv: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
    out_tex: str | os.PathLike[str],
) -> None:
    """Write any table of this module as CSV (the numbers), Markdown and LaTeX, each atomically.

    NaN (and a twin's NA ``published_in_ci``) are empty CSV cells.
    """
    write_text_atomic(out_csv, table.to_csv(index=table.attrs.get("kind") == KIND_METHOD))
    write_text_atomic(out_md, render_markdown(table))
    write_text_atomic(out_tex, render_latex(table))
