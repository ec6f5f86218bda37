"""Statistics under every table: mean ± std over seeds, bootstrap CIs, tests against the baseline, Holm, Δp.

Small pure functions on numbers, with every random draw taken from a generator
seeded by the caller (never the global one), so a table regenerates to equal
bytes:

* :func:`summarise` — one cell: ``n``, mean, sample std (``ddof=1``) and a
  seeded **percentile** bootstrap 95% confidence interval of the mean
  (:func:`scipy.stats.bootstrap`, ``method="percentile"``). The percentile
  interval is used rather than BCa because with the 3–5 seeds of a study the
  jackknife acceleration of BCa is itself unstable and degenerates (NaN) on
  samples with ties. With fewer than :data:`MIN_BOOTSTRAP` values, or when all
  values are equal, no bootstrap is drawn: the CI collapses to the mean and
  :attr:`CellStats.ci_method` says why.
* :func:`compare` — a method against the baseline over seeds: a paired t-test
  (:func:`scipy.stats.ttest_rel`) over the seeds both share when they share any,
  Welch's t-test (:func:`scipy.stats.ttest_ind` with ``equal_var=False``) when
  their seeds are disjoint; a NaN p-value with test :data:`TEST_NA` and a reason
  when there is too little data or no variance, never an exception.
* :func:`holm` — Holm's step-down adjustment within one table
  (:func:`statsmodels.stats.multitest.multipletests`, ``method="holm"``); NaN
  p-values stay NaN and are not counted in the family.
* :func:`delta_p_distribution` — the RW paper's Δp (Sec. 5,
  :func:`mtlrepro.metrics.delta_p`, in percent) of the method's seed-mean
  against the baseline's seed-mean, with a seeded percentile bootstrap CI that
  resamples seeds (jointly when both sides ran the same seeds, independently
  otherwise).
* :func:`footer` — the line printed under every table; :func:`in_interval` —
  whether a published number lies in a reproduced CI.

Sources: the percentile bootstrap is Efron & Tibshirani, *An Introduction to
the Bootstrap* (1993), ch. 13; Welch's test is Welch, Biometrika 34 (1947);
Holm's procedure is Holm, Scand. J. Statist. 6 (1979); Δp is Lin et al.,
"Reasonable Effectiveness of Random Weighting", Sec. 5. All of them are computed
by the libraries named above, not re-implemented here.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from mtlrepro.metrics import delta_p

CONFIDENCE_LEVEL = 0.95
"""Two-sided confidence level of every bootstrap interval."""
N_RESAMPLES = 9999
"""Bootstrap resamples per interval (scipy's default)."""
BOOTSTRAP_METHOD = "percentile"
"""The interval :func:`scipy.stats.bootstrap` computes (see the module docstring for why not BCa)."""
MIN_BOOTSTRAP = 3
"""Fewest values (seeds) for which a bootstrap interval is drawn; below it the CI collapses to the mean."""

CI_BOOTSTRAP = f"{BOOTSTRAP_METHOD} bootstrap"
"""``ci_method`` of a drawn interval (:func:`summarise`; Δp intervals add how seeds were resampled)."""
CI_NO_VALUES = "n/a: no values"
"""``ci_method`` of a cell with no values (every number NaN)."""
CI_FEW = f"degenerate: fewer than {MIN_BOOTSTRAP} values, CI = mean"
"""``ci_method`` when there are too few values to bootstrap."""
CI_CONSTANT = "degenerate: all values equal, CI = mean"
"""``ci_method`` when every value is the same (every resample would be too)."""

TEST_PAIRED = "paired t-test"
"""``Comparison.test`` of :func:`scipy.stats.ttest_rel` over the shared seeds."""
TEST_WELCH = "Welch t-test"
"""``Comparison.test`` of :func:`scipy.stats.ttest_ind` with ``equal_var=False``."""
TEST_NA = "n/a"
"""``Comparison.test`` when no test could be run; ``Comparison.note`` says why."""

TEST_DESCRIPTIONS = {
    TEST_PAIRED: "paired t-test over shared seeds (scipy.stats.ttest_rel)",
    TEST_WELCH: "Welch t-test (scipy.stats.ttest_ind, unequal variances)",
    TEST_NA: "none (too few seeds or no variance)",
}
"""How :func:`footer` and :func:`tests_used` spell out each test name."""

Nested = Mapping[str, Mapping[str, float]]
"""Task -> metric -> value (one run's metrics, as in ``final.test`` of a run file)."""


# --------------------------------------------------------------------------- one cell


@dataclass(frozen=True)
class CellStats:
    """Statistics of one table cell over seeds.

    ``std`` is the sample standard deviation (``ddof=1``), NaN for one value.
    ``ci_low``/``ci_high`` bound the 95% bootstrap interval; they equal ``mean``
    when the interval is degenerate, which ``ci_method`` then says (see the
    ``CI_*`` constants). Every field but ``std`` is finite whenever ``n >= 1``.
    """

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    ci_method: str

    @property
    def degenerate(self) -> bool:
        """True when no bootstrap was drawn (too few values, all equal, or none)."""
        return not self.ci_method.startswith(CI_BOOTSTRAP)


def _finite_1d(values: ArrayLike, what: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: values must be finite, got {array.tolist()}")
    return array


def _std(values: NDArray[np.float64]) -> float:
    return float(np.std(values, ddof=1)) if values.size > 1 else math.nan


def _all_equal(values: NDArray[np.float64]) -> bool:
    return bool(np.all(values == values[0]))


def summarise(
    values: ArrayLike, seed: int, n_resamples: int = N_RESAMPLES, confidence_level: float = CONFIDENCE_LEVEL
) -> CellStats:
    """Mean, std and a seeded percentile bootstrap CI (95% by default) of the mean of ``values`` (one per seed).

    The interval comes from :func:`scipy.stats.bootstrap` (``method="percentile"``)
    with a generator seeded by ``seed``: the same values and seed give the same
    interval. With fewer than :data:`MIN_BOOTSTRAP` values or all values equal,
    the CI is ``[mean, mean]`` and ``ci_method`` is :data:`CI_FEW` or
    :data:`CI_CONSTANT`; with no values every number is NaN (:data:`CI_NO_VALUES`).
    Raises ``ValueError`` on non-finite values.
    """
    array = _finite_1d(values, "summarise")
    n = int(array.size)
    if n == 0:
        return CellStats(0, math.nan, math.nan, math.nan, math.nan, CI_NO_VALUES)
    mean = float(np.mean(array))
    std = _std(array)
    if n < MIN_BOOTSTRAP or _all_equal(array):
        return CellStats(n, mean, std, mean, mean, CI_FEW if n < MIN_BOOTSTRAP else CI_CONSTANT)
    result = scipy_stats.bootstrap(
        (array,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method=BOOTSTRAP_METHOD,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return CellStats(n, mean, std, low, high, CI_BOOTSTRAP)


def cell_seed(seed: int, *labels: str | int) -> int:
    """A reproducible seed for one cell, from a study's ``seed`` and the cell's labels (method, metric, ...).

    Different cells get independent bootstrap streams; the same labels always
    give the same seed (CRC-32 of each label mixed by :class:`numpy.random.SeedSequence`,
    not Python's salted ``hash``).
    """
    words = [zlib.crc32(str(label).encode()) for label in labels]
    return int(np.random.SeedSequence([seed, *words]).generate_state(1)[0])


def in_interval(value: float, stats: CellStats, tolerance: float = 0.0) -> bool:
    """Whether ``value`` (e.g. a published number) lies in ``stats``'s CI, widened by ``tolerance`` on each side.

    ``tolerance`` can absorb the rounding of a printed number (e.g. 0.005 for
    two decimals). False when ``value`` or the interval is NaN.
    """
    if any(math.isnan(x) for x in (value, stats.ci_low, stats.ci_high)):
        return False
    return stats.ci_low - tolerance <= value <= stats.ci_high + tolerance


def format_stats(stats: CellStats, digits: int = 2) -> str:
    """``53.77 ± 0.41 [53.30, 54.20]``; no ``± std`` for one value, no interval when degenerate; ``n/a`` if empty."""
    if stats.n == 0 or math.isnan(stats.mean):
        return "n/a"
    text = f"{stats.mean:.{digits}f}"
    if not math.isnan(stats.std):
        text += f" ± {stats.std:.{digits}f}"
    if not stats.degenerate:
        text += f" [{stats.ci_low:.{digits}f}, {stats.ci_high:.{digits}f}]"
    return text


# --------------------------------------------------------------------------- method vs baseline


@dataclass(frozen=True)
class Comparison:
    """A two-sided t-test of a method's values against the baseline's over seeds.

    ``test`` is :data:`TEST_PAIRED`, :data:`TEST_WELCH` or :data:`TEST_NA` (then
    ``statistic`` and ``p_value`` are NaN and ``note`` says why). ``n`` is the
    number of pairs (paired) or of observations (Welch: method + baseline);
    ``n_method`` and ``n_baseline`` count each side's values. A positive
    ``statistic`` means the method's values are larger (which is better only
    for a "higher is better" metric).
    """

    test: str
    statistic: float
    p_value: float
    n: int
    n_method: int
    n_baseline: int
    note: str = ""


def _seed_map(values: ArrayLike, seeds: Sequence[int], what: str) -> dict[int, float]:
    array = _finite_1d(values, what)
    seeds = [int(s) for s in seeds]
    if len(seeds) != array.size:
        raise ValueError(f"{what}: {array.size} values but {len(seeds)} seeds")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{what}: repeated seed in {seeds}")
    return dict(zip(seeds, array.tolist(), strict=True))


def compare(
    method_values: ArrayLike,
    baseline_values: ArrayLike,
    method_seeds: Sequence[int],
    baseline_seeds: Sequence[int],
) -> Comparison:
    """Test the method against the baseline: paired over shared seeds, Welch when the seeds are disjoint.

    When the two seed sets intersect, the values are aligned by seed and
    :func:`scipy.stats.ttest_rel` runs over the shared seeds only (values of
    seeds only one side ran are left out, as ``note`` records). When they are
    disjoint, :func:`scipy.stats.ttest_ind` with ``equal_var=False`` (Welch)
    runs on all values. Fewer than 2 pairs, fewer than 2 values on a side
    (Welch), all differences equal (paired) or both sides constant (Welch)
    give test :data:`TEST_NA` with NaN statistic and p-value — never an
    exception. ``ValueError`` only for malformed input (lengths that do not
    match the seeds, repeated seeds, non-finite values).
    """
    method = _seed_map(method_values, method_seeds, "compare: method")
    baseline = _seed_map(baseline_values, baseline_seeds, "compare: baseline")
    n_m, n_b = len(method), len(baseline)
    shared = [seed for seed in method if seed in baseline]
    if shared:
        shared.sort()
        dropped = n_m + n_b - 2 * len(shared)
        note = f"{dropped} unpaired value(s) left out" if dropped else ""
        if len(shared) < 2:
            return Comparison(TEST_NA, math.nan, math.nan, len(shared), n_m, n_b, "fewer than 2 shared seeds")
        a = np.array([method[s] for s in shared])
        b = np.array([baseline[s] for s in shared])
        if _all_equal(a - b):
            return Comparison(TEST_NA, math.nan, math.nan, len(shared), n_m, n_b, "all paired differences equal")
        result = scipy_stats.ttest_rel(a, b)
        return Comparison(TEST_PAIRED, float(result.statistic), float(result.pvalue), len(shared), n_m, n_b, note)
    if n_m < 2 or n_b < 2:
        return Comparison(TEST_NA, math.nan, math.nan, n_m + n_b, n_m, n_b, "fewer than 2 values on a side")
    a = np.array(list(method.values()))
    b = np.array(list(baseline.values()))
    if _all_equal(a) and _all_equal(b):
        return Comparison(TEST_NA, math.nan, math.nan, n_m + n_b, n_m, n_b, "no variance on either side")
    with warnings.catch_warnings():
        # one constant side is fine for Welch (its variance term is 0), but scipy warns about it
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        result = scipy_stats.ttest_ind(a, b, equal_var=False)
    return Comparison(TEST_WELCH, float(result.statistic), float(result.pvalue), n_m + n_b, n_m, n_b)


def holm(p_values: ArrayLike) -> NDArray[np.float64]:
    """Holm-adjusted p-values (``statsmodels`` ``multipletests(method="holm")``), in the input order.

    NaN entries (tests that could not run) stay NaN and are not part of the
    family, so they do not inflate the others' adjustment. Raises ``ValueError``
    on p-values outside ``[0, 1]``.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    adjusted = np.full(p.shape, math.nan)
    present = ~np.isnan(p)
    if np.any((p[present] < 0) | (p[present] > 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p.tolist()}")
    if present.any():
        adjusted[present] = multipletests(p[present], method="holm")[1]
    return adjusted


def tests_used(comparisons: Iterable[Comparison]) -> str:
    """The tests behind a table's comparisons, for :func:`footer`: one name, or ``"a / b"`` when they differ."""
    names = list(dict.fromkeys(comparison.test for comparison in comparisons))
    ran = [name for name in names if name != TEST_NA]
    return " / ".join(ran) if ran else TEST_NA


# --------------------------------------------------------------------------- Δp


def _matrix(per_seed: Mapping[int, Nested], keys: list[tuple[str, str]], what: str) -> NDArray[np.float64]:
    rows = []
    for seed, values in per_seed.items():
        try:
            rows.append([float(values[task][metric]) for task, metric in keys])
        except KeyError as err:
            raise ValueError(f"{what}: seed {seed} has no value for {err.args[0]!r}") from None
    matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(keys))
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{what}: values must be finite")
    return matrix


def _nest(vector: NDArray[np.float64], keys: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    nested: dict[str, dict[str, float]] = {}
    for (task, metric), value in zip(keys, vector.tolist(), strict=True):
        nested.setdefault(task, {})[metric] = value
    return nested


def delta_p_distribution(
    per_seed_method: Mapping[int, Nested],
    per_seed_baseline: Mapping[int, Nested],
    directions: Mapping[str, Mapping[str, str]],
    seed: int,
    n_resamples: int = N_RESAMPLES,
) -> CellStats:
    """Δp (percent; RW paper Sec. 5) of the method's seed-mean against the baseline's, with a bootstrap CI over seeds.

    ``per_seed_method`` and ``per_seed_baseline`` map a run seed to that run's
    metrics (task -> metric -> value); ``directions`` is task -> metric ->
    ``"higher"``/``"lower"``. ``mean`` is :func:`mtlrepro.metrics.delta_p` of the
    means over seeds. Since Δp is linear in the method's values, it is also the
    mean of the per-seed Δp of each method seed against the baseline's mean;
    ``std`` is the ``ddof=1`` std of those per-seed values (as in the summary
    table), and ``n`` the number of method seeds.

    The CI is a seeded percentile bootstrap (:func:`scipy.stats.bootstrap`) of
    that Δp: when both sides ran exactly the same seeds the seeds are resampled
    jointly (a resample keeps pairs together), otherwise each side is resampled
    on its own. With fewer than :data:`MIN_BOOTSTRAP` seeds on a side, or every
    seed's metrics equal on each side, the CI collapses to ``mean`` and
    ``ci_method`` says so. Raises ``ValueError`` when a side has no seeds, a
    metric is missing or non-finite, or a baseline metric is 0.
    """
    if not per_seed_method or not per_seed_baseline:
        raise ValueError("delta_p_distribution: both the method and the baseline need at least one seed")
    keys = [(task, metric) for task, metrics in directions.items() for metric in metrics]
    # rows in seed order on both sides: the result does not depend on the mappings' order, and row i is one seed
    # on both sides when the seed sets are equal (what paired resampling needs)
    per_seed_method = dict(sorted(per_seed_method.items()))
    per_seed_baseline = dict(sorted(per_seed_baseline.items()))
    method = _matrix(per_seed_method, keys, "delta_p_distribution: method")
    baseline = _matrix(per_seed_baseline, keys, "delta_p_distribution: baseline")

    baseline_mean = _nest(baseline.mean(axis=0), keys)
    point = delta_p(_nest(method.mean(axis=0), keys), baseline_mean, directions)
    per_seed = np.array([delta_p(_nest(row, keys), baseline_mean, directions) for row in method])
    n = int(method.shape[0])
    std = _std(per_seed)

    paired = set(per_seed_method) == set(per_seed_baseline)
    if min(method.shape[0], baseline.shape[0]) < MIN_BOOTSTRAP:
        return CellStats(n, point, std, point, point, CI_FEW)
    if bool(np.all(method == method[0])) and bool(np.all(baseline == baseline[0])):
        return CellStats(n, point, std, point, point, CI_CONSTANT)
    if paired:
        how = f"{CI_BOOTSTRAP} over seeds, paired ({n} shared seeds)"
    else:
        how = f"{CI_BOOTSTRAP} over seeds, independent ({n} method, {baseline.shape[0]} baseline seeds)"

    def statistic(i_method: NDArray[np.intp], i_baseline: NDArray[np.intp], axis: int = -1) -> NDArray[np.float64]:
        # scipy passes index resamples of shape (..., n); compute Δp of the resampled means for each one
        means_m = method[i_method].mean(axis=-2).reshape(-1, len(keys))
        means_b = baseline[i_baseline].mean(axis=-2).reshape(-1, len(keys))
        values = [delta_p(_nest(m, keys), _nest(b, keys), directions) for m, b in zip(means_m, means_b, strict=True)]
        return np.array(values).reshape(np.shape(i_method)[:-1])

    result = scipy_stats.bootstrap(
        (np.arange(method.shape[0]), np.arange(baseline.shape[0])),
        statistic,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE_LEVEL,
        method=BOOTSTRAP_METHOD,
        vectorized=True,
        paired=paired,
        rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return CellStats(n, point, std, low, high, how)


# --------------------------------------------------------------------------- legend


def footer(
    n_seeds: int | Sequence[int],
    selection_rule: str,
    test_name: str,
    correction: str | None = "Holm",
    baseline: str = "EW",
) -> str:
    """The line printed under every table: seeds, CI, selection rule, test and correction.

    ``n_seeds`` is the number of seeds, or the per-method counts when they
    differ (printed as a range). ``selection_rule`` names how each run's epoch
    was chosen (on the validation split), e.g. ``"best_val (highest mean
    validation score over tasks)"``. ``test_name`` is a ``TEST_*`` name (spelled
    out from :data:`TEST_DESCRIPTIONS`) or free text, e.g. from :func:`tests_used`.
    ``correction=None`` prints "uncorrected". Example::

        Mean ± std over 5 seeds; 95% percentile bootstrap CI (9999 resamples, seeded); selected by best_val;
        test vs EW: paired t-test over shared seeds (scipy.stats.ttest_rel), Holm-corrected within the table
    """
    counts = sorted({int(n_seeds)} if isinstance(n_seeds, int) else {int(n) for n in n_seeds})
    if not counts:
        raise ValueError("footer: no seed counts given")
    low, high = counts[0], counts[-1]
    over = f"{low} seed{'' if low == 1 else 's'}" if low == high else f"{low}–{high} seeds per method"
    ci = (
        f"{CONFIDENCE_LEVEL:.0%} {BOOTSTRAP_METHOD} bootstrap CI ({N_RESAMPLES} resamples, seeded)"
        if high >= MIN_BOOTSTRAP
        else f"no bootstrap CI (fewer than {MIN_BOOTSTRAP} seeds)"
    )
    if low < MIN_BOOTSTRAP <= high:
        ci += f", none where fewer than {MIN_BOOTSTRAP} seeds"
    names = [TEST_DESCRIPTIONS.get(name.strip(), name.strip()) for name in test_name.split(" / ")]
    test = " / ".join(names)
    if test_name != TEST_NA:
        test += f", {correction}-corrected within the table" if correction else ", uncorrected"
    return f"Mean ± std over {over}; {ci}; selected by {selection_rule}; test vs {baseline}: {test}"
