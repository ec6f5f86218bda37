"""Tests of mtlrepro.report: loading run files, the summary table and accuracy-curve figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mtlrepro.errors import DataError
from mtlrepro.report.figures import accuracy_curves
from mtlrepro.report.runs import CURVE_COLUMNS, RUN_COLUMNS, curves_frame, load_runs, runs_frame
from mtlrepro.report.tables import summary_table, write_table

STAND_IN = "Stand-in for Multi-MNIST: synthetic digits (no download)"
TWO_TASKS = {"TL": {"acc": "higher"}, "BR": {"acc": "higher"}}
N_EPOCHS = 4

# method -> task -> test accuracy per seed 0, 1, 2 (final / selected epoch)
TEST_ACC = {
    "rlw": {"TL": [91.0, 92.0, 93.0], "BR": [82.0, 83.0, 84.0]},
    "ew": {"TL": [90.0, 91.0, 92.0], "BR": [80.0, 82.0, 84.0]},
    "rgw": {"TL": [89.0, 90.0, 94.0], "BR": [81.0, 81.0, 81.0]},
}
METHODS = ["rlw", "ew", "rgw"]  # order of first appearance (not alphabetical on purpose)
SEEDS = [0, 1, 2]


def run_document(
    method: str,
    seed: int,
    final_test: dict[str, dict[str, float]],
    *,
    tasks: dict[str, dict[str, str]] | None = None,
    dataset: str = "multi_digits",
    stand_in: str | None = STAND_IN,
    noise: str = "clean",
    n_epochs: int = N_EPOCHS,
) -> dict[str, Any]:
    """A ``mtlrepro.run/2`` document; per-epoch test values ramp up linearly to ``final_test``."""
    tasks = tasks or TWO_TASKS

    def scaled(factor: float, shift: float = 0.0) -> dict[str, dict[str, float]]:
        return {t: {m: v * factor + shift for m, v in ms.items()} for t, ms in final_test.items()}

    epochs = [
        {
            "epoch": e,
            "train_loss": {t: 1.0 / e for t in tasks},
            "loss_weights": {t: 1.0 / len(tasks) for t in tasks},
            "grad_weights": None,
            "val": scaled(e / n_epochs, -1.0),
            "test": scaled(e / n_epochs),
            "seconds": 0.5,
        }
        for e in range(1, n_epochs + 1)
    ]
    return {
        "format": "mtlrepro.run/2",
        "run": {
            "dataset": dataset,
            "arch": "hps",
            "method": method,
            "noise": noise,
            "seed": seed,
            "dir": f"results/runs/{dataset}/hps/{method}/{noise}/seed{seed}",
        },
        "spec": {"epochs": n_epochs},
        "spec_hash": "0" * 64,
        "dataset": {
            "name": dataset,
            "stand_in": stand_in,
            "tasks": [{"name": t, "metrics": ms} for t, ms in tasks.items()],
        },
        "epochs": epochs,
        "selection": {"rule": "best_val", "epoch": n_epochs},
        "final": {"val": scaled(1.0, -1.0), "test": final_test},
        "timing": {"wall_seconds": 2.0, "ms_per_iter": 1.0, "iterations": 100},
        "memory": {"peak_rss_mb": 100.0, "peak_device_mb": None},
        "environment": {"python": "3.11", "torch": "2.x"},
    }


def write_run(root: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` under ``root`` at a path made from its run keys; return the path."""
    run = doc["run"]
    path = root / run["dataset"] / run["method"] / run["noise"] / f"seed{run['seed']}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def study_paths(root: Path, methods: list[str] = METHODS, seeds: list[int] = SEEDS, **kwargs: Any) -> list[Path]:
    """Run files for ``methods`` x ``seeds`` from TEST_ACC, seed-major (methods interleaved)."""
    return [
        write_run(root, run_document(m, s, {t: {"acc": v[s]} for t, v in TEST_ACC[m].items()}, **kwargs))
        for s in seeds
        for m in methods
    ]


@pytest.fixture
def runs(tmp_path: Path) -> list[dict[str, Any]]:
    return load_runs(study_paths(tmp_path))


# --------------------------------------------------------------------------- runs


def test_runs_frame_long_form(runs: list[dict[str, Any]]) -> None:
    frame = runs_frame(runs)
    assert list(frame.columns) == RUN_COLUMNS
    assert len(frame) == 9 * 2 * 2  # runs x splits x tasks
    test = frame[frame["split"] == "test"].set_index(["method", "seed", "task"])["value"]
    assert test[("rgw", 2, "TL")] == 94.0
    assert test[("ew", 1, "BR")] == 82.0
    assert set(frame["noise"]) == {"clean"}
    assert frame["seed"].dtype == np.int64


def test_curves_frame_long_form(runs: list[dict[str, Any]]) -> None:
    frame = curves_frame(runs)
    assert list(frame.columns) == CURVE_COLUMNS
    assert len(frame) == 9 * N_EPOCHS * 2 * 2
    row = frame[(frame.method == "ew") & (frame.seed == 2) & (frame.epoch == 2) & (frame.split == "test")]
    assert row.set_index("task")["value"].to_dict() == {"TL": 92.0 * 2 / N_EPOCHS, "BR": 84.0 * 2 / N_EPOCHS}


def test_load_runs_adds_source(tmp_path: Path) -> None:
    paths = study_paths(tmp_path, methods=["ew"], seeds=[0])
    assert load_runs(paths)[0]["source"] == str(paths[0])


def test_load_runs_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "metrics.json"
    with pytest.raises(DataError, match=str(missing)):
        load_runs([missing])


def test_load_runs_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=f"{bad}.*not valid JSON"):
        load_runs([bad])


def test_load_runs_bad_format(tmp_path: Path) -> None:
    doc = run_document("ew", 0, {"TL": {"acc": 1.0}, "BR": {"acc": 2.0}})
    doc["format"] = "mtlrepro.run/0"
    path = write_run(tmp_path, doc)
    with pytest.raises(DataError, match=f"{path}.*format"):
        load_runs([path])


@pytest.mark.parametrize(
    ("drop", "key"),
    [(("final",), "final"), (("run", "seed"), "run.seed"), (("final", "test", "BR"), "final.test.BR")],
)
def test_load_runs_missing_key(tmp_path: Path, drop: tuple[str, ...], key: str) -> None:
    doc = run_document("ew", 0, {"TL": {"acc": 1.0}, "BR": {"acc": 2.0}})
    parent = doc
    for part in drop[:-1]:
        parent = parent[part]
    del parent[drop[-1]]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=f"{path}: missing key '{key}'"):
        load_runs([path])


def test_load_runs_mixed_datasets(tmp_path: Path) -> None:
    first = study_paths(tmp_path, methods=["ew"], seeds=[0])
    other = study_paths(tmp_path, methods=["ew"], seeds=[1], dataset="celeba_small")
    with pytest.raises(DataError, match=f"{other[0]}: dataset 'celeba_small' differs"):
        load_runs(first + other)


def test_duplicate_method_seed_is_refused(tmp_path: Path) -> None:
    clean = study_paths(tmp_path, methods=["ew"], seeds=[0])
    noisy = study_paths(tmp_path, methods=["ew"], seeds=[0], noise="noisy")
    with pytest.raises(DataError, match=f"{noisy[0]}: method 'ew' seed 0 also comes from"):
        summary_table(load_runs(clean + noisy))


# --------------------------------------------------------------------------- table


def test_summary_means_stds_and_order(runs: list[dict[str, Any]]) -> None:
    table = summary_table(runs)
    assert list(table.index) == METHODS
    assert table.index.name == "method"
    assert list(table.columns) == [
        "TL_acc_mean", "TL_acc_std", "BR_acc_mean", "BR_acc_std", "avg_mean", "avg_std", "n_seeds", "delta_p",
    ]  # fmt: skip
    for method in METHODS:
        for task in ("TL", "BR"):
            values = np.array(TEST_ACC[method][task])
            assert table.loc[method, f"{task}_acc_mean"] == pytest.approx(values.mean(), abs=1e-12)
            assert table.loc[method, f"{task}_acc_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        avg = (np.array(TEST_ACC[method]["TL"]) + np.array(TEST_ACC[method]["BR"])) / 2
        assert table.loc[method, "avg_mean"] == pytest.approx(avg.mean(), abs=1e-12)
        assert table.loc[method, "avg_std"] == pytest.approx(avg.std(ddof=1), abs=1e-12)
        assert table.loc[method, "n_seeds"] == 3


def test_summary_delta_p_by_hand(runs: list[dict[str, Any]]) -> None:
    table = summary_table(runs, baseline="ew")
    # EW means over seeds: TL 91, BR 82. Δp is linear in the method's metrics, so the mean over
    # seeds equals 100/T * sum_t (mean_t - B_t) / B_t with T = 2 tasks.
    assert table.loc["ew", "delta_p"] == 0.0
    assert table.loc["rlw", "delta_p"] == pytest.approx(50.0 * ((92 - 91) / 91 + (83 - 82) / 82), rel=1e-12)
    assert table.loc["rgw", "delta_p"] == pytest.approx(50.0 * ((91 - 91) / 91 + (81 - 82) / 82), rel=1e-12)


def test_summary_validation_split(runs: list[dict[str, Any]]) -> None:
    table = summary_table(runs, split="val")  # val = test - 1 in the factory
    assert table.loc["ew", "TL_acc_mean"] == pytest.approx(90.0)
    assert table.attrs == {"split": "val", "baseline": "ew"}


def test_summary_lower_is_better_metric(tmp_path: Path) -> None:
    tasks = {"A": {"acc": "higher"}, "B": {"err": "lower"}}
    docs = [
        run_document("ew", 0, {"A": {"acc": 80.0}, "B": {"err": 2.0}}, tasks=tasks),
        run_document("ew", 1, {"A": {"acc": 82.0}, "B": {"err": 4.0}}, tasks=tasks),
        run_document("new", 0, {"A": {"acc": 90.0}, "B": {"err": 2.0}}, tasks=tasks),
    ]
    table = summary_table(load_runs([write_run(tmp_path, d) for d in docs]))
    # Baseline means: A.acc 81, B.err 3; for B lower is better so the sign flips.
    assert table.loc["new", "delta_p"] == pytest.approx(50.0 * ((90 - 81) / 81 - (2 - 3) / 3), rel=1e-12)
    assert table.loc["new", "avg_mean"] == 90.0  # average accuracy over the tasks that report "acc"
    assert list(table.columns[:4]) == ["A_acc_mean", "A_acc_std", "B_err_mean", "B_err_std"]


def test_summary_one_seed_and_uneven_seeds(tmp_path: Path) -> None:
    paths = study_paths(tmp_path, methods=["ew", "rlw"], seeds=[0]) + study_paths(tmp_path, methods=["rlw"], seeds=[1])
    runs = load_runs(paths)
    table = summary_table(runs)
    assert table["n_seeds"].to_dict() == {"ew": 1, "rlw": 2}
    assert math.isnan(table.loc["ew", "TL_acc_std"]) and math.isnan(table.loc["ew", "avg_std"])
    assert table.loc["rlw", "TL_acc_std"] == pytest.approx(np.std([91.0, 92.0], ddof=1))
    md = tmp_path / "t.md"
    write_table(table, runs, "Uneven", tmp_path / "t.csv", md)
    text = md.read_text()
    assert "| ew " in text and "90.00 " in text and "90.00 ±" not in text
    assert "methods differ in their seeds" in text


def test_summary_without_baseline(tmp_path: Path) -> None:
    runs = load_runs(study_paths(tmp_path, methods=["rlw", "rgw"]))
    table = summary_table(runs)
    assert table["delta_p"].isna().all()
    write_table(table, runs, "No EW", tmp_path / "t.csv", tmp_path / "t.md")
    assert "no EW runs in this study" in (tmp_path / "t.md").read_text()


def test_write_table_csv_and_markdown(runs: list[dict[str, Any]], tmp_path: Path) -> None:
    table = summary_table(runs)
    out_csv, out_md = tmp_path / "out" / "table.csv", tmp_path / "out" / "table.md"
    write_table(table, runs, "Multi-digits: clean labels", out_csv, out_md)

    back = pd.read_csv(out_csv, index_col="method")
    pd.testing.assert_frame_equal(back, table, check_exact=False, rtol=1e-12)
    assert all(pd.api.types.is_numeric_dtype(back[c]) for c in back.columns)

    text = out_md.read_text()
    lines = text.splitlines()
    assert lines[0] == "# Multi-digits: clean labels"
    assert "Dataset: `multi_digits` (test split)" in lines
    assert f"**Stand-in data: {STAND_IN}**" in lines
    assert (
        "Mean ± std over 3 seeds (seeds: 0, 1, 2); model selected by best_val; Δp relative to EW (RW paper, Sec. 5)"
    ) in lines
    rlw = next(line for line in lines if line.startswith("| rlw"))
    expected_dp = 50.0 * (1 / 91 + 1 / 82)
    assert f"{92.0:.2f} ± {np.std([91, 92, 93], ddof=1):.2f}" in rlw
    assert f"+{expected_dp:.2f}%" in rlw
    assert "+0.00%" in next(line for line in lines if line.startswith("| ew"))
    assert "-" in next(line for line in lines if line.startswith("| rgw")).split("|")[-2]
    assert not list(out_csv.parent.glob(".*.tmp"))  # no temp files left behind


def test_markdown_real_data_has_no_stand_in_line(tmp_path: Path) -> None:
    runs = load_runs(study_paths(tmp_path, stand_in=None))
    write_table(summary_table(runs), runs, "Real", tmp_path / "t.csv", tmp_path / "t.md")
    assert "Stand-in" not in (tmp_path / "t.md").read_text()


# --------------------------------------------------------------------------- figures


def test_accuracy_curves_files(runs: list[dict[str, Any]], tmp_path: Path) -> None:
    png, pdf = tmp_path / "fig" / "curves.png", tmp_path / "fig" / "curves.pdf"
    accuracy_curves(runs, "Multi-digits: test accuracy", png, pdf)
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.stat().st_size > 1000 and pdf.read_bytes()[:5] == b"%PDF-"
    assert not list(png.parent.glob(".*.tmp"))
    first = (png.read_bytes(), pdf.read_bytes())
    accuracy_curves(runs, "Multi-digits: test accuracy", png, pdf)
    assert (png.read_bytes(), pdf.read_bytes()) == first  # deterministic output


def test_accuracy_curves_single_seed_and_unknown_metric(tmp_path: Path) -> None:
    runs = load_runs(study_paths(tmp_path, seeds=[0], stand_in=None))
    accuracy_curves(runs, "One seed", tmp_path / "c.png", tmp_path / "c.pdf", split="val")
    assert (tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(DataError, match="metric 'f1'"):
        accuracy_curves(runs, "x", tmp_path / "d.png", tmp_path / "d.pdf", metric="f1")
