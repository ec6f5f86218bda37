"""Tests of the seeded training-label noise (ExcessMTL Sec. 4.2)."""

from __future__ import annotations

import pytest
import torch

from mtlrepro.data import Task
from mtlrepro.data.noise import check_noise, corrupt_labels, n_selected, noise_label
from mtlrepro.errors import ConfigError

TASKS = (Task("TL", 10), Task("BR", 10))
N = 2000


def _labels(n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, (n, 2), generator=g)


# ---------------------------------------------------------------- noise_label


@pytest.mark.parametrize(
    ("noise", "label"),
    [
        ({}, "clean"),
        ({"TL": 0.0}, "clean"),
        ({"TL": 0.0, "BR": 0}, "clean"),
        ({"TL": 0.4}, "TL0.4"),
        ({"BR": 1.0}, "BR1"),
        ({"TL": 0.5, "BR": 0.2}, "BR0.2_TL0.5"),
        ({"BR": 0.2, "TL": 0.0}, "BR0.2"),
        ({"BR": 0.25}, "BR0.25"),
    ],
)
def test_noise_label(noise: dict, label: str) -> None:
    assert noise_label(noise) == label


# ---------------------------------------------------------------- check_noise


def test_check_noise_returns_floats_in_task_order() -> None:
    checked = check_noise({"BR": 1, "TL": 0.3}, TASKS, "studies.digits.noise[0]")
    assert checked == {"TL": 0.3, "BR": 1.0}
    assert list(checked) == ["TL", "BR"]
    assert all(isinstance(v, float) for v in checked.values())
    assert check_noise({}, TASKS, "x") == {}


def test_check_noise_unknown_task() -> None:
    with pytest.raises(ConfigError) as info:
        check_noise({"XX": 0.2}, TASKS, "studies.digits.noise[0]", dataset="multi_digits")
    assert str(info.value) == "studies.digits.noise[0].XX: unknown task (tasks of multi_digits: TL, BR)"


@pytest.mark.parametrize("rate", [1.5, -0.1, float("nan"), float("inf")])
def test_check_noise_rate_outside_unit_interval(rate: float) -> None:
    with pytest.raises(ConfigError, match=r"^studies\.digits\.noise\[1\]\.TL: .* is outside \[0, 1\]$"):
        check_noise({"TL": rate}, TASKS, "studies.digits.noise[1]")


@pytest.mark.parametrize("rate", ["0.3", None, True, [0.1]])
def test_check_noise_rate_not_a_number(rate: object) -> None:
    with pytest.raises(ConfigError, match=r"^studies\.digits\.noise\[0\]\.BR: .* is not a number$"):
        check_noise({"BR": rate}, TASKS, "studies.digits.noise[0]")


def test_check_noise_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^studies\.digits\.noise\[2\]: "):
        check_noise([0.2], TASKS, "studies.digits.noise[2]")  # type: ignore[arg-type]


# ---------------------------------------------------------------- corrupt_labels


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.333, 0.5, 0.8, 1.0])
def test_selected_count_is_exact(rate: float) -> None:
    y = _labels(1001)
    _, record = corrupt_labels(y, TASKS, {"BR": rate}, seed=3)
    assert record["BR"]["selected"] == round(rate * 1001) == n_selected(rate, 1001)
    assert record["BR"]["rate"] == rate
    assert record["BR"]["changed"] <= record["BR"]["selected"]


def test_rate_zero_keeps_labels() -> None:
    y = _labels()
    out, record = corrupt_labels(y, TASKS, {"TL": 0.0, "BR": 0.0}, seed=1)
    assert torch.equal(out, y)
    assert record == {
        "TL": {"rate": 0.0, "selected": 0, "changed": 0},
        "BR": {"rate": 0.0, "selected": 0, "changed": 0},
    }


def test_rate_one_changes_about_ninety_percent() -> None:
    y = _labels(5000)
    out, record = corrupt_labels(y, TASKS, {"BR": 1.0}, seed=0)
    changed = record["BR"]["changed"]
    assert changed == int((out[:, 1] != y[:, 1]).sum())
    assert 0.87 * 5000 < changed < 0.93 * 5000
    # the new labels are uniform over all 10 classes
    counts = torch.bincount(out[:, 1], minlength=10).float()
    assert float(counts.min()) > 0.85 * 500 and float(counts.max()) < 1.15 * 500


def test_only_the_named_task_changes_and_input_untouched() -> None:
    y = _labels()
    before = y.clone()
    out, record = corrupt_labels(y, TASKS, {"BR": 0.6}, seed=0)
    assert torch.equal(y, before)
    assert torch.equal(out[:, 0], y[:, 0])
    assert set(record) == {"BR"}
    assert int((out[:, 1] != y[:, 1]).sum()) == record["BR"]["changed"] > 0
    assert out.dtype == y.dtype and out.shape == y.shape
    assert int(out.min()) >= 0 and int(out.max()) <= 9


def test_changed_labels_are_within_selected_examples() -> None:
    y = _labels()
    out, record = corrupt_labels(y, TASKS, {"TL": 0.3}, seed=5)
    changed = int((out[:, 0] != y[:, 0]).sum())
    assert changed == record["TL"]["changed"]
    assert record["TL"]["selected"] == 600
    # about 9/10 of the selected examples get a different label
    assert 0.85 * 600 < changed <= 600


def test_deterministic_and_seed_dependent() -> None:
    y = _labels()
    a, ra = corrupt_labels(y, TASKS, {"BR": 0.5}, seed=7)
    b, rb = corrupt_labels(y, TASKS, {"BR": 0.5}, seed=7)
    c, _ = corrupt_labels(y, TASKS, {"BR": 0.5}, seed=8)
    assert torch.equal(a, b) and ra == rb
    assert not torch.equal(a, c)


def test_tasks_are_independent() -> None:
    y = _labels()
    only_br, _ = corrupt_labels(y, TASKS, {"BR": 0.4}, seed=2)
    both, _ = corrupt_labels(y, TASKS, {"TL": 0.7, "BR": 0.4}, seed=2)
    only_tl, _ = corrupt_labels(y, TASKS, {"TL": 0.7}, seed=2)
    assert torch.equal(both[:, 1], only_br[:, 1])
    assert torch.equal(both[:, 0], only_tl[:, 0])
    # the two tasks do not share a stream: with equal columns and equal rates, they still differ
    same = y[:, :1].repeat(1, 2)
    out, _ = corrupt_labels(same, TASKS, {"TL": 0.5, "BR": 0.5}, seed=2)
    assert int((out[:, 0] != out[:, 1]).sum()) > 0.3 * N


def test_lower_rate_corrupts_a_subset_of_higher_rate() -> None:
    y = _labels()
    low, _ = corrupt_labels(y, TASKS, {"BR": 0.2}, seed=4)
    high, _ = corrupt_labels(y, TASKS, {"BR": 0.6}, seed=4)
    changed_low = low[:, 1] != y[:, 1]
    assert bool((high[changed_low, 1] == low[changed_low, 1]).all())


def test_regression_task_gets_gaussian_noise_with_target_variance() -> None:
    tasks = (Task("depth", 0, loss="l1", metrics={"abs_err": "lower"}), Task("cls", 3))
    g = torch.Generator().manual_seed(0)
    target = 5.0 + 3.0 * torch.randn(20000, generator=g, dtype=torch.float64)
    y = torch.stack([target, torch.zeros(20000, dtype=torch.float64)], dim=1)
    out, record = corrupt_labels(y, tasks, {"depth": 0.5}, seed=0)
    assert record["depth"]["selected"] == 10000 == record["depth"]["changed"]
    diff = out[:, 0] - y[:, 0]
    moved = diff != 0
    assert int(moved.sum()) == 10000
    assert float(diff[moved].std()) == pytest.approx(float(target.std(correction=0)), rel=0.05)
    assert abs(float(diff[moved].mean())) < 0.1
    assert torch.equal(out[:, 1], y[:, 1])


def test_corrupt_labels_rejects_bad_input() -> None:
    y = _labels()
    with pytest.raises(ConfigError, match="unknown task"):
        corrupt_labels(y, TASKS, {"XX": 0.1}, seed=0)
    with pytest.raises(ConfigError, match="outside"):
        corrupt_labels(y, TASKS, {"TL": 1.5}, seed=0)
    with pytest.raises(ValueError, match="shape"):
        corrupt_labels(y[:, :1], TASKS, {"TL": 0.1}, seed=0)
    with pytest.raises(ValueError, match="integers"):
        corrupt_labels(y.float(), TASKS, {"TL": 0.1}, seed=0)
