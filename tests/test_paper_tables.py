"""Tests of mtlrepro.report.paper_tables: method table, combination grid, architecture grid, published twin.

Every table is built from synthetic run records (format ``mtlrepro.run/2``) made here, with numbers
chosen so that Δp and the best-per-group marks can be worked out by hand.
"""

from __future__ import annotations

import copy
import io
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mtlrepro.errors import DataError
from mtlrepro.report import stats
from mtlrepro.report.paper_tables import (
    EW,
    KIND_COMBINATION,
    KIND_METHOD,
    VANILLA,
    architecture_grid,
    combination_cell,
    combination_grid,
    method_group,
    method_table,
    parse_marks,
    published_wide,
    render_latex,
    render_markdown,
    study_splits,
    twin,
    write_paper_table,
)

STAND_IN = "Stand-in for Multi-MNIST: synthetic digits (demo scale)"
SEEDS = [0, 1, 2]
GRADIENT_METHODS = {"pcgrad", "cagrad", "mgda"}
TASKS = {"TL": {"acc": "higher"}, "BR": {"acc": "higher", "loss": "lower"}}
ONE_TASK = {"T": {"acc": "higher"}}

Nested = dict[str, dict[str, float]]


def stage(name: str | None) -> dict[str, Any] | None:
    return None if name is None else {"entry": name, "weighting": name, "options": {}}


def run_record(
    method: str,
    seed: int,
    test: Nested,
    *,
    val: Nested | None = None,
    tasks: dict[str, dict[str, str]] = TASKS,
    arch: str = "hps",
    stand_in: str | None = STAND_IN,
    epochs: list[dict[str, Any]] | None = None,
    selected: int = 3,
) -> dict[str, Any]:
    """A run record as :func:`mtlrepro.train.run_record` writes it; stages read from the expression."""
    if "+" in method:
        loss, gradient = method.split("+")
    else:
        loss, gradient = (None, method) if method in GRADIENT_METHODS else (method, None)
    val = val if val is not None else {t: {m: v - 1.0 for m, v in ms.items()} for t, ms in test.items()}
    if epochs is None:
        epochs = [
            {"epoch": e, "train_loss": {t: 1.0 / e for t in tasks}, "val": val, "test": test, "seconds": 0.1}
            for e in (1, 2, 3)
        ]
    return {
        "format": "mtlrepro.run/2",
        "run": {
            "dataset": "multi_digits",
            "arch": arch,
            "method": method,
            "noise": "clean",
            "seed": seed,
            "dir": f"results/runs/multi_digits/{arch}/{method}/clean/seed{seed}",
        },
        "spec": {
            "method": {"expression": method, "loss": stage(loss), "gradient": stage(gradient)},
            "noise": {},
            "seed": seed,
        },
        "dataset": {
            "name": "multi_digits",
            "stand_in": stand_in,
            "tasks": [{"name": t, "metrics": ms} for t, ms in tasks.items()],
        },
        "epochs": epochs,
        "selection": {"rule": "best_val", "description": "highest mean validation score over tasks", "epoch": selected},
        "final": {"val": val, "test": test},
    }


# method -> per seed 0, 1, 2: (TL acc, BR acc, BR loss)
VALUES = {
    "ew": [(90, 80, 0.50), (91, 82, 0.40), (92, 84, 0.30)],  # means 91, 82, 0.40
    "uw": [(91, 81, 0.40), (90, 83, 0.41), (92, 82, 0.42)],  # means 91, 82, 0.41
    "rlw": [(92, 83, 0.42), (93, 84, 0.41), (91, 85, 0.46)],  # means 92, 84, 0.43
    "pcgrad": [(89, 85, 0.38), (90, 86, 0.39), (91, 84, 0.40)],  # means 90, 85, 0.39
    "cagrad": [(93, 79, 0.60), (92, 80, 0.50), (94, 81, 0.55)],  # means 93, 80, 0.55
    "rlw+pcgrad": [(99, 90, 0.10), (99, 90, 0.10), (98, 91, 0.20)],  # best everywhere, but a combination
}
STUDY = {
    "name": "rw_table1_demo",
    "title": "Multi-MNIST demo of RW Table 1",
    "paper": "rw",
    "reproduces": "RW Table 1",
    "baseline": "ew",
    "seeds": SEEDS,
    "methods": ["uw", "rlw", "pcgrad", "cagrad", "rlw+pcgrad", "ew"],
    "labels": {"ew": "EW", "rlw": "RLW"},
}


def metrics(tl: float, br: float, loss: float) -> Nested:
    return {"TL": {"acc": float(tl)}, "BR": {"acc": float(br), "loss": float(loss)}}


def table_runs() -> list[dict[str, Any]]:
    """Seed-major, methods interleaved, baseline not first: order must come from the study."""
    return [run_record(m, s, metrics(*VALUES[m][s])) for s in SEEDS for m in VALUES]


def hand_delta_p(tl: float, br: float, loss: float) -> float:
    """Δp (RW Sec. 5) against EW's means 91, 82, 0.40: tasks averaged, BR's two metrics averaged first."""
    return 100 / 2 * ((tl - 91) / 91 + ((br - 82) / 82 - (loss - 0.40) / 0.40) / 2)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return method_table(table_runs(), STUDY)


# --------------------------------------------------------------------------- method table


def test_method_table_rows_and_cells(table: pd.DataFrame) -> None:
    assert list(table.index) == ["ew", "uw", "rlw", "pcgrad", "cagrad", "rlw+pcgrad"]  # baseline first
    assert list(table["group"]) == ["baseline", "loss", "loss", "gradient", "gradient", "combination"]
    assert table.loc["rlw", "label"] == "RLW"
    assert table.loc["rlw", "TL_acc_mean"] == pytest.approx(92.0)
    assert table.loc["rlw", "TL_acc_std"] == pytest.approx(1.0)
    assert table.loc["pcgrad", "BR_loss_mean"] == pytest.approx(0.39)
    assert (table["n_seeds"] == 3).all()
    for key in ("TL_acc", "BR_acc", "BR_loss", "delta_p"):
        assert (table[f"{key}_ci_low"] <= table[f"{key}_mean"] + 1e-12).all()
        assert (table[f"{key}_mean"] <= table[f"{key}_ci_high"] + 1e-12).all()
    assert set(table["split"]) == {"test"}
    assert set(table["stand_in"]) == {STAND_IN}


def test_method_table_delta_p_by_hand(table: pd.DataFrame) -> None:
    expected = {
        "ew": 0.0,
        "uw": hand_delta_p(91, 82, 0.41),  # -0.625
        "rlw": hand_delta_p(92, 84, 0.43),
        "pcgrad": hand_delta_p(90, 85, 0.39),
        "cagrad": hand_delta_p(93, 80, 0.55),
        "rlw+pcgrad": hand_delta_p(296 / 3, 271 / 3, 0.4 / 3),
    }
    assert expected["uw"] == pytest.approx(-0.625)
    for method, value in expected.items():
        assert table.loc[method, "delta_p_mean"] == pytest.approx(value, abs=1e-9), method
    assert table.loc["ew", "delta_p_ci_low"] == 0.0 == table.loc["ew", "delta_p_ci_high"]


def test_method_table_marks(table: pd.DataFrame) -> None:
    marks = {method: parse_marks(text) for method, text in table["marks"].items()}
    assert marks == {
        "ew": {},  # the baseline is never marked
        "uw": {"BR_loss": "*", "delta_p": "*"},  # Δp: uw -0.625 beats rlw -0.716
        "rlw": {"TL_acc": "*", "BR_acc": "*"},
        "pcgrad": {"BR_acc": "†", "BR_loss": "†", "delta_p": "†"},
        "cagrad": {"TL_acc": "†"},
        "rlw+pcgrad": {},  # best everywhere, but combinations get no mark
    }
    markdown = render_markdown(table)
    row = next(line for line in markdown.splitlines() if line.startswith("| uw"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    delta = f"{table.loc['uw', 'delta_p_mean']:+.2f}% *"  # -0.625 (checked above), rounded either way
    assert cells == ["uw", "91.00 ± 1.00", "82.00 ± 1.00", "0.4100 ± 0.0100 *", delta]
    latex = render_latex(table)
    assert r"$^{\dagger}$" in latex and r"$^{*}$" in latex


def test_method_table_ties_are_all_marked() -> None:
    runs = table_runs() + [run_record("dwa", s, metrics(*VALUES["rlw"][s])) for s in SEEDS]
    tied = method_table(runs, STUDY)
    expected = {"TL_acc": "*", "BR_acc": "*"}
    assert parse_marks(tied.loc["dwa", "marks"]) == parse_marks(tied.loc["rlw", "marks"]) == expected


def test_method_table_holm_equals_stats_module(table: pd.DataFrame) -> None:
    keys = [("TL", "acc", 0), ("BR", "acc", 1), ("BR", "loss", 2)]  # column and its place in VALUES
    family, cells = [], []
    for method in table.index[1:]:
        for task, metric, index in keys:
            values = [VALUES[method][s][index] for s in SEEDS]
            base = [VALUES["ew"][s][index] for s in SEEDS]
            comparison = stats.compare(values, base, SEEDS, SEEDS)
            assert comparison.test in (stats.TEST_PAIRED, stats.TEST_NA)  # n/a: constant paired difference
            family.append(comparison.p_value)
            cells.append((method, f"{task}_{metric}"))
    adjusted = stats.holm(family)
    for (method, key), raw, holm in zip(cells, family, adjusted, strict=True):
        assert table.loc[method, f"{key}_p"] == pytest.approx(raw, nan_ok=True)
        assert table.loc[method, f"{key}_p_holm"] == pytest.approx(holm, nan_ok=True)
    assert sum(not math.isnan(p) for p in adjusted) >= 10
    assert table.loc["ew", ["TL_acc_p_holm", "BR_acc_p_holm", "BR_loss_p_holm"]].isna().all()
    assert table.loc["rlw", "test"] == stats.TEST_PAIRED
    assert "paired t-test" in table.attrs["footer"] and "Holm" in table.attrs["footer"]


def test_method_table_is_reproducible() -> None:
    pd.testing.assert_frame_equal(method_table(table_runs(), STUDY), method_table(table_runs(), STUDY))


def test_method_table_welch_when_seeds_disjoint() -> None:
    runs = [run_record("ew", s, metrics(*VALUES["ew"][s])) for s in SEEDS]
    runs += [run_record("rlw", s + 10, metrics(*VALUES["rlw"][s])) for s in SEEDS]
    frame = method_table(runs, {**STUDY, "methods": ["rlw"]})
    assert frame.loc["rlw", "test"] == stats.TEST_WELCH
    assert "Seeds of the study without a run: ew: " not in " ".join(frame.attrs["notes"])
    assert "rlw: 0, 1, 2" in " ".join(frame.attrs["notes"])


def test_table_uses_selected_epoch_not_best_test_epoch() -> None:
    """Validation picked epoch 3; the test split peaks at epoch 1. The table must show epoch 3's test numbers."""
    epochs = [
        {"epoch": 1, "val": metrics(80, 70, 0.9), "test": metrics(99, 99, 0.01)},
        {"epoch": 2, "val": metrics(85, 75, 0.8), "test": metrics(95, 95, 0.05)},
        {"epoch": 3, "val": metrics(88, 78, 0.7), "test": metrics(90, 80, 0.50)},
    ]
    runs = [
        run_record(m, s, metrics(90, 80, 0.50), val=metrics(88, 78, 0.7), epochs=copy.deepcopy(epochs))
        for m in ("ew", "rlw")
        for s in SEEDS
    ]
    frame = method_table(runs, STUDY)
    assert frame.loc["rlw", "TL_acc_mean"] == 90.0
    assert frame.loc["rlw", "BR_loss_mean"] == 0.50
    val = method_table(runs, STUDY, split="val")
    assert val.loc["rlw", "TL_acc_mean"] == 88.0
    assert val.attrs["split"] == "val" and set(val["split"]) == {"val"}
    assert "best_val" in frame.attrs["footer"]


def test_method_group_rules() -> None:
    run = run_record("ew+pcgrad", 0, metrics(1, 1, 1))
    assert method_group(run, "ew") == "gradient"  # plain EW before a gradient method is no loss weighting
    assert method_group(run_record("uw+pcgrad", 0, metrics(1, 1, 1)), "ew") == "combination"
    assert method_group(run_record("uw", 0, metrics(1, 1, 1)), "ew") == "loss"
    assert method_group(run_record("uw", 0, metrics(1, 1, 1)), "ew", {"uw": "gradient"}) == "gradient"
    bare = run_record("uw", 0, metrics(1, 1, 1))
    bare["spec"] = {}
    with pytest.raises(DataError, match=r"spec\.method"):
        method_group(bare, "ew")


def test_method_table_errors() -> None:
    runs = [run_record("rlw", s, metrics(*VALUES["rlw"][s])) for s in SEEDS]
    with pytest.raises(DataError, match="baseline 'ew' has no runs"):
        method_table(runs, STUDY)
    runs = table_runs()
    runs[2]["final"]["test"]["TL"]["acc"] = math.nan
    with pytest.raises(DataError, match=r"method 'rlw', TL_acc: .*finite"):
        method_table(runs, STUDY)
    runs = table_runs()
    runs[4]["final"]["val"] = None
    runs[4]["source"] = "results/runs/x/metrics.json"
    with pytest.raises(DataError, match=r"results/runs/x/metrics\.json.*'val'"):
        method_table(runs, STUDY, split="val")


def test_tables_refuse_mixed_noise_levels() -> None:
    runs = table_runs()
    runs[-1]["run"]["noise"] = "BR0.4"
    with pytest.raises(DataError, match="a table covers one noise level"):
        method_table(runs, STUDY)
    runs = grid_runs()
    runs[-1]["run"]["noise"] = "BR0.4"
    with pytest.raises(DataError, match="a table covers one noise level"):
        combination_grid(runs, GRID_STUDY)
    with pytest.raises(DataError, match="a table covers one noise level"):
        architecture_grid(runs, GRID_STUDY)


def test_study_splits() -> None:
    assert study_splits(STUDY) == ["test"]
    assert study_splits({**STUDY, "splits": ["test", "val"]}) == ["test", "val"]
    with pytest.raises(DataError, match="splits"):
        study_splits({**STUDY, "splits": ["train"]})


# --------------------------------------------------------------------------- outputs


def test_write_method_table(tmp_path: Path, table: pd.DataFrame) -> None:
    out = [tmp_path / "t1.csv", tmp_path / "t1.md", tmp_path / "t1.tex"]
    write_paper_table(table, *out)
    csv = pd.read_csv(out[0], index_col="method")
    assert list(csv.index) == list(table.index)
    for key in ("TL_acc", "BR_acc", "BR_loss"):
        for field in ("mean", "std", "ci_low", "ci_high", "p_holm"):
            assert f"{key}_{field}" in csv.columns
    assert {"delta_p_mean", "delta_p_ci_low", "delta_p_ci_high", "marks", "selection", "stand_in"} <= set(csv.columns)
    assert csv.loc["rlw", "TL_acc_mean"] == pytest.approx(92.0)

    markdown = out[1].read_text()
    assert "# Multi-MNIST demo of RW Table 1" in markdown
    assert "reproduces RW Table 1" in markdown
    assert "TL acc ↑" in markdown and "BR loss ↓" in markdown and "Δp ↑" in markdown
    assert table.attrs["footer"] in markdown
    assert "Mean ± std over 3 seeds" in markdown
    assert "selected by best_val (highest mean validation score over tasks)" in markdown
    assert f"Stand-in data: {STAND_IN}" in markdown

    latex = out[2].read_text()
    assert r"\begin{tabular}" in latex and r"\end{tabular}" in latex
    assert r"\toprule" in latex and latex.count(r"\\") >= len(table) + 1
    assert "Stand-in data" in latex and r"selected by best\_val" in latex
    assert r"$\pm$" in latex and "±" not in latex.split(r"\begin{tabular}")[1].split(r"\end{tabular}")[0]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_real_data_has_no_stand_in_label() -> None:
    runs = [run_record(m, s, metrics(*VALUES[m][s]), stand_in=None) for m in ("ew", "rlw") for s in SEEDS]
    frame = method_table(runs, STUDY)
    assert "Stand-in" not in render_markdown(frame) and "Stand-in" not in render_latex(frame)
    assert set(frame["stand_in"]) == {""}


# --------------------------------------------------------------------------- RW Table 1 rows

# RW Table 1 (NYUv2), as printed; reference/rw/table1_nyuv2.csv
TABLE1_HEADER = (
    "method,group,seg_miou,seg_pixacc,depth_abs_err,depth_rel_err,"
    "normal_mean,normal_median,normal_11.25,normal_22.5,normal_30,delta_p,best_marks\n"
)
TABLE1 = (
    TABLE1_HEADER
    + """EW,baseline,53.77,75.45,0.3845,0.1605,23.5737,17.0438,35.04,60.93,72.07,0.00,
DWA,loss,53.81,75.56,0.3792,0.1565,23.6111,17.0609,34.89,60.89,71.97,0.63,depth_abs_err:*;depth_rel_err:*
RLW,loss,54.11,75.77,0.3809,0.1575,23.3777,16.7385,35.71,61.52,72.45,1.04,normal_median:*;delta_p:*
MGDA-UB,gradient,50.42,73.46,0.3834,0.1555,22.7827,16.1432,36.90,62.88,73.61,0.38,depth_rel_err:†;normal_mean:†
CAGrad,gradient,53.12,75.19,0.3871,0.1599,22.5257,15.8821,37.42,63.50,74.17,1.36,normal_22.5:†;normal_30:†;delta_p:†
"""
)
NYU_TASKS = {
    "seg": {"miou": "higher", "pixacc": "higher"},
    "depth": {"abs_err": "lower", "rel_err": "lower"},
    "normal": {"mean": "lower", "median": "lower", "11.25": "higher", "22.5": "higher", "30": "higher"},
}
NYU_METHODS = {"ew": "EW", "dwa": "DWA", "rlw": "RLW", "mgda": "MGDA-UB", "cagrad": "CAGrad"}


@pytest.fixture(scope="module")
def table1() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs whose every seed scores exactly the published numbers, tabulated; and the published table."""
    published = pd.read_csv(io.StringIO(TABLE1))
    rows = published.set_index("method")
    runs = []
    for method, name in NYU_METHODS.items():
        values = {t: {m: float(rows.loc[name, f"{t}_{m}"]) for m in ms} for t, ms in NYU_TASKS.items()}
        runs += [run_record(method, s, values, tasks=NYU_TASKS, stand_in=None) for s in SEEDS]
    study = {**STUDY, "title": "RW Table 1 (NYUv2)", "methods": list(NYU_METHODS), "labels": NYU_METHODS}
    return method_table(runs, study), published


def test_table1_delta_p_matches_published(table1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reproduced, published = table1
    printed = published.set_index("method")["delta_p"]
    for method, name in NYU_METHODS.items():
        # the README of the reference: recomputed Δp matches the printed one within about ±0.02
        assert reproduced.loc[method, "delta_p_mean"] == pytest.approx(printed[name], abs=0.02), method
    assert reproduced.loc["rlw", "delta_p_mean"] == pytest.approx(1.04, abs=0.02)
    assert reproduced.loc["dwa", "delta_p_mean"] == pytest.approx(0.63, abs=0.02)


def test_table1_marks_within_these_methods(table1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reproduced, _ = table1
    marks = {m: parse_marks(t) for m, t in reproduced["marks"].items()}
    # DWA vs RLW (loss): DWA has the lower depth errors, RLW the rest; Δp: RLW.
    assert marks["dwa"] == {"depth_abs_err": "*", "depth_rel_err": "*"}
    assert set(marks["rlw"]) == {
        "seg_miou",
        "seg_pixacc",
        "normal_mean",
        "normal_median",
        "normal_11.25",
        "normal_22.5",
        "normal_30",
        "delta_p",
    }
    # MGDA-UB vs CAGrad: the paper's † on MGDA-UB's normal_mean is a known misprint; CAGrad's 22.5257 is lower.
    assert marks["mgda"] == {"depth_abs_err": "†", "depth_rel_err": "†"}
    assert marks["cagrad"]["normal_mean"] == "†" and marks["cagrad"]["delta_p"] == "†"


def test_table1_twin_all_in_ci_with_rounding(table1: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    reproduced, published = table1
    frame = twin(reproduced, published_wide(published, KIND_METHOD), tolerance=0.02)
    assert len(frame) == 5 * 10  # 5 methods x (9 metrics + Δp)
    assert frame["published_in_ci"].all()
    rlw = frame[(frame["row"] == "rlw") & (frame["column"] == "seg_miou")].iloc[0]
    assert rlw["published_row"] == "RLW" and rlw["published"] == 54.11 and rlw["difference"] == pytest.approx(0)
    strict = twin(reproduced, published_wide(published, KIND_METHOD))
    delta = strict[strict["column"] == "delta_p"].set_index("row")
    assert delta.loc["ew", "published_in_ci"]  # 0.00 exactly
    assert not delta["published_in_ci"].all()  # Δp recomputed from rounded metrics is off by up to 0.02


# --------------------------------------------------------------------------- twin


def test_twin_flags_in_and_out_of_ci(tmp_path: Path, table: pd.DataFrame) -> None:
    published = pd.DataFrame(
        {"TL acc": [91.0, 99.0], "br-xent": [0.40, 0.43], "delta_p": [0.0, 50.0]},
        index=pd.Index(["EW", "RLW"], name="method"),
    )
    frame = twin(table, published, columns={"BR_loss": "br-xent"})
    cells = frame.set_index(["row", "column"])
    ew_tl = cells.loc[("ew", "TL_acc")]
    assert ew_tl["ci_low"] <= 91.0 <= ew_tl["ci_high"] and bool(ew_tl["published_in_ci"]) is True
    assert bool(cells.loc[("rlw", "TL_acc"), "published_in_ci"]) is False  # 99 far above RLW's 91..93
    assert cells.loc[("rlw", "TL_acc"), "difference"] == pytest.approx(92.0 - 99.0)
    assert bool(cells.loc[("rlw", "BR_loss"), "published_in_ci"]) is True  # matched through `columns`
    assert bool(cells.loc[("rlw", "delta_p"), "published_in_ci"]) is False
    assert pd.isna(cells.loc[("uw", "TL_acc"), "published_in_ci"])  # no published row for UW
    assert pd.isna(cells.loc[("ew", "BR_acc"), "published_in_ci"])  # no published column for BR acc
    assert math.isnan(cells.loc[("uw", "TL_acc"), "published"])

    out = [tmp_path / "twin.csv", tmp_path / "twin.md", tmp_path / "twin.tex"]
    write_paper_table(frame, *out)
    csv = pd.read_csv(out[0], keep_default_na=False)
    flags = dict(zip(zip(csv["row"], csv["column"], strict=True), csv["published_in_ci"], strict=True))
    assert flags[("ew", "TL_acc")] == "True" and flags[("rlw", "TL_acc")] == "False"
    assert flags[("uw", "TL_acc")] == ""  # blank where no published value
    markdown = out[1].read_text()
    assert "published vs reproduced" in markdown
    header = markdown.split("|")[0]
    assert "STAND-IN" in header and STAND_IN in header  # said before the table
    assert table.attrs["footer"] in markdown
    assert r"\begin{tabular}" in out[2].read_text()


# --------------------------------------------------------------------------- combination grid

# method -> mean test accuracy of the one task; seeds are mean - 1, mean, mean + 1. EW's mean is 80.
GRID_MEANS = {
    "ew": 80.0,
    "rlw": 82.0,  # +2.50%
    "uw": 81.0,  # +1.25%
    "pcgrad": 79.0,  # -1.25%
    "rlw+pcgrad": 84.0,  # +5.00%
    "uw+pcgrad": 78.0,  # -2.50%
    "cagrad": 80.4,  # +0.50%
    "rlw+cagrad": 82.8,  # +3.50%
}


def grid_runs(means: dict[str, float] = GRID_MEANS, arch: str = "hps") -> list[dict[str, Any]]:
    return [
        run_record(m, s, {"T": {"acc": mean + s - 1}}, tasks=ONE_TASK, arch=arch)
        for m, mean in means.items()
        for s in SEEDS
    ]


GRID_STUDY = {**STUDY, "name": "rw_table4_demo", "reproduces": "RW Table 4", "methods": list(GRID_MEANS)}


def test_combination_cells() -> None:
    def cell(method: str) -> tuple[str, str]:
        return combination_cell(run_record(method, 0, {"T": {"acc": 1.0}}, tasks=ONE_TASK))

    assert cell("ew") == (VANILLA, EW)
    assert cell("rlw") == (VANILLA, "rlw")
    assert cell("pcgrad") == ("pcgrad", EW)
    assert cell("ew+pcgrad") == ("pcgrad", EW)
    assert cell("rlw+pcgrad") == ("pcgrad", "rlw")


def test_combination_grid_delta_p_by_hand() -> None:
    grid = combination_grid(grid_runs(), GRID_STUDY)
    cells = grid.set_index(["gradient_method", "loss_method"])
    expected = {
        (VANILLA, EW): 0.0,
        (VANILLA, "rlw"): 2.5,
        (VANILLA, "uw"): 1.25,
        ("pcgrad", EW): -1.25,
        ("pcgrad", "rlw"): 5.0,
        ("pcgrad", "uw"): -2.5,
        ("cagrad", EW): 0.5,
        ("cagrad", "rlw"): 3.5,
    }
    assert len(grid) == len(expected)
    for key, value in expected.items():
        assert cells.loc[key, "delta_p_mean"] == pytest.approx(value, abs=1e-9), key
        assert cells.loc[key, "delta_p_ci_low"] <= cells.loc[key, "delta_p_mean"] <= cells.loc[key, "delta_p_ci_high"]
    assert cells.loc[("pcgrad", "rlw"), "method"] == "rlw+pcgrad"
    best = set(grid.loc[grid["best"], ["gradient_method", "loss_method"]].itertuples(index=False, name=None))
    assert best == {(VANILLA, "rlw"), ("pcgrad", "rlw"), ("cagrad", "rlw")}  # best of each row
    assert grid.attrs["rows"] == [VANILLA, "pcgrad", "cagrad"]
    assert grid.attrs["columns"] == [EW, "rlw", "uw"]
    pd.testing.assert_frame_equal(grid, combination_grid(grid_runs(), GRID_STUDY))


def test_combination_grid_outputs(tmp_path: Path) -> None:
    grid = combination_grid(grid_runs(), GRID_STUDY)
    out = [tmp_path / "t4.csv", tmp_path / "t4.md", tmp_path / "t4.tex"]
    write_paper_table(grid, *out)
    markdown = out[1].read_text()
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-: |]+\|$", line):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    assert rows["Gradient \\ Loss"] == ["EW", "RLW", "uw"]
    assert rows["Vanilla"] == ["+0.00%", "**+2.50%**", "+1.25%"]
    assert rows["pcgrad"] == ["-1.25%", "**+5.00%**", "-2.50%"]
    assert rows["cagrad"] == ["+0.50%", "**+3.50%**", "–"]  # uw+cagrad was not run
    assert grid.attrs["footer"] in markdown and f"Stand-in data: {STAND_IN}" in markdown
    assert "selected by best_val" in grid.attrs["footer"]
    latex = out[2].read_text()
    assert r"\begin{tabular}" in latex and r"\textbf{+5.00\%}" in latex
    csv = pd.read_csv(out[0])
    assert list(csv.columns[:3]) == ["gradient_method", "loss_method", "method"]
    assert {"delta_p_mean", "delta_p_ci_low", "delta_p_ci_high"} <= set(csv.columns)


def test_combination_grid_refuses_two_methods_in_one_cell() -> None:
    runs = grid_runs({"ew": 80.0, "pcgrad": 79.0, "ew+pcgrad": 79.5})
    with pytest.raises(DataError, match="both fill"):
        combination_grid(runs, GRID_STUDY)


def test_combination_grid_twin() -> None:
    grid = combination_grid(grid_runs(), GRID_STUDY)
    published = pd.DataFrame(
        {
            "gradient_method": ["Vanilla", "Vanilla", "PCGrad", "PCGrad"],
            "loss_method": ["EW", "RLW", "EW", "RLW"],
            "delta_p": [0.0, 1.04, -0.16, 5.0],
        }
    )
    frame = twin(grid, published_wide(published, KIND_COMBINATION)).set_index(["row", "column"])
    assert bool(frame.loc[(VANILLA, EW), "published_in_ci"]) is True
    assert bool(frame.loc[("pcgrad", "rlw"), "published_in_ci"]) is True
    assert bool(frame.loc[("pcgrad", EW), "published_in_ci"]) is False  # -0.16 vs -1.25: every seed is 1 point below EW
    assert pd.isna(frame.loc[("cagrad", "rlw"), "published_in_ci"])
    assert frame.loc[(VANILLA, "rlw"), "difference"] == pytest.approx(2.5 - 1.04)


# --------------------------------------------------------------------------- architecture grid


def test_architecture_grid_delta_p_against_ew_on_hps(tmp_path: Path) -> None:
    runs = grid_runs({"ew": 80.0, "rlw": 81.0}, arch="hps") + grid_runs({"ew": 85.0, "rlw": 84.0}, arch="mtan")
    study = {**STUDY, "reproduces": "RW Table 5", "methods": ["rlw", "ew"], "archs": ["mtan", "hps"]}
    grid = architecture_grid(runs, study)
    cells = grid.set_index(["method", "arch"])["delta_p_mean"]
    assert cells[("ew", "hps")] == pytest.approx(0.0)
    assert cells[("rlw", "hps")] == pytest.approx(1.25)
    assert cells[("ew", "mtan")] == pytest.approx(6.25)
    assert cells[("rlw", "mtan")] == pytest.approx(5.0)
    assert grid.attrs["rows"] == ["ew", "rlw"] and grid.attrs["columns"] == ["hps", "mtan"]
    best = set(grid.loc[grid["best"], ["method", "arch"]].itertuples(index=False, name=None))
    assert best == {("rlw", "hps"), ("ew", "mtan")}  # best of each architecture
    assert "EW on hps" in grid.attrs["footer"]

    out = [tmp_path / "t5.csv", tmp_path / "t5.md", tmp_path / "t5.tex"]
    write_paper_table(grid, *out)
    markdown = out[1].read_text()
    assert "| Method \\ Architecture" in markdown and "**+6.25%**" in markdown
    assert r"\begin{tabular}" in out[2].read_text()

    with pytest.raises(DataError, match=r"baseline \('ew', 'cross_stitch'\) has no runs"):
        architecture_grid(runs, {**study, "baseline_arch": "cross_stitch"})
    with pytest.raises(DataError, match="one run per cell and seed"):
        architecture_grid(runs + grid_runs({"ew": 80.0}), study)


def test_architecture_grid_twin() -> None:
    runs = grid_runs({"ew": 80.0, "rlw": 81.0}, arch="hps") + grid_runs({"ew": 85.0}, arch="mtan")
    grid = architecture_grid(runs, STUDY)
    published = pd.DataFrame(
        {"method": ["EW", "EW", "RLW"], "architecture": ["HPS", "MTAN", "HPS"], "delta_p": [0.0, 2.56, 1.25]}
    )
    frame = twin(grid, published_wide(published, "architecture_grid")).set_index(["row", "column"])
    assert frame.loc[("rlw", "hps"), "published"] == 1.25
    assert bool(frame.loc[("rlw", "hps"), "published_in_ci"]) is True
    assert bool(frame.loc[("ew", "mtan"), "published_in_ci"]) is False


def test_kinds_are_recorded() -> None:
    assert method_table(table_runs(), STUDY).attrs["kind"] == KIND_METHOD
    assert combination_grid(grid_runs(), GRID_STUDY).attrs["kind"] == KIND_COMBINATION


REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "rw"


def test_published_wide_reads_the_reference_csvs() -> None:
    table1 = published_wide(pd.read_csv(REFERENCE / "table1_nyuv2.csv"), KIND_METHOD)
    assert table1.loc["RLW", "delta_p"] == 1.04 and "best_marks" not in table1.columns
    table4 = published_wide(pd.read_csv(REFERENCE / "table4_combinations.csv"), KIND_COMBINATION)
    assert table4.loc["GradDrop", "DWA"] == -0.42 and table4.loc["Vanilla", "EW"] == 0.0
    table5 = published_wide(pd.read_csv(REFERENCE / "table5_architectures.csv"), "architecture_grid")
    assert table5.loc["RLW+CAGrad", "NDDR-CNN"] == 3.53
