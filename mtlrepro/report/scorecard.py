"""The reproduction scorecard: each paper's central claims with a verdict, and every published number.

A :class:`Claim` is one sentence a paper claims and backs with its results. A
*judge* function per claim turns summaries the report stage computes from run
records (plain DataFrames, documented on each function) into a
:class:`Verdict`: ``supported``, ``not supported``, ``inconclusive`` or ``not
run`` (the claim's inputs are absent), with the evidence (numbers, seeds) and
the test behind it. :func:`write_scorecard` writes ``results/scorecard.md``: the
claims table and the list of every published number with the reproduced value
beside it where one exists.

Decision rules (explicit, statistical, all at ``alpha = 0.05``; every test is
computed by scipy.stats or statsmodels, none is re-implemented here):

* *Comparable or better* (RLW vs EW in Δp): an equivalence-style margin rule on
  the bootstrap 95% CI of Δp: lower bound above ``-margin`` is comparable or
  better, upper bound below ``-margin`` is worse (margin 1 percentage point of
  Δp by default: about the spread that RW Table 1 calls comparable, -0.99 to
  +1.36 over 14 methods).
* *Smaller / larger than* over seeds: one-sided paired t-test
  (:func:`scipy.stats.ttest_rel`) over the seeds both sides share, Welch's
  t-test (:func:`scipy.stats.ttest_ind`, ``equal_var=False``) when the seeds are
  disjoint.
* *For every X*: supported when the one-sided test is significant for every X
  without adjustment, which is valid because all of them must hold (the
  intersection-union principle, Berger, Technometrics 24, 1982); refuted when the
  opposite direction is significant for some X after Holm's adjustment over the
  Xs (Holm, Scand. J. Statist. 6, 1979; :func:`statsmodels.stats.multitest.multipletests`).
* *Trend against noise*: least-squares slope (:func:`scipy.stats.linregress`)
  with its 95% t-interval, scaled to the change over the studied noise range and
  judged against a margin (2 accuracy points by default).
* *Tracks*: Spearman's rank correlation (:func:`scipy.stats.spearmanr`) with a
  Fisher-z 95% interval computed on the ranks (:func:`scipy.stats.pearsonr`'s
  ``confidence_interval``), judged against a minimum correlation (0.5).

Data that stands in for the paper's data never supports a claim about the
paper's dataset: ``supported`` becomes ``consistent on stand-in data`` and
``not supported`` becomes ``not consistent on stand-in data``, and the evidence
says which stand-in was used.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from mtlrepro.errors import DataError
from mtlrepro.io import write_text_atomic
from mtlrepro.report import stats as report_stats
from mtlrepro.report.published import NUMBER_COLUMNS, canonical_method

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
NOT_RUN = "not run"
CONSISTENT_STAND_IN = "consistent on stand-in data"
NOT_CONSISTENT_STAND_IN = "not consistent on stand-in data"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN, CONSISTENT_STAND_IN, NOT_CONSISTENT_STAND_IN)
"""Every verdict a :class:`Verdict` can carry; the last two only on stand-in data."""

ALPHA = 0.05
"""Significance level of every test."""
DELTA_P_MARGIN = 1.0
"""Δp (percentage points) below EW that still counts as comparable (claim ``rw-rlw-comparable``)."""
CLEAN_DROP_MARGIN = 2.0
"""Change of clean-task performance (metric units, accuracy points) over the noise range that counts as kept."""
TRACK_RHO = 0.5
"""Smallest Spearman correlation between estimate and proxy that counts as tracking."""
COMPETITORS = ("gradnorm", "groupdro", "mgda", "imtl")
"""Methods ExcessMTL's paper says lose clean-task performance as noise grows (Sec. 4.3)."""

PAIRED = "paired t-test"
WELCH = "Welch t-test"
NO_TEST = "no test"

PAPER_NAMES = {"rw": "RW", "excess_mtl": "ExcessMTL"}
"""Paper identifiers -> short names printed in the scorecard."""


@dataclass(frozen=True)
class Claim:
    """One central claim of a paper: what it says, where, what evidence decides it and by which rule."""

    id: str
    paper: str
    statement: str
    where: str
    evidence: str
    test: str


@dataclass(frozen=True)
class Verdict:
    """The outcome for one claim: one of :data:`VERDICTS`, the evidence in words and the test behind it."""

    claim_id: str
    verdict: str
    evidence: str
    test: str
    stand_in: bool

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


# --------------------------------------------------------------------------- the claims


def _comparable_test(margin: float) -> str:
    return (
        f"Per dataset, the bootstrap 95% CI of RLW's Δp against EW: lower bound > −{margin:g}% → comparable or "
        f"better; upper bound < −{margin:g}% → worse; otherwise undecided. Supported when comparable or better on "
        "every dataset, not supported when worse on any, otherwise inconclusive."
    )


def _flatter_test(alpha: float) -> str:
    return (
        "Per dataset, one-sided t-test over seeds that RLW's top Hessian eigenvalue is smaller than EW's "
        f"(paired over shared seeds, scipy.stats.ttest_rel; Welch's when the seeds are disjoint), α = {alpha:g}. "
        "Supported when significant on every dataset (intersection-union test); not supported when RLW's is "
        "significantly larger on some dataset after Holm over datasets; otherwise inconclusive."
    )


def _improves_test(alpha: float) -> str:
    return (
        "Per gradient method G, one-sided t-test over seeds that Δp(RLW+G) > Δp(G with EW loss weights) "
        f"(paired over shared seeds, scipy.stats.ttest_rel; Welch's when disjoint), α = {alpha:g}. Supported when "
        "significant for every G (intersection-union test); not supported when Δp(RLW+G) is significantly lower "
        "for some G after Holm over the gradient methods; otherwise inconclusive."
    )


def _kept_test(margin: float) -> str:
    return (
        "Per method, least-squares slope of clean-task performance on noise level over all runs "
        "(scipy.stats.linregress) with its 95% t-interval, times the studied noise range: lower bound > "
        f"−{margin:g} → kept; upper bound < −{margin:g} → lost; otherwise undecided. Supported when ExcessMTL kept "
        "it and every compared method lost it; not supported when ExcessMTL lost it or a compared method kept it; "
        "otherwise inconclusive."
    )


def _least_weight_test(alpha: float) -> str:
    return (
        "Weights normalised to sum 1 per run, runs with noise > 0. (a) One-sided one-sample t-test "
        "(scipy.stats.ttest_1samp) over ExcessMTL's runs that (largest noisy-task weight − smallest clean-task "
        "weight) < 0; (b) per other method, one-sided t-test that ExcessMTL's mean noisy-task weight is smaller "
        f"(paired over shared (noise, seed), Welch's when disjoint); α = {alpha:g}. Supported when (a) and every (b) "
        "are significant (intersection-union test); not supported when the opposite direction is significant "
        "for (a), or for some (b) after Holm; otherwise inconclusive."
    )


def _tracks_test(rho_min: float, alpha: float) -> str:
    return (
        "Per task, Spearman's ρ between the estimated excess risk and the proxy (current minus converged training "
        "loss), both averaged over seeds per epoch (scipy.stats.spearmanr, one-sided), with a Fisher-z 95% interval "
        f"on the ranks (scipy.stats.pearsonr). Supported when every task has ρ ≥ {rho_min:g} and Holm-adjusted "
        f"p < {alpha:g}; not supported when some task's interval lies entirely below {rho_min:g}; otherwise "
        "inconclusive."
    )


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "rw-rlw-comparable",
        "rw",
        "RLW is comparable to or better than EW in Δp on each dataset.",
        "RW abstract; Sec. 5.2, 5.3, App. C (Tables 1, 3, 6-8)",
        "method table: RLW's Δp against EW with its bootstrap 95% CI, per dataset",
        _comparable_test(DELTA_P_MARGIN),
    ),
    Claim(
        "rw-rlw-flatter",
        "rw",
        "RLW reaches flatter minima than EW (a smaller top Hessian eigenvalue of the training loss).",
        "RW Sec. 4.2, Sec. 5.1, Figure 1",
        "flatness study: top Hessian eigenvalue (pyhessian) at each run's selected checkpoint",
        _flatter_test(ALPHA),
    ),
    Claim(
        "rw-rlw-improves-gradient",
        "rw",
        "Adding RLW improves every gradient-balancing method.",
        "RW Sec. 5.6, Table 4",
        "combination grid: per-seed Δp of each gradient method with EW and with RLW loss weights",
        _improves_test(ALPHA),
    ),
    Claim(
        "em-clean-task-kept",
        "excess_mtl",
        "As noise grows, ExcessMTL keeps clean-task performance while GradNorm, GroupDRO, MGDA and IMTL lose it.",
        "ExcessMTL Sec. 4.3, Figures 6-9",
        "noise sweep: clean-task performance per run against noise level, per method",
        _kept_test(CLEAN_DROP_MARGIN),
    ),
    Claim(
        "em-least-weight-noisy",
        "excess_mtl",
        "ExcessMTL puts the least weight on the noisy task.",
        "ExcessMTL Sec. 4.2-4.3, Figures 3, 6, 7",
        "final task weights per run, per method, under noise",
        _least_weight_test(ALPHA),
    ),
    Claim(
        "em-estimate-tracks",
        "excess_mtl",
        "The excess-risk estimate tracks the ground-truth pattern (current minus converged loss).",
        "ExcessMTL Sec. 4.2, Figure 2",
        "ExcessMTL's per-epoch excess-risk estimate and the proxy, per task",
        _tracks_test(TRACK_RHO, ALPHA),
    ),
)
"""The claims the scorecard judges, in the order it prints them."""

CLAIMS_BY_ID: dict[str, Claim] = {claim.id: claim for claim in CLAIMS}


# --------------------------------------------------------------------------- helpers


def _fmt(value: float, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_p(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def _is_missing(frame: Any) -> bool:
    return frame is None or (isinstance(frame, pd.DataFrame) and frame.empty)


def _check_columns(frame: pd.DataFrame, needed: Iterable[str], claim_id: str, what: str) -> None:
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise DataError(f"scorecard claim {claim_id}: {what} lacks column(s) {', '.join(missing)}")


def _label(stand_in: str | None) -> str | None:
    return stand_in if stand_in else None


def finish(claim_id: str, outcome: str, evidence: str, stand_in: str | None, test: str | None = None) -> Verdict:
    """Build the :class:`Verdict`, downgrading ``supported`` / ``not supported`` when ``stand_in`` is set.

    ``stand_in`` is the stand-in label of the data behind the evidence (None for
    the paper's own data). The evidence then starts with that label and says
    that a stand-in cannot support a claim about the paper's dataset.
    """
    claim = CLAIMS_BY_ID[claim_id]
    label = _label(stand_in)
    if outcome == NOT_RUN:
        return Verdict(claim_id, NOT_RUN, evidence, test or claim.test, False)
    if label is not None:
        outcome = {SUPPORTED: CONSISTENT_STAND_IN, NOT_SUPPORTED: NOT_CONSISTENT_STAND_IN}.get(outcome, outcome)
        evidence = (
            f"Stand-in data ({label}): a stand-in cannot support a claim about the paper's dataset, "
            f"only be consistent with it. {evidence}"
        )
    return Verdict(claim_id, outcome, evidence, test or claim.test, label is not None)


def not_run(claim_id: str, reason: str = "no study in the config produces this claim's evidence") -> Verdict:
    """The ``not run`` verdict of ``claim_id``, with ``reason`` as its evidence."""
    return finish(claim_id, NOT_RUN, reason, None)


@dataclass(frozen=True)
class Comparison:
    """A one-sided comparison of ``a`` against ``b`` over seeds (or other pairing keys)."""

    test: str
    n: int
    mean_diff: float
    p_less: float
    p_greater: float
    reason: str = ""

    def text(self) -> str:
        """``paired t-test, n=3: Δ=-0.41, p(<)=0.02, p(>)=0.98`` (or the reason no test ran)."""
        if self.test == NO_TEST:
            return f"no test ({self.reason})"
        return (
            f"{self.test}, n={self.n}: mean difference {_fmt(self.mean_diff, 3, signed=True)}, "
            f"p(<)={_fmt_p(self.p_less)}, p(>)={_fmt_p(self.p_greater)}"
        )


def _quiet(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a scipy test silencing its precision warnings (zero-variance inputs give NaN, handled by callers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


def compare(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> Comparison:
    """One-sided t-tests of ``a`` against ``b`` in both directions.

    Paired (:func:`scipy.stats.ttest_rel`) over the keys both share when they
    share any (at least two needed), Welch's (:func:`scipy.stats.ttest_ind`,
    ``equal_var=False``) when the keys are disjoint (at least two on each side).
    NaN p-values (too few values, no variance) mean "not significant".
    """
    shared = [key for key in a if key in b]
    if shared:
        if len(shared) < 2:
            return Comparison(NO_TEST, len(shared), math.nan, math.nan, math.nan, "one shared seed")
        x = np.array([a[key] for key in shared], dtype=float)
        y = np.array([b[key] for key in shared], dtype=float)
        less = _quiet(stats.ttest_rel, x, y, alternative="less").pvalue
        greater = _quiet(stats.ttest_rel, x, y, alternative="greater").pvalue
        return Comparison(PAIRED, len(shared), float(np.mean(x - y)), float(less), float(greater))
    x = np.array(list(a.values()), dtype=float)
    y = np.array(list(b.values()), dtype=float)
    if len(x) < 2 or len(y) < 2:
        return Comparison(NO_TEST, len(x) + len(y), math.nan, math.nan, math.nan, "fewer than two runs on a side")
    less = _quiet(stats.ttest_ind, x, y, equal_var=False, alternative="less").pvalue
    greater = _quiet(stats.ttest_ind, x, y, equal_var=False, alternative="greater").pvalue
    return Comparison(WELCH, len(x) + len(y), float(x.mean() - y.mean()), float(less), float(greater))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values in input order (:func:`mtlrepro.report.stats.holm`); NaN stays NaN."""
    return report_stats.holm(p_values).tolist()


def _significant(p: float, alpha: float) -> bool:
    return not math.isnan(p) and p < alpha


def _by_method(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` indexed by method, whether the method is its index or a ``method`` column."""
    return frame.set_index("method") if "method" in frame.columns else frame


def _stand_in_of(stand_in: str | Mapping[str, str | None] | None, key: str) -> str | None:
    if isinstance(stand_in, Mapping):
        return _label(stand_in.get(key))
    return _label(stand_in)


def _joined_label(labels: Iterable[str | None]) -> str | None:
    present = list(dict.fromkeys(label for label in labels if label))
    return "; ".join(present) if present else None


def _by_seed(frame: pd.DataFrame, value: str, keys: Sequence[str] = ("seed",)) -> dict[Hashable, float]:
    """Mapping (pairing key) -> value, averaging duplicate keys."""
    grouped = frame.groupby(list(keys), sort=True)[value].mean()
    return {key: float(v) for key, v in grouped.items()}


# --------------------------------------------------------------------------- claim 1: RLW comparable to EW


def judge_rlw_comparable(
    tables: Mapping[str, pd.DataFrame] | None,
    stand_in: str | Mapping[str, str | None] | None = None,
    *,
    method: str = "rlw",
    baseline: str = "ew",
    margin: float = DELTA_P_MARGIN,
) -> Verdict:
    """Claim ``rw-rlw-comparable``: RLW's Δp against EW is comparable or better on each dataset.

    ``tables`` maps dataset name -> the method table's statistics: one row per
    method (index or column ``method``) with ``delta_p`` (percent, against
    ``baseline``), ``ci_low`` and ``ci_high`` (its bootstrap 95% CI) and
    optionally ``p_holm`` (the Holm-adjusted p of the method against the
    baseline) and ``n_seeds``. ``stand_in`` is the stand-in label, one for all
    or per dataset. Datasets without a ``method`` row are listed as not run.
    """
    claim_id = "rw-rlw-comparable"
    test = _comparable_test(margin)
    if not tables:
        return not_run(claim_id, "no method table with RLW and EW")
    parts, outcomes, labels, skipped = [], [], [], []
    for dataset, raw in tables.items():
        if _is_missing(raw):
            skipped.append(dataset)
            continue
        frame = _by_method(raw)
        _check_columns(frame, ("delta_p", "ci_low", "ci_high"), claim_id, f"table of {dataset!r}")
        if method not in frame.index:
            skipped.append(dataset)
            continue
        if frame.index.duplicated().any():
            raise DataError(f"scorecard claim {claim_id}: table of {dataset!r} lists a method more than once")
        row = frame.loc[[method]].iloc[0].to_dict()
        low, high = float(row["ci_low"]), float(row["ci_high"])
        if math.isnan(low) or math.isnan(high):
            outcome = "undecided (no CI)"
        elif low > -margin:
            outcome = "better" if low > 0 else "comparable or better"
        elif high < -margin:
            outcome = "worse"
        else:
            outcome = "undecided"
        outcomes.append(outcome)
        labels.append(_stand_in_of(stand_in, dataset))
        extra = ""
        if "p_holm" in frame.columns:
            extra += f", Holm p vs {baseline.upper()} {_fmt_p(float(row['p_holm']))}"
        if "n_seeds" in frame.columns:
            extra += f", {int(row['n_seeds'])} seeds"
        parts.append(
            f"{dataset}: {method.upper()} Δp {_fmt(float(row['delta_p']), signed=True)}% "
            f"[95% CI {_fmt(low, signed=True)}, {_fmt(high, signed=True)}]{extra} → {outcome}"
        )
    if not outcomes:
        return not_run(claim_id, f"no {method.upper()} runs in the method tables ({', '.join(map(str, tables))})")
    if "worse" in outcomes:
        verdict = NOT_SUPPORTED
    elif all(outcome in ("better", "comparable or better") for outcome in outcomes):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    if skipped:
        parts.append(f"not run on: {', '.join(map(str, skipped))}")
    return finish(claim_id, verdict, "; ".join(parts) + ".", _joined_label(labels), test)


# --------------------------------------------------------------------------- claim 2: RLW flatter than EW


def judge_rlw_flatter(
    flatness: pd.DataFrame | None,
    stand_in: str | Mapping[str, str | None] | None = None,
    *,
    method: str = "rlw",
    baseline: str = "ew",
    value: str = "top_eigenvalue",
    alpha: float = ALPHA,
) -> Verdict:
    """Claim ``rw-rlw-flatter``: RLW's top Hessian eigenvalue is smaller than EW's.

    ``flatness`` has one row per run: ``method``, ``seed``, ``value`` (default
    ``top_eigenvalue``: the largest Hessian eigenvalue of the training loss at
    the selected checkpoint), optionally ``dataset`` (judged per dataset) and
    ``grad_variance`` (reported with its own test, not decided on).
    """
    claim_id = "rw-rlw-flatter"
    test = _flatter_test(alpha)
    if _is_missing(flatness):
        return not_run(claim_id, "no flatness measurements")
    assert flatness is not None
    _check_columns(flatness, ("method", "seed", value), claim_id, "flatness frame")
    frame = flatness if "dataset" in flatness.columns else flatness.assign(dataset="")
    comparisons: list[Comparison] = []
    parts: list[str] = []
    labels: list[str | None] = []
    for key, group in frame.groupby("dataset", sort=False):
        dataset = str(key)
        ours, theirs = group[group["method"] == method], group[group["method"] == baseline]
        if ours.empty or theirs.empty:
            where = f" on {dataset}" if dataset else ""
            parts.append(f"no {method.upper() if ours.empty else baseline.upper()} runs{where}")
            continue
        comparison = compare(_by_seed(ours, value), _by_seed(theirs, value))
        comparisons.append(comparison)
        labels.append(_stand_in_of(stand_in, dataset))
        text = (
            f"{f'{dataset}: ' if dataset else ''}mean {value} {method.upper()} {_fmt(float(ours[value].mean()), 3)} vs "
            f"{baseline.upper()} {_fmt(float(theirs[value].mean()), 3)} ({comparison.text()})"
        )
        if "grad_variance" in group.columns:
            variance = compare(_by_seed(ours, "grad_variance"), _by_seed(theirs, "grad_variance"))
            text += (
                f"; gradient variance {_fmt(float(ours['grad_variance'].mean()), 4)} vs "
                f"{_fmt(float(theirs['grad_variance'].mean()), 4)} ({variance.text()})"
            )
        parts.append(text)
    if not comparisons:
        return not_run(claim_id, "; ".join(parts) or "no EW/RLW flatness runs")
    greater = holm([c.p_greater for c in comparisons])
    if any(_significant(p, alpha) for p in greater):
        verdict = NOT_SUPPORTED
    elif all(_significant(c.p_less, alpha) for c in comparisons):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return finish(claim_id, verdict, "; ".join(parts) + ".", _joined_label(labels), test)


# --------------------------------------------------------------------------- claim 3: RLW improves gradient methods


def method_stages(run: Mapping[str, Any]) -> tuple[str, str]:
    """(loss entry, gradient entry) of a run record's method, ``""`` for an absent stage.

    Read from ``spec["method"]["loss"|"gradient"]["entry"]`` (the config entry
    name, e.g. ``rlw`` or ``pcgrad``); a gradient method that runs alone has
    loss ``""``, which :func:`judge_rlw_improves_gradient` reads as EW.
    """
    stages = run["spec"]["method"]
    loss, gradient = stages.get("loss"), stages.get("gradient")
    return (loss["entry"] if loss else "", gradient["entry"] if gradient else "")


def judge_rlw_improves_gradient(
    grid: pd.DataFrame | None,
    stand_in: str | None = None,
    *,
    method: str = "rlw",
    baseline: str = "ew",
    alpha: float = ALPHA,
) -> Verdict:
    """Claim ``rw-rlw-improves-gradient``: Δp(RLW+G) > Δp(G) for every gradient method G (RW Table 4).

    ``grid`` has one row per run of the combination grid: ``gradient`` (the
    gradient entry; ``""``/None for the loss weighting alone, which is not a
    gradient method and is skipped), ``loss`` (the loss entry; ``""``/None means
    ``baseline``), ``seed`` and ``delta_p`` (that run's Δp in percent against
    the baseline's mean, as in the method table).
    """
    claim_id = "rw-rlw-improves-gradient"
    test = _improves_test(alpha)
    if _is_missing(grid):
        return not_run(claim_id, "no combination grid")
    assert grid is not None
    _check_columns(grid, ("gradient", "loss", "seed", "delta_p"), claim_id, "combination grid")
    frame = grid.assign(
        gradient=grid["gradient"].fillna("").astype(str),
        loss=grid["loss"].fillna("").astype(str).replace("", baseline),
    )
    frame = frame[frame["gradient"] != ""]
    names, comparisons, parts, missing = [], [], [], []
    for gradient, group in frame.groupby("gradient", sort=False):
        with_method, plain = group[group["loss"] == method], group[group["loss"] == baseline]
        if with_method.empty or plain.empty:
            missing.append(str(gradient))
            continue
        comparison = compare(_by_seed(with_method, "delta_p"), _by_seed(plain, "delta_p"))
        names.append(str(gradient))
        comparisons.append(comparison)
        parts.append(
            f"{gradient}: Δp {_fmt(float(plain['delta_p'].mean()), signed=True)}% → "
            f"{_fmt(float(with_method['delta_p'].mean()), signed=True)}% with {method.upper()} ({comparison.text()})"
        )
    if not comparisons:
        return not_run(claim_id, f"no gradient method ran with both {baseline.upper()} and {method.upper()} weights")
    if missing:
        parts.append(f"not run with both: {', '.join(missing)}")
    lower = holm([c.p_less for c in comparisons])
    if any(_significant(p, alpha) for p in lower):
        verdict = NOT_SUPPORTED
    elif all(_significant(c.p_greater, alpha) for c in comparisons):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return finish(claim_id, verdict, "; ".join(parts) + ".", stand_in, test)


# --------------------------------------------------------------------------- claim 4: clean task kept under noise


@dataclass(frozen=True)
class Trend:
    """Change of a quantity over the studied noise range: slope x range, with its 95% t-interval."""

    n: int
    levels: int
    change: float
    low: float
    high: float

    def classify(self, margin: float) -> str:
        """``kept`` / ``lost`` / ``undecided`` against ``margin`` (see :data:`CLEAN_DROP_MARGIN`)."""
        if math.isnan(self.low) or math.isnan(self.high):
            return "undecided"
        if self.low > -margin:
            return "kept"
        if self.high < -margin:
            return "lost"
        return "undecided"


def noise_trend(noise: Sequence[float], values: Sequence[float]) -> Trend:
    """Least-squares slope of ``values`` on ``noise`` (scipy.stats.linregress) scaled to the noise range.

    The interval is ``slope ± t(0.975, n-2) * stderr``, times ``max - min`` of
    the noise levels; NaN with fewer than three runs or two levels.
    """
    x = np.asarray(noise, dtype=float)
    y = np.asarray(values, dtype=float)
    levels = len(np.unique(x))
    if len(x) < 3 or levels < 2:
        return Trend(len(x), levels, math.nan, math.nan, math.nan)
    fit = stats.linregress(x, y)
    span = float(x.max() - x.min())
    half = float(stats.t.ppf(0.975, len(x) - 2)) * float(fit.stderr)
    return Trend(len(x), levels, fit.slope * span, (fit.slope - half) * span, (fit.slope + half) * span)


def judge_clean_task_kept(
    sweep: pd.DataFrame | None,
    stand_in: str | None = None,
    *,
    method: str = "excess_mtl",
    competitors: Sequence[str] = COMPETITORS,
    value: str = "clean_metric",
    margin: float = CLEAN_DROP_MARGIN,
) -> Verdict:
    """Claim ``em-clean-task-kept``: ExcessMTL keeps clean-task performance as noise grows, the others lose it.

    ``sweep`` has one row per run: ``method``, ``noise`` (the noisy task's noise
    level as a number, 0 for clean), ``seed`` and ``value`` (default
    ``clean_metric``: the clean tasks' mean accuracy, higher is better, in the
    units of ``margin``). Compared methods that did not run are named in the
    evidence; the claim is judged on those that did.
    """
    claim_id = "em-clean-task-kept"
    test = _kept_test(margin)
    if _is_missing(sweep):
        return not_run(claim_id, "no noise sweep")
    assert sweep is not None
    _check_columns(sweep, ("method", "noise", "seed", value), claim_id, "noise sweep")
    present = set(sweep["method"])
    ran = [name for name in competitors if name in present]
    absent = [name for name in competitors if name not in present]
    if method not in present or not ran:
        lacking = ([method] if method not in present else []) + (absent if not ran else [])
        return not_run(claim_id, f"the noise sweep lacks {', '.join(lacking)}")
    trends: dict[str, Trend] = {}
    for name in [method, *ran]:
        group = sweep[sweep["method"] == name]
        trends[name] = noise_trend(group["noise"].tolist(), group[value].tolist())
    if trends[method].levels < 2:
        return not_run(claim_id, f"{method} ran at a single noise level; a sweep needs two or more")
    parts = []
    span = f"{sweep['noise'].min():g}–{sweep['noise'].max():g}"
    for name, trend in trends.items():
        parts.append(
            f"{name}: change over noise {span} {_fmt(trend.change, signed=True)} "
            f"[95% CI {_fmt(trend.low, signed=True)}, {_fmt(trend.high, signed=True)}] "
            f"({trend.n} runs, {trend.levels} levels) → {trend.classify(margin)}"
        )
    if absent:
        parts.append(f"not run: {', '.join(absent)}")
    own = trends[method].classify(margin)
    others = [trends[name].classify(margin) for name in ran]
    if own == "lost" or "kept" in others:
        verdict = NOT_SUPPORTED
    elif own == "kept" and all(outcome == "lost" for outcome in others):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    seeds = sweep["seed"].nunique()
    evidence = "; ".join(parts) + f". {seeds} seed{'s' if seeds != 1 else ''}."
    return finish(claim_id, verdict, evidence, stand_in, test)


# --------------------------------------------------------------------------- claim 5: least weight on the noisy task


def judge_least_weight_on_noisy(
    weights: pd.DataFrame | None,
    stand_in: str | None = None,
    *,
    method: str = "excess_mtl",
    alpha: float = ALPHA,
) -> Verdict:
    """Claim ``em-least-weight-noisy``: ExcessMTL weighs the noisy task least, below clean tasks and other methods.

    ``weights`` has one row per run and task: ``method``, ``seed``, ``noise``
    (the noise level, a number), ``task``, ``weight`` (the final task weight)
    and ``noisy`` (bool: the task's labels are corrupted). Weights are
    normalised to sum 1 per run (methods differ in scale: simplex or sum-to-T);
    only runs with ``noise > 0`` count. Every other method in the frame is
    compared with ExcessMTL.
    """
    claim_id = "em-least-weight-noisy"
    test = _least_weight_test(alpha)
    if _is_missing(weights):
        return not_run(claim_id, "no task weights")
    assert weights is not None
    _check_columns(weights, ("method", "seed", "noise", "task", "weight", "noisy"), claim_id, "weights frame")
    frame = weights[weights["noise"] > 0].copy()
    frame["noisy"] = frame["noisy"].astype(bool)
    run_keys = ["method", "noise", "seed"]
    totals = frame.groupby(run_keys)["weight"].transform("sum")
    frame["share"] = frame["weight"] / totals.where(totals != 0)
    ours = frame[frame["method"] == method]
    if ours.empty or not ours["noisy"].any() or ours["noisy"].all():
        return not_run(claim_id, f"no {method} run with both a noisy and a clean task at noise > 0")

    per_run = frame.groupby([*run_keys, "noisy"])["share"].agg(["max", "min", "mean"]).unstack("noisy")
    gaps = (per_run[("max", True)] - per_run[("min", False)]).loc[method].dropna()
    if len(gaps) >= 2:
        within_less = float(_quiet(stats.ttest_1samp, gaps, 0.0, alternative="less").pvalue)
        within_greater = float(_quiet(stats.ttest_1samp, gaps, 0.0, alternative="greater").pvalue)
    else:
        within_less = within_greater = math.nan
    parts = [
        f"{method}: mean noisy-task share {_fmt(float(ours[ours['noisy']]['share'].mean()), 3)}, largest noisy − "
        f"smallest clean share {_fmt(float(gaps.mean()), 3, signed=True)} over {len(gaps)} runs "
        f"(one-sample t-test p(<)={_fmt_p(within_less)}, p(>)={_fmt_p(within_greater)})"
    ]
    noisy_mean = per_run[("mean", True)]
    own = {key: float(v) for key, v in noisy_mean.loc[method].dropna().items()}
    others = [name for name in dict.fromkeys(frame["method"]) if name != method]
    comparisons = []
    for name in others:
        theirs = {key: float(v) for key, v in noisy_mean.loc[name].dropna().items()}
        comparison = compare(own, theirs)
        comparisons.append(comparison)
        parts.append(
            f"vs {name}: noisy-task share {_fmt(float(np.mean(list(theirs.values()))), 3)} ({comparison.text()})"
        )
    if not others:
        parts.append("no other method to compare")
    greater = holm([c.p_greater for c in comparisons])
    if _significant(within_greater, alpha) or any(_significant(p, alpha) for p in greater):
        verdict = NOT_SUPPORTED
    elif _significant(within_less, alpha) and all(_significant(c.p_less, alpha) for c in comparisons):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    seeds = ours["seed"].nunique()
    levels = ", ".join(f"{level:g}" for level in sorted(ours["noise"].unique()))
    evidence = "; ".join(parts) + f". Noise levels {levels}; {seeds} seed{'s' if seeds != 1 else ''}."
    return finish(claim_id, verdict, evidence, stand_in, test)


# --------------------------------------------------------------------------- claim 6: estimate tracks ground truth


def judge_estimate_tracks(
    trace: pd.DataFrame | None,
    stand_in: str | None = None,
    *,
    rho_min: float = TRACK_RHO,
    alpha: float = ALPHA,
) -> Verdict:
    """Claim ``em-estimate-tracks``: the excess-risk estimate follows the ground-truth proxy, task by task.

    ``trace`` has one row per (seed, epoch, task): ``epoch``, ``task``,
    ``estimate`` (ExcessMTL's recorded estimate, e.g. the epoch mean of
    ``diagnostics["excess_mtl.excess_risk"]``), ``proxy`` (current minus
    converged training loss, ExcessMTL Sec. 4.2) and optionally ``seed``. Both
    are averaged over seeds per (task, epoch) first, so epochs are the sample;
    the estimate's scale does not matter (ranks).
    """
    claim_id = "em-estimate-tracks"
    test = _tracks_test(rho_min, alpha)
    if _is_missing(trace):
        return not_run(claim_id, "no excess-risk trace")
    assert trace is not None
    _check_columns(trace, ("epoch", "task", "estimate", "proxy"), claim_id, "excess-risk trace")
    means = trace.groupby(["task", "epoch"], sort=False)[["estimate", "proxy"]].mean().reset_index()
    tasks, rhos, lows, highs, ps, parts = [], [], [], [], [], []
    for task, group in means.groupby("task", sort=False):
        group = group.dropna()
        n = len(group)
        rho = p = low = high = math.nan
        if n >= 4 and group["estimate"].nunique() > 1 and group["proxy"].nunique() > 1:
            result = stats.spearmanr(group["estimate"], group["proxy"], alternative="greater")
            rho, p = float(result.statistic), float(result.pvalue)
            ranks = stats.pearsonr(stats.rankdata(group["estimate"]), stats.rankdata(group["proxy"]))
            interval = ranks.confidence_interval(0.95)
            low, high = float(interval.low), float(interval.high)
        tasks.append(task)
        rhos.append(rho)
        lows.append(low)
        highs.append(high)
        ps.append(p)
        parts.append(f"{task}: ρ {_fmt(rho)} [95% CI {_fmt(low)}, {_fmt(high)}] over {n} epochs")
    adjusted = holm(ps)
    parts = [f"{part}, Holm p {_fmt_p(p)}" for part, p in zip(parts, adjusted, strict=True)]
    if any(not math.isnan(high) and high < rho_min for high in highs):
        verdict = NOT_SUPPORTED
    elif all(
        not math.isnan(rho) and rho >= rho_min and _significant(p, alpha) for rho, p in zip(rhos, adjusted, strict=True)
    ):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    seeds = trace["seed"].nunique() if "seed" in trace.columns else 1
    evidence = "; ".join(parts) + f". Mean over {seeds} seed{'s' if seeds != 1 else ''} per epoch."
    return finish(claim_id, verdict, evidence, stand_in, test)


JUDGES: dict[str, Callable[..., Verdict]] = {
    "rw-rlw-comparable": judge_rlw_comparable,
    "rw-rlw-flatter": judge_rlw_flatter,
    "rw-rlw-improves-gradient": judge_rlw_improves_gradient,
    "em-clean-task-kept": judge_clean_task_kept,
    "em-least-weight-noisy": judge_least_weight_on_noisy,
    "em-estimate-tracks": judge_estimate_tracks,
}
"""Claim id -> its judge function."""


def judge_all(summaries: Mapping[str, Mapping[str, Any] | None]) -> list[Verdict]:
    """One verdict per claim of :data:`CLAIMS`, in order: ``JUDGES[id](**summaries[id])``, ``not run`` if absent.

    Raises ``KeyError`` for a summary whose id is not a claim.
    """
    unknown = [claim_id for claim_id in summaries if claim_id not in CLAIMS_BY_ID]
    if unknown:
        raise KeyError(f"no claim {unknown[0]!r} (claims: {', '.join(CLAIMS_BY_ID)})")
    verdicts = []
    for claim in CLAIMS:
        arguments = summaries.get(claim.id)
        verdicts.append(not_run(claim.id) if arguments is None else JUDGES[claim.id](**arguments))
    return verdicts


# --------------------------------------------------------------------------- the scorecard file

REPRODUCED_KEYS = ("key", "method", "metric")
"""Columns a reproduced frame must have besides ``value``; ``arch`` is optional (see :func:`numbers_beside`)."""


def _decimals(text: str) -> int:
    return len(text.partition(".")[2]) if "." in text else 0


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def numbers_beside(published: pd.DataFrame, reproduced: pd.DataFrame | None) -> pd.DataFrame:
    """Every published number with the reproduced value beside it (NaN where none).

    ``reproduced`` has one row per reproduced number: ``key`` (published table
    key), ``method`` (our name; ``ew+X`` matches ``X``), ``metric`` (the
    published CSV column, e.g. ``seg_miou`` or ``delta_p``), ``value`` and
    optionally ``arch`` (needed only where a table lists one method under
    several architectures, RW Table 5; blank means any), ``ci_low``/``ci_high``
    (its 95% CI), ``n_seeds`` and ``note``. Returns the published frame plus
    ``reproduced``, ``ci_low``, ``ci_high``, ``n_seeds``, ``note``, ``diff``
    (reproduced − published) and ``in_ci`` (True/False, None without a CI).
    ``attrs["unmatched"]`` counts reproduced rows that match no published
    number. Raises :class:`DataError` when a reproduced row matches several
    published numbers (give ``arch``) or a published number gets two values.
    """
    missing = [column for column in NUMBER_COLUMNS if column not in published.columns]
    if missing:
        raise DataError(f"published numbers lack column(s) {', '.join(missing)}")
    out = published.reset_index(drop=True).copy()
    for column in ("reproduced", "ci_low", "ci_high", "n_seeds"):
        out[column] = math.nan
    out["note"] = ""
    unmatched = 0
    if reproduced is not None and not reproduced.empty:
        lacking = [column for column in [*REPRODUCED_KEYS, "value"] if column not in reproduced.columns]
        if lacking:
            raise DataError(f"reproduced numbers lack column(s) {', '.join(lacking)}")
        candidates: dict[tuple[str, str, str], list[int]] = {}
        for i, (key, method, metric) in enumerate(zip(out["key"], out["method"], out["metric"], strict=True)):
            candidates.setdefault((key, canonical_method(method), metric), []).append(i)
        filled: set[int] = set()
        for row in reproduced.to_dict("records"):
            method = "" if _blank(row["method"]) else canonical_method(str(row["method"]))
            where = (str(row["key"]), method, str(row["metric"]))
            found = candidates.get(where, [])
            if not _blank(row.get("arch")):
                found = [i for i in found if out.at[i, "arch"] == str(row["arch"])]
            if not found:
                unmatched += 1
                continue
            if len(found) > 1:
                raise DataError(f"reproduced number {list(where)} matches {len(found)} published numbers; give 'arch'")
            (i,) = found
            if i in filled:
                raise DataError(f"reproduced numbers hold {list(where)} more than once")
            filled.add(i)
            out.at[i, "reproduced"] = float(row["value"])
            for column in ("ci_low", "ci_high", "n_seeds"):
                if not _blank(row.get(column)):
                    out.at[i, column] = float(row[column])
            if not _blank(row.get("note")):
                out.at[i, "note"] = str(row["note"])
    out["diff"] = out["reproduced"] - out["value"]
    has_ci = out["ci_low"].notna() & out["ci_high"].notna()
    inside = (out["ci_low"] <= out["value"]) & (out["value"] <= out["ci_high"])
    out["in_ci"] = [bool(v) if ok else None for v, ok in zip(inside, has_ci, strict=True)]
    out.attrs["unmatched"] = unmatched
    return out


def _cell(text: str) -> str:
    """Markdown-safe table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _claims_table(verdicts: Sequence[Verdict]) -> str:
    rows = []
    for verdict in verdicts:
        claim = CLAIMS_BY_ID.get(verdict.claim_id)
        statement = f"{claim.statement} ({claim.where}; `{claim.id}`)" if claim else f"`{verdict.claim_id}`"
        paper = PAPER_NAMES.get(claim.paper, claim.paper) if claim else ""
        rows.append([_cell(statement), paper, f"**{verdict.verdict}**", _cell(verdict.evidence), _cell(verdict.test)])
    return tabulate(
        rows, headers=["Claim", "Paper", "Verdict", "Evidence", "Test"], tablefmt="pipe", disable_numparse=True
    )


def _number_rows(group: pd.DataFrame) -> list[list[str]]:
    rows = []
    for row in group.to_dict("records"):
        digits = _decimals(row["text"])
        has = not math.isnan(row["reproduced"])
        ci = ""
        if has and not (math.isnan(row["ci_low"]) or math.isnan(row["ci_high"])):
            ci = f"[{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
        arrow = {"higher": "↑", "lower": "↓"}.get(row["direction"], "")
        in_ci = {True: "yes", False: "no"}.get(row["in_ci"], "")
        rows.append(
            [
                _cell(row["row"]),
                _cell(row["column"]),
                arrow,
                row["text"],
                f"{row['reproduced']:.{digits}f}" if has else "",
                ci,
                f"{row['diff']:+.{digits}f}" if has else "",
                in_ci,
                "" if math.isnan(row["n_seeds"]) else str(int(row["n_seeds"])),
                _cell(row["note"]),
            ]
        )
    return rows


def scorecard_markdown(
    verdicts: Sequence[Verdict],
    published: pd.DataFrame,
    reproduced: pd.DataFrame | None,
    *,
    title: str = "Reproduction scorecard",
    notes: Sequence[str] = (),
) -> str:
    """The Markdown text of :func:`write_scorecard`."""
    numbers = numbers_beside(published, reproduced)
    counts = {name: sum(v.verdict == name for v in verdicts) for name in VERDICTS}
    tally = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    lines = [f"# {title}", ""]
    lines += [*(f"{note}  " for note in notes), ""] if notes else []
    lines += [
        "## Claims",
        "",
        f"{len(verdicts)} claims: {tally or 'none'}. Verdicts: supported / not supported / inconclusive / not run; "
        "evidence from stand-in data is at most 'consistent on stand-in data' (or 'not consistent on stand-in "
        f"data'), never 'supported'. Every test at α = {ALPHA:g}; the rule of each claim is in its Test column.",
        "",
        _claims_table(verdicts),
        "",
        "## Published numbers",
        "",
    ]
    matched = int(numbers["reproduced"].notna().sum())
    lines += [
        f"{len(numbers)} published numbers (every number of every table in `reference/`), {matched} with a "
        "reproduced value. Published: as printed. Reproduced: mean over seeds, to the published decimals, blank "
        "where this project has no such run; 95% CI: bootstrap over seeds; Diff: reproduced − published; "
        "In CI: whether the published number lies in the reproduced CI; n: seeds.",
        "",
    ]
    if numbers.attrs.get("unmatched"):
        lines += [f"{numbers.attrs['unmatched']} reproduced values match no published number and are not listed.", ""]
    without = [
        paper
        for paper in dict.fromkeys(CLAIMS_BY_ID[v.claim_id].paper for v in verdicts if v.claim_id in CLAIMS_BY_ID)
        if paper not in set(numbers["paper"])
    ]
    for paper in without:
        lines += [
            f"{PAPER_NAMES.get(paper, paper)}: no published numbers; the paper reports its results as figures "
            "only, so its claims are judged above.",
            "",
        ]
    headers = ["Row", "Column", "", "Published", "Reproduced", "95% CI", "Diff", "In CI", "n", "Note"]
    for key, group in numbers.groupby("key", sort=False):
        first = group.iloc[0]
        lines += [
            f"### {first['table']}: {first['dataset']} (`{key}`, {len(group)} numbers)",
            "",
            tabulate(_number_rows(group), headers=headers, tablefmt="pipe", disable_numparse=True),
            "",
        ]
    return "\n".join(lines)


def write_scorecard(
    verdicts: Sequence[Verdict],
    published: pd.DataFrame,
    reproduced: pd.DataFrame | None,
    out_md: str | os.PathLike[str],
    *,
    title: str = "Reproduction scorecard",
    notes: Sequence[str] = (),
) -> None:
    """Write the scorecard Markdown to ``out_md`` atomically.

    A claims table (claim, paper, verdict, evidence, test) and, per published
    table, every published number (``published`` from
    :func:`~mtlrepro.report.published.published_numbers`) with the reproduced
    value beside it when ``reproduced`` has one (see :func:`numbers_beside`).
    ``notes`` are printed under the title (e.g. the data and its stand-in label,
    seeds and the selection rule behind the verdicts).
    """
    write_text_atomic(out_md, scorecard_markdown(verdicts, published, reproduced, title=title, notes=notes))
