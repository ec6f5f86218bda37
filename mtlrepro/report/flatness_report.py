"""RW Figure 1 in the study's shape: the sharpness of the minima each method reaches, over seeds.

Input: one ``flatness.json`` per run (:func:`mtlrepro.analysis.flatness.analyse_run`:
the top Hessian eigenvalue of the training loss and the gradient variance over
minibatches, both at the run's *selected* epoch). The table gives, per method,
mean ± std over seeds, the bootstrap CI and the test against the baseline
(paired over shared seeds, Holm-corrected within the table); the figure shows
every seed's value and the mean ± std per method. Lower is flatter for both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from mtlrepro.errors import DataError
from mtlrepro.io import write_text_atomic
from mtlrepro.report import stats
from mtlrepro.report.figures import save_figure_atomic

MEASURES = {
    "top_eigenvalue": "top Hessian eigenvalue",
    "gradient_variance": "gradient variance over minibatches",
}
"""Flatness measures (lower is flatter) and their labels."""


def load_flatness(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Read every ``flatness.json``; :class:`DataError` naming a file that is missing or lacks a measure."""
    found = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: flatness analysis does not exist")
        record = json.loads(path.read_text())
        for key in (*MEASURES, "run"):
            if key not in record:
                raise DataError(f"{path}: missing key {key!r}")
        found.append(record | {"source": str(path)})
    return found


def flatness_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Long form: method, seed, measure, value (one row per run and measure, in study order)."""
    rows = [
        (record["run"]["method"], int(record["run"]["seed"]), measure, float(record[measure]))
        for record in records
        for measure in MEASURES
    ]
    frame = pd.DataFrame(rows, columns=["method", "seed", "measure", "value"])
    duplicated = frame.duplicated(["method", "seed", "measure"])
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise DataError(f"two flatness analyses for method {first.method!r} seed {first.seed}")
    return frame


def flatness_table(records: Sequence[Mapping[str, Any]], study: Mapping[str, Any]) -> pd.DataFrame:
    """Per method and measure: n, mean, std, bootstrap CI, test against the baseline and its Holm-adjusted p."""
    frame = flatness_frame(records)
    baseline = study.get("baseline", "ew")
    methods = list(dict.fromkeys(frame["method"]))
    rows = []
    for measure in MEASURES:
        of = frame[frame["measure"] == measure]
        base = of[of["method"] == baseline]
        for method in methods:
            mine = of[of["method"] == method]
            cell = stats.summarise(mine["value"].to_numpy(), stats.cell_seed(0, measure, method))
            row = {
                "measure": measure,
                "method": method,
                "n": cell.n,
                "mean": cell.mean,
                "std": cell.std,
                "ci_low": cell.ci_low,
                "ci_high": cell.ci_high,
                "test": "",
                "p": float("nan"),
            }
            if method != baseline and not base.empty:
                comparison = stats.compare(
                    mine["value"].to_numpy(), base["value"].to_numpy(), list(mine["seed"]), list(base["seed"])
                )
                row.update(test=comparison.test, p=comparison.p_value)
            rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = stats.holm(table["p"].to_numpy())
    table.attrs.update(
        stand_in=next((r.get("stand_in") for r in records if r.get("stand_in")), None),
        selection=next(iter({r["selection"]["rule"] for r in records if "selection" in r}), "best_val"),
        baseline=baseline,
    )
    return table


def _notes(table: pd.DataFrame, study: Mapping[str, Any]) -> list[str]:
    ran = [test for test in dict.fromkeys(table["test"]) if test and test != stats.TEST_NA]
    tests = " / ".join(ran) if ran else stats.TEST_NA
    notes = [
        stats.footer(list(table["n"]), table.attrs["selection"], tests, baseline=table.attrs["baseline"]),
        "Measured at each run's selected epoch on a seeded subset of the training split; lower is flatter.",
    ]
    if table.attrs["stand_in"]:
        notes.insert(0, f"Stand-in data: {table.attrs['stand_in']}")
    return notes


def write_flatness_table(table: pd.DataFrame, study: Mapping[str, Any], prefix: str | os.PathLike[str]) -> None:
    """``{prefix}.csv``, ``.md`` and ``.tex``: the numbers, then a display with mean ± std [CI] and p (Holm)."""
    display = pd.DataFrame(
        {
            "measure": [MEASURES[m] for m in table["measure"]],
            "method": table["method"],
            "mean ± std [95% CI]": [
                f"{r.mean:.4g} ± {r.std:.2g} [{r.ci_low:.4g}, {r.ci_high:.4g}]" for r in table.itertuples()
            ],
            "n": table["n"],
            "p (Holm)": ["" if pd.isna(p) else f"{p:.3g}" for p in table["p_holm"]],
        }
    )
    notes = _notes(table, study)
    title = f"{study.get('title', study.get('name', ''))} — flatness (RW Figure 1)"
    write_text_atomic(f"{prefix}.csv", table.to_csv(index=False))
    markdown = "\n\n".join([f"# {title}", display.to_markdown(index=False), *notes]) + "\n"
    write_text_atomic(f"{prefix}.md", markdown)
    latex = display.to_latex(index=False, caption=title) + "".join(f"% {note}\n" for note in notes)
    write_text_atomic(f"{prefix}.tex", latex)


def flatness_figure(
    records: Sequence[Mapping[str, Any]],
    study: Mapping[str, Any],
    out_png: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
) -> pd.DataFrame:
    """One panel per measure: each seed's value (points) and the mean ± std (bar) per method; returns what is drawn."""
    table = flatness_table(records, study)
    frame = flatness_frame(records)
    fig = Figure(figsize=(4.0 * len(MEASURES), 3.6))
    axes = fig.subplots(1, len(MEASURES), squeeze=False)[0]
    methods = list(dict.fromkeys(frame["method"]))
    for ax, measure in zip(axes, MEASURES, strict=True):
        summary = table[table["measure"] == measure].set_index("method").loc[methods]
        ax.bar(range(len(methods)), summary["mean"], yerr=summary["std"].fillna(0.0), color="0.8", capsize=4)
        for i, method in enumerate(methods):
            points = frame[(frame["measure"] == measure) & (frame["method"] == method)]["value"]
            ax.plot([i] * len(points), points, "o", color="tab:blue", markersize=4)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_title(MEASURES[measure])
    fig.suptitle(f"{study.get('title', study.get('name', ''))} — flatness (RW Figure 1)")
    notes = _notes(table, study)
    fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom", color="0.25")
    fig.tight_layout(rect=(0, 0.06 * len(notes), 1, 0.93))
    save_figure_atomic(fig, out_png, "png", dpi=150)
    save_figure_atomic(fig, out_pdf, "pdf", metadata={"CreationDate": None})
    return frame.merge(table[["measure", "method", "mean", "std"]], on=["measure", "method"])
