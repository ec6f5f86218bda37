"""Tests of mtlrepro.report.runs: loading and checking run files, long-form frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mtlrepro.errors import DataError
from mtlrepro.report.runs import (
    CURVE_COLUMNS,
    RUN_COLUMNS,
    check_one_run_per_seed,
    curves_frame,
    load_runs,
    runs_frame,
)

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
    # the scorecard reads every study's runs, of every dataset
    mixed = load_runs(first + other, one_dataset=False)
    assert [run["run"]["dataset"] for run in mixed] == [load_runs(first)[0]["run"]["dataset"], "celeba_small"]


def test_duplicate_method_seed_is_refused(tmp_path: Path) -> None:
    clean = study_paths(tmp_path, methods=["ew"], seeds=[0])
    noisy = study_paths(tmp_path, methods=["ew"], seeds=[0], noise="noisy")
    with pytest.raises(DataError, match=f"{noisy[0]}: method 'ew' seed 0 also comes from"):
        check_one_run_per_seed(load_runs(clean + noisy))
