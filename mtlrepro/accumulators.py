"""Whole-set metric accumulators for every task type of the two papers.

Each accumulator takes batches through ``update(prediction, target)`` and gives the metric of the WHOLE
evaluation set through ``compute()``: counts and sums are accumulated, never per-batch values, so the result
does not depend on how the set is split into batches (a mean of per-batch mIoU or medians would).

``update()`` keeps its state on the device of its inputs and never waits for the device: no ``.item()``,
no boolean indexing, no ``bincount`` (whose CUDA kernel reads the maximum back to size its output).
``compute()`` synchronises once and returns plain Python floats. Sums are kept in float64 and counts in
int64, so float32 inputs lose nothing to accumulation over millions of pixels.

Directions (``"higher"``/``"lower"`` is better) use :data:`mtlrepro.metrics.HIGHER` and
:data:`mtlrepro.metrics.LOWER`, as :func:`mtlrepro.metrics.delta_p` expects. Percentages are in percent
(0-100), as the papers print them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mtlrepro.metrics import HIGHER, LOWER

__all__ = [
    "Accumulator",
    "Accuracy",
    "BinaryAccuracy",
    "Depth",
    "ExampleMean",
    "Normals",
    "RegressionMSE",
    "Segmentation",
    "TaggingF1",
]


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


class Accumulator:
    """Base class: accumulate a metric over batches, report it for the whole set.

    Subclasses set ``directions`` (metric name -> ``HIGHER`` or ``LOWER``) and implement ``update``,
    ``compute`` and ``reset``. State tensors are created on the device of the first batch; a later batch on
    another device is refused. ``compute()`` raises ``RuntimeError`` when nothing (valid) was added, since the
    metric is then undefined, and may be called again after more updates.
    """

    directions: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._device: torch.device | None = None
        self.reset()

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add one batch of predictions and targets."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """Metrics of everything added since the last ``reset()``, as plain floats."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every batch added so far."""
        self._device = None

    def _check_device(self, prediction: Tensor, target: Tensor) -> torch.device:
        if prediction.device != target.device:
            raise ValueError(
                f"{type(self).__name__}: prediction is on {prediction.device} but target on {target.device}"
            )
        if self._device is None:
            self._device = prediction.device
        elif prediction.device != self._device:
            raise ValueError(f"{type(self).__name__}: batch on {prediction.device}, earlier batches on {self._device}")
        return self._device

    def _empty(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__}: no (valid) element was added, the metric is undefined")


def _zeros(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.zeros(n, dtype=dtype, device=device)


class Accuracy(Accumulator):
    """Top-1 classification accuracy in percent: ``acc = 100 * correct / total`` over the whole set.

    Used for Office-31/Office-Home and PAWS-X (RW Sec. 5 and App. C; ExcessMTL Sec. 4.1). LibMTL's public
    code counts correct and total over the set in the same way, so there is no difference.

    ``prediction``: logits ``[B, C]``; ``target``: integer class indices ``[B]``.
    """

    directions: ClassVar[dict[str, str]] = {"acc": HIGHER}

    def reset(self) -> None:
        """Forget every batch added so far."""
        super().reset()
        self._correct: Tensor | None = None
        self._total = 0

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: logits ``[B, C]`` and integer class indices ``[B]``."""
        if prediction.dim() != 2 or target.dim() != 1 or prediction.shape[0] != target.shape[0]:
            raise ValueError(
                f"Accuracy: expected prediction [B, C] and target [B], got {_shape(prediction)} and {_shape(target)}"
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"Accuracy: target must hold integer class indices, got dtype {target.dtype}")
        device = self._check_device(prediction, target)
        if self._correct is None:
            self._correct = _zeros((), torch.int64, device)
        self._correct += (prediction.argmax(dim=1) == target).sum()
        self._total += target.shape[0]

    def compute(self) -> dict[str, float]:
        """``{"acc": percent}`` over the whole set."""
        if self._correct is None or self._total == 0:
            raise self._empty()
        return {"acc": 100.0 * int(self._correct.item()) / self._total}


def _check_dense_pair(name: str, prediction: Tensor, target: Tensor, channels: int) -> None:
    """Refuse a prediction and target that are not both ``[B, channels, H, W]`` of one shape."""
    if prediction.dim() != 4 or prediction.shape[1] != channels or target.shape != prediction.shape:
        raise ValueError(
            f"{name}: expected prediction and target [B, {channels}, H, W] of the same shape, "
            f"got {_shape(prediction)} and {_shape(target)}"
        )


def _as_vector(t: Tensor) -> Tensor | None:
    """``[B]`` or ``[B, 1]`` as ``[B]``; None for any other shape."""
    if t.dim() == 1:
        return t
    if t.dim() == 2 and t.shape[1] == 1:
        return t[:, 0]
    return None


class ExampleMean(Accumulator):
    """The shell of a metric that is a mean over examples of one value each (accuracy of a logit, squared error).

    Subclasses name their one metric in ``directions``, give ``per_example(prediction, target)`` on ``[B]``
    vectors, and a ``factor`` (100 for a percentage). ``prediction`` and ``target``: ``[B]`` or ``[B, 1]``.
    """

    factor: ClassVar[float] = 1.0

    def per_example(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The value of every example of a batch, ``[B]``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every batch added so far."""
        super().reset()
        self._sum: Tensor | None = None
        self._total = 0

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: predictions and targets, ``[B]`` or ``[B, 1]`` each."""
        p, g = _as_vector(prediction), _as_vector(target)
        if p is None or g is None or p.shape[0] != g.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: expected prediction [B] or [B, 1] and target [B] or [B, 1], "
                f"got {_shape(prediction)} and {_shape(target)}"
            )
        device = self._check_device(prediction, target)
        values = self.per_example(p, g)
        if self._sum is None:
            self._sum = _zeros((), values.dtype, device)
        self._sum += values.sum()
        self._total += p.shape[0]

    def compute(self) -> dict[str, float]:
        """``{metric: factor * mean}`` over the whole set."""
        if self._sum is None or self._total == 0:
            raise self._empty()
        (name,) = self.directions
        return {name: self.factor * float(self._sum.item()) / self._total}


class BinaryAccuracy(ExampleMean):
    """Accuracy in percent of one binary attribute (CelebA: one task per attribute, RW App. C).

    The prediction is one logit per example; it counts as positive iff ``logit > 0`` (probability > 1/2, a
    logit of exactly 0 is negative). ``acc = 100 * correct / total`` over the whole set, as LibMTL's
    accuracy metric counts (LibMTL has no CelebA loader of its own).

    ``prediction``: ``[B]`` or ``[B, 1]``; ``target``: ``[B]`` (or ``[B, 1]``) holding 0 or 1 (integer, bool
    or float). Values other than 0 and 1 are not checked (that would wait for the device); any non-zero
    target counts as positive.
    """

    directions: ClassVar[dict[str, str]] = {"acc": HIGHER}
    factor = 100.0

    def per_example(self, prediction: Tensor, target: Tensor) -> Tensor:
        """1 where the sign of the logit matches the 0/1 target, else 0."""
        return ((prediction > 0) == (target != 0)).to(torch.int64)


class Segmentation(Accumulator):
    """Semantic segmentation: mIoU and pixel accuracy in percent, from one confusion matrix of the whole set.

    Definition: RW Sec. 5.2 (NYUv2, 13 classes) and App. C (CityScapes, 7 classes) report mIoU and Pix Acc,
    both higher-is-better. A pixel counts iff ``0 <= target < n_classes`` and ``target != ignore_index``
    (label -1 marks unlabelled pixels on NYUv2/CityScapes); every other pixel, prediction included, is left
    out. The confusion matrix ``M[gt, pred]`` counts the argmax predictions of the counted pixels.

    - ``IoU_c = M[c, c] / (row_c + col_c - M[c, c])``.
    - ``miou`` = mean of ``IoU_c`` over the classes present in the ground truth OR the prediction of the whole
      set. A class absent from both has IoU 0/0, undefined, and is excluded. LibMTL's public code averages
      over all C classes, so on such a set its mIoU is NaN (on the full NYUv2/CityScapes test sets every class
      occurs, and both agree).
    - ``pixel_acc`` = trace(M) / number of counted (non-ignored) pixels, as in LibMTL.

    MTAN's code (used by ExcessMTL's NYUv2 baseline) also keeps one confusion matrix over the set, so mIoU
    agrees with it too; its pixel accuracy is a mean of per-batch values (not reproduced here).

    ``prediction``: logits ``[B, C, H, W]``; ``target``: integer labels ``[B, H, W]``.
    """

    directions: ClassVar[dict[str, str]] = {"miou": HIGHER, "pixel_acc": HIGHER}

    def __init__(self, n_classes: int, ignore_index: int = -1) -> None:
        if n_classes < 1:
            raise ValueError(f"Segmentation: n_classes must be >= 1, got {n_classes}")
        self.n_classes = int(n_classes)
        self.ignore_index = int(ignore_index)
        super().__init__()

    def reset(self) -> None:
        """Forget every batch added so far."""
        super().reset()
        # n_classes^2 cells of the confusion matrix plus one bin collecting the pixels that are not counted
        self._bins: Tensor | None = None

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: logits ``[B, C, H, W]`` and labels ``[B, H, W]``."""
        c = self.n_classes
        if (
            prediction.dim() != 4
            or prediction.shape[1] != c
            or target.dim() != 3
            or target.shape != prediction.shape[:1] + prediction.shape[2:]
        ):
            raise ValueError(
                f"Segmentation: expected prediction [B, {c}, H, W] and target [B, H, W], "
                f"got {_shape(prediction)} and {_shape(target)}"
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"Segmentation: target must hold integer labels, got dtype {target.dtype}")
        device = self._check_device(prediction, target)
        if self._bins is None:
            self._bins = _zeros(c * c + 1, torch.int64, device)
        gt = target.reshape(-1).to(torch.int64)
        pred = prediction.argmax(dim=1).reshape(-1)
        counted = (gt >= 0) & (gt < c) & (gt != self.ignore_index)
        index = torch.where(counted, gt * c + pred, c * c)
        self._bins.index_add_(0, index, torch.ones_like(index))

    def confusion_matrix(self) -> Tensor:
        """The confusion matrix ``[C, C]`` (rows: ground truth, columns: prediction) on the CPU."""
        if self._bins is None:
            raise self._empty()
        c = self.n_classes
        return self._bins[: c * c].reshape(c, c).cpu()

    def compute(self) -> dict[str, float]:
        """``{"miou": percent, "pixel_acc": percent}`` over the whole set."""
        m = self.confusion_matrix().to(torch.float64)
        total = float(m.sum())
        if total == 0:
            raise self._empty()
        diag = torch.diagonal(m)
        union = m.sum(dim=0) + m.sum(dim=1) - diag
        present = union > 0
        miou = float((diag[present] / union[present]).mean())
        return {"miou": 100.0 * miou, "pixel_acc": 100.0 * float(diag.sum()) / total}


class Depth(Accumulator):
    """Depth estimation: absolute and relative error over every valid pixel of the whole set.

    Definition: RW Sec. 5.2 (NYUv2) and App. C (CityScapes) report Abs Err and Rel Err, lower is better.
    A pixel is valid iff its target depth is non-zero (0 marks missing depth). Over all valid pixels of the
    set: ``abs_err = sum |p - g| / n_valid`` and ``rel_err = sum (|p - g| / g) / n_valid``. LibMTL's public code
    re-weights per-batch means by each batch's valid-pixel count, which is the same global mean. MTAN's code
    (ExcessMTL's NYUv2 baseline) averages per-batch means instead, which weights batches, not pixels.

    ``prediction`` and ``target``: ``[B, 1, H, W]``.
    """

    directions: ClassVar[dict[str, str]] = {"abs_err": LOWER, "rel_err": LOWER}

    def reset(self) -> None:
        """Forget every batch added so far."""
        super().reset()
        self._sums: Tensor | None = None  # [sum |p-g|, sum |p-g|/g]
        self._n_valid: Tensor | None = None

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: predicted and target depth, both ``[B, 1, H, W]``."""
        _check_dense_pair("Depth", prediction, target, channels=1)
        device = self._check_device(prediction, target)
        if self._sums is None:
            self._sums = _zeros(2, torch.float64, device)
            self._n_valid = _zeros((), torch.int64, device)
        p = prediction.to(torch.float64)
        g = target.to(torch.float64)
        valid = g != 0
        err = torch.where(valid, (p - g).abs(), 0.0)
        rel = err / torch.where(valid, g, 1.0)
        self._sums += torch.stack((err.sum(), rel.sum()))
        self._n_valid += valid.sum()

    def compute(self) -> dict[str, float]:
        """``{"abs_err": ..., "rel_err": ...}`` over all valid pixels of the set."""
        if self._sums is None or self._n_valid is None:
            raise self._empty()
        n = int(self._n_valid.item())
        if n == 0:
            raise self._empty()
        abs_sum, rel_sum = self._sums.tolist()
        return {"abs_err": abs_sum / n, "rel_err": rel_sum / n}


class Normals(Accumulator):
    """Surface normals: angle error in degrees over every valid pixel of the whole set.

    Definition: RW Sec. 5.2 (NYUv2) reports the mean and median angle error (lower is better) and the
    percentages of pixels within 11.25, 22.5 and 30 degrees (higher is better). The prediction is
    L2-normalised per pixel (as the papers' code does; a zero prediction vector stays zero, i.e. 90 degrees,
    where LibMTL's division gives NaN); the target is used as given (unit vectors on NYUv2). A pixel is valid
    iff its target vector is not all zero (``sum_c |g_c| != 0``); LibMTL tests the signed sum ``sum_c g_c``,
    which also drops the rare unit vectors whose components cancel. Angle =
    ``degrees(acos(clamp(<p, g>, -1, 1)))``. Over all valid angles of the set: ``mean``, ``median`` (exact),
    ``within_11.25``, ``within_22.5``, ``within_30`` (percent with angle < threshold). LibMTL concatenates
    the angles of the set likewise; MTAN's code (ExcessMTL's NYUv2 baseline) averages per-batch medians.

    Memory: the exact median needs every valid angle, kept on the CPU as float32: 4 bytes per valid pixel
    (NYUv2 test set: 654 x 288 x 384 pixels, at most about 290 MB), plus as much again while ``compute()``
    selects the median. On CUDA each batch's angles travel to the CPU without waiting (pinned memory, all
    pixels with NaN at invalid ones); a batch is compacted to its valid angles once its copy has finished,
    checked without waiting in later updates and awaited in ``compute()``. Mean and fractions are
    accumulated on the device in float64 from the angles at input precision; the median is taken from the
    float32 copies.

    ``prediction`` and ``target``: ``[B, 3, H, W]``.
    """

    thresholds: ClassVar[tuple[float, ...]] = (11.25, 22.5, 30.0)
    directions: ClassVar[dict[str, str]] = {
        "mean": LOWER,
        "median": LOWER,
        "within_11.25": HIGHER,
        "within_22.5": HIGHER,
        "within_30": HIGHER,
    }

    def reset(self) -> None:
        """Forget every batch added so far."""
        super().reset()
        self._angle_sum: Tensor | None = None
        self._counts: Tensor | None = None  # [n_valid, n < 11.25, n < 22.5, n < 30]
        self._angles: list[np.ndarray] = []  # compacted float32 valid angles
        self._pending: list[tuple[Tensor, torch.cuda.Event]] = []  # CPU copies still in flight

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: predicted and target normals, both ``[B, 3, H, W]``."""
        _check_dense_pair("Normals", prediction, target, channels=3)
        device = self._check_device(prediction, target)
        if self._angle_sum is None:
            self._angle_sum = _zeros((), torch.float64, device)
            self._counts = _zeros(1 + len(self.thresholds), torch.int64, device)
        p = torch.nn.functional.normalize(prediction, p=2.0, dim=1)
        g = target.to(p.dtype)
        valid = g.abs().sum(dim=1) != 0
        angle = torch.rad2deg(torch.acos(torch.clamp((p * g).sum(dim=1), -1.0, 1.0)))
        self._angle_sum += torch.where(valid, angle, 0.0).sum(dtype=torch.float64)
        below = [valid.sum()] + [(valid & (angle < t)).sum() for t in self.thresholds]
        self._counts += torch.stack(below)
        marked = torch.where(valid, angle, torch.nan).to(torch.float32).reshape(-1)
        if marked.device.type == "cuda":
            self._collect_finished(wait=False)
            host = marked.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(marked.device))
            self._pending.append((host, event))
        else:
            self._angles.append(_drop_nan(marked.detach().cpu().numpy()))

    def _collect_finished(self, wait: bool) -> None:
        """Compact the CPU copies whose transfer finished (all of them, waiting, when ``wait``)."""
        while self._pending:
            host, event = self._pending[0]
            if wait:
                event.synchronize()
            elif not event.query():
                break
            self._angles.append(_drop_nan(host.numpy()))
            self._pending.pop(0)

    def compute(self) -> dict[str, float]:
        """Mean, exact median and within-threshold percentages of all valid angles of the set."""
        if self._angle_sum is None or self._counts is None:
            raise self._empty()
        self._collect_finished(wait=True)
        counts = self._counts.tolist()
        n = counts[0]
        if n == 0:
            raise self._empty()
        angles = np.concatenate(self._angles) if len(self._angles) > 1 else self._angles[0].copy()
        if angles.size != n:
            raise RuntimeError(f"Normals: kept {angles.size} angles for {n} valid pixels")
        result = {"mean": float(self._angle_sum.item()) / n, "median": _median_inplace(angles)}
        for t, k in zip(self.thresholds, counts[1:], strict=True):
            result[f"within_{t:g}"] = 100.0 * k / n
        return result


def _drop_nan(a: np.ndarray) -> np.ndarray:
    return a[~np.isnan(a)]


def _median_inplace(a: np.ndarray) -> float:
    """Exact median (mean of the two middle values for an even count), partitioning ``a`` in place."""
    n = a.size
    k = n // 2
    if n % 2:
        a.partition(k)
        return float(a[k])
    a.partition((k - 1, k))
    return (float(a[k - 1]) + float(a[k])) / 2.0


class RegressionMSE(ExampleMean):
    """Mean squared error of one regression target: ``mse = sum (p - g)^2 / N`` over the whole set.

    Used for SARCOS, one task per joint torque (ExcessMTL App. C.1 for the set-up, C.2 and Fig. 9 for the
    results); the paper trains with the squared loss on standardised targets (Sec. 3.2, App. C.1) and reports
    the test error of each joint without printing a formula, so MSE on the standardised scale is our reading.
    Neither LibMTL nor ExcessMTL's public code has a SARCOS loader or metric. Lower is better.

    ``prediction`` and ``target``: ``[B]`` or ``[B, 1]``.
    """

    directions: ClassVar[dict[str, str]] = {"mse": LOWER}

    def per_example(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The squared error of every example, in double precision."""
        return (prediction.to(torch.float64) - target.to(torch.float64)).square()


class TaggingF1(Accumulator):
    """F1 in percent of word-level tags, as XTREME scores UD-POS (RW Sec. 5.3, Table 3).

    XTREME's ``run_tag.py`` drops the positions without a word-level label (sub-word pieces after a word's
    first one, special tokens, padding) and calls ``seqeval``'s ``f1_score`` on the remaining tag sequences,
    one per sentence; this does the same over the whole set. seqeval reads tags as IOB chunks, so on POS
    tags (which have no B-/I- prefix) its F1 is not the token accuracy; it is what the published numbers are.

    ``prediction``: logits ``[B, L, C]``; ``target``: integer labels ``[B, L]``, ``ignore_index`` where unscored.
    ``labels`` names the C tags. Predictions are kept on the device until ``compute()``.
    """

    directions: ClassVar[dict[str, str]] = {"f1": HIGHER}

    def __init__(self, labels: Sequence[str], ignore_index: int = -1) -> None:
        if not labels:
            raise ValueError("TaggingF1: the tag names are needed (seqeval scores tag strings)")
        self.labels = tuple(labels)
        self.ignore_index = ignore_index
        super().__init__()

    def reset(self) -> None:
        """Forget every batch added so far."""
        super().reset()
        self._batches: list[tuple[Tensor, Tensor]] = []

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: logits ``[B, L, C]`` and labels ``[B, L]``."""
        if prediction.dim() != 3 or prediction.shape[:2] != target.shape or prediction.shape[2] != len(self.labels):
            raise ValueError(
                f"TaggingF1: expected prediction [B, L, {len(self.labels)}] and target [B, L], "
                f"got {_shape(prediction)} and {_shape(target)}"
            )
        self._check_device(prediction, target)
        self._batches.append((prediction.argmax(dim=2), target.detach().clone()))

    def compute(self) -> dict[str, float]:
        """``{"f1": percent}``: seqeval's micro F1 over every sentence of the set."""
        from seqeval.metrics import f1_score

        truth: list[list[str]] = []
        guess: list[list[str]] = []
        for predicted, target in self._batches:
            for p_row, t_row in zip(predicted.cpu().tolist(), target.cpu().tolist(), strict=True):
                keep = [i for i, t in enumerate(t_row) if t != self.ignore_index]
                if keep:
                    truth.append([self.labels[t_row[i]] for i in keep])
                    guess.append([self.labels[p_row[i]] for i in keep])
        if not truth:
            raise self._empty()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "X seems not to be NE tag": POS tags have no IOB prefix
            return {"f1": 100.0 * float(f1_score(truth, guess))}
