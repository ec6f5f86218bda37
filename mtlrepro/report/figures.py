"""Accuracy curves over epochs: mean over seeds with a ±1 std band, one panel per task.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` rendered by the
non-interactive Agg canvas, never through :mod:`matplotlib.pyplot`, so no
GUI backend is touched, no global pyplot state is kept and nothing needs
closing. Files are written atomically (temp file in the same directory, then
:func:`os.replace`); the PDF carries no creation date so reruns give equal bytes.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mtlrepro.errors import DataError
from mtlrepro.io import write_atomic
from mtlrepro.report.runs import check_one_run_per_seed, curves_frame, dataset_info, methods_in_order

PNG_DPI = 150
BAND_ALPHA = 0.2
PERCENT_METRICS = frozenset({"acc"})


def save_figure_atomic(fig: Figure, path: str | os.PathLike[str], fmt: str, **kwargs: Any) -> None:
    """Save ``fig`` as ``fmt`` to ``path`` atomically (temp file in the same dir + ``os.replace``)."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))


def curve_stats(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (``ddof=1``; NaN for one seed) over seeds per (method, task, epoch).

    ``curves`` is a long frame as from :func:`~mtlrepro.report.runs.curves_frame`
    already restricted to one split and metric. Returns columns
    ``method, task, epoch, mean, std, n`` (methods in order of appearance).
    """
    grouped = curves.groupby(["method", "task", "epoch"], sort=False)["value"]
    stats = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n="size").reset_index()
    return stats.sort_values(["epoch"], kind="stable").reset_index(drop=True)


def _axis_label(metric: str) -> str:
    return f"{metric} (%)" if metric in PERCENT_METRICS else metric


def accuracy_curves(
    runs: Sequence[Mapping[str, Any]],
    title: str,
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
    split: str = "test",
    metric: str = "acc",
) -> None:
    """Plot ``metric`` on ``split`` against epoch, one subplot per task, and save PNG + PDF.

    Each method is one line (mean over seeds) with a shaded ±1 std band; the
    figure carries ``title`` and, for stand-in data, a note under it. Raises
    :class:`DataError` when no task reports ``metric`` on ``split``.
    """
    info = dataset_info(runs)
    check_one_run_per_seed(runs)
    tasks = [task for task, metrics in info.directions.items() if metric in metrics]
    curves = curves_frame(runs)
    curves = curves[(curves["split"] == split) & (curves["metric"] == metric)]
    if not tasks or curves.empty:
        raise DataError(f"no per-epoch {split!r} values of metric {metric!r} in the runs to plot")
    stats = curve_stats(curves)
    methods = methods_in_order(runs)

    fig = Figure(figsize=(4.2 * len(tasks), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(methods))]
    for ax, task in zip(axes, tasks, strict=False):
        for method, color in zip(methods, colors, strict=False):
            line = stats[(stats["method"] == method) & (stats["task"] == task)]
            if line.empty:
                continue
            ax.plot(line["epoch"], line["mean"], color=color, label=method, linewidth=1.5)
            ax.fill_between(
                line["epoch"],
                line["mean"] - line["std"],
                line["mean"] + line["std"],
                color=color,
                alpha=BAND_ALPHA,
                linewidth=0,
            )
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{split} {_axis_label(metric)}")
    axes[-1].legend(fontsize=8, loc="lower right", title="mean ± 1 std over seeds", title_fontsize=7)

    # Lay the panels out first, below a band kept free for the title (and the stand-in note).
    note = (
        None if info.stand_in is None else textwrap.fill(f"Stand-in data: {info.stand_in}", width=40 * len(tasks) + 30)
    )
    top = 0.91 if note is None else 0.87 - 0.035 * note.count("\n")
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.suptitle(title, y=0.985, va="top")
    if note is not None:
        fig.text(0.5, 0.915, note, ha="center", va="top", fontsize=7, style="italic", color="firebrick")
    save_figure_atomic(fig, out_png, "png", dpi=PNG_DPI)
    save_figure_atomic(fig, out_pdf, "pdf", metadata={"CreationDate": None})
