"""Whole-set metric accumulators against independent numpy/scikit-learn references and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from mtlrepro.accumulators import (
    Accumulator,
    Accuracy,
    BinaryAccuracy,
    Depth,
    Normals,
    RegressionMSE,
    Segmentation,
)
from mtlrepro.metrics import HIGHER, LOWER

SPLITS = (1, 4, 2, 5)  # unequal batch sizes, 12 examples in all
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def batches(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The tensors cut into batches of the sizes SPLITS along dimension 0."""
    return list(zip(*(torch.split(t, list(SPLITS)) for t in tensors), strict=True))


def feed(acc: Accumulator, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    for p, g in batches(prediction, target):
        acc.update(p, g)
    return acc.compute()


# --- independent references (numpy over the concatenated whole set) ---


def ref_segmentation(pred_logits: np.ndarray, gt: np.ndarray, c: int) -> tuple[float, float]:
    pred = pred_logits.argmax(axis=1).ravel()
    gt = gt.ravel()
    keep = (gt >= 0) & (gt < c)
    m = confusion_matrix(gt[keep], pred[keep], labels=list(range(c)))
    ious = []
    for k in range(c):
        tp = m[k, k]
        union = m[k, :].sum() + m[:, k].sum() - tp
        if union > 0:
            ious.append(tp / union)
    return 100 * float(np.mean(ious)), 100 * np.trace(m) / m.sum()


def ref_depth(p: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    mask = g == 0
    pm = np.ma.masked_array(p, mask)
    gm = np.ma.masked_array(g, mask)
    return float(np.ma.abs(pm - gm).mean()), float((np.ma.abs(pm - gm) / gm).mean())


def ref_normal_angles(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    p = np.moveaxis(p, 1, -1).reshape(-1, 3).astype(np.float64)
    g = np.moveaxis(g, 1, -1).reshape(-1, 3).astype(np.float64)
    valid = np.abs(g).sum(axis=1) != 0
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    cos = np.clip(np.einsum("ij,ij->i", p[valid], g[valid]), -1, 1)
    return np.degrees(np.arccos(cos))


def random_normals(gen: torch.Generator, n: int, h: int, w: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    pred = torch.randn(n, 3, h, w, generator=gen, dtype=dtype) * 3  # not unit length
    gt = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=gen, dtype=dtype), dim=1)
    gt = gt * (torch.rand(n, 1, h, w, generator=gen, dtype=dtype) > 0.2)  # ~20% invalid pixels
    # make later images far better predicted than early ones, so per-batch medians are biased
    scale = torch.linspace(0.1, 3.0, n, dtype=dtype).view(n, 1, 1, 1)
    pred = gt * 3 + pred * scale
    return pred, gt


# --- whole set == reference, != mean of per-batch values ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segmentation_matches_sklearn_and_is_not_per_batch(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    c, n = 5, sum(SPLITS)
    logits = torch.randn(n, c, 6, 7, generator=gen, dtype=dtype)
    gt = torch.randint(-1, c, (n, 6, 7), generator=gen)
    gt[:6][gt[:6] == 4] = 0  # class 4 only in later images: per-batch mIoU differs from the whole set's
    res = feed(Segmentation(c), logits, gt)
    miou, pix = ref_segmentation(logits.numpy(), gt.numpy(), c)
    assert res["miou"] == pytest.approx(miou, rel=1e-12)
    assert res["pixel_acc"] == pytest.approx(pix, rel=1e-12)
    per_batch = [ref_segmentation(p.numpy(), g.numpy(), c)[0] for p, g in batches(logits, gt)]
    assert abs(float(np.mean(per_batch)) - res["miou"]) > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_depth_matches_masked_numpy(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    n = sum(SPLITS)
    gt = torch.rand(n, 1, 5, 4, generator=gen, dtype=dtype) * 10
    gt = gt * (torch.rand(n, 1, 5, 4, generator=gen, dtype=dtype) > 0.3)
    pred = gt + torch.randn(n, 1, 5, 4, generator=gen, dtype=dtype)
    res = feed(Depth(), pred, gt)
    abs_err, rel_err = ref_depth(pred.double().numpy(), gt.double().numpy())
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert res["abs_err"] == pytest.approx(abs_err, rel=tol)
    assert res["rel_err"] == pytest.approx(rel_err, rel=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normals_match_numpy_and_median_is_not_per_batch(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    pred, gt = random_normals(gen, sum(SPLITS), 6, 5, dtype)
    res = feed(Normals(), pred, gt)
    angles = ref_normal_angles(pred.numpy(), gt.numpy())
    tol = 1e-6 if dtype == torch.float32 else 1e-9
    assert res["mean"] == pytest.approx(angles.mean(), rel=tol)
    assert res["median"] == pytest.approx(np.median(angles), rel=1e-6)  # median from the float32 copies
    for t in (11.25, 22.5, 30):
        assert res[f"within_{t:g}"] == pytest.approx(100 * np.mean(angles < t), rel=1e-12)
    per_batch = [np.median(ref_normal_angles(p.numpy(), g.numpy())) for p, g in batches(pred, gt)]
    assert abs(float(np.mean(per_batch)) - res["median"]) > 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accuracy_mse_binary_match_numpy(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    n = sum(SPLITS)
    logits = torch.randn(n, 4, generator=gen, dtype=dtype)
    labels = torch.randint(0, 4, (n,), generator=gen)
    assert feed(Accuracy(), logits, labels)["acc"] == pytest.approx(
        100 * np.mean(logits.numpy().argmax(1) == labels.numpy())
    )
    b = torch.randn(n, 1, generator=gen, dtype=dtype)
    y = torch.randint(0, 2, (n,), generator=gen)
    assert feed(BinaryAccuracy(), b, y)["acc"] == pytest.approx(
        100 * np.mean((b.numpy()[:, 0] > 0) == (y.numpy() == 1))
    )
    p = torch.randn(n, generator=gen, dtype=dtype)
    g = torch.randn(n, 1, generator=gen, dtype=dtype)
    mse = float(np.mean((p.double().numpy() - g.double().numpy()[:, 0]) ** 2))
    assert feed(RegressionMSE(), p, g)["mse"] == pytest.approx(mse, rel=1e-12)


# --- hand-computed tiny cases ---


def one_hot_logits(labels: list[list[int]], c: int) -> torch.Tensor:
    """Logits [1, C, H, W] whose argmax is ``labels``."""
    return torch.nn.functional.one_hot(torch.tensor([labels]), c).permute(0, 3, 1, 2).float()


def test_segmentation_2x2_with_ignored_pixel() -> None:
    seg = Segmentation(2)
    seg.update(one_hot_logits([[0, 1], [1, 1]], 2), torch.tensor([[[0, 1], [0, -1]]]))
    # counted pixels: (gt 0, pred 0), (gt 1, pred 1), (gt 0, pred 1); IoU_0 = 1/2, IoU_1 = 1/2
    res = seg.compute()
    assert res["pixel_acc"] == pytest.approx(100 * 2 / 3)
    assert res["miou"] == pytest.approx(50.0)
    assert seg.confusion_matrix().tolist() == [[1, 1], [0, 1]]


def test_segmentation_class_absent_from_gt_and_prediction_is_excluded() -> None:
    seg = Segmentation(3)
    seg.update(one_hot_logits([[0, 1], [1, 1]], 3), torch.tensor([[[0, 1], [1, 0]]]))
    # IoU_0 = 1/2, IoU_1 = 2/3, class 2 absent from both: mean over two classes, not NaN
    assert seg.compute()["miou"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


def test_segmentation_class_only_in_prediction_counts_with_iou_zero() -> None:
    seg = Segmentation(3)
    seg.update(one_hot_logits([[0, 2]], 3), torch.tensor([[[0, 0]]]))
    # IoU_0 = 1/2, IoU_2 = 0 (predicted, never true), class 1 excluded
    assert seg.compute()["miou"] == pytest.approx(25.0)


def test_segmentation_ignore_index_inside_the_class_range() -> None:
    seg = Segmentation(3, ignore_index=2)
    seg.update(one_hot_logits([[0, 1, 0]], 3), torch.tensor([[[0, 2, 1]]]))
    res = seg.compute()
    assert res["pixel_acc"] == pytest.approx(50.0)


def test_depth_zero_targets_are_ignored() -> None:
    d = Depth()
    d.update(torch.tensor([1.0, 5.0, 3.0, 9.0]).view(1, 1, 2, 2), torch.tensor([2.0, 0.0, 4.0, 0.0]).view(1, 1, 2, 2))
    d.update(torch.tensor([0.0]).view(1, 1, 1, 1), torch.tensor([1.0]).view(1, 1, 1, 1))
    res = d.compute()
    # valid: |1-2| = 1 (rel 1/2), |3-4| = 1 (rel 1/4), |0-1| = 1 (rel 1)
    assert res["abs_err"] == pytest.approx(1.0)
    assert res["rel_err"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)


def test_normals_zero_target_ignored_and_prediction_normalised() -> None:
    pred = torch.tensor([[5.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -2.0], [7.0, 7.0, 7.0]])
    gt = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    n = Normals()
    n.update(pred.T.reshape(1, 3, 2, 2), gt.T.reshape(1, 3, 2, 2))
    res = n.compute()
    # angles 0, 45, 180; the zero target is not counted
    assert res["mean"] == pytest.approx(75.0)
    assert res["median"] == pytest.approx(45.0)
    assert res["within_11.25"] == pytest.approx(100 / 3)
    assert res["within_22.5"] == pytest.approx(100 / 3)
    assert res["within_30"] == pytest.approx(100 / 3)


def test_normals_even_count_median_averages_the_middle_values() -> None:
    pred = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    gt = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    n = Normals()
    n.update(pred.T.reshape(1, 3, 2, 2), gt.T.reshape(1, 3, 2, 2))
    assert n.compute()["median"] == pytest.approx((45.0 + 90.0) / 2)


def test_binary_accuracy_threshold_is_strictly_above_zero() -> None:
    b = BinaryAccuracy()
    b.update(torch.tensor([0.0, 1e-6, -1e-6, 0.0]), torch.tensor([0, 1, 0, 1]))
    assert b.compute()["acc"] == pytest.approx(75.0)


# --- state, errors, directions, devices ---


def test_reset_empties() -> None:
    acc = Depth()
    acc.update(torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0))
    acc.reset()
    with pytest.raises(RuntimeError, match="Depth"):
        acc.compute()
    acc.update(torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 4.0))
    assert acc.compute() == {"abs_err": 3.0, "rel_err": 0.75}
    n = Normals()
    n.update(torch.ones(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    n.reset()
    n.update(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1), torch.tensor([0.0, 1, 0]).view(1, 3, 1, 1))
    assert n.compute()["median"] == pytest.approx(90.0)
    s = Segmentation(2)
    s.update(one_hot_logits([[0]], 2), torch.tensor([[[1]]]))
    s.reset()
    s.update(one_hot_logits([[1]], 2), torch.tensor([[[1]]]))
    assert s.compute() == {"miou": 100.0, "pixel_acc": 100.0}


@pytest.mark.parametrize(
    ("acc", "prediction", "target", "expected"),
    [
        (Accuracy(), torch.zeros(4, 3, 1), torch.zeros(4, dtype=torch.long), r"\[B, C\].*\[4, 3, 1\]"),
        (BinaryAccuracy(), torch.zeros(4, 2), torch.zeros(4), r"\[B\] or \[B, 1\].*\[4, 2\]"),
        (
            Segmentation(3),
            torch.zeros(2, 4, 5, 5),
            torch.zeros(2, 5, 5, dtype=torch.long),
            r"\[B, 3, H, W\].*\[2, 4, 5, 5\]",
        ),
        (Segmentation(3), torch.zeros(2, 3, 5, 5), torch.zeros(2, 5, 4, dtype=torch.long), r"\[2, 5, 4\]"),
        (Depth(), torch.zeros(2, 1, 3, 3), torch.zeros(2, 3, 3), r"\[B, 1, H, W\].*\[2, 1, 3, 3\] and \[2, 3, 3\]"),
        (Normals(), torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 3, 3), r"\[B, 3, H, W\].*\[2, 2, 3, 3\]"),
        (RegressionMSE(), torch.zeros(4), torch.zeros(5), r"\[4\] and \[5\]"),
    ],
)
def test_shape_errors_name_expected_and_actual_shapes(
    acc: Accumulator, prediction: torch.Tensor, target: torch.Tensor, expected: str
) -> None:
    with pytest.raises(ValueError, match=expected):
        acc.update(prediction, target)


def test_float_class_labels_refused() -> None:
    with pytest.raises(ValueError, match="integer"):
        Accuracy().update(torch.zeros(2, 3), torch.zeros(2))


def test_directions_use_the_shared_constants_and_match_compute_keys() -> None:
    assert Segmentation.directions == {"miou": HIGHER, "pixel_acc": HIGHER}
    assert Depth.directions == {"abs_err": LOWER, "rel_err": LOWER}
    assert Normals.directions["median"] == LOWER and Normals.directions["within_30"] == HIGHER
    assert RegressionMSE.directions == {"mse": LOWER}
    assert Accuracy.directions == BinaryAccuracy.directions == {"acc": HIGHER}
    n = Normals()
    n.update(torch.ones(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    assert set(n.compute()) == set(Normals.directions)


@pytest.mark.parametrize("device", DEVICES)
def test_every_accumulator_on_device_returns_plain_floats(device: str) -> None:
    gen = torch.Generator().manual_seed(4)
    n = sum(SPLITS)
    pred, gt = random_normals(gen, n, 4, 4, torch.float32)
    cpu = feed(Normals(), pred, gt)
    dev = feed(Normals(), pred.to(device), gt.to(device))
    assert dev.keys() == cpu.keys()
    for k in cpu:
        assert type(dev[k]) is float and math.isclose(dev[k], cpu[k], rel_tol=1e-5)
    logits = torch.randn(n, 3, 4, 4, generator=gen)
    labels = torch.randint(-1, 3, (n, 4, 4), generator=gen)
    assert feed(Segmentation(3), logits.to(device), labels.to(device)) == pytest.approx(
        feed(Segmentation(3), logits, labels)
    )
    depth = torch.rand(n, 1, 4, 4, generator=gen)
    assert feed(Depth(), depth.to(device), depth.roll(1).to(device)) == pytest.approx(
        feed(Depth(), depth, depth.roll(1)), rel=1e-6
    )
    x = torch.randn(n, generator=gen)
    for acc in (BinaryAccuracy(), RegressionMSE()):
        out = feed(acc, x.to(device), (x > 0.3).float().to(device))
        assert all(type(v) is float for v in out.values())
    assert (
        type(feed(Accuracy(), logits[:, :, 0, 0].to(device), labels[:, 0, 0].clamp(min=0).to(device))["acc"]) is float
    )


def test_mixed_devices_refused() -> None:
    acc = RegressionMSE()
    acc.update(torch.zeros(2), torch.zeros(2))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="earlier batches"):
            acc.update(torch.zeros(2, device="cuda"), torch.zeros(2, device="cuda"))
    with pytest.raises(ValueError, match="on cpu but target on meta"):
        acc.update(torch.zeros(2), torch.zeros(2, device="meta"))
