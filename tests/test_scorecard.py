"""The scorecard: each claim's verdict logic on synthetic summaries, and the Markdown listing every published number."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mtlrepro.errors import DataError
from mtlrepro.report.published import published_numbers
from mtlrepro.report.scorecard import (
    CLAIMS,
    CONSISTENT_STAND_IN,
    INCONCLUSIVE,
    NOT_CONSISTENT_STAND_IN,
    NOT_RUN,
    NOT_SUPPORTED,
    PAIRED,
    SUPPORTED,
    WELCH,
    Verdict,
    compare,
    judge_all,
    judge_clean_task_kept,
    judge_estimate_tracks,
    judge_least_weight_on_noisy,
    judge_rlw_comparable,
    judge_rlw_flatter,
    judge_rlw_improves_gradient,
    method_stages,
    noise_trend,
    numbers_beside,
    scorecard_markdown,
    write_scorecard,
)

STAND_IN = "demo digits standing in for Multi-MNIST"
SEEDS = (0, 1, 2, 3)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_stand_in(verdict: Verdict, expected: str) -> None:
    assert verdict.verdict == expected
    assert verdict.stand_in
    assert STAND_IN in verdict.evidence and "stand-in" in verdict.evidence.lower()


# --------------------------------------------------------------------------- claim 1


def _delta_table(low: float, high: float, delta: float | None = None) -> pd.DataFrame:
    delta = (low + high) / 2 if delta is None else delta
    return pd.DataFrame(
        {
            "method": ["ew", "rlw", "rgw"],
            "delta_p": [0.0, delta, 0.3],
            "ci_low": [0.0, low, -0.5],
            "ci_high": [0.0, high, 1.0],
            "p_holm": [math.nan, 0.4, 0.9],
            "n_seeds": [3, 3, 3],
        }
    )


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.8, 1.2, SUPPORTED),  # lower bound above -1%: comparable
        (0.2, 1.2, SUPPORTED),  # better
        (-3.0, -1.5, NOT_SUPPORTED),  # entirely below -1%
        (-1.6, 0.4, INCONCLUSIVE),  # straddles the margin
        (math.nan, math.nan, INCONCLUSIVE),  # no CI (too few seeds)
    ],
)
def test_rlw_comparable_verdicts(low, high, expected):
    verdict = judge_rlw_comparable({"multi_digits": _delta_table(low, high)})
    assert verdict.verdict == expected and not verdict.stand_in
    assert verdict.claim_id == "rw-rlw-comparable" and "multi_digits" in verdict.evidence
    assert "3 seeds" in verdict.evidence and "−1%" in verdict.test


def test_rlw_comparable_over_datasets_and_stand_in():
    good, bad = _delta_table(-0.5, 1.0), _delta_table(-3.0, -1.5)
    assert judge_rlw_comparable({"a": good, "b": good}).verdict == SUPPORTED
    assert judge_rlw_comparable({"a": good, "b": bad}).verdict == NOT_SUPPORTED
    assert judge_rlw_comparable({"a": good, "b": _delta_table(-1.6, 0.4)}).verdict == INCONCLUSIVE
    _assert_stand_in(judge_rlw_comparable({"a": good}, STAND_IN), CONSISTENT_STAND_IN)
    _assert_stand_in(judge_rlw_comparable({"a": bad}, STAND_IN), NOT_CONSISTENT_STAND_IN)
    # a stand-in on any dataset behind the evidence downgrades the claim
    mixed = judge_rlw_comparable({"a": good, "b": good}, {"a": None, "b": STAND_IN})
    _assert_stand_in(mixed, CONSISTENT_STAND_IN)
    assert judge_rlw_comparable({"a": good}, {"a": None}).verdict == SUPPORTED
    stand_in_inconclusive = judge_rlw_comparable({"a": _delta_table(-1.6, 0.4)}, STAND_IN)
    _assert_stand_in(stand_in_inconclusive, INCONCLUSIVE)
    # the method as the index works as well as a column
    assert judge_rlw_comparable({"a": good.set_index("method")}).verdict == SUPPORTED


def test_rlw_comparable_not_run_and_bad_input():
    assert judge_rlw_comparable(None).verdict == NOT_RUN
    assert judge_rlw_comparable({}).verdict == NOT_RUN
    no_rlw = _delta_table(-0.5, 1.0).query("method != 'rlw'")
    verdict = judge_rlw_comparable({"a": no_rlw}, STAND_IN)
    assert verdict.verdict == NOT_RUN and not verdict.stand_in
    partial = judge_rlw_comparable({"a": _delta_table(-0.5, 1.0), "b": no_rlw})
    assert partial.verdict == SUPPORTED and "not run on: b" in partial.evidence
    with pytest.raises(DataError, match=r"rw-rlw-comparable.*ci_high"):
        judge_rlw_comparable({"a": _delta_table(0, 1).drop(columns="ci_high")})


# --------------------------------------------------------------------------- claim 2


def _flatness(rlw_shift: float, noise: float = 0.3, seeds=SEEDS, rlw_seeds=None, dataset=None) -> pd.DataFrame:
    rng = _rng(1)
    rows = []
    for method, shift, seed_set in (("ew", 0.0, seeds), ("rlw", rlw_shift, rlw_seeds or seeds)):
        for seed in seed_set:
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "top_eigenvalue": 10.0 + 0.5 * (seed % 10) + shift + rng.normal(0, noise),
                    "grad_variance": 1.0 + rng.normal(0, 0.1),
                }
            )
    frame = pd.DataFrame(rows)
    return frame if dataset is None else frame.assign(dataset=dataset)


@pytest.mark.parametrize(("shift", "expected"), [(-3.0, SUPPORTED), (3.0, NOT_SUPPORTED), (0.0, INCONCLUSIVE)], ids=str)
def test_rlw_flatter_verdicts(shift, expected):
    verdict = judge_rlw_flatter(_flatness(shift))
    assert verdict.verdict == expected and not verdict.stand_in
    assert PAIRED in verdict.evidence and "gradient variance" in verdict.evidence


def test_rlw_flatter_uses_scipys_paired_test_and_welch_when_disjoint():
    frame = _flatness(-1.0, noise=1.0)
    ew = frame[frame["method"] == "ew"].sort_values("seed")["top_eigenvalue"].to_numpy()
    rlw = frame[frame["method"] == "rlw"].sort_values("seed")["top_eigenvalue"].to_numpy()
    expected = stats.ttest_rel(rlw, ew, alternative="less").pvalue
    result = compare(dict(zip(SEEDS, rlw, strict=True)), dict(zip(SEEDS, ew, strict=True)))
    assert result.test == PAIRED and result.n == 4
    assert result.p_less == pytest.approx(expected)
    assert result.mean_diff == pytest.approx(float(np.mean(rlw - ew)))
    disjoint = judge_rlw_flatter(_flatness(-3.0, rlw_seeds=(10, 11, 12, 13)))
    assert disjoint.verdict == SUPPORTED and WELCH in disjoint.evidence
    welch = compare({10: 1.0, 11: 1.2, 12: 0.9}, {0: 2.0, 1: 2.1, 2: 2.3})
    assert welch.test == WELCH
    assert welch.p_less == pytest.approx(
        stats.ttest_ind([1.0, 1.2, 0.9], [2.0, 2.1, 2.3], equal_var=False, alternative="less").pvalue
    )


def test_rlw_flatter_datasets_stand_in_and_not_run():
    both = pd.concat([_flatness(-3.0, dataset="mm"), _flatness(-3.0, dataset="fm")])
    assert judge_rlw_flatter(both).verdict == SUPPORTED
    one_sharper = pd.concat([_flatness(-3.0, dataset="mm"), _flatness(3.0, dataset="fm")])
    assert judge_rlw_flatter(one_sharper).verdict == NOT_SUPPORTED
    _assert_stand_in(judge_rlw_flatter(_flatness(-3.0), STAND_IN), CONSISTENT_STAND_IN)
    _assert_stand_in(judge_rlw_flatter(_flatness(3.0), STAND_IN), NOT_CONSISTENT_STAND_IN)
    assert judge_rlw_flatter(None).verdict == NOT_RUN
    assert judge_rlw_flatter(pd.DataFrame()).verdict == NOT_RUN
    only_ew = _flatness(0.0).query("method == 'ew'")
    assert judge_rlw_flatter(only_ew, STAND_IN).verdict == NOT_RUN
    one_seed = _flatness(-3.0, seeds=(0,))
    assert judge_rlw_flatter(one_seed).verdict == INCONCLUSIVE  # one pair: no test
    with pytest.raises(DataError, match="top_eigenvalue"):
        judge_rlw_flatter(_flatness(0.0).drop(columns="top_eigenvalue"))


# --------------------------------------------------------------------------- claim 3


def _grid(effects: dict[str, float], noise: float = 0.2) -> pd.DataFrame:
    """Per-seed Δp of each gradient method alone ('' loss) and with RLW, plus the loss weightings alone."""
    rng = _rng(2)
    rows = [
        {"gradient": "", "loss": loss, "seed": s, "delta_p": rng.normal(0.5, noise)}
        for loss in ("ew", "rlw")
        for s in SEEDS
    ]
    for gradient, effect in effects.items():
        for seed in SEEDS:
            base = rng.normal(0.0, 1.0)
            rows.append({"gradient": gradient, "loss": "", "seed": seed, "delta_p": base})
            rows.append(
                {"gradient": gradient, "loss": "rlw", "seed": seed, "delta_p": base + effect + rng.normal(0, noise)}
            )
    return pd.DataFrame(rows)


def test_rlw_improves_gradient_verdicts():
    assert judge_rlw_improves_gradient(_grid({"pcgrad": 1.0, "mgda": 1.5})).verdict == SUPPORTED
    assert judge_rlw_improves_gradient(_grid({"pcgrad": 1.0, "mgda": -1.5})).verdict == NOT_SUPPORTED
    assert judge_rlw_improves_gradient(_grid({"pcgrad": 1.0, "mgda": 0.0})).verdict == INCONCLUSIVE
    verdict = judge_rlw_improves_gradient(_grid({"pcgrad": 1.0}))
    assert "pcgrad" in verdict.evidence and PAIRED in verdict.evidence
    # explicit 'ew' loss entries are the same as an absent loss stage
    explicit = _grid({"pcgrad": 1.0}).replace({"loss": {"": "ew"}})
    assert judge_rlw_improves_gradient(explicit).verdict == SUPPORTED


def test_rlw_improves_gradient_stand_in_and_not_run():
    _assert_stand_in(judge_rlw_improves_gradient(_grid({"pcgrad": 1.0}), STAND_IN), CONSISTENT_STAND_IN)
    _assert_stand_in(judge_rlw_improves_gradient(_grid({"pcgrad": -1.0}), STAND_IN), NOT_CONSISTENT_STAND_IN)
    assert judge_rlw_improves_gradient(None).verdict == NOT_RUN
    loss_only = _grid({})  # the loss weightings alone: no gradient method
    assert judge_rlw_improves_gradient(loss_only).verdict == NOT_RUN
    no_rlw = _grid({"pcgrad": 1.0}).query("loss != 'rlw' or gradient == ''")
    assert judge_rlw_improves_gradient(no_rlw).verdict == NOT_RUN
    partial = pd.concat(
        [_grid({"pcgrad": 1.0}), no_rlw.assign(gradient=no_rlw["gradient"].replace("pcgrad", "gradvac"))]
    )
    verdict = judge_rlw_improves_gradient(partial)
    assert verdict.verdict == SUPPORTED and "not run with both: gradvac" in verdict.evidence


def test_method_stages_reads_the_run_spec():
    run = {"spec": {"method": {"loss": {"entry": "rlw", "weighting": "rlw", "options": {}}, "gradient": None}}}
    assert method_stages(run) == ("rlw", "")
    run["spec"]["method"] = {"loss": None, "gradient": {"entry": "pcgrad", "weighting": "pcgrad", "options": {}}}
    assert method_stages(run) == ("", "pcgrad")


# --------------------------------------------------------------------------- claim 4


def _sweep(drops: dict[str, float], noise_levels=(0.0, 0.2, 0.4, 0.6, 0.8), spread: float = 0.3) -> pd.DataFrame:
    """Clean-task accuracy per run: 90 minus ``drop`` points per unit of noise level."""
    rng = _rng(3)
    return pd.DataFrame(
        [
            {"method": m, "noise": n, "seed": s, "clean_metric": 90.0 - drop * n + rng.normal(0, spread)}
            for m, drop in drops.items()
            for n in noise_levels
            for s in SEEDS[:3]
        ]
    )


ALL_LOSE = {"gradnorm": 30.0, "groupdro": 25.0, "mgda": 20.0, "imtl": 15.0}


def test_noise_trend_is_linregress_over_the_range():
    x, y = [0.0, 0.0, 0.5, 0.5, 1.0, 1.0], [90.0, 89.0, 86.0, 87.0, 80.0, 81.0]
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.975, 4) * fit.stderr
    trend = noise_trend(x, y)
    assert trend.change == pytest.approx(fit.slope)
    assert (trend.low, trend.high) == pytest.approx((fit.slope - half, fit.slope + half))
    assert (trend.n, trend.levels) == (6, 3)
    assert math.isnan(noise_trend([0.4, 0.4, 0.4], [1.0, 2.0, 3.0]).change)


def test_clean_task_kept_verdicts():
    assert judge_clean_task_kept(_sweep({"excess_mtl": 0.0, **ALL_LOSE})).verdict == SUPPORTED
    assert judge_clean_task_kept(_sweep({"excess_mtl": 20.0, **ALL_LOSE})).verdict == NOT_SUPPORTED
    competitor_keeps = judge_clean_task_kept(_sweep({"excess_mtl": 0.0, **ALL_LOSE, "mgda": 0.0}))
    assert competitor_keeps.verdict == NOT_SUPPORTED and "mgda" in competitor_keeps.evidence
    noisy = _sweep({"excess_mtl": 0.0, **ALL_LOSE}, spread=8.0)
    assert judge_clean_task_kept(noisy).verdict == INCONCLUSIVE
    partial = judge_clean_task_kept(_sweep({"excess_mtl": 0.0, "gradnorm": 30.0}))
    assert partial.verdict == SUPPORTED and "not run: groupdro, mgda, imtl" in partial.evidence
    assert "3 seeds" in partial.evidence


def test_clean_task_kept_stand_in_and_not_run():
    _assert_stand_in(judge_clean_task_kept(_sweep({"excess_mtl": 0.0, **ALL_LOSE}), STAND_IN), CONSISTENT_STAND_IN)
    _assert_stand_in(judge_clean_task_kept(_sweep({"excess_mtl": 20.0, **ALL_LOSE}), STAND_IN), NOT_CONSISTENT_STAND_IN)
    assert judge_clean_task_kept(None).verdict == NOT_RUN
    assert judge_clean_task_kept(_sweep(ALL_LOSE)).verdict == NOT_RUN  # no ExcessMTL
    assert judge_clean_task_kept(_sweep({"excess_mtl": 0.0, "ew": 0.0})).verdict == NOT_RUN  # no competitor
    single = _sweep({"excess_mtl": 0.0, **ALL_LOSE}, noise_levels=(0.4,))
    assert judge_clean_task_kept(single).verdict == NOT_RUN


# --------------------------------------------------------------------------- claim 5


def _weights(
    noisy_share: dict[str, float], scale: dict[str, float] | None = None, spread: float = 0.02
) -> pd.DataFrame:
    """Two tasks (TL clean, BR noisy) at noise 0, 0.4 and 0.8; ``noisy_share`` is the BR share at noise > 0."""
    rng = _rng(4)
    rows = []
    for method, share in noisy_share.items():
        factor = (scale or {}).get(method, 1.0)
        for noise in (0.0, 0.4, 0.8):
            for seed in SEEDS[:3]:
                br = 0.5 if noise == 0 else float(np.clip(share + rng.normal(0, spread), 0.01, 0.99))
                for task, weight in (("TL", 1 - br), ("BR", br)):
                    rows.append(
                        {
                            "method": method,
                            "seed": seed,
                            "noise": noise,
                            "task": task,
                            "weight": factor * weight,
                            "noisy": task == "BR",
                        }
                    )
    return pd.DataFrame(rows)


def test_least_weight_on_noisy_verdicts():
    supported = judge_least_weight_on_noisy(_weights({"excess_mtl": 0.2, "gradnorm": 0.8, "mgda": 0.6}))
    assert supported.verdict == SUPPORTED and "vs gradnorm" in supported.evidence
    assert "3 seeds" in supported.evidence and "0.4, 0.8" in supported.evidence
    more_than_clean = judge_least_weight_on_noisy(_weights({"excess_mtl": 0.8, "gradnorm": 0.9}))
    assert more_than_clean.verdict == NOT_SUPPORTED
    more_than_other = judge_least_weight_on_noisy(_weights({"excess_mtl": 0.3, "gradnorm": 0.1}))
    assert more_than_other.verdict == NOT_SUPPORTED
    close = judge_least_weight_on_noisy(_weights({"excess_mtl": 0.3, "gradnorm": 0.3}, spread=0.05))
    assert close.verdict == INCONCLUSIVE


def test_least_weight_normalises_each_methods_scale():
    plain = judge_least_weight_on_noisy(_weights({"excess_mtl": 0.2, "gradnorm": 0.8}))
    scaled = judge_least_weight_on_noisy(_weights({"excess_mtl": 0.2, "gradnorm": 0.8}, scale={"excess_mtl": 2.0}))
    assert plain == scaled  # sum-to-T and simplex weights give the same shares


def test_least_weight_stand_in_and_not_run():
    _assert_stand_in(
        judge_least_weight_on_noisy(_weights({"excess_mtl": 0.2, "gradnorm": 0.8}), STAND_IN), CONSISTENT_STAND_IN
    )
    _assert_stand_in(
        judge_least_weight_on_noisy(_weights({"excess_mtl": 0.8, "gradnorm": 0.9}), STAND_IN),
        NOT_CONSISTENT_STAND_IN,
    )
    assert judge_least_weight_on_noisy(None).verdict == NOT_RUN
    assert judge_least_weight_on_noisy(_weights({"gradnorm": 0.8})).verdict == NOT_RUN
    clean_only = _weights({"excess_mtl": 0.2}).query("noise == 0")
    assert judge_least_weight_on_noisy(clean_only).verdict == NOT_RUN
    alone = judge_least_weight_on_noisy(_weights({"excess_mtl": 0.2}))
    assert alone.verdict == SUPPORTED and "no other method" in alone.evidence


# --------------------------------------------------------------------------- claim 6


def _trace(kind: str, epochs: int = 12, seeds=(0, 1)) -> pd.DataFrame:
    """Proxy decays per task; the estimate follows it ('tracks'), runs against it ('opposite') or is noise."""
    rng = _rng(5)
    rows = []
    for seed in seeds:
        for epoch in range(epochs):
            for task, scale in (("TL", 2.0), ("BR", 1.0)):
                proxy = scale * math.exp(-epoch / 3)
                if kind == "tracks":
                    estimate = 7.0 * proxy + rng.normal(0, 0.01)
                elif kind == "opposite":
                    estimate = -proxy + rng.normal(0, 0.01)
                else:
                    estimate = rng.normal(0, 1)
                rows.append({"seed": seed, "epoch": epoch, "task": task, "estimate": estimate, "proxy": proxy})
    return pd.DataFrame(rows)


def test_estimate_tracks_verdicts():
    tracks = judge_estimate_tracks(_trace("tracks"))
    assert tracks.verdict == SUPPORTED and "TL: ρ 1.00" in tracks.evidence and "2 seeds" in tracks.evidence
    assert judge_estimate_tracks(_trace("opposite")).verdict == NOT_SUPPORTED
    assert judge_estimate_tracks(_trace("tracks", epochs=3)).verdict == INCONCLUSIVE  # too few epochs
    mixed = pd.concat([_trace("tracks").query("task == 'TL'"), _trace("noise", seeds=(0,)).query("task == 'BR'")])
    # BR's estimate is unrelated to its proxy, but 12 epochs cannot rule out ρ ≥ 0.5 (CI upper bound 0.54)
    assert judge_estimate_tracks(mixed).verdict == INCONCLUSIVE
    assert judge_estimate_tracks(_trace("noise", epochs=60)).verdict == NOT_SUPPORTED  # enough epochs to rule it out


def test_estimate_tracks_matches_scipys_spearman():
    trace = _trace("noise", epochs=20, seeds=(0,))
    verdict = judge_estimate_tracks(trace)
    tl = trace[trace["task"] == "TL"]
    rho = stats.spearmanr(tl["estimate"], tl["proxy"]).statistic
    assert f"TL: ρ {rho:.2f}" in verdict.evidence


def test_estimate_tracks_stand_in_and_not_run():
    _assert_stand_in(judge_estimate_tracks(_trace("tracks"), STAND_IN), CONSISTENT_STAND_IN)
    _assert_stand_in(judge_estimate_tracks(_trace("opposite"), STAND_IN), NOT_CONSISTENT_STAND_IN)
    assert judge_estimate_tracks(None).verdict == NOT_RUN
    assert judge_estimate_tracks(pd.DataFrame(columns=["epoch", "task", "estimate", "proxy"])).verdict == NOT_RUN
    with pytest.raises(DataError, match=r"em-estimate-tracks.*proxy"):
        judge_estimate_tracks(_trace("tracks").drop(columns="proxy"))


# --------------------------------------------------------------------------- all claims


def test_judge_all_in_claim_order_with_not_run_for_absent_inputs():
    verdicts = judge_all({"rw-rlw-flatter": {"flatness": _flatness(-3.0), "stand_in": STAND_IN}})
    assert [v.claim_id for v in verdicts] == [claim.id for claim in CLAIMS]
    by_id = {v.claim_id: v for v in verdicts}
    assert by_id["rw-rlw-flatter"].verdict == CONSISTENT_STAND_IN
    assert all(v.verdict == NOT_RUN for cid, v in by_id.items() if cid != "rw-rlw-flatter")
    with pytest.raises(KeyError, match="no claim"):
        judge_all({"rw-made-up": {}})


def test_the_issues_claims_are_all_there():
    assert {claim.id for claim in CLAIMS} == {
        "rw-rlw-comparable",
        "rw-rlw-flatter",
        "rw-rlw-improves-gradient",
        "em-clean-task-kept",
        "em-least-weight-noisy",
        "em-estimate-tracks",
    }
    for claim in CLAIMS:
        assert claim.paper in ("rw", "excess_mtl") and claim.statement and claim.test and claim.where


def test_verdict_rejects_an_unknown_verdict():
    with pytest.raises(ValueError, match="verdict must be one of"):
        Verdict("rw-rlw-flatter", "probably", "", "", False)


# --------------------------------------------------------------------------- the scorecard file


def _reproduced() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "key": "rw/table1_nyuv2",
                "method": "rlw",
                "metric": "delta_p",
                "value": 0.51,
                "ci_low": -0.2,
                "ci_high": 1.2,
                "n_seeds": 3,
                "note": "stand-in",
            },
            {
                "key": "rw/table4_combinations",
                "method": "ew+mgda",
                "metric": "delta_p",
                "value": -0.5,
                "ci_low": -0.9,
                "ci_high": -0.1,
                "n_seeds": 3,
            },
            {"key": "rw/table5_architectures", "method": "rlw", "arch": "mtan", "metric": "delta_p", "value": 2.0},
            {"key": "rw/table1_nyuv2", "method": "sam", "metric": "delta_p", "value": 9.0},
        ]
    )


def test_numbers_beside_matches_reproduced_values():
    numbers = numbers_beside(published_numbers(), _reproduced()).set_index(["key", "row", "column"])
    rlw = numbers.loc[("rw/table1_nyuv2", "RLW", "delta_p")]
    assert rlw["reproduced"] == 0.51 and rlw["diff"] == pytest.approx(0.51 - 1.04) and rlw["in_ci"] is True
    mgda = numbers.loc[("rw/table4_combinations", "MGDA-UB", "EW")]  # ew+mgda is MGDA-UB with EW weights
    assert mgda["reproduced"] == -0.5 and mgda["in_ci"] is False
    mtan = numbers.loc[("rw/table5_architectures", "RLW", "MTAN")]
    assert mtan["reproduced"] == 2.0 and mtan["in_ci"] is None
    assert math.isnan(numbers.loc[("rw/table5_architectures", "RLW", "HPS"), "reproduced"])
    assert numbers["reproduced"].notna().sum() == 3
    assert numbers_beside(published_numbers(), _reproduced()).attrs["unmatched"] == 1
    with pytest.raises(DataError, match="more than once"):
        numbers_beside(published_numbers(), pd.concat([_reproduced(), _reproduced()]))
    table5_without_arch = pd.DataFrame(
        [{"key": "rw/table5_architectures", "method": "rlw", "metric": "delta_p", "value": 1}]
    )
    with pytest.raises(DataError, match="give 'arch'"):
        numbers_beside(published_numbers(), table5_without_arch)
    with pytest.raises(DataError, match="lack column"):
        numbers_beside(published_numbers(), _reproduced().drop(columns="metric"))


def _number_lines(markdown: str) -> list[list[str]]:
    """Cells of every row of the published-number tables (after the '## Published numbers' heading)."""
    section = markdown.split("## Published numbers", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|:") and not line.startswith("| Row"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_scorecard_lists_every_published_number_and_the_claims(tmp_path):
    published = published_numbers()
    verdicts = judge_all(
        {
            "rw-rlw-comparable": {"tables": {"multi_digits": _delta_table(-0.5, 1.0)}, "stand_in": STAND_IN},
            "em-estimate-tracks": {"trace": _trace("tracks")},
        }
    )
    out = tmp_path / "results" / "scorecard.md"
    write_scorecard(verdicts, published, _reproduced(), out, notes=["Runs: multi_digits, 3 seeds, best_val"])
    markdown = out.read_text()
    assert markdown == scorecard_markdown(
        verdicts, published, _reproduced(), notes=["Runs: multi_digits, 3 seeds, best_val"]
    )
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    assert "Runs: multi_digits, 3 seeds, best_val" in markdown
    for claim in CLAIMS:
        assert claim.statement in markdown
    assert f"**{CONSISTENT_STAND_IN}**" in markdown and f"**{SUPPORTED}**" in markdown
    assert markdown.count(f"**{NOT_RUN}**") == 4
    assert "ExcessMTL: no published numbers" in markdown

    rows = _number_lines(markdown)
    assert len(rows) == len(published) == 615
    listed = {(row[0], row[1], row[3]) for row in rows}
    for number in published.itertuples():
        assert (number.row, number.column, number.text) in listed, number
    table1 = _number_lines(
        markdown.split("### RW Table 1:", 1)[1].split("### ", 1)[0].join(["## Published numbers", ""])
    )
    by_cell = {(row[0], row[1]): row for row in table1}
    assert len(table1) == 150
    assert by_cell[("RLW", "delta_p")][3:9] == ["1.04", "0.51", "[-0.20, 1.20]", "-0.53", "yes", "3"]
    assert by_cell[("EW", "seg_miou")][4:] == ["", "", "", "", "", ""]  # blank without a reproduced value
    for table in published["table"].unique():
        assert f"### {table}:" in markdown


def test_scorecard_without_reproduced_values(tmp_path):
    out = tmp_path / "scorecard.md"
    write_scorecard(judge_all({}), published_numbers(), None, out)
    rows = _number_lines(out.read_text())
    assert len(rows) == 615 and all(row[4] == "" for row in rows)


def test_the_scorecard_puts_our_delta_p_beside_table4():
    # evidence from run records: a study naming RW Table 4 puts each cell's Δp beside the published one
    from test_paper_tables import TASKS, metrics, run_record

    from mtlrepro.metrics import delta_p
    from mtlrepro.report.evidence import reproduced_numbers

    values = {"ew": [(90, 80, 0.5), (92, 84, 0.3)], "rlw": [(93, 84, 0.4), (91, 86, 0.4)]}
    runs = [run_record(m, s, metrics(*v)) for m, per_seed in values.items() for s, v in enumerate(per_seed)]
    study = {
        "name": "g",
        "title": "g",
        "dataset": "multi_digits",
        "archs": ["hps"],
        "methods": ["ew", "rlw"],
        "seeds": [0, 1],
        "noise_labels": ["clean"],
        "baseline": "ew",
        "outputs": [{"kind": "combination_grid"}],
        "published": "rw/table4_combinations",
        "published_kind": "combination_grid",
    }
    numbers = reproduced_numbers([study], runs).set_index("method")
    mean = {m: metrics(*(sum(v[i] for v in per_seed) / 2 for i in range(3))) for m, per_seed in values.items()}
    assert numbers.loc["rlw", "value"] == pytest.approx(delta_p(mean["rlw"], mean["ew"], TASKS))
    assert numbers.loc["ew", "value"] == pytest.approx(0.0)
    assert set(numbers["key"]) == {"rw/table4_combinations"} and set(numbers["metric"]) == {"delta_p"}
