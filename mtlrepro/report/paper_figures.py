"""Figures in the shape of the papers' figures, each returning the exact data it draws.

Five figure kinds, one function each, all called as ``f(runs, study, out_png, out_pdf)``:

- :func:`learning_curves` -- RW Figure 3, ExcessMTL (EM) Figure 3 right: a validation and/or test metric
  per epoch, one panel per task (and split), one line per method;
- :func:`weight_trajectories` -- EM Figure 3 left: the mean task weight per epoch, one panel per method;
- :func:`noise_sweep` -- EM Figures 6-9: overall performance, clean-task performance and the summed
  weight on the clean tasks against the noise level of the noisy task(s), one line per method;
- :func:`loss_profile` -- EM Figure 4: final training loss of task 1 against task 2, a point per method
  and noise setting, single-task runs (method ``stl-<task>``) as dashed lines;
- :func:`excess_risk_vs_truth` -- EM Figure 2: the method's per-epoch excess-risk estimate against the
  paper's ground-truth proxy, current minus converged training loss (EM Sec. 4.3, "Excess risk estimation").

``runs`` are run records as from :func:`mtlrepro.report.runs.load_runs` (format ``mtlrepro.run/2``);
``study`` is the study's plain-JSON description: ``name``, ``title``, ``paper``, ``reproduces``,
``baseline`` (default ``"ew"``), ``seeds`` and the optional keys below. Each function writes the
figure as PNG and PDF atomically and returns the plotted series as a tidy :class:`pandas.DataFrame`
(columns documented per function; ``x``/``y`` are what is drawn, ``low``/``high`` the band), so a
test can check what is plotted rather than only that a file exists.

Every point or line is the mean over seeds of a per-run value. Its band is ±1 sample standard
deviation (``ddof=1``; none for one seed) or, with ``band: ci``, a seeded percentile-bootstrap
confidence interval of the mean (:func:`scipy.stats.bootstrap`). Every figure prints the study's
title and the paper figure it reproduces, the stand-in label when the data is a stand-in, the number
of seeds, the band, and the epoch selection rule where selected-epoch values are drawn.

Study keys shared by all kinds:

``band``
    ``"std"`` (default) or ``"ci"``.
``ci_level``, ``bootstrap_resamples``, ``bootstrap_seed``
    Confidence level (default 0.95), resamples (default 9999) and seed (default 0) of ``band: ci``;
    every band draws from a fresh generator with this seed, so a band does not depend on the others.
``at_noise``
    Keep only the runs of one noise setting: a noise label (``"clean"``, ``"BR0.8"``) or a noise
    level (``0`` = clean). Used by the figures that draw one noise setting (curves, weights, excess risk).

Weights (``weights`` key: ``"loss"``, ``"grad"`` or ``"auto"``, the default): ``auto`` takes the
loss weights of a method with a loss-weighting stage (``spec.method.loss`` set) and the gradient
weights otherwise. Methods declare different weight scales (simplex, sum to T, free), so weights are
divided by their sum over tasks before averaging (``normalise_weights: false`` keeps the raw values);
the EM paper's weights are normalised the same way (its uniform scalarization puts 0.75 on three of
four tasks, EM Figure 7).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mtlrepro.errors import ConfigError, DataError
from mtlrepro.metrics import HIGHER
from mtlrepro.report import stats as report_stats
from mtlrepro.report.figures import PNG_DPI, save_figure_atomic
from mtlrepro.report.runs import (
    DatasetInfo,
    check_one_run_per_seed,
    curves_frame,
    dataset_info,
    methods_in_order,
    source,
)

BAND_ALPHA = 0.2
EXCESS_RISK_KEY = "excess_mtl.excess_risk"
"""Diagnostic recorded per epoch by ExcessMTL (:mod:`mtlrepro.weighting.excess_mtl`): estimated excess risk."""
STL_PREFIX = "stl-"
"""A method named ``stl-<task>`` trains only ``<task>``: a single-task run."""
SWEEP_PANELS = ("overall", "clean", "clean_weight")
STAT_COLUMNS = ["y", "std", "low", "high", "n"]
MARKERS = ("o", "^", "s", "D", "v", "P", "X")
NOTE_FONT = 7.0
TITLE_FONT = 11.0
LINE_INCHES = NOTE_FONT * 1.35 / 72.0


# --------------------------------------------------------------------------- study options


@dataclass(frozen=True)
class Band:
    """How the band around a mean over seeds is drawn: ±1 std or a seeded bootstrap CI."""

    kind: str = "std"
    level: float = 0.95
    resamples: int = 9999
    seed: int = 0

    def describe(self) -> str:
        """One line for the figure's caption."""
        if self.kind == "std":
            return "band: ±1 std over seeds (ddof=1)"
        return (
            f"band: {self.level:.0%} percentile-bootstrap CI of the mean over seeds "
            f"(scipy.stats.bootstrap, {self.resamples} resamples, seed {self.seed})"
        )

    def interval(self, values: np.ndarray) -> tuple[float, float, float, float]:
        """``(mean, std, low, high)`` of ``values``; std and band are NaN for fewer than two values."""
        mean = float(np.mean(values))
        if len(values) < 2:
            return mean, math.nan, math.nan, math.nan
        std = float(np.std(values, ddof=1))
        if self.kind == "std":
            return mean, std, mean - std, mean + std
        cell = report_stats.summarise(values, self.seed, self.resamples, self.level)
        return mean, std, cell.ci_low, cell.ci_high


def _where(study: Mapping[str, Any], key: str) -> str:
    """The config key ``studies.<name>.<key>`` for messages."""
    return f"studies.{study.get('name', '<study>')}.{key}"


def _choice(study: Mapping[str, Any], key: str, default: str, allowed: Sequence[str]) -> str:
    """The study's ``key`` (``default`` when absent); ConfigError naming the key when not in ``allowed``."""
    value = study.get(key, default)
    if value not in allowed:
        raise ConfigError(f"{_where(study, key)}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return str(value)


def study_band(study: Mapping[str, Any]) -> Band:
    """The band a study asks for (keys ``band``, ``ci_level``, ``bootstrap_resamples``, ``bootstrap_seed``)."""
    kind = _choice(study, "band", "std", ("std", "ci"))
    level = study.get("ci_level", 0.95)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ConfigError(f"{_where(study, 'ci_level')}: must be a number in (0, 1), got {level!r}")
    resamples = study.get("bootstrap_resamples", 9999)
    seed = study.get("bootstrap_seed", 0)
    for key, value, least in (("bootstrap_resamples", resamples, 1), ("bootstrap_seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{_where(study, key)}: must be an integer >= {least}, got {value!r}")
    return Band(kind=kind, level=float(level), resamples=resamples, seed=seed)


# --------------------------------------------------------------------------- run helpers


def _spec_key(run: Mapping[str, Any], *keys: str) -> Any:
    """``run["spec"][k1][k2]...``; DataError naming the file and key when absent."""
    value: Any = run.get("spec")
    path = "spec"
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            raise DataError(f"{source(run)}: missing key '{path}.{key}'")
        value = value[key]
        path += f".{key}"
    return value


def noise_level(run: Mapping[str, Any]) -> float:
    """The noise level of a run's noisy task(s), from ``spec.noise``: 0.0 when clean.

    Raises DataError when the noisy tasks have different levels (a sweep has one x per run).
    """
    noise = _spec_key(run, "noise")
    if not isinstance(noise, Mapping):
        raise DataError(f"{source(run)}: 'spec.noise' must map tasks to noise levels, got {noise!r}")
    levels = {float(rate) for rate in noise.values() if float(rate) != 0.0}
    if len(levels) > 1:
        raise DataError(
            f"{source(run)}: 'spec.noise' gives the noisy tasks different levels {dict(noise)}; "
            "a noise sweep needs one level per run"
        )
    return levels.pop() if levels else 0.0


def noisy_tasks(run: Mapping[str, Any]) -> list[str]:
    """Tasks with a non-zero noise level in ``spec.noise``."""
    return [task for task, rate in _spec_key(run, "noise").items() if float(rate) != 0.0]


def _filter_noise(runs: Sequence[Mapping[str, Any]], study: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The runs of the study's ``at_noise`` setting (a label or a level), or all runs without the key."""
    if "at_noise" not in study:
        return list(runs)
    wanted = study["at_noise"]
    if isinstance(wanted, str):
        kept = [run for run in runs if run["run"]["noise"] == wanted]
    elif isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        kept = [run for run in runs if math.isclose(noise_level(run), float(wanted))]
    else:
        raise ConfigError(f"{_where(study, 'at_noise')}: must be a noise label or a level, got {wanted!r}")
    if not kept:
        labels = ", ".join(dict.fromkeys(run["run"]["noise"] for run in runs))
        raise DataError(f"{_where(study, 'at_noise')}: no run has noise {wanted!r} (runs have: {labels})")
    return kept


def weight_kind(run: Mapping[str, Any], choice: str) -> str:
    """``"loss"`` or ``"grad"``: which recorded weights stand for the run's method under ``choice``."""
    if choice != "auto":
        return choice
    return "loss" if _spec_key(run, "method", "loss") is not None else "grad"


def epoch_weights(run: Mapping[str, Any], index: int, kind: str, normalise: bool) -> dict[str, float]:
    """Task -> weight of ``run["epochs"][index]`` (``kind`` weights), divided by their sum if ``normalise``."""
    key = f"{kind}_weights"
    weights = run["epochs"][index].get(key)
    if not isinstance(weights, Mapping) or not weights:
        raise DataError(f"{source(run)}: 'epochs[{index}].{key}' is missing or null (method {run['run']['method']!r})")
    values = {task: float(value) for task, value in weights.items()}
    if not normalise:
        return values
    total = sum(values.values())
    if not math.isfinite(total) or total <= 0.0:
        raise DataError(f"{source(run)}: 'epochs[{index}].{key}' sum to {total}; cannot normalise them")
    return {task: value / total for task, value in values.items()}


def _epoch_index(run: Mapping[str, Any], which: str) -> int:
    """Index in ``run["epochs"]`` of the last epoch (``which="last"``) or of the selected one."""
    epochs = run["epochs"]
    if not epochs:
        raise DataError(f"{source(run)}: 'epochs' is empty")
    if which == "last":
        return len(epochs) - 1
    chosen = run["selection"]["epoch"]
    for i, epoch in enumerate(epochs):
        if epoch["epoch"] == chosen:
            return i
    raise DataError(f"{source(run)}: 'selection.epoch' {chosen!r} is not among the recorded epochs")


def _train_loss(run: Mapping[str, Any], index: int, task: str) -> float:
    """``run["epochs"][index]["train_loss"][task]``; DataError naming the file and key when absent."""
    losses = run["epochs"][index].get("train_loss")
    if not isinstance(losses, Mapping) or task not in losses:
        raise DataError(f"{source(run)}: missing key 'epochs[{index}].train_loss.{task}'")
    return float(losses[task])


def _first_metrics(info: DatasetInfo, study: Mapping[str, Any]) -> dict[str, str]:
    """Task -> the metric to draw: the study's ``metric`` (one name, or task -> name), else each task's first."""
    chosen = study.get("metric")
    if chosen is None:
        return {task: next(iter(metrics)) for task, metrics in info.directions.items()}
    if isinstance(chosen, str):
        picked = {task: chosen for task, metrics in info.directions.items() if chosen in metrics}
    elif isinstance(chosen, Mapping):
        picked = {}
        for task, metric in chosen.items():
            if metric not in info.directions.get(task, {}):
                raise ConfigError(f"{_where(study, 'metric')}: task {task!r} has no metric {metric!r}")
            picked[task] = str(metric)
    else:
        raise ConfigError(f"{_where(study, 'metric')}: must be a metric name or a task -> metric mapping")
    if not picked:
        raise DataError(f"{_where(study, 'metric')}: no task of dataset {info.name!r} reports metric {chosen!r}")
    return picked


# --------------------------------------------------------------------------- statistics


def _summarise(frame: pd.DataFrame, keys: list[str], band: Band) -> pd.DataFrame:
    """Per group of ``keys`` (in order of appearance): mean, std, band and count of the column ``value``."""
    rows = []
    for key, group in frame.groupby(keys, sort=False):
        values = group["value"].to_numpy(dtype="float64")
        rows.append((*key, *band.interval(values), len(values)))
    return pd.DataFrame(rows, columns=[*keys, *STAT_COLUMNS]).astype({"n": "int64"})


def _ordered(data: pd.DataFrame, orders: Mapping[str, Sequence[Any]], last: str) -> pd.DataFrame:
    """``data`` sorted by each column of ``orders`` in the given order of values, then by ``last``."""
    ranks = {column: {value: i for i, value in enumerate(order)} for column, order in orders.items()}

    def key(column: pd.Series) -> pd.Series:
        """Ranks for the ordered columns, the values themselves otherwise."""
        return column.map(ranks[column.name]) if column.name in ranks else column

    return data.sort_values([*orders, last], key=key, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- captions and drawing


def _seeds_note(runs: Sequence[Mapping[str, Any]], band: Band) -> str:
    """``Mean over 3 seeds (seeds: 0, 1, 2); band: ...``: how many seeds each point averages."""
    counts: dict[tuple[Any, ...], set[int]] = {}
    for run in runs:
        key = (run["run"]["method"], run["run"]["noise"], run["run"].get("arch"))
        counts.setdefault(key, set()).add(run["run"]["seed"])
    sizes = sorted({len(seeds) for seeds in counts.values()})
    every = ", ".join(map(str, sorted({seed for seeds in counts.values() for seed in seeds})))
    n = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
    plural = "" if sizes == [1] else "s"
    return f"Mean over {n} seed{plural} per point (seeds: {every}); {band.describe()}"


def _selection_note(runs: Sequence[Mapping[str, Any]]) -> str:
    """The runs' epoch selection rule(s), e.g. ``best_val (highest mean validation score over tasks)``."""
    rules = []
    for run in runs:
        selection = run["selection"]
        description = selection.get("description")
        rules.append(f"{selection['rule']} ({description})" if description else str(selection["rule"]))
    return "Selected epoch per run by " + "; ".join(dict.fromkeys(rules)) + " — never the test split"


def _title(study: Mapping[str, Any]) -> str:
    """The figure title: the study's title and the paper figure whose shape it reproduces."""
    title = str(study.get("title") or study.get("name") or "")
    reproduces = study.get("reproduces")
    return f"{title} (shape of {reproduces})" if reproduces else title


def _new_figure(n_rows: int, n_cols: int, width: float, height: float, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A bare Agg-backed figure with an ``n_rows`` x ``n_cols`` grid of axes (panel size in inches)."""
    fig = Figure(figsize=(width * n_cols, height * n_rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, **kwargs)
    return fig, axes


def _render(
    fig: Figure,
    study: Mapping[str, Any],
    info: DatasetInfo,
    notes: Sequence[str],
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
) -> None:
    """Title and stand-in label on top, caption notes below, then save PNG + PDF atomically."""
    width, height = fig.get_size_inches()
    chars = max(int(width * 15), 40)
    stand_in = None if info.stand_in is None else textwrap.fill(f"Stand-in data: {info.stand_in}", width=chars)
    caption = "\n".join(textwrap.fill(note, width=chars) for note in notes)
    title = textwrap.fill(_title(study), width=max(int(width * 11), 30))
    title_inches = TITLE_FONT * 1.4 / 72.0 * (title.count("\n") + 1)
    stand_in_inches = 0.0 if stand_in is None else (stand_in.count("\n") + 1) * LINE_INCHES
    top = 1.0 - (0.05 + title_inches + stand_in_inches + 0.1) / height
    bottom = ((caption.count("\n") + 1) * LINE_INCHES + 0.15) / height if caption else 0.0
    fig.tight_layout(rect=(0, bottom, 1, top))
    fig.suptitle(title, y=1.0 - 0.05 / height, va="top", fontsize=TITLE_FONT)
    if stand_in is not None:
        y = 1.0 - (0.05 + title_inches) / height
        fig.text(0.5, y, stand_in, ha="center", va="top", fontsize=NOTE_FONT, style="italic", color="firebrick")
    if caption:
        fig.text(0.01, 0.05 / height, caption, ha="left", va="bottom", fontsize=NOTE_FONT, color="0.25")
    save_figure_atomic(fig, out_png, "png", dpi=PNG_DPI)
    save_figure_atomic(fig, out_pdf, "pdf", metadata={"CreationDate": None})


def _draw_line(ax: Axes, line: pd.DataFrame, color: str, label: str, linestyle: str = "-", marker: str = "") -> None:
    """A mean line with its shaded band (where it has one)."""
    ax.plot(line["x"], line["y"], color=color, label=label, linewidth=1.5, linestyle=linestyle, marker=marker)
    if line["low"].notna().any():
        ax.fill_between(line["x"], line["low"], line["high"], color=color, alpha=BAND_ALPHA, linewidth=0)


def _colors(names: Sequence[str]) -> dict[str, str]:
    """A colour of the default cycle per name, in order."""
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _epoch_axis(ax: Axes) -> None:
    """Integer epoch ticks, label and grid."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _arrow(direction: str) -> str:
    """``↑`` for higher-is-better metrics, ``↓`` for lower."""
    return "↑" if direction == HIGHER else "↓"


# --------------------------------------------------------------------------- learning curves


def learning_curves(
    runs: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
) -> pd.DataFrame:
    """Per-epoch validation/test metric, one panel per task and split, one line per method (RW Fig. 3, EM Fig. 3).

    Study keys: ``split`` (``"val"``, ``"test"`` (default) or ``"both"``: one row of panels per split),
    ``metric`` (a metric name, or task -> metric; default each task's first), ``at_noise``, ``band``.
    Runs must hold one run per method and seed (after ``at_noise``).

    Returns columns ``split, panel (task), metric, series (method), x (epoch), y, std, low, high, n``.
    Raises DataError when a split has no per-epoch values of the chosen metric.
    """
    info = dataset_info(runs)
    band = study_band(study)
    split_choice = _choice(study, "split", "test", ("val", "test", "both"))
    splits = ["val", "test"] if split_choice == "both" else [split_choice]
    metrics = _first_metrics(info, study)
    runs = _filter_noise(runs, study)
    check_one_run_per_seed(runs)

    curves = curves_frame(runs)
    chosen = pd.DataFrame({"task": list(metrics), "metric": list(metrics.values())})
    curves = curves.merge(chosen, on=["task", "metric"])
    parts = []
    for split in splits:
        part = curves[curves["split"] == split]
        if part.empty:
            raise DataError(f"{source(runs[0])}: no per-epoch {split!r} values of {metrics} in the runs to plot")
        parts.append(_summarise(part, ["split", "task", "metric", "method", "epoch"], band))
    data = pd.concat(parts, ignore_index=True).rename(columns={"task": "panel", "method": "series", "epoch": "x"})
    methods = methods_in_order(runs)
    data = _ordered(data, {"split": splits, "panel": list(metrics), "series": methods}, "x")

    colors = _colors(methods)
    tasks = list(metrics)
    fig, axes = _new_figure(len(splits), len(tasks), 4.2, 3.4, sharex=True)
    for row, split in enumerate(splits):
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            for method in methods:
                line = data[(data["split"] == split) & (data["panel"] == task) & (data["series"] == method)]
                if not line.empty:
                    _draw_line(ax, line, colors[method], method)
            metric = metrics[task]
            ax.set_title(f"{task} — {split} {metric} {_arrow(info.directions[task][metric])}", fontsize=9)
            _epoch_axis(ax)
    axes[0][-1].legend(fontsize=7, loc="best")
    notes = [
        f"Dataset {info.name}; per-epoch {' and '.join(splits)} metric of every epoch (not only the selected one).",
        _seeds_note(runs, band),
        _selection_note(runs),
    ]
    _render(fig, study, info, notes, out_png, out_pdf)
    return data


# --------------------------------------------------------------------------- weight trajectories


def weight_trajectories(
    runs: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
) -> pd.DataFrame:
    """Mean task weight per epoch, one panel per method, one line per task (EM Figure 3 left).

    Study keys: ``weights`` (``loss``, ``grad`` or ``auto``), ``normalise_weights`` (default true),
    ``at_noise``, ``band``. Returns columns ``panel (method), weights ("loss"/"grad"), series (task),
    x (epoch), y, std, low, high, n``. Raises DataError naming the file and key when a run lacks the
    weights asked for.
    """
    info = dataset_info(runs)
    band = study_band(study)
    choice = _choice(study, "weights", "auto", ("loss", "grad", "auto"))
    normalise = bool(study.get("normalise_weights", True))
    runs = _filter_noise(runs, study)
    check_one_run_per_seed(runs)

    rows = []
    kinds: dict[str, str] = {}
    for run in runs:
        method = run["run"]["method"]
        kind = weight_kind(run, choice)
        if kinds.setdefault(method, kind) != kind:
            raise DataError(f"{source(run)}: method {method!r} records {kind} weights here but not in other runs")
        for i, epoch in enumerate(run["epochs"]):
            for task, value in epoch_weights(run, i, kind, normalise).items():
                rows.append((method, kind, task, epoch["epoch"], value))
    frame = pd.DataFrame(rows, columns=["method", "weights", "task", "epoch", "value"])
    data = _summarise(frame, ["method", "weights", "task", "epoch"], band)
    data = data.rename(columns={"method": "panel", "task": "series", "epoch": "x"})
    methods = methods_in_order(runs)
    tasks = list(info.directions)
    data = _ordered(data, {"panel": methods, "series": tasks}, "x")

    colors = _colors(tasks)
    fig, axes = _new_figure(1, len(methods), 3.6, 3.4, sharey=normalise)
    for ax, method in zip(axes[0], methods, strict=True):
        for task in tasks:
            line = data[(data["panel"] == method) & (data["series"] == task)]
            if not line.empty:
                _draw_line(ax, line, colors[task], task)
        ax.set_title(f"{method} ({kinds[method]} weights)", fontsize=9)
        _epoch_axis(ax)
    axes[0][0].set_ylabel("weight / sum of weights" if normalise else "weight")
    axes[0][-1].legend(fontsize=7, loc="best")
    scale = "divided by their sum over tasks at each epoch" if normalise else "as recorded (raw scale)"
    which = (
        "loss weights where the method has a loss-weighting stage, else gradient weights"
        if choice == "auto"
        else f"{choice} weights"
    )
    notes = [
        f"Dataset {info.name}; per-epoch mean of the per-step task weights, {scale}; {which}.",
        _seeds_note(runs, band),
    ]
    _render(fig, study, info, notes, out_png, out_pdf)
    return data


# --------------------------------------------------------------------------- noise sweep


def _sweep_tasks(runs: Sequence[Mapping[str, Any]], study: Mapping[str, Any], info: DatasetInfo) -> list[str]:
    """The noisy tasks: the study's ``noisy_tasks``, else every task noisy in some run."""
    declared = study.get("noisy_tasks")
    if declared is not None:
        if not isinstance(declared, list) or any(task not in info.directions for task in declared):
            raise ConfigError(
                f"{_where(study, 'noisy_tasks')}: must list tasks of {info.name!r} ({', '.join(info.directions)})"
            )
        return list(declared)
    found: dict[str, None] = {}
    for run in runs:
        found.update(dict.fromkeys(noisy_tasks(run)))
    return [task for task in info.directions if task in found]


def noise_sweep(
    runs: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
) -> pd.DataFrame:
    """Overall, clean-task performance and clean-task weight against noise level (EM Figures 6-9).

    x is the noise level of the noisy task(s) (``spec.noise``; clean = 0). Three panels, one line per
    method: ``overall`` = mean over all tasks of each task's metric (``metric`` key; default its first)
    at the selected epoch on ``split`` (default ``test``); ``clean`` = the same mean over the tasks
    with no noise; ``clean_weight`` = summed weight on the clean tasks at the last epoch
    (``weight_epoch: last|selected``), normalised weights by default (see the module docstring).
    Clean tasks are those not in ``noisy_tasks`` (default: tasks noisy in any run).

    Returns columns ``panel, series (method), x (noise level), y, std, low, high, n``. Raises
    DataError with fewer than two noise levels, without the ``baseline`` (uniform scalarization,
    default ``"ew"``), with two runs of one method, level and seed, when every task is noisy, or when
    the averaged metrics point different ways (higher vs lower is better).
    """
    info = dataset_info(runs)
    band = study_band(study)
    split = _choice(study, "split", "test", ("val", "test"))
    weight_epoch = _choice(study, "weight_epoch", "last", ("last", "selected"))
    choice = _choice(study, "weights", "auto", ("loss", "grad", "auto"))
    normalise = bool(study.get("normalise_weights", True))
    baseline = str(study.get("baseline", "ew"))
    metrics = _first_metrics(info, study)
    directions = {info.directions[task][metric] for task, metric in metrics.items()}
    if len(directions) > 1:
        raise DataError(
            f"{_where(study, 'metric')}: the averaged metrics {metrics} mix higher- and lower-is-better; "
            "choose metrics of one direction for the noise sweep"
        )
    noisy = _sweep_tasks(runs, study, info)
    clean = [task for task in metrics if task not in noisy]
    if not clean:
        raise DataError(f"{_where(study, 'noisy_tasks')}: every plotted task is noisy ({noisy}); no clean task left")

    levels = {noise_level(run): run for run in runs}
    if len(levels) < 2:
        ((level, run),) = levels.items()
        raise DataError(
            f"{source(run)}: a noise sweep needs at least two noise levels (key 'spec.noise' of its runs, "
            f"study key {_where(study, 'noise')!r}); all runs have level {level:g}"
        )
    methods = methods_in_order(runs)
    if baseline not in methods:
        raise DataError(
            f"{_where(study, 'baseline')}: uniform scalarization {baseline!r} must be in the noise sweep "
            f"(methods here: {', '.join(methods)})"
        )

    rows = []
    seen: dict[tuple[str, float, int], str] = {}
    for run in runs:
        method, seed, level = run["run"]["method"], run["run"]["seed"], noise_level(run)
        if (method, level, seed) in seen:
            raise DataError(
                f"{source(run)}: method {method!r} noise level {level:g} seed {seed} also comes from "
                f"{seen[(method, level, seed)]}"
            )
        seen[(method, level, seed)] = source(run)
        final = run["final"].get(split)
        if final is None:
            raise DataError(f"{source(run)}: missing 'final.{split}' metrics")
        scores = {task: float(final[task][metric]) for task, metric in metrics.items()}
        weights = epoch_weights(run, _epoch_index(run, weight_epoch), weight_kind(run, choice), normalise)
        missing = [task for task in clean if task not in weights]
        if missing:
            raise DataError(f"{source(run)}: the recorded weights lack task(s) {missing}")
        rows += [
            ("overall", method, level, float(np.mean(list(scores.values())))),
            ("clean", method, level, float(np.mean([scores[task] for task in clean]))),
            ("clean_weight", method, level, sum(weights[task] for task in clean)),
        ]
    frame = pd.DataFrame(rows, columns=["panel", "method", "level", "value"])
    frame = frame.sort_values(["level"], kind="stable")
    data = _summarise(frame, ["panel", "method", "level"], band).rename(columns={"method": "series", "level": "x"})
    data = _ordered(data, {"panel": SWEEP_PANELS, "series": methods}, "x")

    arrow = _arrow(directions.pop())
    metric_names = ", ".join(dict.fromkeys(metrics.values()))
    labels = {
        "overall": f"{split} {metric_names} {arrow}, mean over all tasks",
        "clean": f"{split} {metric_names} {arrow}, mean over clean tasks",
        "clean_weight": "summed weight on clean tasks" + (" (share)" if normalise else ""),
    }
    colors = _colors(methods)
    fig, axes = _new_figure(1, 3, 4.0, 3.4)
    for ax, panel in zip(axes[0], SWEEP_PANELS, strict=True):
        for method in methods:
            line = data[(data["panel"] == panel) & (data["series"] == method)]
            label = f"{method} (uniform scalarization)" if method == baseline else method
            style = ("--", "k") if method == baseline else ("-", colors[method])
            _draw_line(ax, line, style[1], label, linestyle=style[0], marker="o")
        ax.set_title(labels[panel], fontsize=9)
        ax.set_xlabel(f"noise level of {', '.join(noisy)}")
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    notes = [
        f"Dataset {info.name}; noisy task(s): {', '.join(noisy)}; clean task(s): {', '.join(clean)}; "
        f"performance at the selected epoch, weights at the {weight_epoch} epoch"
        + (", divided by their sum over tasks." if normalise else " (raw scale)."),
        _seeds_note(runs, band),
        _selection_note(runs),
    ]
    _render(fig, study, info, notes, out_png, out_pdf)
    return data


# --------------------------------------------------------------------------- loss profile


def _profile_tasks(study: Mapping[str, Any], info: DatasetInfo) -> tuple[str, str]:
    """The two tasks of the loss profile (study key ``tasks``; default the first two declared)."""
    tasks = study.get("tasks", list(info.directions)[:2])
    if not isinstance(tasks, list) or len(tasks) != 2 or any(task not in info.directions for task in tasks):
        raise ConfigError(f"{_where(study, 'tasks')}: must name two tasks of {info.name!r}, got {tasks!r}")
    return tasks[0], tasks[1]


def _keep_levels(runs: Sequence[Mapping[str, Any]], study: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Runs of the study's ``noise_levels`` (labels or levels), or all runs without the key."""
    wanted = study.get("noise_levels")
    if wanted is None:
        return list(runs)
    if not isinstance(wanted, list) or not wanted:
        raise ConfigError(f"{_where(study, 'noise_levels')}: must be a non-empty list of noise labels or levels")

    def keep(run: Mapping[str, Any]) -> bool:
        """Whether the run's noise label or level is one of ``wanted``."""
        for item in wanted:
            if isinstance(item, str) and run["run"]["noise"] == item:
                return True
            if isinstance(item, (int, float)) and not isinstance(item, str) and math.isclose(noise_level(run), item):
                return True
        return False

    kept = [run for run in runs if keep(run)]
    if not kept:
        raise DataError(f"{_where(study, 'noise_levels')}: no run has noise {wanted!r}")
    return kept


def loss_profile(
    runs: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
) -> pd.DataFrame:
    """Final training loss of task 1 (x) against task 2 (y): a point per method and noise setting (EM Figure 4).

    Each noise setting (label, e.g. ``clean`` and ``BR0.8``) gets its own marker; keep a subset with
    ``noise_levels`` (labels or levels). Study keys: ``tasks`` (two task names; default the first
    two), ``loss_epoch`` (``last``, the default, or ``selected``), ``band``. Single-task runs (method
    ``stl-<task>``) give a dashed vertical line at their task-1 loss or a horizontal one at their
    task-2 loss, per noise setting.

    Returns columns ``kind ("method"/"stl"), series (method), noise, level, x, y, x_std, y_std,
    x_low, x_high, y_low, y_high, n``; an ``stl`` row has NaN in the coordinate it does not fix.
    """
    info = dataset_info(runs)
    band = study_band(study)
    task_x, task_y = _profile_tasks(study, info)
    which = _choice(study, "loss_epoch", "last", ("last", "selected"))
    runs = _keep_levels(runs, study)

    points, lines = [], []
    seen: dict[tuple[str, str, int], str] = {}
    for run in runs:
        method, noise, seed = run["run"]["method"], run["run"]["noise"], run["run"]["seed"]
        if (method, noise, seed) in seen:
            raise DataError(
                f"{source(run)}: method {method!r} noise {noise} seed {seed} also in {seen[(method, noise, seed)]}"
            )
        seen[(method, noise, seed)] = source(run)
        index = _epoch_index(run, which)
        if method.startswith(STL_PREFIX):
            task = method[len(STL_PREFIX) :]
            if task not in info.directions:
                raise DataError(f"{source(run)}: single-task method {method!r} names no task of {info.name!r}")
            if task in (task_x, task_y):
                lines.append((method, noise, noise_level(run), task, _train_loss(run, index, task)))
        else:
            level = noise_level(run)
            points.append((method, noise, level, "x", _train_loss(run, index, task_x)))
            points.append((method, noise, level, "y", _train_loss(run, index, task_y)))
    if not points:
        raise DataError(f"{source(runs[0])}: the loss profile has no multi-task runs (every method is {STL_PREFIX}*)")

    columns = [
        "kind",
        "series",
        "noise",
        "level",
        "x",
        "y",
        "x_std",
        "y_std",
        "x_low",
        "x_high",
        "y_low",
        "y_high",
        "n",
    ]
    rows = []
    frame = pd.DataFrame(points, columns=["method", "noise", "level", "axis", "value"])
    for key, group in frame.groupby(["method", "noise", "level"], sort=False):
        x = band.interval(group.loc[group["axis"] == "x", "value"].to_numpy(dtype="float64"))
        y = band.interval(group.loc[group["axis"] == "y", "value"].to_numpy(dtype="float64"))
        rows.append(("method", *key, x[0], y[0], x[1], y[1], x[2], x[3], y[2], y[3], len(group) // 2))
    stl = pd.DataFrame(lines, columns=["method", "noise", "level", "task", "value"])
    for key, group in stl.groupby(["method", "noise", "level", "task"], sort=False):
        mean, std, low, high = band.interval(group["value"].to_numpy(dtype="float64"))
        nan = math.nan
        if key[3] == task_x:
            rows.append(("stl", *key[:3], mean, nan, std, nan, low, high, nan, nan, len(group)))
        else:
            rows.append(("stl", *key[:3], nan, mean, nan, std, nan, nan, low, high, len(group)))
    data = pd.DataFrame(rows, columns=columns).astype({"n": "int64"})
    data = data.sort_values(["kind", "level"], kind="stable").reset_index(drop=True)

    conditions = list(dict.fromkeys(data.sort_values("level", kind="stable")["noise"]))
    markers = {noise: MARKERS[i % len(MARKERS)] for i, noise in enumerate(conditions)}
    grays = {noise: str(0.15 + 0.5 * i / max(len(conditions) - 1, 1)) for i, noise in enumerate(conditions)}
    methods = [m for m in methods_in_order(runs) if not m.startswith(STL_PREFIX)]
    colors = _colors(methods)
    fig, axes = _new_figure(1, 1, 6.0, 5.0)
    ax = axes[0][0]
    for _, row in data[data["kind"] == "method"].iterrows():
        xerr = None if math.isnan(row["x_low"]) else [[row["x"] - row["x_low"]], [row["x_high"] - row["x"]]]
        yerr = None if math.isnan(row["y_low"]) else [[row["y"] - row["y_low"]], [row["y_high"] - row["y"]]]
        ax.errorbar(
            [row["x"]],
            [row["y"]],
            xerr=xerr,
            yerr=yerr,
            color=colors[row["series"]],
            marker=markers[row["noise"]],
            markersize=7,
            capsize=3,
            linestyle="none",
        )
    for _, row in data[data["kind"] == "stl"].iterrows():
        draw: Callable[..., Any] = ax.axvline if not math.isnan(row["x"]) else ax.axhline
        value = row["x"] if not math.isnan(row["x"]) else row["y"]
        draw(value, color=grays[row["noise"]], linestyle="--", linewidth=1.0)
    handles = [Line2D([], [], color=colors[m], marker="o", linestyle="none", label=m) for m in methods]
    handles += [
        Line2D([], [], color="0.4", marker=markers[n], linestyle="none", label=f"noise: {n}") for n in conditions
    ]
    if (data["kind"] == "stl").any():
        handles += [
            Line2D([], [], color=grays[n], linestyle="--", label=f"single task ({n})")
            for n in conditions
            if ((data["kind"] == "stl") & (data["noise"] == n)).any()
        ]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xlabel(f"training loss of {task_x}")
    ax.set_ylabel(f"training loss of {task_y}")
    ax.set_title("loss profile (lower left is better)", fontsize=9)
    ax.grid(True, alpha=0.3)
    notes = [
        f"Dataset {info.name}; mean training loss over the {'last' if which == 'last' else 'selected'} epoch's steps "
        f"(on the noisy training labels); dashed lines: single-task runs ({STL_PREFIX}<task>).",
        _seeds_note(runs, band),
    ]
    if which == "selected":
        notes.append(_selection_note(runs))
    _render(fig, study, info, notes, out_png, out_pdf)
    return data


# --------------------------------------------------------------------------- excess risk vs ground truth


def _excess_rows(run: Mapping[str, Any], key: str, tasks: Sequence[str]) -> tuple[list[tuple[Any, ...]], int]:
    """Per task and epoch: normalised estimate and proxy of one run; also the reference epoch."""
    epochs = run["epochs"]
    recorded = [i for i, epoch in enumerate(epochs) if key in (epoch.get("diagnostics") or {})]
    if not recorded:
        raise DataError(f"{source(run)}: no epoch records the diagnostic 'epochs[].diagnostics.{key}'")
    rows = []
    first = recorded[0]
    for task in tasks:
        losses = [_train_loss(run, i, task) for i in range(len(epochs))]
        converged = min(losses)
        estimates = {}
        for i in recorded:
            value = epochs[i]["diagnostics"][key]
            if not isinstance(value, Mapping) or task not in value:
                raise DataError(f"{source(run)}: missing key 'epochs[{i}].diagnostics.{key}.{task}'")
            estimates[i] = float(value[task])
        proxies = {i: losses[i] - converged for i in recorded}
        for name, series in (("estimate", estimates), ("proxy", proxies)):
            bad = [i for i, v in series.items() if not math.isfinite(v)]
            if bad:
                raise DataError(f"{source(run)}: the {name} of task {task!r} is not finite at epoch {bad[0] + 1}")
        ref_estimate, ref_proxy = _peak(estimates.values()), _peak(proxies.values())
        for i in recorded:
            epoch = epochs[i]["epoch"]
            rows.append((task, "estimate", epoch, estimates[i] / ref_estimate))
            rows.append((task, "proxy", epoch, proxies[i] / ref_proxy))
    return rows, epochs[first]["epoch"]


def _peak(values: Iterable[float]) -> float:
    """The largest absolute value of a series, or 1 for an all-zero series (left at zero)."""
    peak = max(abs(v) for v in values)
    return peak if peak > 0 else 1.0


def excess_risk_vs_truth(
    runs: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
) -> pd.DataFrame:
    """The method's excess-risk estimate per epoch against the paper's proxy, one panel per task (EM Figure 2).

    Proxy (EM Sec. 4.3): current minus converged training loss, ``train_loss[e][t] - min_e'
    train_loss[e'][t]``. Estimate: ``epochs[e].diagnostics[<diagnostic>][t]`` (study key
    ``diagnostic``, default ``excess_mtl.excess_risk``) of the runs of ``method`` (default
    ``excess_mtl``). The estimate is defined up to a constant factor (EM Sec. 4.3), so per run and task
    both series are divided by their peak over the epochs with an estimate (a series that is 0 everywhere
    stays 0); epochs without an estimate are left out.

    Returns columns ``panel (task), series ("estimate"/"proxy"), x (epoch), y, std, low, high, n``.
    Raises DataError naming the file and key when a run records no estimate.
    """
    info = dataset_info(runs)
    band = study_band(study)
    method = str(study.get("method", "excess_mtl"))
    key = str(study.get("diagnostic", EXCESS_RISK_KEY))
    chosen = [run for run in _filter_noise(runs, study) if run["run"]["method"] == method]
    if not chosen:
        raise DataError(
            f"{_where(study, 'method')}: no run of method {method!r} "
            f"(methods here: {', '.join(methods_in_order(runs))})"
        )
    check_one_run_per_seed(chosen)
    tasks = list(info.directions)
    rows = []
    references = set()
    for run in chosen:
        run_rows, reference = _excess_rows(run, key, tasks)
        rows += run_rows
        references.add(reference)
    frame = pd.DataFrame(rows, columns=["task", "series", "epoch", "value"])
    data = _summarise(frame, ["task", "series", "epoch"], band).rename(columns={"task": "panel", "epoch": "x"})
    data = _ordered(data, {"panel": tasks, "series": ("estimate", "proxy")}, "x")

    fig, axes = _new_figure(1, len(tasks), 4.2, 3.4, sharey=True)
    styles = {"estimate": ("C0", "-", f"estimate ({key})"), "proxy": ("C3", "--", "proxy: current − converged loss")}
    for ax, task in zip(axes[0], tasks, strict=True):
        for series, (color, linestyle, label) in styles.items():
            line = data[(data["panel"] == task) & (data["series"] == series)]
            _draw_line(ax, line, color, label, linestyle=linestyle)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_title(task, fontsize=9)
        _epoch_axis(ax)
    axes[0][0].set_ylabel("excess risk / its peak")
    axes[0][-1].legend(fontsize=7, loc="best")
    noise = ", ".join(dict.fromkeys(run["run"]["noise"] for run in chosen))
    first = ", ".join(map(str, sorted(references)))
    notes = [
        f"Dataset {info.name}; method {method}; noise: {noise}. Ground-truth proxy (EM Sec. 4.3): current minus "
        "converged training loss, converged = the lowest epoch-mean training loss of the run.",
        f"Both curves divided by their peak over the epochs with an estimate (from epoch {first}), "
        "since the estimate is defined up to a constant factor.",
        _seeds_note(chosen, band),
    ]
    _render(fig, study, info, notes, out_png, out_pdf)
    return data
