"""From run records to the scorecard: each claim's evidence, computed from the studies that produce it.

Records are matched to studies by what they describe (dataset, architecture,
method, noise label, seed), so the scorecard needs only the studies'
descriptions (``Study.to_json()``) and the files. A claim's evidence comes from
the studies whose outputs measure it:

=========================== ===============================================
claim                       studies (output kind) and what is taken
=========================== ===============================================
rw-rlw-comparable           ``method_table`` with EW and RLW: Δp and its CI
rw-rlw-flatter              ``flatness``: top Hessian eigenvalue per seed
rw-rlw-improves-gradient    ``combination_grid``: Δp per seed of each cell
em-clean-task-kept          ``noise_sweep``: clean-task metric per noise level
em-least-weight-noisy       ``noise_sweep``: last-epoch weight per task
em-estimate-tracks          ``excess_risk``: the estimate and its proxy
=========================== ===============================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mtlrepro.metrics import HIGHER, delta_p
from mtlrepro.report import flatness_report, paper_figures, paper_tables, published, scorecard
from mtlrepro.report.outputs import study_options
from mtlrepro.report.runs import dataset_info, load_runs

ESTIMATE = "excess_mtl.excess_risk"


def belongs(record: Mapping[str, Any], study: Mapping[str, Any]) -> bool:
    """Whether a run record (or a flatness analysis, which repeats its ``run`` block) is one of the study's runs."""
    run = record["run"]
    return (
        run.get("dataset", study["dataset"]) == study["dataset"]
        and run.get("arch", study["archs"][0]) in study["archs"]
        and run["method"] in study["methods"]
        and run.get("noise", "clean") in study.get("noise_labels", ["clean"])
        and int(run["seed"]) in study["seeds"]
    )


def _with_kind(studies: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [study_options(s, kind) for s in studies if kind in [o["kind"] for o in s.get("outputs", [])]]


def _final(record: Mapping[str, Any], split: str = "test") -> dict[str, dict[str, float]]:
    return record["final"][split]


def comparable_tables(studies, runs) -> dict[str, Any] | None:
    """Per dataset, RLW's and EW's Δp with its bootstrap CI, from the first method table that has both."""
    tables: dict[str, pd.DataFrame] = {}
    labels: dict[str, str | None] = {}
    for study in _with_kind(studies, "method_table"):
        mine = [r for r in runs if belongs(r, study) and r["run"]["noise"] == "clean"]
        methods = {r["run"]["method"] for r in mine}
        if study["dataset"] in tables or not {"ew", "rlw"} <= methods:
            continue
        table = paper_tables.method_table(mine, study)
        tables[study["dataset"]] = pd.DataFrame(
            {
                "method": list(table.index) if "method" not in table.columns else table["method"],
                "delta_p": table["delta_p_mean"].to_numpy(),
                "ci_low": table["delta_p_ci_low"].to_numpy(),
                "ci_high": table["delta_p_ci_high"].to_numpy(),
            }
        )
        labels[study["dataset"]] = mine[0]["dataset"].get("stand_in")
    return {"tables": tables, "stand_in": labels} if tables else None


def flatter_frame(studies, analyses) -> dict[str, Any] | None:
    """Top Hessian eigenvalue and gradient variance per method and seed, from the flatness studies."""
    rows = []
    stand_in = None
    for study in _with_kind(studies, "flatness"):
        for record in analyses:
            if belongs(record, study):
                run = record["run"]
                rows.append(
                    (
                        run["method"],
                        int(run["seed"]),
                        study["dataset"],
                        record["top_eigenvalue"],
                        record["gradient_variance"],
                    )
                )
                stand_in = stand_in or record.get("stand_in")
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=["method", "seed", "dataset", "top_eigenvalue", "grad_variance"])
    return {"flatness": frame.drop_duplicates(["method", "seed", "dataset"]), "stand_in": stand_in}


def _per_seed_delta_p(mine: Sequence[Mapping[str, Any]], baseline: str) -> list[tuple[Mapping[str, Any], float]]:
    """Each run's Δp (percent) against the baseline's mean over seeds (RW Sec. 5)."""
    directions = dataset_info(mine).directions
    base = [_final(r) for r in mine if r["run"]["method"] == baseline]
    if not base:
        return []
    mean = {
        task: {metric: sum(b[task][metric] for b in base) / len(base) for metric in metrics}
        for task, metrics in directions.items()
    }
    return [(r, delta_p(_final(r), mean, directions)) for r in mine]


def improvement_grid(studies, runs) -> dict[str, Any] | None:
    """Per-seed Δp of every (gradient, loss) cell of the combination grids."""
    rows = []
    stand_in = None
    for study in _with_kind(studies, "combination_grid"):
        mine = [r for r in runs if belongs(r, study) and r["run"]["noise"] == "clean"]
        for record, value in _per_seed_delta_p(mine, study.get("baseline", "ew")):
            loss, gradient = scorecard.method_stages(record)
            rows.append((gradient, loss, int(record["run"]["seed"]), value))
            stand_in = stand_in or record["dataset"].get("stand_in")
    if not rows:
        return None
    return {"grid": pd.DataFrame(rows, columns=["gradient", "loss", "seed", "delta_p"]), "stand_in": stand_in}


def _noisy(runs: Sequence[Mapping[str, Any]]) -> set[str]:
    return {task for r in runs for task in paper_figures.noisy_tasks(r)}


def sweep_frames(studies, runs) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Clean-task performance per noise level, and last-epoch weights per task, from the noise sweeps.

    The claims' tests pair runs by (noise, seed) and the clean-task margin is in accuracy points, so the frames
    take the sweeps whose clean tasks are scored by accuracy (the classification sweeps of ExcessMTL Figures
    6-8); a sweep over regression tasks (SARCOS, Figure 9) has its figure but is not judged here yet.
    """
    sweep_rows, weight_rows = [], []
    swept: set[str] = set()
    for study in _with_kind(studies, "noise_sweep"):
        mine = [r for r in runs if belongs(r, study)]
        if not mine:
            continue
        noisy = _noisy(mine)
        directions = dataset_info(mine).directions
        clean = [task for task in directions if task not in noisy]
        first = {task: next(iter(directions[task])) for task in directions}
        accuracy = bool(clean) and all(first[task] == "acc" and directions[task]["acc"] == HIGHER for task in clean)
        label = mine[0]["dataset"].get("stand_in")
        for record in mine:
            method, seed, level = record["run"]["method"], int(record["run"]["seed"]), paper_figures.noise_level(record)
            if not accuracy:
                continue
            value = sum(_final(record)[task][first[task]] for task in clean) / len(clean)
            sweep_rows.append((method, level, seed, value))
            weights = record["epochs"][-1].get("loss_weights") or record["epochs"][-1].get("grad_weights")
            for task, weight in (weights or {}).items():
                weight_rows.append((method, seed, level, task, weight, task in noisy))
        if label and accuracy:
            swept.add(label)
    sweep = None
    if sweep_rows:
        sweep = {"sweep": pd.DataFrame(sweep_rows, columns=["method", "noise", "seed", "clean_metric"])}
        sweep["stand_in"] = "; ".join(sorted(swept)) or None
    weights = None
    if weight_rows:
        columns = ["method", "seed", "noise", "task", "weight", "noisy"]
        frame = pd.DataFrame(weight_rows, columns=columns)
        weights = {"weights": frame, "stand_in": "; ".join(sorted(swept)) or None}
    return sweep, weights


def estimate_trace(studies, runs) -> dict[str, Any] | None:
    """Per epoch and task: ExcessMTL's excess-risk estimate and the proxy, current minus lowest training loss."""
    rows = []
    stand_in = None
    for study in _with_kind(studies, "excess_risk"):
        for record in runs:
            if not belongs(record, study) or record["run"]["method"] != study.get("method", "excess_mtl"):
                continue
            losses = {t: [e["train_loss"][t] for e in record["epochs"]] for t in record["epochs"][0]["train_loss"]}
            for epoch in record["epochs"]:
                estimate = (epoch.get("diagnostics") or {}).get(ESTIMATE)
                for task, value in (estimate or {}).items():
                    proxy = epoch["train_loss"][task] - min(losses[task])
                    rows.append((int(record["run"]["seed"]), epoch["epoch"], task, value, proxy))
            stand_in = stand_in or record["dataset"].get("stand_in")
    if not rows:
        return None
    return {"trace": pd.DataFrame(rows, columns=["seed", "epoch", "task", "estimate", "proxy"]), "stand_in": stand_in}


def reproduced_numbers(studies, runs) -> pd.DataFrame | None:
    """Our Δp beside the published one, for the studies that name a published method table or combination grid."""
    rows = []
    for study in studies:
        key = study.get("published")
        if not key:
            continue
        kind = study.get("published_kind")
        mine = [r for r in runs if belongs(r, study) and r["run"]["noise"] == "clean"]
        if not mine or kind not in ("method_table", "combination_grid"):
            continue  # architecture grids: Table 5 needs architectures beyond HPS (the models issue)
        if kind == "method_table":
            table = paper_tables.method_table(mine, study_options(study, kind))
            methods = list(table.index)
        else:
            table = paper_tables.combination_grid(mine, study_options(study, kind))
            methods = list(table["method"])
        for method, row in zip(methods, table.itertuples(), strict=True):
            rows.append(
                (
                    key,
                    published.canonical_method(str(method)),
                    "delta_p",
                    row.delta_p_mean,
                    row.delta_p_ci_low,
                    row.delta_p_ci_high,
                    row.n_seeds,
                )
            )
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["key", "method", "metric", "value", "ci_low", "ci_high", "n_seeds"])


def write_scorecard(
    studies: Sequence[Mapping[str, Any]],
    metrics: Sequence[str | os.PathLike[str]],
    analyses: Sequence[str | os.PathLike[str]],
    out_md: str | os.PathLike[str],
) -> list[scorecard.Verdict]:
    """Judge every claim from the studies' records and write ``results/scorecard.md``; returns the verdicts."""
    runs = load_runs(metrics, one_dataset=False) if metrics else []
    flat = flatness_report.load_flatness(analyses) if analyses else []
    sweep, weights = sweep_frames(studies, runs)
    summaries = {
        "rw-rlw-comparable": comparable_tables(studies, runs),
        "rw-rlw-flatter": flatter_frame(studies, flat),
        "rw-rlw-improves-gradient": improvement_grid(studies, runs),
        "em-clean-task-kept": sweep,
        "em-least-weight-noisy": weights,
        "em-estimate-tracks": estimate_trace(studies, runs),
    }
    verdicts = scorecard.judge_all(summaries)
    seeds = sorted({len(s["seeds"]) for s in studies})
    rules = sorted({r["selection"]["rule"] for r in runs})
    stand_ins = sorted({r["dataset"]["stand_in"] for r in runs if r["dataset"].get("stand_in")})
    notes = [
        f"{len(studies)} studies, {len(runs)} runs; {'–'.join(map(str, seeds[:1] + seeds[-1:]))} seeds per study; "
        f"epochs selected by {', '.join(rules) or 'n/a'} on the validation split, never the test split.",
        *(f"Stand-in data: {label}" for label in stand_ins),
    ]
    scorecard.write_scorecard(
        verdicts, published.published_numbers(), reproduced_numbers(studies, runs), out_md, notes=notes
    )
    return verdicts
