"""Tests of mtlrepro.report.paper_figures: every figure kind drawn from synthetic runs, checked for what it plots.

Each run below is a ``mtlrepro.run/2`` document whose numbers are simple functions of method, seed,
task and epoch, written to disk and read back with ``load_runs``. The expected series are computed
here by hand (``statistics.mean``/``stdev`` over the seeds' values), independently of pandas.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from scipy import stats

from mtlrepro.errors import ConfigError, DataError
from mtlrepro.report import paper_figures
from mtlrepro.report.paper_figures import (
    EXCESS_RISK_KEY,
    excess_risk_vs_truth,
    learning_curves,
    loss_profile,
    noise_sweep,
    weight_trajectories,
)
from mtlrepro.report.runs import load_runs

STAND_IN = "Stand-in for MultiMNIST: synthetic digits (demo scale)"
TWO = ("TL", "BR")
SEEDS = (0, 1, 2)
N_EPOCHS = 3
OFFSET = {"ew": 0.0, "rlw": 2.0, "excess_mtl": 4.0, "gradnorm": -3.0, "mgda": 1.0, "stl-TL": 0.5, "stl-BR": -0.5}
LOSS_STAGE = {"ew": True, "rlw": True, "excess_mtl": True, "gradnorm": False, "mgda": False}

PerTask = Callable[[str, int], float]
"""(task, epoch) -> value."""
MaybePerTask = Callable[[str, int], float | None]
"""(task, epoch) -> value, or None where the epoch records none (ExcessMTL's warm-up)."""


def run_doc(
    method: str,
    seed: int,
    *,
    tasks: Sequence[str] = TWO,
    noise: Mapping[str, float] | None = None,
    n_epochs: int = N_EPOCHS,
    metric: PerTask | None = None,
    val_metric: PerTask | None = None,
    train_loss: PerTask | None = None,
    loss_weights: PerTask | None = None,
    grad_weights: PerTask | None = None,
    diagnostics: MaybePerTask | None = None,
    selected: int | None = None,
) -> dict[str, Any]:
    """One run record; every per-epoch quantity comes from a (task, epoch) callable."""
    noise = dict(noise or {})
    label = "_".join(f"{t}{r:g}" for t, r in sorted(noise.items()) if r) or "clean"
    metric = metric or (lambda t, e: 50.0 + 10 * e + OFFSET.get(method, 0.0) + seed)
    val_metric = val_metric or (lambda t, e: (metric(t, e) or 0.0) - 1.0)
    train_loss = train_loss or (lambda t, e: 1.0 / e)
    loss_stage = LOSS_STAGE.get(method, True)
    if loss_weights is None and loss_stage:
        loss_weights = lambda t, e: 1.0  # noqa: E731

    def per_task(fn: MaybePerTask | None, e: int) -> dict[str, float] | None:
        if fn is None:
            return None
        values = {t: fn(t, e) for t in tasks}
        return None if any(v is None for v in values.values()) else {t: float(v) for t, v in values.items()}  # type: ignore[arg-type]

    epochs = []
    for e in range(1, n_epochs + 1):
        diag = per_task(diagnostics, e)
        epochs.append(
            {
                "epoch": e,
                "train_loss": per_task(train_loss, e),
                "loss_weights": per_task(loss_weights, e),
                "grad_weights": per_task(grad_weights, e),
                "diagnostics": {} if diag is None else {EXCESS_RISK_KEY: diag},
                "val": {t: {"acc": v} for t, v in (per_task(val_metric, e) or {}).items()},
                "test": {t: {"acc": v} for t, v in (per_task(metric, e) or {}).items()},
                "seconds": 0.1,
            }
        )
    chosen = selected or n_epochs
    stage = {"entry": method, "weighting": method, "options": {}}
    return {
        "format": "mtlrepro.run/2",
        "run": {
            "dataset": "multi_digits",
            "arch": "hps",
            "method": method,
            "noise": label,
            "seed": seed,
            "dir": f"results/runs/multi_digits/hps/{method}/{label}/seed{seed}",
        },
        "spec": {
            "method": {
                "expression": method,
                "loss": stage if loss_stage else None,
                "gradient": None if loss_stage else stage,
            },
            "noise": noise,
            "noise_label": label,
            "seed": seed,
        },
        "dataset": {
            "name": "multi_digits",
            "stand_in": STAND_IN,
            "tasks": [{"name": t, "metrics": {"acc": "higher"}} for t in tasks],
        },
        "epochs": epochs,
        "selection": {"rule": "best_val", "description": "highest mean validation score over tasks", "epoch": chosen},
        "final": {"val": epochs[chosen - 1]["val"], "test": epochs[chosen - 1]["test"]},
    }


def load(tmp_path: Path, docs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write the documents as run files and read them back (so every run has a file as its source)."""
    paths = []
    for doc in docs:
        run = doc["run"]
        path = tmp_path / "runs" / run["method"] / run["noise"] / f"seed{run['seed']}" / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        paths.append(path)
    return load_runs(paths)


def study(**keys: Any) -> dict[str, Any]:
    """A study description as the lead passes it."""
    return {
        "name": "demo",
        "title": "Demo figure",
        "paper": "excess_mtl",
        "reproduces": "EM Figure 3",
        "baseline": "ew",
        "seeds": list(SEEDS),
        **keys,
    }


@pytest.fixture
def texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text drawn on the saved figures (titles, notes, axis labels), captured at save time."""
    captured: list[str] = []
    original = paper_figures.save_figure_atomic

    def spy(fig: Figure, path: Any, fmt: str, **kwargs: Any) -> None:
        captured.extend(t.get_text() for t in fig.findobj(Text))
        original(fig, path, fmt, **kwargs)

    monkeypatch.setattr(paper_figures, "save_figure_atomic", spy)
    return captured


def draw(fn: Callable[..., pd.DataFrame], runs: Any, tmp_path: Path, **keys: Any) -> pd.DataFrame:
    """Render ``fn`` into tmp_path and check both files are real PNG / PDF of a non-trivial size."""
    png, pdf = tmp_path / "out" / "fig.png", tmp_path / "out" / "fig.pdf"
    data = fn(runs, study(**keys), png, pdf)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
    assert not list(png.parent.glob(".*.tmp")), "temporary files left behind"
    return data


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1) of ``values``, by the standard library."""
    return statistics.mean(values), statistics.stdev(values)


def check_stats(row: Mapping[str, Any] | pd.Series, values: Sequence[float]) -> None:
    """``row`` holds mean ± 1 std of ``values`` as y / std / low / high, and n."""
    mean, std = mean_std(values)
    assert row["y"] == pytest.approx(mean)
    assert row["std"] == pytest.approx(std)
    assert row["low"] == pytest.approx(mean - std)
    assert row["high"] == pytest.approx(mean + std)
    assert row["n"] == len(values)


def joined(texts: list[str]) -> str:
    """All captured figure texts as one line (line breaks of wrapped notes removed)."""
    return " ".join(" ".join(texts).split())


# --------------------------------------------------------------------------- learning curves


def test_learning_curves_plot_mean_and_std_per_epoch(tmp_path: Path, texts: list[str]) -> None:
    def acc(method: str, seed: int) -> PerTask:
        return lambda t, e: 40.0 + 7 * e + OFFSET[method] + (seed**2 if t == "TL" else -seed)

    docs = [run_doc(m, s, metric=acc(m, s)) for s in SEEDS for m in ("rlw", "ew")]
    data = draw(learning_curves, load(tmp_path, docs), tmp_path, split="both")

    assert list(data.columns) == ["split", "panel", "metric", "series", "x", "y", "std", "low", "high", "n"]
    assert len(data) == 2 * 2 * 2 * N_EPOCHS  # splits x tasks x methods x epochs
    # order: split, task (declared), method (first appearance: rlw before ew), epoch
    assert list(
        data.drop_duplicates(["split", "panel", "series"])[["split", "panel", "series"]].itertuples(
            index=False, name=None
        )
    ) == [(split, task, method) for split in ("val", "test") for task in TWO for method in ("rlw", "ew")]
    for _, row in data.iterrows():
        test = [acc(row["series"], s)(row["panel"], row["x"]) for s in SEEDS]
        check_stats(row, [v - 1.0 for v in test] if row["split"] == "val" else test)
    assert set(data["metric"]) == {"acc"}
    row = data[(data.split == "test") & (data.panel == "TL") & (data.series == "ew") & (data.x == 2)].iloc[0]
    assert row["y"] == pytest.approx((54 + 55 + 58) / 3)  # 40 + 14 + seed**2 for seeds 0, 1, 2
    text = joined(texts)
    assert STAND_IN in text
    assert "3 seeds" in text
    assert "best_val" in text and "never the test split" in text
    assert "EM Figure 3" in text


def test_learning_curves_single_split_and_ci_band(tmp_path: Path) -> None:
    docs = [run_doc(m, s, metric=lambda t, e, s=s: 60.0 + e + 3 * s * s) for s in SEEDS for m in ("ew",)]
    runs = load(tmp_path, docs)
    data = draw(learning_curves, runs, tmp_path, split="val", band="ci", bootstrap_seed=7, bootstrap_resamples=999)
    assert set(data["split"]) == {"val"}
    for _, row in data.iterrows():
        values = np.array([60.0 + row["x"] + 3 * s * s - 1.0 for s in SEEDS])
        expected = stats.bootstrap(
            (values,), np.mean, n_resamples=999, method="percentile", rng=np.random.default_rng(7)
        ).confidence_interval
        assert row["low"] == pytest.approx(expected.low)
        assert row["high"] == pytest.approx(expected.high)
        assert row["low"] <= row["y"] <= row["high"]
    again = learning_curves(
        runs,
        study(split="val", band="ci", bootstrap_seed=7, bootstrap_resamples=999),
        tmp_path / "b.png",
        tmp_path / "b.pdf",
    )
    pd.testing.assert_frame_equal(data, again)


def test_learning_curves_at_noise_and_bad_options(tmp_path: Path) -> None:
    docs = [run_doc("ew", s, noise=n) for s in SEEDS for n in ({}, {"BR": 0.8})]
    runs = load(tmp_path, docs)
    with pytest.raises(DataError, match="also comes from"):
        learning_curves(runs, study(), tmp_path / "a.png", tmp_path / "a.pdf")
    data = draw(learning_curves, runs, tmp_path, at_noise=0.8)
    assert data["y"].tolist() == pytest.approx([61.0 + 10 * (e - 1) for e in (1, 2, 3)] * 2)
    with pytest.raises(DataError, match=r"studies\.demo\.at_noise"):
        learning_curves(runs, study(at_noise="TL0.2"), tmp_path / "a.png", tmp_path / "a.pdf")
    with pytest.raises(ConfigError, match=r"studies\.demo\.split"):
        learning_curves(runs, study(split="train"), tmp_path / "a.png", tmp_path / "a.pdf")
    with pytest.raises(ConfigError, match=r"studies\.demo\.band"):
        learning_curves(runs, study(band="iqr"), tmp_path / "a.png", tmp_path / "a.pdf")


# --------------------------------------------------------------------------- weight trajectories


def test_weight_trajectories_normalised_loss_or_grad_weights(tmp_path: Path, texts: list[str]) -> None:
    def ex_weights(seed: int) -> PerTask:  # raw scale sums to 2 (as a "sum to T" method would)
        return lambda t, e: (0.4 + 0.1 * e + 0.1 * seed) if t == "TL" else 2.0 - (0.4 + 0.1 * e + 0.1 * seed)

    docs = []
    for s in SEEDS:
        docs.append(run_doc("ew", s))  # raw loss weights 1, 1
        docs.append(run_doc("mgda", s, grad_weights=lambda t, e, s=s: {"TL": 1.0, "BR": 3.0 + s}[t]))
        docs.append(run_doc("excess_mtl", s, loss_weights=ex_weights(s)))
    data = draw(weight_trajectories, load(tmp_path, docs), tmp_path)

    assert list(data.columns) == ["panel", "weights", "series", "x", "y", "std", "low", "high", "n"]
    assert list(dict.fromkeys(data["panel"])) == ["ew", "mgda", "excess_mtl"]
    assert dict(zip(data["panel"], data["weights"], strict=True)) == {
        "ew": "loss",
        "mgda": "grad",
        "excess_mtl": "loss",
    }
    assert len(data) == 3 * 2 * N_EPOCHS
    for _, row in data.iterrows():
        method, task, e = row["panel"], row["series"], row["x"]
        if method == "ew":
            shares = [0.5, 0.5, 0.5]
        elif method == "mgda":
            shares = [(1.0 if task == "TL" else 3.0 + s) / (4.0 + s) for s in SEEDS]
        else:
            shares = [ex_weights(s)(task, e) / 2.0 for s in SEEDS]
        check_stats(row, shares)
    text = joined(texts)
    assert STAND_IN in text and "3 seeds" in text and "divided by their sum" in text


def test_weight_trajectories_raw_and_missing_weights(tmp_path: Path) -> None:
    docs = [run_doc("ew", s, loss_weights=lambda t, e: 1.0, grad_weights=None) for s in SEEDS]
    runs = load(tmp_path, docs)
    raw = draw(weight_trajectories, runs, tmp_path, normalise_weights=False)
    assert raw["y"].tolist() == [1.0] * (2 * N_EPOCHS)
    with pytest.raises(DataError, match=r"seed0/metrics\.json: 'epochs\[0\]\.grad_weights' is missing"):
        weight_trajectories(runs, study(weights="grad"), tmp_path / "a.png", tmp_path / "a.pdf")


# --------------------------------------------------------------------------- noise sweep

THREE = ("A", "B", "C")  # C is the noisy task
LEVELS = (0.0, 0.4, 0.8)


def sweep_acc(method: str, seed: int, level: float) -> PerTask:
    """Clean tasks lose 10 * level (ExcessMTL: nothing); the noisy task loses 30 * level."""
    loss = 0.0 if method == "excess_mtl" else 10 * level

    def acc(task: str, epoch: int) -> float:
        base = {"A": 90.0, "B": 80.0, "C": 70.0}[task] + OFFSET[method] + seed + epoch
        return base - (30 * level if task == "C" else loss)

    return acc


def sweep_weights(method: str, seed: int, level: float) -> PerTask:
    """Raw weights; the last epoch's matter. GradNorm moves weight to the noisy task, ExcessMTL away from it."""
    noisy = {"ew": 1.0, "gradnorm": 1.0 + 4 * level + seed, "excess_mtl": 1.0 - level + 0.1 * seed}[method]
    return lambda t, e: noisy if t == "C" else 1.0 + 0.01 * e


def sweep_docs(
    levels: Sequence[float] = LEVELS, methods: Sequence[str] = ("ew", "gradnorm", "excess_mtl")
) -> list[dict[str, Any]]:
    """Runs of every method x seed x noise level on C (3 epochs, epoch 2 selected)."""
    docs = []
    for level in levels:
        for s in SEEDS:
            for m in methods:
                weights = sweep_weights(m, s, level)
                docs.append(
                    run_doc(
                        m,
                        s,
                        tasks=THREE,
                        noise={"C": level} if level else {},
                        metric=sweep_acc(m, s, level),
                        loss_weights=weights if LOSS_STAGE[m] else None,
                        grad_weights=None if LOSS_STAGE[m] else weights,
                        selected=2,
                    )
                )
    return docs


def test_noise_sweep_overall_clean_and_weight_share(tmp_path: Path, texts: list[str]) -> None:
    data = draw(noise_sweep, load(tmp_path, sweep_docs()), tmp_path)

    assert list(data.columns) == ["panel", "series", "x", "y", "std", "low", "high", "n"]
    assert len(data) == 3 * 3 * len(LEVELS)
    assert list(dict.fromkeys(data["panel"])) == ["overall", "clean", "clean_weight"]
    assert list(data["x"][:3]) == list(LEVELS)
    for _, row in data.iterrows():
        method, level = row["series"], row["x"]
        if row["panel"] == "clean_weight":  # last epoch (3), share of A and B in the sum over A, B, C
            values = []
            for s in SEEDS:
                w = {t: sweep_weights(method, s, level)(t, N_EPOCHS) for t in THREE}
                values.append((w["A"] + w["B"]) / (w["A"] + w["B"] + w["C"]))
        else:  # selected epoch (2)
            tasks = THREE if row["panel"] == "overall" else ("A", "B")
            values = [statistics.mean(sweep_acc(method, s, level)(t, 2) for t in tasks) for s in SEEDS]
        check_stats(row, values)
    ew = data[(data.panel == "clean_weight") & (data.series == "ew")]
    assert ew["y"].tolist() == pytest.approx([2.06 / 3.06] * 3)  # weights 1.03, 1.03, 1 at epoch 3
    flat = data[(data.panel == "clean") & (data.series == "excess_mtl")]["y"].tolist()
    assert flat == pytest.approx([90.0 + 4 + 1 + 2 - 5] * 3)  # (A + B) / 2 = 85 + offset 4 + mean seed 1 + epoch 2
    text = joined(texts)
    assert STAND_IN in text and "3 seeds" in text and "best_val" in text
    assert "noisy task(s): C" in text and "clean task(s): A, B" in text


def test_noise_sweep_selected_epoch_weights_and_declared_noisy_tasks(tmp_path: Path) -> None:
    runs = load(tmp_path, sweep_docs(levels=(0.0, 0.8), methods=("ew", "excess_mtl")))
    data = draw(noise_sweep, runs, tmp_path, weight_epoch="selected", noisy_tasks=["B", "C"], normalise_weights=False)
    row = data[(data.panel == "clean_weight") & (data.series == "excess_mtl") & (data.x == 0.8)].iloc[0]
    check_stats(row, [1.02] * 3)  # raw weight of A at epoch 2
    row = data[(data.panel == "clean") & (data.series == "ew") & (data.x == 0.0)].iloc[0]
    check_stats(row, [92.0 + s for s in SEEDS])  # A only


def test_noise_sweep_needs_two_levels_and_the_baseline(tmp_path: Path) -> None:
    one = load(tmp_path / "one", sweep_docs(levels=(0.4,)))
    with pytest.raises(DataError, match=r"metrics\.json: a noise sweep needs at least two noise levels.*spec\.noise"):
        noise_sweep(one, study(), tmp_path / "a.png", tmp_path / "a.pdf")
    no_ew = load(tmp_path / "no_ew", sweep_docs(methods=("gradnorm", "excess_mtl")))
    with pytest.raises(DataError, match=r"studies\.demo\.baseline.*uniform scalarization 'ew'"):
        noise_sweep(no_ew, study(), tmp_path / "a.png", tmp_path / "a.pdf")
    clean_only = load(tmp_path / "all", sweep_docs())
    with pytest.raises(DataError, match="no clean task"):
        noise_sweep(clean_only, study(noisy_tasks=list(THREE)), tmp_path / "a.png", tmp_path / "a.pdf")


def test_noise_sweep_rejects_two_levels_in_one_run(tmp_path: Path) -> None:
    docs = sweep_docs(levels=(0.0, 0.4))
    docs[-1]["spec"]["noise"] = {"B": 0.2, "C": 0.4}
    runs = load(tmp_path, docs)
    with pytest.raises(DataError, match=r"seed2/metrics\.json: 'spec\.noise' gives the noisy tasks different levels"):
        noise_sweep(runs, study(), tmp_path / "a.png", tmp_path / "a.pdf")


# --------------------------------------------------------------------------- loss profile


def profile_loss(method: str, seed: int, level: float) -> PerTask:
    """Final-epoch training losses; noise on BR raises BR's loss (and, except for ExcessMTL, TL's)."""

    def loss(task: str, epoch: int) -> float:
        base = 0.1 * epoch + 0.01 * seed + {"TL": 0.0, "BR": 0.05}[task]
        if task == "BR":
            return base + level
        return base + (0.0 if method in ("excess_mtl", "stl-TL") else 0.5 * level)

    return loss


def test_loss_profile_points_and_single_task_lines(tmp_path: Path, texts: list[str]) -> None:
    docs = [
        run_doc(m, s, noise={"BR": level} if level else {}, train_loss=profile_loss(m, s, level))
        for level in (0.0, 0.8)
        for s in SEEDS
        for m in ("ew", "excess_mtl", "stl-TL", "stl-BR")
    ]
    data = draw(loss_profile, load(tmp_path, docs), tmp_path)

    assert list(data.columns) == [
        "kind", "series", "noise", "level", "x", "y", "x_std", "y_std", "x_low", "x_high", "y_low", "y_high", "n",
    ]  # fmt: skip
    points = data[data.kind == "method"]
    assert len(points) == 4 and len(data) == 8
    for _, row in points.iterrows():
        xs = [profile_loss(row["series"], s, row["level"])("TL", N_EPOCHS) for s in SEEDS]
        ys = [profile_loss(row["series"], s, row["level"])("BR", N_EPOCHS) for s in SEEDS]
        (mx, sx), (my, sy) = mean_std(xs), mean_std(ys)
        assert (row["x"], row["x_std"], row["y"], row["y_std"]) == pytest.approx((mx, sx, my, sy))
        assert (row["x_low"], row["x_high"], row["y_low"], row["y_high"]) == pytest.approx(
            (mx - sx, mx + sx, my - sy, my + sy)
        )
        assert row["n"] == 3
    noisy_ew = points[(points.series == "ew") & (points.noise == "BR0.8")].iloc[0]
    assert (noisy_ew["x"], noisy_ew["y"]) == pytest.approx((0.3 + 0.01 + 0.4, 0.3 + 0.01 + 0.05 + 0.8))
    lines = data[data.kind == "stl"].set_index(["series", "noise"])
    assert lines.loc[("stl-TL", "clean"), "x"] == pytest.approx(0.31)
    assert pd.isna(lines.loc[("stl-TL", "clean"), "y"])
    assert lines.loc[("stl-BR", "BR0.8"), "y"] == pytest.approx(0.31 + 0.05 + 0.8)
    assert pd.isna(lines.loc[("stl-BR", "BR0.8"), "x"])
    assert lines.loc[("stl-BR", "BR0.8"), "y_std"] == pytest.approx(0.01)
    text = joined(texts)
    assert STAND_IN in text and "3 seeds" in text and "single-task runs" in text

    only_noisy = draw(loss_profile, load(tmp_path, docs), tmp_path, noise_levels=[0.8])
    assert set(only_noisy["noise"]) == {"BR0.8"}
    assert set(draw(loss_profile, load(tmp_path, docs), tmp_path, noise_levels=["clean"])["noise"]) == {"clean"}


def test_loss_profile_selected_epoch_and_bad_tasks(tmp_path: Path) -> None:
    docs = [run_doc("ew", s, train_loss=lambda t, e, s=s: 1.0 / e + s, selected=1) for s in SEEDS]
    runs = load(tmp_path, docs)
    data = draw(loss_profile, runs, tmp_path, loss_epoch="selected")
    check_stats({"y": data["x"][0], "std": data["x_std"][0], "low": data["x_low"][0], "high": data["x_high"][0],
                 "n": data["n"][0]}, [1.0, 2.0, 3.0])  # fmt: skip
    with pytest.raises(ConfigError, match=r"studies\.demo\.tasks"):
        loss_profile(runs, study(tasks=["TL", "XX"]), tmp_path / "a.png", tmp_path / "a.pdf")


# --------------------------------------------------------------------------- excess risk


def excess_loss(seed: int) -> PerTask:
    """Training loss per epoch; the noisy task BR converges to a higher loss (its Bayes optimal loss)."""
    return lambda t, e: {"TL": [2.0, 1.0, 0.5, 0.3, 0.2], "BR": [2.5, 2.2, 2.1, 2.05, 2.0]}[t][e - 1] + 0.1 * seed


def excess_estimate(seed: int) -> MaybePerTask:
    """The method's estimate, recorded from epoch 2 (epoch 1 is a warm-up without one)."""
    return lambda t, e: None if e == 1 else (1 + seed) * {"TL": 8.0, "BR": 1.0}[t] / e


def test_excess_risk_estimate_against_proxy(tmp_path: Path, texts: list[str]) -> None:
    docs = [
        run_doc(m, s, n_epochs=5, noise={"BR": 0.6}, train_loss=excess_loss(s), diagnostics=excess_estimate(s))
        for s in SEEDS
        for m in ("ew", "excess_mtl")
    ]
    docs = [d for d in docs if d["run"]["method"] == "excess_mtl"] + [
        d | {"epochs": [e | {"diagnostics": {}} for e in d["epochs"]]} for d in docs if d["run"]["method"] == "ew"
    ]
    data = draw(excess_risk_vs_truth, load(tmp_path, docs), tmp_path)

    assert list(data.columns) == ["panel", "series", "x", "y", "std", "low", "high", "n"]
    assert len(data) == 2 * 2 * 4  # tasks x series x epochs 2..5
    assert sorted(set(data["x"])) == [2, 3, 4, 5]
    for _, row in data.iterrows():
        task, e = row["panel"], row["x"]
        values = []
        for s in SEEDS:
            if row["series"] == "estimate":
                series = [excess_estimate(s)(task, i) for i in range(2, 6)]
                values.append(excess_estimate(s)(task, e) / max(series))
            else:
                losses = [excess_loss(s)(task, i) for i in range(1, 6)]
                proxies = [losses[i - 1] - min(losses) for i in range(2, 6)]  # epochs with an estimate
                values.append((losses[e - 1] - min(losses)) / max(proxies))
        if len(set(values)) == 1:  # every seed equal: std 0
            assert (row["y"], row["std"], row["n"]) == pytest.approx((values[0], 0.0, 3))
        else:
            check_stats(row, values)
    proxy = data[(data.panel == "BR") & (data.series == "proxy")]["y"].tolist()
    assert proxy == pytest.approx([1.0, 0.1 / 0.2, 0.05 / 0.2, 0.0])  # (2.2, 2.1, 2.05, 2.0) - 2.0 over 0.2
    estimate = data[(data.panel == "TL") & (data.series == "estimate")]["y"].tolist()
    assert estimate == pytest.approx([1.0, 2 / 3, 2 / 4, 2 / 5])
    text = joined(texts)
    assert STAND_IN in text and "3 seeds" in text
    assert "current minus converged training loss" in text and "divided by their peak" in text


def test_excess_risk_missing_diagnostics_names_file_and_key(tmp_path: Path) -> None:
    docs = [run_doc("excess_mtl", s, n_epochs=5, train_loss=excess_loss(s)) for s in SEEDS]
    runs = load(tmp_path, docs)
    with pytest.raises(
        DataError, match=r"seed0/metrics\.json: no epoch records .*diagnostics\.excess_mtl\.excess_risk"
    ):
        excess_risk_vs_truth(runs, study(), tmp_path / "a.png", tmp_path / "a.pdf")
    with pytest.raises(DataError, match=r"studies\.demo\.method.*no run of method 'ew'"):
        excess_risk_vs_truth(runs, study(method="ew"), tmp_path / "a.png", tmp_path / "a.pdf")
    # a proxy that is 0 everywhere (the loss never moved) is drawn as 0, not refused
    flat = [run_doc("excess_mtl", 0, n_epochs=3, train_loss=lambda t, e: 1.0, diagnostics=lambda t, e: 1.0)]
    data = excess_risk_vs_truth(load(tmp_path / "flat", flat), study(), tmp_path / "a.png", tmp_path / "a.pdf")
    assert data[data.series == "proxy"]["y"].tolist() == [0.0] * 6
