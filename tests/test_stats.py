"""The statistics module: cells against scipy, seeded bootstraps, paired vs Welch, Holm, Δp with its CI, footer."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from mtlrepro.metrics import delta_p
from mtlrepro.report import stats
from mtlrepro.report.stats import CellStats, Comparison

REPO = Path(__file__).resolve().parents[1]
TABLE1_PLACES = [REPO / "reference" / "rw" / "table1_nyuv2.csv"]
"""RW Table 1's CSV: the repository's copy of the published numbers."""

SAMPLE = np.array([71.2, 73.9, 70.4, 75.1, 72.6])
FEW = 999  # resamples where only reproducibility or containment is checked (keeps the tests fast)

NYU = {
    "seg": {"miou": "higher", "pixacc": "higher"},
    "depth": {"abs_err": "lower", "rel_err": "lower"},
    "normal": {"mean": "lower", "median": "lower", "11.25": "higher", "22.5": "higher", "30": "higher"},
}
"""RW Table 1's columns as task -> metric -> direction (CSV column ``{task}_{metric}``)."""

# RW Table 1 (NYUv2) rows as printed, for the hand computation (also checked against the CSV when it is present)
EW_ROW = [53.77, 75.45, 0.3845, 0.1605, 23.5737, 17.0438, 35.04, 60.93, 72.07]
DWA_ROW = [53.81, 75.56, 0.3792, 0.1565, 23.6111, 17.0609, 34.89, 60.89, 71.97]
RLW_ROW = [54.11, 75.77, 0.3809, 0.1575, 23.3777, 16.7385, 35.71, 61.52, 72.45]
UW_ROW = [54.14, 75.92, 0.3833, 0.1597, 23.2989, 16.8691, 35.33, 61.37, 72.48]
PRINTED_DELTA_P = {"EW": 0.00, "DWA": 0.63, "RLW": 1.04, "UW": 0.64}


def nyu(row: list[float]) -> dict[str, dict[str, float]]:
    """A Table 1 row (in :data:`NYU` order) as task -> metric -> value."""
    values = iter(row)
    return {task: {metric: next(values) for metric in metrics} for task, metrics in NYU.items()}


def table1() -> pd.DataFrame:
    """The published Table 1 CSV (``method`` index); fails when the repository lacks its copy."""
    for place in TABLE1_PLACES:
        if place.exists():
            return pd.read_csv(place).set_index("method")
    raise AssertionError(f"RW Table 1 CSV not found in {[str(p) for p in TABLE1_PLACES]}")


# --------------------------------------------------------------------------- summarise


def test_summarise_matches_numpy_and_scipy_bootstrap():
    cell = stats.summarise(SAMPLE, seed=7)
    assert cell.n == 5
    assert cell.mean == pytest.approx(np.mean(SAMPLE))
    assert cell.std == pytest.approx(np.std(SAMPLE, ddof=1))
    expected = scipy_stats.bootstrap(
        (SAMPLE,), np.mean, method="percentile", confidence_level=0.95, n_resamples=9999, rng=np.random.default_rng(7)
    ).confidence_interval
    assert (cell.ci_low, cell.ci_high) == pytest.approx((expected.low, expected.high))
    assert cell.ci_low < cell.mean < cell.ci_high
    assert cell.ci_method == stats.CI_BOOTSTRAP and not cell.degenerate


def test_summarise_bootstrap_is_reproducible_under_its_seed_and_differs_under_another():
    first = stats.summarise(SAMPLE, seed=1, n_resamples=FEW)
    assert stats.summarise(SAMPLE, seed=1, n_resamples=FEW) == first
    other = stats.summarise(SAMPLE, seed=2, n_resamples=FEW)
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)
    assert (other.mean, other.std) == (first.mean, first.std)


def test_summarise_leaves_the_global_generator_alone():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    stats.summarise(SAMPLE, seed=0, n_resamples=FEW)
    assert np.random.random() == expected


@pytest.mark.parametrize(
    ("values", "method", "std"),
    [
        ([4.2], stats.CI_FEW, math.nan),
        ([4.2, 5.0], stats.CI_FEW, np.std([4.2, 5.0], ddof=1)),
        ([3.5] * 4, stats.CI_CONSTANT, 0.0),
    ],
    ids=["one-seed", "two-seeds", "all-equal"],
)
def test_summarise_degenerate_inputs_give_a_labelled_ci_at_the_mean(values, method, std):
    cell = stats.summarise(values, seed=0)
    assert cell.n == len(values)
    assert cell.mean == pytest.approx(np.mean(values))
    assert cell.ci_low == cell.ci_high == cell.mean
    assert all(math.isfinite(x) for x in (cell.mean, cell.ci_low, cell.ci_high))
    assert cell.ci_method == method and cell.degenerate and "degenerate" in cell.ci_method
    assert (math.isnan(cell.std) and math.isnan(std)) or cell.std == pytest.approx(std)


def test_summarise_empty_and_bad_input():
    empty = stats.summarise([], seed=0)
    assert empty.n == 0 and math.isnan(empty.mean) and empty.ci_method == stats.CI_NO_VALUES
    with pytest.raises(ValueError, match="finite"):
        stats.summarise([1.0, math.nan, 2.0], seed=0)


def test_cell_seed_is_stable_and_distinct_per_cell():
    assert stats.cell_seed(0, "rlw", "seg", "miou") == stats.cell_seed(0, "rlw", "seg", "miou")
    seeds = {stats.cell_seed(base, *cell) for base in (0, 1) for cell in [("ew", "a"), ("rlw", "a"), ("ew", "b")]}
    assert len(seeds) == 6


def test_in_interval_and_format():
    cell = CellStats(n=5, mean=2.0, std=0.5, ci_low=1.5, ci_high=2.5, ci_method=stats.CI_BOOTSTRAP)
    assert stats.in_interval(1.5, cell) and stats.in_interval(2.5, cell) and stats.in_interval(2.0, cell)
    assert not stats.in_interval(2.51, cell) and not stats.in_interval(1.4, cell)
    assert stats.in_interval(2.504, cell, tolerance=0.005)
    assert not stats.in_interval(math.nan, cell)
    point = stats.summarise([3.0], seed=0)
    assert stats.in_interval(3.0, point) and not stats.in_interval(3.01, point)
    assert stats.format_stats(cell) == "2.00 ± 0.50 [1.50, 2.50]"
    assert stats.format_stats(point) == "3.00"
    assert stats.format_stats(stats.summarise([], seed=0)) == "n/a"


# --------------------------------------------------------------------------- compare


def test_compare_pairs_by_seed_when_the_seeds_are_shared():
    method, baseline = [1.0, 2.0, 3.5, 2.5], [1.1, 2.5, 3.0, 1.9]
    # baseline listed in another seed order: values must be aligned by seed, not by position
    result = stats.compare(method, baseline[::-1], [0, 1, 2, 3], [3, 2, 1, 0])
    expected = scipy_stats.ttest_rel(method, baseline)
    assert result.test == stats.TEST_PAIRED
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert (result.n, result.n_method, result.n_baseline) == (4, 4, 4)


def test_compare_paired_uses_only_the_shared_seeds():
    result = stats.compare([1.0, 2.0, 3.5, 9.0], [1.1, 2.5, 3.0, 7.0], [0, 1, 2, 5], [0, 1, 2, 6])
    expected = scipy_stats.ttest_rel([1.0, 2.0, 3.5], [1.1, 2.5, 3.0])
    assert result.test == stats.TEST_PAIRED and result.n == 3
    assert result.p_value == pytest.approx(expected.pvalue)
    assert "2 unpaired" in result.note


def test_compare_uses_welch_when_the_seeds_are_disjoint():
    method, baseline = [1.0, 2.0, 3.5], [1.1, 2.5, 3.0, 2.2, 2.9]
    result = stats.compare(method, baseline, [0, 1, 2], [10, 11, 12, 13, 14])
    expected = scipy_stats.ttest_ind(method, baseline, equal_var=False)
    assert result.test == stats.TEST_WELCH
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.p_value != pytest.approx(scipy_stats.ttest_ind(method, baseline).pvalue)  # not the pooled test
    assert (result.n, result.n_method, result.n_baseline) == (8, 3, 5)


@pytest.mark.parametrize(
    ("method", "baseline", "m_seeds", "b_seeds", "why"),
    [
        ([1.0], [2.0], [0], [0], "fewer than 2 shared"),
        ([1.0, 2.0], [2.0, 3.0], [0, 1], [1, 2], "fewer than 2 shared"),
        ([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], [0, 1, 2], [0, 1, 2], "differences equal"),
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0, 1, 2], [0, 1, 2], "differences equal"),
        ([1.0], [2.0, 3.0], [0], [1, 2], "fewer than 2 values"),
        ([1.0, 1.0], [2.0, 2.0], [0, 1], [2, 3], "no variance"),
    ],
    ids=["one-pair", "one-shared", "constant-shift", "identical", "welch-one-value", "welch-constant"],
)
def test_compare_degenerate_cases_are_na_not_errors(method, baseline, m_seeds, b_seeds, why):
    result = stats.compare(method, baseline, m_seeds, b_seeds)
    assert result.test == stats.TEST_NA
    assert math.isnan(result.p_value) and math.isnan(result.statistic)
    assert why in result.note


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy's own call, below
def test_compare_welch_with_one_constant_side_still_runs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compare itself stays quiet
        result = stats.compare([1.0, 1.0, 1.0], [2.0, 2.5, 3.0], [0, 1, 2], [5, 6, 7])
    assert result.test == stats.TEST_WELCH
    assert result.p_value == pytest.approx(scipy_stats.ttest_ind([1.0] * 3, [2.0, 2.5, 3.0], equal_var=False).pvalue)


def test_compare_rejects_malformed_input():
    with pytest.raises(ValueError, match="seeds"):
        stats.compare([1.0, 2.0], [1.0, 2.0], [0], [0, 1])
    with pytest.raises(ValueError, match="repeated"):
        stats.compare([1.0, 2.0], [1.0, 2.0], [0, 0], [0, 1])


def test_tests_used():
    paired = Comparison(stats.TEST_PAIRED, 1.0, 0.5, 3, 3, 3)
    welch = Comparison(stats.TEST_WELCH, 1.0, 0.5, 6, 3, 3)
    na = Comparison(stats.TEST_NA, math.nan, math.nan, 1, 1, 1, "fewer than 2 shared seeds")
    assert stats.tests_used([paired, na, paired]) == stats.TEST_PAIRED
    assert stats.tests_used([welch, paired]) == "Welch t-test / paired t-test"
    assert stats.tests_used([na]) == stats.TEST_NA


# --------------------------------------------------------------------------- Holm


def test_holm_against_hand_computed_values():
    # sorted p: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> raised to the running max 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # sorted p: 0.2*3 = 0.6; 0.5*2 = 1.0; 0.6*1 = 0.6 -> raised to the running max 1.0
    assert stats.holm([0.2, 0.6, 0.5]) == pytest.approx([0.6, 1.0, 1.0])
    assert stats.holm([0.02]) == pytest.approx([0.02])


def test_holm_leaves_nan_out_of_the_family():
    adjusted = stats.holm([0.01, math.nan, 0.04, 0.03, math.nan])
    assert np.isnan(adjusted[[1, 4]]).all()
    assert adjusted[[0, 2, 3]] == pytest.approx([0.03, 0.06, 0.06])  # a family of 3, not 5
    assert np.isnan(stats.holm([math.nan, math.nan])).all()
    assert stats.holm([]).size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.5, 1.5])


# --------------------------------------------------------------------------- Δp


def test_delta_p_against_a_hand_computation():
    directions = {"A": {"acc": "higher"}, "B": {"err": "lower", "acc": "higher"}}
    method = {0: {"A": {"acc": 90.0}, "B": {"err": 0.3, "acc": 50.0}}}
    baseline = {0: {"A": {"acc": 80.0}, "B": {"err": 0.4, "acc": 50.0}}}
    # A: +10/80 = +12.5%; B: (+0.1/0.4 + 0) / 2 = +12.5%; mean over tasks: +12.5%
    cell = stats.delta_p_distribution(method, baseline, directions, seed=0)
    assert cell.mean == pytest.approx(12.5)
    assert cell.ci_low == cell.ci_high == cell.mean and cell.ci_method == stats.CI_FEW


def test_delta_p_of_rw_table1_dwa_by_hand():
    e, d = EW_ROW, DWA_ROW
    seg = ((d[0] - e[0]) / e[0] + (d[1] - e[1]) / e[1]) / 2
    depth = (-(d[2] - e[2]) / e[2] - (d[3] - e[3]) / e[3]) / 2
    normal = (
        -(d[4] - e[4]) / e[4]
        - (d[5] - e[5]) / e[5]
        + (d[6] - e[6]) / e[6]
        + (d[7] - e[7]) / e[7]
        + (d[8] - e[8]) / e[8]
    ) / 5
    by_hand = 100 * (seg + depth + normal) / 3
    assert delta_p(nyu(DWA_ROW), nyu(EW_ROW), NYU) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(PRINTED_DELTA_P["DWA"], abs=0.02)


@pytest.mark.parametrize("name", ["EW", "DWA", "RLW", "UW"])
def test_delta_p_distribution_recovers_rw_table1_printed_values(name):
    row = {"EW": EW_ROW, "DWA": DWA_ROW, "RLW": RLW_ROW, "UW": UW_ROW}[name]
    cell = stats.delta_p_distribution({0: nyu(row)}, {0: nyu(EW_ROW)}, NYU, seed=0)
    assert cell.mean == pytest.approx(PRINTED_DELTA_P[name], abs=0.02)
    assert cell.mean == pytest.approx(delta_p(nyu(row), nyu(EW_ROW), NYU))
    assert cell.n == 1 and cell.degenerate and cell.ci_low == cell.ci_high == cell.mean


def test_table1_csv_rows_and_every_printed_delta_p():
    table = table1()
    for name, row in {"EW": EW_ROW, "DWA": DWA_ROW, "RLW": RLW_ROW, "UW": UW_ROW}.items():
        published = [table.loc[name, f"{task}_{metric}"] for task, metrics in NYU.items() for metric in metrics]
        assert published == pytest.approx(row), name
        assert table.loc[name, "delta_p"] == pytest.approx(PRINTED_DELTA_P[name])
    ew = {task: {m: float(table.loc["EW", f"{task}_{m}"]) for m in metrics} for task, metrics in NYU.items()}
    for name, printed in table["delta_p"].items():
        values = {task: {m: float(table.loc[name, f"{task}_{m}"]) for m in metrics} for task, metrics in NYU.items()}
        assert delta_p(values, ew, NYU) == pytest.approx(printed, abs=0.02), name  # the README's ±0.02


def seeds_around(row: list[float], seeds: list[int], spread: float, rng_seed: int) -> dict[int, dict]:
    """Per-seed NYU metrics: ``row`` with relative noise of size ``spread``, one entry per seed."""
    rng = np.random.default_rng(rng_seed)
    return {s: nyu(list(np.asarray(row) * (1 + spread * rng.standard_normal(len(row))))) for s in seeds}


def test_delta_p_distribution_point_is_delta_p_of_seed_means_and_inside_its_ci():
    method = seeds_around(RLW_ROW, [0, 1, 2, 3, 4], 0.01, 1)
    baseline = seeds_around(EW_ROW, [0, 1, 2, 3, 4], 0.01, 2)
    cell = stats.delta_p_distribution(method, baseline, NYU, seed=3, n_resamples=FEW)
    mean_of = lambda per_seed: {  # noqa: E731
        t: {m: float(np.mean([v[t][m] for v in per_seed.values()])) for m in ms} for t, ms in NYU.items()
    }
    assert cell.mean == pytest.approx(delta_p(mean_of(method), mean_of(baseline), NYU))
    per_seed = [delta_p(v, mean_of(baseline), NYU) for v in method.values()]
    assert cell.mean == pytest.approx(np.mean(per_seed)) and cell.std == pytest.approx(np.std(per_seed, ddof=1))
    assert cell.ci_low < cell.mean < cell.ci_high
    assert "paired (5 shared seeds)" in cell.ci_method and not cell.degenerate


def test_delta_p_distribution_pairs_only_identical_seed_sets_and_is_seeded():
    method = seeds_around(RLW_ROW, [0, 1, 2, 3], 0.01, 1)
    baseline = seeds_around(EW_ROW, [0, 1, 2, 3], 0.01, 2)
    shuffled = {s: baseline[s] for s in [3, 1, 0, 2]}  # pairing is by seed, not by position
    paired = stats.delta_p_distribution(method, baseline, NYU, seed=5, n_resamples=FEW)
    assert stats.delta_p_distribution(method, shuffled, NYU, seed=5, n_resamples=FEW) == paired
    assert stats.delta_p_distribution(method, baseline, NYU, seed=6, n_resamples=FEW) != paired
    other_seeds = {s + 10: v for s, v in baseline.items()}
    independent = stats.delta_p_distribution(method, other_seeds, NYU, seed=5, n_resamples=FEW)
    assert "independent (4 method, 4 baseline seeds)" in independent.ci_method
    assert independent.mean == pytest.approx(paired.mean)
    assert (independent.ci_low, independent.ci_high) != (paired.ci_low, paired.ci_high)
    assert independent.ci_low < independent.mean < independent.ci_high


def test_delta_p_distribution_with_a_constant_baseline_is_the_bootstrap_of_per_seed_delta_p():
    # Δp is linear in the method's mean when the baseline does not vary, so its percentile CI is that of the
    # per-seed Δp values. scipy draws the first sample's resamples first from the same seeded generator, so the
    # intervals agree to rounding.
    directions = {"A": {"acc": "higher"}}
    values = [80.0, 82.0, 85.0, 79.0, 81.5]
    method = {s: {"A": {"acc": v}} for s, v in enumerate(values)}
    baseline = {s + 10: {"A": {"acc": 80.0}} for s in range(4)}
    cell = stats.delta_p_distribution(method, baseline, directions, seed=3)
    reference = stats.summarise([100 * (v - 80.0) / 80.0 for v in values], seed=3)
    assert (cell.ci_low, cell.ci_high) == pytest.approx((reference.ci_low, reference.ci_high), abs=1e-9)
    assert (cell.mean, cell.std) == pytest.approx((reference.mean, reference.std))


def test_delta_p_distribution_degenerate_inputs():
    same = {s: nyu(RLW_ROW) for s in range(4)}
    base = {s: nyu(EW_ROW) for s in range(4)}
    constant = stats.delta_p_distribution(same, base, NYU, seed=0)
    assert constant.ci_method == stats.CI_CONSTANT and constant.std == pytest.approx(0.0)
    assert (
        constant.ci_low == constant.ci_high == constant.mean == pytest.approx(delta_p(nyu(RLW_ROW), nyu(EW_ROW), NYU))
    )
    two = stats.delta_p_distribution(seeds_around(RLW_ROW, [0, 1], 0.01, 1), base, NYU, seed=0)
    assert two.ci_method == stats.CI_FEW and math.isfinite(two.ci_low) and two.ci_low == two.ci_high == two.mean
    varied = seeds_around(EW_ROW, [0, 1, 2, 3], 0.01, 2)
    itself = stats.delta_p_distribution(varied, varied, NYU, seed=0, n_resamples=FEW)
    assert itself.mean == pytest.approx(0.0, abs=1e-12) and itself.ci_low == itself.ci_high == pytest.approx(0.0)


def test_delta_p_distribution_rejects_missing_and_zero_values():
    with pytest.raises(ValueError, match="at least one seed"):
        stats.delta_p_distribution({}, {0: nyu(EW_ROW)}, NYU, seed=0)
    broken = {0: {"seg": {"miou": 50.0}, "depth": {}, "normal": {}}}
    with pytest.raises(ValueError, match="seed 0"):
        stats.delta_p_distribution(broken, {0: nyu(EW_ROW)}, NYU, seed=0)
    zero = nyu(EW_ROW)
    zero["seg"]["miou"] = 0.0
    with pytest.raises(ValueError, match="baseline value is 0"):
        stats.delta_p_distribution({0: nyu(EW_ROW)}, {0: zero}, NYU, seed=0)


# --------------------------------------------------------------------------- footer


def test_footer_names_seeds_ci_selection_test_and_correction():
    line = stats.footer(5, "best_val (highest mean validation score over tasks)", stats.TEST_PAIRED)
    assert line.startswith("Mean ± std over 5 seeds; 95% percentile bootstrap CI (9999 resamples, seeded)")
    assert "selected by best_val (highest mean validation score over tasks)" in line
    assert line.endswith(
        "test vs EW: paired t-test over shared seeds (scipy.stats.ttest_rel), Holm-corrected within the table"
    )


def test_footer_variants():
    mixed = stats.footer([3, 5], "last", "Welch t-test / paired t-test", correction=None, baseline="EW+HPS")
    assert "over 3–5 seeds per method" in mixed and "Welch t-test (scipy.stats.ttest_ind" in mixed
    assert "test vs EW+HPS:" in mixed and mixed.endswith("uncorrected")
    single = stats.footer(1, "best_val", stats.TEST_NA)
    assert "over 1 seed;" in single and "no bootstrap CI (fewer than 3 seeds)" in single
    assert single.endswith("test vs EW: none (too few seeds or no variance)")
    partly = stats.footer([2, 4], "best_val", stats.TEST_PAIRED)
    assert "none where fewer than 3 seeds" in partly
