"""Tasks: what one task predicts, how its loss is computed and how its whole-set metrics are accumulated.

A :class:`Task` has a name and a *kind*; the kind fixes the layout of the task's targets, the size of its
head's output, its training loss and its metric accumulator (:mod:`mtlrepro.accumulators`), each as the
papers define them (RW Sec. 5 and App. C; ExcessMTL Sec. 4 and App. C.1; LibMTL's NYUv2 code for the dense
losses, see ``method-contract.md`` Sec. 3):

============== ======================== ============================ ==================================
kind           target (per example)     head output (per example)    loss; metrics
============== ======================== ============================ ==================================
classification int64 class ``[]``       logits ``[C]``               cross-entropy; accuracy
binary         0/1 ``[]``               one logit ``[1]``            binary cross-entropy; accuracy
tagging        int64 labels ``[L]``     logits ``[L x C]``           cross-entropy over labelled
                                                                     positions; seqeval F1 (XTREME)
segmentation   int64 labels ``[H x W]`` logits ``[C x H x W]``       cross-entropy; mIoU, pixel acc.
depth          float ``[1 x H x W]``    ``[1 x H x W]``              L1 over valid pixels; abs./rel. err.
normals        float ``[3 x H x W]``    ``[3 x H x W]``              1 - cosine over valid pixels;
                                                                     mean/median angle, within 11.25/22.5/30
regression     float ``[]``             ``[1]``                      squared error; MSE
============== ======================== ============================ ==================================

:data:`IGNORE` (-1) marks a label that is not scored: a pixel without ground truth, a sub-word or padding
position of a sentence. A depth of 0 and a normal of (0, 0, 0) mark invalid pixels (NYUv2, CityScapes).

Targets may be *stored* in a compact dtype (int16 labels, float16 depth); :meth:`Task.target` converts a
batch to the dtype the loss and metrics expect, on the batch's device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlrepro import accumulators
from mtlrepro.accumulators import Accumulator

IGNORE = -1
"""Label of an unscored position (segmentation pixel without ground truth, sub-word or padding token)."""

CLASSIFICATION = "classification"
BINARY = "binary"
TAGGING = "tagging"
SEGMENTATION = "segmentation"
DEPTH = "depth"
NORMALS = "normals"
REGRESSION = "regression"

#: kinds whose targets are class labels (stored and used as integers)
LABEL_KINDS = frozenset({CLASSIFICATION, TAGGING, SEGMENTATION})
#: kinds predicted at the input's resolution, one value per pixel
DENSE_KINDS = frozenset({SEGMENTATION, DEPTH, NORMALS})


# --------------------------------------------------------------------------- losses (pure functions)


def classification_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy of logits ``[B x C]`` against class indices ``[B]``."""
    return F.cross_entropy(output, target)


def binary_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean binary cross-entropy of one logit per example ``[B x 1]`` against 0/1 targets ``[B]`` (CelebA)."""
    return F.binary_cross_entropy_with_logits(output.reshape(-1), target.reshape(-1).to(output.dtype))


def tagging_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over the labelled positions of logits ``[B x L x C]`` against labels ``[B x L]``.

    Positions labelled :data:`IGNORE` (sub-words after a word's first piece, special tokens, padding) do not
    count, as XTREME's token classification does (RW Sec. 5.3).
    """
    return F.cross_entropy(output.flatten(0, 1), target.flatten(), ignore_index=IGNORE)


def segmentation_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over the labelled pixels of logits ``[B x C x H x W]`` against labels ``[B x H x W]``."""
    return F.cross_entropy(output, target, ignore_index=IGNORE)


def depth_loss(output: Tensor, target: Tensor) -> Tensor:
    """L1 error averaged over the valid pixels (target depth != 0) of the batch, ``[B x 1 x H x W]`` each.

    LibMTL's NYUv2 loss (``method-contract.md`` Sec. 3): ``sum |p - g| * valid / sum valid``.
    """
    valid = (target != 0).to(output.dtype)
    return ((output - target).abs() * valid).sum() / valid.sum().clamp_min(1.0)


def normals_loss(output: Tensor, target: Tensor) -> Tensor:
    """One minus the cosine between the unit-normalised prediction and the target, averaged over valid pixels.

    ``[B x 3 x H x W]`` each; a pixel is valid iff its target vector is not all zero (LibMTL's NYUv2 loss).
    """
    prediction = F.normalize(output, p=2.0, dim=1)
    valid = (target.abs().sum(dim=1) != 0).to(output.dtype)
    cosine = (prediction * target).sum(dim=1)
    return 1.0 - (cosine * valid).sum() / valid.sum().clamp_min(1.0)


def regression_loss(output: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of one output per example ``[B x 1]`` against targets ``[B]`` (SARCOS, one joint)."""
    return F.mse_loss(output.reshape(-1), target.reshape(-1).to(output.dtype))


@dataclass(frozen=True)
class Kind:
    """What a kind of task fixes: its loss, whether its targets are labels, and its head's output size."""

    loss: Callable[[Tensor, Tensor], Tensor]
    labels: bool
    outputs: Callable[[int], int]
    """Number of output channels of the head, given the task's ``n_classes``."""
    accumulator: type[Accumulator]


KINDS: dict[str, Kind] = {
    CLASSIFICATION: Kind(classification_loss, True, lambda n: n, accumulators.Accuracy),
    BINARY: Kind(binary_loss, False, lambda n: 1, accumulators.BinaryAccuracy),
    TAGGING: Kind(tagging_loss, True, lambda n: n, accumulators.TaggingF1),
    SEGMENTATION: Kind(segmentation_loss, True, lambda n: n, accumulators.Segmentation),
    DEPTH: Kind(depth_loss, False, lambda n: 1, accumulators.Depth),
    NORMALS: Kind(normals_loss, False, lambda n: 3, accumulators.Normals),
    REGRESSION: Kind(regression_loss, False, lambda n: 1, accumulators.RegressionMSE),
}


@dataclass(frozen=True)
class Task:
    """One task of a dataset.

    ``kind`` is one of :data:`KINDS`; ``n_classes`` is the number of classes of a classification, tagging or
    segmentation task (0 otherwise); ``labels`` optionally names the classes (tag names for seqeval's F1).
    ``metrics`` (name -> "higher"/"lower") follows from the kind; it orders the task's metrics in tables, and
    the first one is the task's score for model selection.
    """

    name: str
    kind: str = CLASSIFICATION
    n_classes: int = 0
    labels: tuple[str, ...] = ()
    metrics: Mapping[str, str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} is unknown (known kinds: {', '.join(KINDS)})")
        if self.kind in LABEL_KINDS and self.n_classes < 2:
            raise ValueError(f"task {self.name}: a {self.kind} task needs n_classes >= 2, got {self.n_classes}")
        if self.labels and len(self.labels) != self.n_classes:
            raise ValueError(f"task {self.name}: {len(self.labels)} label names for {self.n_classes} classes")
        if self.kind == TAGGING and len(self.labels) != self.n_classes:
            raise ValueError(f"task {self.name}: a tagging task needs the names of its {self.n_classes} tags")
        object.__setattr__(self, "metrics", dict(KINDS[self.kind].accumulator.directions))

    @property
    def out_channels(self) -> int:
        """Size of the head's output per example (per position for tagging, per pixel for dense tasks)."""
        return KINDS[self.kind].outputs(self.n_classes)

    @property
    def dense(self) -> bool:
        """Whether the task predicts one value per pixel, at the input's resolution."""
        return self.kind in DENSE_KINDS

    def target(self, stored: Tensor) -> Tensor:
        """A batch of stored targets in the dtype the loss and the metrics expect (int64 labels, else float32)."""
        return stored.long() if KINDS[self.kind].labels else stored.float()

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The task's training loss of one batch (a scalar), from head outputs and :meth:`target`-ed targets."""
        return KINDS[self.kind].loss(output, target)

    def accumulator(self) -> Accumulator:
        """A fresh whole-set accumulator of the task's metrics."""
        cls = KINDS[self.kind].accumulator
        if self.kind == TAGGING:
            return cls(self.labels, ignore_index=IGNORE)
        if self.kind == SEGMENTATION:
            return cls(self.n_classes, ignore_index=IGNORE)
        return cls()


def check_target(task: Task, target: Tensor, n: int | None = None) -> None:
    """Refuse a stored target tensor ``[N x ...]`` whose layout does not fit ``task`` (ValueError naming it)."""
    dims = {CLASSIFICATION: 1, BINARY: 1, TAGGING: 2, SEGMENTATION: 3, DEPTH: 4, NORMALS: 4, REGRESSION: 1}
    problem = None
    if target.dim() != dims[task.kind]:
        problem = f"{target.dim()} dimensions, expected {dims[task.kind]}"
    elif task.kind in (DEPTH, NORMALS) and target.shape[1] != task.out_channels:
        problem = f"{target.shape[1]} channels, expected {task.out_channels}"
    elif KINDS[task.kind].labels and (target.is_floating_point() or target.dtype == torch.bool):
        problem = f"dtype {target.dtype}, expected integer labels"
    elif task.kind in (DEPTH, NORMALS, REGRESSION) and not target.is_floating_point():
        problem = f"dtype {target.dtype}, expected floating point"
    elif n is not None and target.shape[0] != n:
        problem = f"{target.shape[0]} examples, expected {n}"
    if problem:
        raise ValueError(f"task {task.name} ({task.kind}): target of shape {list(target.shape)} has {problem}")
