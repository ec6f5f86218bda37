"""Tests of the seeded training-label noise of every kind of task (ExcessMTL Sec. 4.2)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from mtlrepro.data.noise import CHUNK, check_noise, corrupt_targets, corrupt_task, n_selected, noise_label
from mtlrepro.errors import ConfigError
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import IGNORE, Task

TAGS = tuple(f"T{i}" for i in range(5))
TASKS = {
    "classification": Task("cls", "classification", n_classes=10),
    "binary": Task("attr", "binary"),
    "tagging": Task("pos", "tagging", n_classes=5, labels=TAGS),
    "segmentation": Task("seg", "segmentation", n_classes=7),
    "depth": Task("depth", "depth"),
    "normals": Task("normal", "normals"),
    "regression": Task("joint1", "regression"),
}
FLIP_KINDS = ("classification", "binary", "tagging", "segmentation")
POSITION_KINDS = ("tagging", "segmentation", "depth", "normals")
ALL_KINDS = tuple(TASKS)
N = {"classification": 3000, "binary": 3000, "tagging": 500, "segmentation": 300, "depth": 300, "normals": 300}
N["regression"] = 20000
RATES = (0.0, 0.2, 0.5, 0.8, 1.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _classes(kind: str) -> int:
    return 2 if kind == "binary" else TASKS[kind].n_classes


def make_target(kind: str, n: int | None = None, seed: int = 0) -> Tensor:
    """A stored target in the contract's layout, with unscored/invalid positions for the dense kinds."""
    n = N[kind] if n is None else n
    g = _gen(seed)
    if kind == "classification":
        return torch.randint(10, (n,), generator=g, dtype=torch.int64)
    if kind == "binary":
        return torch.randint(2, (n,), generator=g).to(torch.uint8)
    if kind == "tagging":
        labels = torch.randint(5, (n, 24), generator=g)
        lengths = torch.randint(8, 24, (n, 1), generator=g)  # at least 8 scored positions before padding
        unscored = (torch.arange(24) >= lengths) | (torch.rand(n, 24, generator=g) < 0.1) & (torch.arange(24) >= 8)
        return torch.where(unscored, IGNORE, labels).to(torch.int16)
    if kind == "segmentation":
        labels = torch.randint(7, (n, 6, 8), generator=g)
        unlabelled = torch.rand(n, 6, 8, generator=g) < 0.25
        unlabelled[:, 0, :] = False  # at least 8 labelled pixels per image
        return torch.where(unlabelled, IGNORE, labels).to(torch.int16)
    if kind == "depth":
        depth = 10.0 + torch.randn(n, 1, 6, 8, generator=g)  # 10 sigma above 0: the clamp never acts
        invalid = torch.rand(n, 1, 6, 8, generator=g) < 0.2
        return torch.where(invalid, 0.0, depth)
    if kind == "normals":
        normals = torch.nn.functional.normalize(
            torch.randn(n, 3, 6, 8, generator=g) + torch.tensor([0.0, 0.0, 2.0]).reshape(1, 3, 1, 1), dim=1
        )
        invalid = torch.rand(n, 1, 6, 8, generator=g) < 0.2
        return torch.where(invalid, 0.0, normals)
    return 5.0 + 3.0 * torch.randn(n, generator=g)


def scored(kind: str, target: Tensor) -> Tensor:
    """Scored positions per example ``[N x ...]`` (labels != -1, depth != 0, normals != 0)."""
    if kind in ("tagging", "segmentation"):
        return target != IGNORE
    if kind == "depth":
        return target[:, 0] != 0
    if kind == "normals":
        return target.abs().sum(dim=1) != 0
    return torch.ones(target.shape[0], dtype=torch.bool)


def differs(kind: str, a: Tensor, b: Tensor) -> Tensor:
    """Positions ``[N x ...]`` (per pixel for depth/normals) where two targets differ."""
    d = a != b
    return d.any(dim=1) if kind in ("depth", "normals") else d


def per_example(mask: Tensor) -> Tensor:
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def selected_examples(task: Task, n: int, rate: float, seed: int) -> Tensor:
    """The documented selection: the first n_selected(rate, n) of a permutation from the task's stream."""
    generator = torch.Generator().manual_seed(derive_seed(seed, f"noise/{task.name}"))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: n_selected(rate, n)]] = True
    return mask


def within_binomial(observed: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    """Whether ``observed`` lies within ``sigmas`` standard deviations of Binomial(trials, p)'s mean."""
    return abs(observed - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p)) + 1


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

DIGITS = (Task("TL", "classification", n_classes=10), Task("BR", "classification", n_classes=10))


def test_check_noise_returns_floats_in_task_order() -> None:
    checked = check_noise({"BR": 1, "TL": 0.3}, DIGITS, "studies.digits.noise[0]")
    assert checked == {"TL": 0.3, "BR": 1.0}
    assert list(checked) == ["TL", "BR"]
    assert all(isinstance(v, float) for v in checked.values())
    assert check_noise({}, DIGITS, "x") == {}


def test_check_noise_unknown_task() -> None:
    with pytest.raises(ConfigError) as info:
        check_noise({"XX": 0.2}, DIGITS, "studies.digits.noise[0]", dataset="multi_digits")
    assert str(info.value) == "studies.digits.noise[0].XX: unknown task (tasks of multi_digits: TL, BR)"


@pytest.mark.parametrize("rate", [1.5, -0.1, float("nan"), float("inf")])
def test_check_noise_rate_outside_unit_interval(rate: float) -> None:
    with pytest.raises(ConfigError, match=r"^studies\.digits\.noise\[1\]\.TL: .* is outside \[0, 1\]$"):
        check_noise({"TL": rate}, DIGITS, "studies.digits.noise[1]")


@pytest.mark.parametrize("rate", ["0.3", None, True, [0.1]])
def test_check_noise_rate_not_a_number(rate: object) -> None:
    with pytest.raises(ConfigError, match=r"^studies\.digits\.noise\[0\]\.BR: .* is not a number$"):
        check_noise({"BR": rate}, DIGITS, "studies.digits.noise[0]")


def test_check_noise_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^studies\.digits\.noise\[2\]: "):
        check_noise([0.2], DIGITS, "studies.digits.noise[2]")  # type: ignore[arg-type]


# ---------------------------------------------------------------- corrupt_task: counts and realised rates


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_selected_count_is_exact_and_changes_stay_in_the_selection(kind: str, rate: float) -> None:
    task, target = TASKS[kind], make_target(kind)
    n = target.shape[0]
    out, record = corrupt_task(target, task, rate, seed=3)
    assert out.shape == target.shape and out.dtype == target.dtype
    assert record["rate"] == rate
    assert record["selected"] == n_selected(rate, n) == round(rate * n)
    selected = selected_examples(task, n, rate, seed=3)
    changed = per_example(differs(kind, out, target))
    assert record["changed"] == int(changed.sum()) <= record["selected"]
    assert not bool((changed & ~selected).any()), "an example outside the selection changed"
    if kind in POSITION_KINDS:
        assert record["positions_scored"] == int(scored(kind, target).sum())
        assert record["positions_changed"] == int(differs(kind, out, target).sum())
    else:
        assert "positions_changed" not in record and "positions_scored" not in record


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", FLIP_KINDS)
def test_flips_change_about_rate_times_c_minus_one_over_c(kind: str, rate: float) -> None:
    """A uniform redraw keeps the true label with probability 1/C: changed ~ Binomial(trials, (C-1)/C)."""
    task, target = TASKS[kind], make_target(kind)
    _, record = corrupt_task(target, task, rate, seed=11)
    p = (_classes(kind) - 1) / _classes(kind)
    if kind in ("classification", "binary"):
        assert within_binomial(record["changed"], record["selected"], p)
        return
    selected = selected_examples(task, target.shape[0], rate, seed=11)
    trials = int(scored(kind, target)[selected].sum())  # scored positions of the selected examples
    assert within_binomial(record["positions_changed"], trials, p)
    # every example has >= 8 scored positions: P(none of them changes) <= C^-8, so all selected examples change
    assert record["changed"] == record["selected"]
    realised = record["positions_changed"] / record["positions_scored"]
    assert realised == pytest.approx(rate * p, abs=0.03)


@pytest.mark.parametrize("kind", ("classification", "tagging", "segmentation"))
def test_replacement_labels_are_uniform_over_all_classes(kind: str) -> None:
    task, target = TASKS[kind], make_target(kind)
    out, _ = corrupt_task(target, task, 1.0, seed=0)
    mask = scored(kind, target)
    counts = torch.bincount(out[mask].long(), minlength=task.n_classes)
    assert counts.numel() == task.n_classes and int(out[mask].min()) >= 0
    total, p = int(counts.sum()), 1 / task.n_classes
    assert all(within_binomial(int(c), total, p) for c in counts)


def test_binary_redraw_is_zero_one_uniform() -> None:
    target = torch.zeros(4000, dtype=torch.uint8)
    out, record = corrupt_task(target, TASKS["binary"], 1.0, seed=0)
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) == {0, 1}
    assert within_binomial(int(out.sum()), 4000, 0.5) and record["changed"] == int(out.sum())


# ---------------------------------------------------------------- seeding and prefix property


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_lower_rate_corrupts_a_subset_with_identical_replacements(kind: str) -> None:
    task, target = TASKS[kind], make_target(kind)
    outs = [corrupt_task(target, task, rate, seed=4)[0] for rate in (0.2, 0.5, 0.8)]
    for low, high in itertools.pairwise(outs):
        moved = differs(kind, low, target)
        assert bool(moved.any())
        if kind in ("depth", "normals"):
            assert torch.equal(high.movedim(1, -1)[moved], low.movedim(1, -1)[moved])
        else:
            assert torch.equal(high[moved], low[moved])
        # the selection itself is nested as well
        n = target.shape[0]
        assert not bool((selected_examples(task, n, 0.2, 4) & ~selected_examples(task, n, 0.5, 4)).any())


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_same_seed_same_corruption_other_seed_other(kind: str) -> None:
    task, target = TASKS[kind], make_target(kind)
    a, record_a = corrupt_task(target, task, 0.5, seed=7)
    b, record_b = corrupt_task(target, task, 0.5, seed=7)
    c, _ = corrupt_task(target, task, 0.5, seed=8)
    assert torch.equal(a, b) and record_a == record_b
    assert not torch.equal(a, c)


def test_stream_is_the_task_names() -> None:
    """Two tasks with equal targets and rates get different noise: each task has its own stream."""
    target = make_target("classification")
    a, _ = corrupt_task(target, Task("A", "classification", n_classes=10), 0.5, seed=2)
    b, _ = corrupt_task(target, Task("B", "classification", n_classes=10), 0.5, seed=2)
    assert int((a != b).sum()) > 0.3 * target.shape[0]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_input_is_not_modified(kind: str) -> None:
    task, target = TASKS[kind], make_target(kind)
    before = target.clone()
    out, _ = corrupt_task(target, task, 1.0, seed=0)
    assert torch.equal(target, before)
    assert out.data_ptr() != target.data_ptr()


@pytest.mark.parametrize("n", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_chunk_boundaries(n: int) -> None:
    """Sizes around the chunk length: the counts stay exact and unscored positions stay untouched."""
    task, target = TASKS["segmentation"], make_target("segmentation", n=n)
    out, record = corrupt_task(target, task, 0.5, seed=1)
    assert record["selected"] == n_selected(0.5, n)
    assert torch.equal(out == IGNORE, target == IGNORE)


# ---------------------------------------------------------------- unscored / invalid positions


@pytest.mark.parametrize("kind", ("tagging", "segmentation"))
def test_ignore_labels_never_change_and_never_appear(kind: str) -> None:
    task, target = TASKS[kind], make_target(kind)
    out, _ = corrupt_task(target, task, 1.0, seed=5)
    assert torch.equal(out == IGNORE, target == IGNORE)
    assert int(out[out != IGNORE].min()) >= 0 and int(out.max()) < task.n_classes


def test_depth_invalid_pixels_stay_zero_and_valid_ones_stay_positive() -> None:
    # half the valid pixels near 0.1 m, half near 10 m: std ~ 5, so many draws fall below 0 and are clamped
    g = _gen(0)
    depth = torch.where(torch.rand(200, 1, 6, 8, generator=g) < 0.5, 0.1, 10.0)
    depth = torch.where(torch.rand(200, 1, 6, 8, generator=g) < 0.2, 0.0, depth)
    out, record = corrupt_task(depth, TASKS["depth"], 1.0, seed=0)
    assert torch.equal(out == 0, depth == 0)
    lowest = float(depth[depth != 0].min())
    assert float(out[depth != 0].min()) == pytest.approx(lowest)  # clamped to the smallest valid depth
    assert int((out[depth != 0] == lowest).sum()) > 0.2 * int((depth != 0).sum())
    assert record["std"] == pytest.approx(float(depth[depth != 0].double().std(correction=0)), rel=1e-6)


def test_depth_float16_storage() -> None:
    depth = make_target("depth", n=100).half()
    out, _ = corrupt_task(depth, TASKS["depth"], 0.5, seed=0)
    assert out.dtype == torch.float16 and torch.equal(out == 0, depth == 0) and bool((out >= 0).all())


def test_normals_stay_unit_and_invalid_stay_zero() -> None:
    target = make_target("normals")
    out, record = corrupt_task(target, TASKS["normals"], 1.0, seed=0)
    valid = scored("normals", target)
    assert torch.equal(out.abs().sum(dim=1) != 0, valid)
    assert bool((out.movedim(1, -1)[~valid] == 0).all())
    lengths = out.norm(dim=1)[valid]
    assert torch.allclose(lengths, torch.ones_like(lengths), atol=1e-5)
    # the noise std per component is the population std of that component over the valid pixels
    components = target.movedim(1, -1)[valid].double()
    assert record["std"] == pytest.approx(components.std(dim=0, correction=0).tolist(), rel=1e-5)
    # the noise is substantial: the mean angle between true and noisy normals is tens of degrees
    cosine = (out * target).sum(dim=1)[valid].clamp(-1, 1)
    assert 10.0 < float(torch.rad2deg(torch.acos(cosine)).mean()) < 90.0


# ---------------------------------------------------------------- Gaussian noise scale


def test_regression_noise_std_matches_the_targets() -> None:
    target = make_target("regression")
    out, record = corrupt_task(target, TASKS["regression"], 0.5, seed=0)
    assert record["selected"] == 10000 == record["changed"]
    diff = (out - target).double()
    moved = diff != 0
    assert int(moved.sum()) == 10000
    sigma = float(target.double().std(correction=0))
    assert record["std"] == pytest.approx(sigma, rel=1e-12)
    # sample std of 10000 draws: relative standard error 1/sqrt(2 * 10000) = 0.7 %
    assert float(diff[moved].std()) == pytest.approx(sigma, rel=0.035)
    assert abs(float(diff[moved].mean())) < 5 * sigma / 100


def test_depth_noise_std_matches_the_valid_depths() -> None:
    target = make_target("depth")
    out, record = corrupt_task(target, TASKS["depth"], 1.0, seed=0)
    valid = target != 0
    sigma = float(target[valid].double().std(correction=0))
    assert record["std"] == pytest.approx(sigma, rel=1e-6)
    diff = (out - target)[valid].double()
    assert int((diff != 0).sum()) == int(valid.sum())
    assert float(diff.std()) == pytest.approx(sigma, rel=0.03)
    assert abs(float(diff.mean())) < 0.03 * sigma


# ---------------------------------------------------------------- corrupt_targets


def test_corrupt_targets_leaves_other_tasks_as_the_same_objects() -> None:
    tasks = (TASKS["segmentation"], TASKS["depth"], TASKS["normals"])
    targets = tuple(make_target(kind, n=100) for kind in ("segmentation", "depth", "normals"))
    out, record = corrupt_targets(targets, tasks, {"seg": 0.4, "depth": 0.0}, seed=9)
    assert isinstance(out, tuple) and len(out) == 3
    assert out[1] is targets[1] and out[2] is targets[2]
    assert out[0] is not targets[0]
    assert set(record) == {"seg"}
    alone, alone_record = corrupt_task(targets[0], tasks[0], 0.4, seed=9)
    assert torch.equal(out[0], alone) and record["seg"] == alone_record


def test_corrupt_targets_tasks_are_independent() -> None:
    tasks = (Task("TL", "classification", n_classes=10), Task("BR", "classification", n_classes=10))
    targets = (make_target("classification", seed=1), make_target("classification", seed=2))
    both, _ = corrupt_targets(targets, tasks, {"TL": 0.7, "BR": 0.4}, seed=2)
    only_br, _ = corrupt_targets(targets, tasks, {"BR": 0.4}, seed=2)
    only_tl, _ = corrupt_targets(targets, tasks, {"TL": 0.7}, seed=2)
    assert torch.equal(both[1], only_br[1]) and torch.equal(both[0], only_tl[0])


def test_corrupt_targets_clean_setting_returns_the_inputs() -> None:
    tasks = tuple(TASKS.values())
    targets = tuple(make_target(kind, n=10) for kind in TASKS)
    out, record = corrupt_targets(targets, tasks, {}, seed=0)
    assert record == {} and all(a is b for a, b in zip(out, targets, strict=True))


def test_corrupt_targets_rejects_bad_input() -> None:
    tasks = (Task("TL", "classification", n_classes=10), Task("BR", "classification", n_classes=10))
    targets = (make_target("classification"), make_target("classification"))
    with pytest.raises(ConfigError, match="unknown task"):
        corrupt_targets(targets, tasks, {"XX": 0.1}, seed=0)
    with pytest.raises(ConfigError, match="outside"):
        corrupt_targets(targets, tasks, {"TL": 1.5}, seed=0)
    with pytest.raises(ConfigError, match="not a number"):
        corrupt_targets(targets, tasks, {"TL": "0.1"}, seed=0)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="1 target tensors for 2 tasks"):
        corrupt_targets(targets[:1], tasks, {"TL": 0.1}, seed=0)
    with pytest.raises(ValueError, match="expected integer labels"):
        corrupt_targets((targets[0].float(), targets[1]), tasks, {"TL": 0.1}, seed=0)


@pytest.mark.parametrize(
    ("kind", "target", "message"),
    [
        ("classification", torch.zeros(5, 2, dtype=torch.int64), "2 dimensions, expected 1"),
        ("segmentation", torch.zeros(5, 4, 4), "expected integer labels"),
        ("depth", torch.zeros(5, 3, 4, 4), "3 channels, expected 1"),
        ("normals", torch.zeros(5, 3, 4, 4, dtype=torch.int16), "expected floating point"),
        ("regression", torch.zeros(5, dtype=torch.int64), "expected floating point"),
    ],
)
def test_corrupt_task_rejects_a_target_that_does_not_fit(kind: str, target: Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        corrupt_task(target, TASKS[kind], 0.5, seed=0)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_corrupt_task_rejects_a_bad_rate(rate: object) -> None:
    with pytest.raises(ValueError, match="noise rate"):
        corrupt_task(make_target("classification", n=10), TASKS["classification"], rate, seed=0)  # type: ignore[arg-type]
