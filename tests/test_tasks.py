"""Tests of the task kinds (:mod:`mtlrepro.tasks`): losses against values computed by hand, validation, dtypes, metrics.

The losses are the papers' (RW Sec. 5 and App. C, ExcessMTL Sec. 4 and App. C.1) with LibMTL's dense NYUv2
losses (``method-contract.md`` Sec. 3): every expected value below is worked out on paper from logits chosen
so that the softmax/sigmoid is a simple fraction (a logit of ln 3 against 0 gives probability 3/4).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mtlrepro import accumulators
from mtlrepro.metrics import HIGHER, LOWER
from mtlrepro.tasks import (
    DENSE_KINDS,
    IGNORE,
    KINDS,
    LABEL_KINDS,
    Task,
    check_target,
)

LN3 = math.log(3.0)
TAGS = ("NOUN", "VERB", "ADJ")


def t(values: object, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.tensor(values, dtype=dtype)


# ---------------------------------------------------------------- losses by hand


def test_classification_loss_by_hand() -> None:
    task = Task("product", "classification", n_classes=2)
    logits = t([[0.0, LN3], [LN3, 0.0]])  # p(class 1) = 3/4 and 1/4
    target = task.target(t([1, 1], torch.int16))
    expected = (math.log(4 / 3) + math.log(4)) / 2
    assert float(task.loss(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_binary_loss_by_hand() -> None:
    task = Task("Smiling", "binary")
    logits = t([[0.0], [LN3], [LN3]])  # sigmoid: 1/2, 3/4, 3/4
    target = task.target(t([1, 1, 0], torch.uint8))
    expected = (math.log(2) + math.log(4 / 3) + math.log(4)) / 3
    assert float(task.loss(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_tagging_loss_by_hand_ignores_unscored_positions() -> None:
    task = Task("en", "tagging", n_classes=2, labels=("NOUN", "VERB"))
    logits = t([[[0.0, LN3], [LN3, 0.0], [5.0, -5.0]], [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])
    stored = t([[1, 1, IGNORE], [IGNORE, IGNORE, IGNORE]], torch.int16)
    expected = (math.log(4 / 3) + math.log(4)) / 2  # mean over the 2 scored tokens
    assert float(task.loss(logits, task.target(stored))) == pytest.approx(expected, rel=1e-6)
    # the logits of unscored positions do not matter
    other = logits.clone()
    other[0, 2] = torch.tensor([-7.0, 9.0])
    other[1] = 100.0 * torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    assert float(task.loss(other, task.target(stored))) == pytest.approx(expected, rel=1e-6)


def test_segmentation_loss_by_hand_ignores_unlabelled_pixels() -> None:
    task = Task("segmentation", "segmentation", n_classes=2)
    # one 2x2 image; channels first: logits[class, row, col]
    logits = t([[[[LN3, 0.0], [9.0, 0.0]], [[0.0, 0.0], [-9.0, LN3]]]])
    stored = t([[[0, 1], [IGNORE, 1]]], torch.int16)
    expected = (math.log(4 / 3) + math.log(2) + math.log(4 / 3)) / 3  # the -1 pixel does not count
    assert float(task.loss(logits, task.target(stored))) == pytest.approx(expected, rel=1e-6)


def test_depth_loss_by_hand_over_valid_pixels_of_the_batch() -> None:
    task = Task("depth", "depth")
    target = t([[[[1.0, 2.0], [0.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # the second image has no valid pixel
    prediction = t([[[[1.5, 1.0], [100.0, 4.0]]], [[[7.0, 7.0], [7.0, 7.0]]]])
    expected = (0.5 + 1.0 + 0.0) / 3  # sum |p - g| over the 3 valid pixels of the batch / 3
    assert float(task.loss(prediction, task.target(target.half()))) == pytest.approx(expected, rel=1e-6)
    # no valid pixel at all: zero, not NaN
    assert float(task.loss(prediction[1:], target[1:])) == 0.0


def test_normals_loss_by_hand_one_minus_cosine_over_valid_pixels() -> None:
    task = Task("normal", "normals")
    # one 2x2 image, vectors per pixel (row-major): target (1,0,0), (0,1,0), (0,0,0) invalid, (0,0,1)
    target = torch.zeros(1, 3, 2, 2)
    target[0, :, 0, 0] = t([1.0, 0.0, 0.0])
    target[0, :, 0, 1] = t([0.0, 1.0, 0.0])
    target[0, :, 1, 1] = t([0.0, 0.0, 1.0])
    prediction = torch.zeros(1, 3, 2, 2)
    prediction[0, :, 0, 0] = t([2.0, 0.0, 0.0])  # cosine 1 (the prediction is normalised first)
    prediction[0, :, 0, 1] = t([1.0, 1.0, 0.0])  # cosine 1/sqrt(2)
    prediction[0, :, 1, 0] = t([5.0, 5.0, 5.0])  # invalid pixel: does not count
    prediction[0, :, 1, 1] = t([0.0, 0.0, -3.0])  # cosine -1
    expected = 1.0 - (1.0 + 1.0 / math.sqrt(2.0) - 1.0) / 3
    assert float(task.loss(prediction, task.target(target))) == pytest.approx(expected, rel=1e-6)


def test_regression_loss_by_hand() -> None:
    task = Task("joint1", "regression")
    prediction = t([[1.0], [2.0]])
    target = task.target(t([0.0, 4.0], torch.float64))
    assert float(task.loss(prediction, target)) == pytest.approx((1.0 + 4.0) / 2, rel=1e-6)


def test_every_kind_has_a_hand_checked_loss() -> None:
    assert set(KINDS) == {"classification", "binary", "tagging", "segmentation", "depth", "normals", "regression"}


# ---------------------------------------------------------------- Task


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "ranking"}, r"^task x: kind 'ranking' is unknown \(known kinds: classification, binary, "),
        ({"kind": "classification"}, r"^task x: a classification task needs n_classes >= 2, got 0$"),
        ({"kind": "segmentation", "n_classes": 1}, r"^task x: a segmentation task needs n_classes >= 2, got 1$"),
        ({"kind": "tagging", "n_classes": 3}, r"^task x: a tagging task needs the names of its 3 tags$"),
        ({"kind": "classification", "n_classes": 3, "labels": ("a", "b")}, r"^task x: 2 label names for 3 classes$"),
    ],
)
def test_task_validation_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Task("x", **kwargs)


@pytest.mark.parametrize(
    ("task", "out_channels", "dense"),
    [
        (Task("c", "classification", n_classes=65), 65, False),
        (Task("b", "binary"), 1, False),
        (Task("p", "tagging", n_classes=3, labels=TAGS), 3, False),
        (Task("s", "segmentation", n_classes=13), 13, True),
        (Task("d", "depth"), 1, True),
        (Task("n", "normals"), 3, True),
        (Task("r", "regression"), 1, False),
    ],
)
def test_out_channels_and_dense(task: Task, out_channels: int, dense: bool) -> None:
    assert task.out_channels == out_channels
    assert task.dense is dense
    assert (task.kind in DENSE_KINDS) is dense


@pytest.mark.parametrize(
    ("task", "stored", "expected"),
    [
        (Task("c", "classification", n_classes=3), t([0, 2], torch.int16), torch.int64),
        (Task("c", "classification", n_classes=3), t([0, 2], torch.int64), torch.int64),
        (Task("b", "binary"), t([0, 1], torch.uint8), torch.float32),
        (Task("p", "tagging", n_classes=3, labels=TAGS), t([[0, IGNORE]], torch.int16), torch.int64),
        (Task("s", "segmentation", n_classes=3), t([[[0, IGNORE]]], torch.int16), torch.int64),
        (Task("d", "depth"), torch.zeros(1, 1, 2, 2, dtype=torch.float16), torch.float32),
        (Task("n", "normals"), torch.zeros(1, 3, 2, 2, dtype=torch.float16), torch.float32),
        (Task("r", "regression"), t([1.5], torch.float64), torch.float32),
    ],
)
def test_target_dtypes(task: Task, stored: Tensor, expected: torch.dtype) -> None:
    converted = task.target(stored)
    assert converted.dtype == expected
    assert converted.shape == stored.shape and converted.device == stored.device
    assert torch.equal(converted, stored.to(expected))  # values (including -1) survive
    assert (task.kind in LABEL_KINDS) is (expected == torch.int64)


# ---------------------------------------------------------------- check_target

VALID_TARGETS = [
    (Task("c", "classification", n_classes=3), torch.zeros(4, dtype=torch.int64)),
    (Task("c", "classification", n_classes=3), torch.zeros(4, dtype=torch.int16)),
    (Task("b", "binary"), torch.zeros(4, dtype=torch.uint8)),
    (Task("p", "tagging", n_classes=3, labels=TAGS), torch.full((4, 8), IGNORE, dtype=torch.int16)),
    (Task("s", "segmentation", n_classes=3), torch.zeros(4, 2, 2, dtype=torch.int16)),
    (Task("d", "depth"), torch.zeros(4, 1, 2, 2)),
    (Task("d", "depth"), torch.zeros(4, 1, 2, 2, dtype=torch.float16)),
    (Task("n", "normals"), torch.zeros(4, 3, 2, 2)),
    (Task("r", "regression"), torch.zeros(4)),
]


@pytest.mark.parametrize(("task", "target"), VALID_TARGETS)
def test_check_target_accepts_the_contract_layouts(task: Task, target: Tensor) -> None:
    check_target(task, target)
    check_target(task, target, n=4)


@pytest.mark.parametrize(
    ("task", "target", "problem"),
    [
        (Task("c", "classification", n_classes=3), torch.zeros(4, 1, dtype=torch.int64), "2 dimensions, expected 1"),
        (Task("c", "classification", n_classes=3), torch.zeros(4), "dtype torch.float32, expected integer labels"),
        (Task("s", "segmentation", n_classes=3), torch.zeros(4, 2, 2, dtype=torch.bool), "expected integer labels"),
        (Task("s", "segmentation", n_classes=3), torch.zeros(4, 1, 2, 2, dtype=torch.int16), "4 dimensions"),
        (Task("p", "tagging", n_classes=3, labels=TAGS), torch.zeros(4, dtype=torch.int16), "1 dimensions, expected 2"),
        (Task("d", "depth"), torch.zeros(4, 2, 2), "3 dimensions, expected 4"),
        (Task("d", "depth"), torch.zeros(4, 3, 2, 2), "3 channels, expected 1"),
        (Task("d", "depth"), torch.zeros(4, 1, 2, 2, dtype=torch.int32), "dtype torch.int32, expected floating point"),
        (Task("n", "normals"), torch.zeros(4, 1, 2, 2), "1 channels, expected 3"),
        (Task("r", "regression"), torch.zeros(4, dtype=torch.int64), "expected floating point"),
    ],
)
def test_check_target_errors(task: Task, target: Tensor, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        check_target(task, target)
    message = str(info.value)
    assert message.startswith(f"task {task.name} ({task.kind}): target of shape {list(target.shape)} has ")
    assert problem in message


def test_check_target_wrong_number_of_examples() -> None:
    with pytest.raises(
        ValueError, match=r"^task d \(depth\): target of shape \[4, 1, 2, 2\] has 4 examples, expected 5$"
    ):
        check_target(Task("d", "depth"), torch.zeros(4, 1, 2, 2), n=5)


# ---------------------------------------------------------------- metrics and their directions

DIRECTIONS = {
    # RW Table 1-4 / ExcessMTL Fig. 6-9: accuracy, F1, mIoU and pixel accuracy higher is better; depth errors,
    # normal angle errors and MSE lower is better; percentages of normals within 11.25/22.5/30 degrees higher
    "classification": {"acc": HIGHER},
    "binary": {"acc": HIGHER},
    "tagging": {"f1": HIGHER},
    "segmentation": {"miou": HIGHER, "pixel_acc": HIGHER},
    "depth": {"abs_err": LOWER, "rel_err": LOWER},
    "normals": {"mean": LOWER, "median": LOWER, "within_11.25": HIGHER, "within_22.5": HIGHER, "within_30": HIGHER},
    "regression": {"mse": LOWER},
}


def _one_hot_logits(labels: Tensor, n_classes: int, dim: int) -> Tensor:
    """Logits that predict ``labels`` (an unscored -1 predicts class 0)."""
    return 10.0 * torch.nn.functional.one_hot(labels.clamp_min(0), n_classes).movedim(-1, dim).float()


def _cases() -> list[tuple[Task, Tensor, Tensor, Tensor]]:
    """(task, stored target, a perfect prediction, a worse prediction) per kind."""
    cls = t([0, 2, 1, 2], torch.int64)
    binary = t([0, 1, 1, 0], torch.uint8)
    tags = t([[0, 1, 2, IGNORE], [2, 2, 0, 1]], torch.int16)
    seg = t([[[0, 1], [IGNORE, 1]], [[2, 2], [0, 1]]], torch.int16)
    depth = t([[[[1.0, 2.0], [0.0, 4.0]]]])
    normals = torch.nn.functional.normalize(torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    normals[:, :, 1, 0] = 0.0
    regression = t([0.5, -1.0, 2.0])
    return [
        (
            Task("c", "classification", n_classes=3),
            cls,
            _one_hot_logits(cls, 3, 1),
            _one_hot_logits((cls + 1) % 3, 3, 1),
        ),
        (Task("b", "binary"), binary, (binary.float() * 2 - 1)[:, None], (1 - binary.float() * 2)[:, None]),
        (
            Task("p", "tagging", n_classes=3, labels=TAGS),
            tags,
            _one_hot_logits(tags.long(), 3, 2),
            _one_hot_logits((tags.long() + 1) % 3, 3, 2),
        ),
        (Task("s", "segmentation", n_classes=3), seg, _one_hot_logits(seg.long(), 3, 1), torch.zeros(2, 3, 2, 2)),
        (Task("d", "depth"), depth, depth.clone(), depth + 1.0),
        (Task("n", "normals"), normals, normals.clone(), _tilt(normals)),
        (Task("r", "regression"), regression, regression[:, None].clone(), regression[:, None] + 1.0),
    ]


def _tilt(normals: Tensor) -> Tensor:
    """Normals turned by 45 degrees about an axis perpendicular to each (every valid angle error is 45)."""
    helper = torch.zeros_like(normals)
    helper[:, 0] = 1.0
    helper = torch.where(normals[:, :1].abs() > 0.9, torch.roll(helper, 1, dims=1), helper)
    perpendicular = torch.nn.functional.normalize(torch.cross(normals, helper, dim=1), dim=1)
    return (normals + perpendicular) / math.sqrt(2.0)


@pytest.mark.parametrize("kind", list(DIRECTIONS))
def test_metric_directions_are_the_papers(kind: str) -> None:
    task = next(case[0] for case in _cases() if case[0].kind == kind)
    assert dict(task.metrics) == DIRECTIONS[kind]
    assert task.accumulator().directions == DIRECTIONS[kind]
    assert isinstance(task.accumulator(), KINDS[kind].accumulator)


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case[0].kind if isinstance(case, tuple) else "")
def test_a_perfect_prediction_scores_better_in_every_metric(case: tuple[Task, Tensor, Tensor, Tensor]) -> None:
    """Each metric moves in its stated direction: a perfect prediction beats a worse one on every metric."""
    task, stored, good, bad = case
    target = task.target(stored)
    scores = []
    for prediction in (good, bad):
        accumulator = task.accumulator()
        accumulator.update(prediction, target)
        scores.append(accumulator.compute())
    best, worse = scores
    assert set(best) == set(DIRECTIONS[task.kind])
    for name, direction in DIRECTIONS[task.kind].items():
        if direction == HIGHER:
            assert best[name] > worse[name], name
        else:
            assert best[name] < worse[name], name
    assert float(task.loss(good, target)) < float(task.loss(bad, target))


def test_accumulators_get_the_tasks_classes_and_ignore_label() -> None:
    segmentation = Task("s", "segmentation", n_classes=13).accumulator()
    assert isinstance(segmentation, accumulators.Segmentation)
    assert segmentation.n_classes == 13 and segmentation.ignore_index == IGNORE
    tagging = Task("p", "tagging", n_classes=3, labels=TAGS).accumulator()
    assert isinstance(tagging, accumulators.TaggingF1)
    assert tagging.labels == TAGS and tagging.ignore_index == IGNORE
