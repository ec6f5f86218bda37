"""Task-specific heads: one per task, shaped by the task's kind and the shared representation's shape.

The shared encoder returns one example's representation z of shape ``rep_shape``:

- a vector ``(d,)`` (LeNet, ResNet-18, the MLP, the small CNN),
- token features ``(L, d)`` (BERT's ``last_hidden_state``),
- a feature map ``(C, h, w)`` (the dilated ResNet-50, the small dense encoder).

:func:`make_head` builds the head that maps a batch of z to the output layout :mod:`mtlrepro.tasks` lists for
the task's kind:

- classification, binary, regression (``[out]`` per example): from a vector, a Linear layer; from token
  features, a Linear layer on the first ([CLS]) position; from a feature map, global average pooling and a
  Linear layer.
- tagging (``[L x C]``): from token features, the same Linear layer at every position; refused otherwise.
- segmentation, depth, normals (``[out x H x W]``): from a feature map, conv3x3-ReLU-conv1x1 and bilinear
  upsampling to the input's ``H x W``; refused otherwise.

The papers' heads: "a fully connected layer is used as the task-specific output layer" (RW Sec. 5.1, 5.3 and
App. C; ExcessMTL App. C.1: "we use linear layers as task-specific heads"); for dense prediction RW Sec. 5.2 uses
DeepLabV3+'s ASPP per task and ExcessMTL App. C.1 "two convolutional layers as the task-specific heads"
(following MTAN, Liu et al. 2019, whose per-task prediction layer is a 3x3 convolution followed by a 1x1
convolution to the task's channels). The dense head here is that two-convolution head, with a ReLU between
the two convolutions; the papers' full ASPP heads come with the full networks. Predictions are upsampled to
the input's size before the loss, as LibMTL's NYUv2 example does (``process_preds``: bilinear,
``align_corners=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlrepro.tasks import BINARY, CLASSIFICATION, REGRESSION, TAGGING, Task

#: kinds with one output vector per example
_PER_EXAMPLE = frozenset({CLASSIFICATION, BINARY, REGRESSION})


def _interpolation_matrix(n_out: int, n_in: int) -> Tensor:
    """``[n_out x n_in]``: row ``i`` holds the weights of linear interpolation (``align_corners=True``) at ``i``.

    The weights are those of :func:`torch.nn.functional.interpolate` (``mode="linear"``) applied to the
    identity, so the separable product below equals its bilinear upsampling.
    """
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)  # [1 x n_in (channels) x n_in (positions)]
    weights = F.interpolate(eye, size=n_out, mode="linear", align_corners=True)  # [1 x n_in x n_out]
    return weights[0].T.to(torch.float32).contiguous()


class BilinearUpsample(nn.Module):
    """Bilinear upsampling (``align_corners=True``) of ``[B x C x h x w]`` maps to a fixed ``[B x C x H x W]``.

    Computed as two matrix products with fixed interpolation matrices, ``A_H @ z @ A_W^T``, which equals
    ``F.interpolate(z, (H, W), mode="bilinear", align_corners=True)`` but whose backward pass is
    deterministic on CUDA (PyTorch documents the bilinear ``interpolate`` backward as non-deterministic there,
    and the training loop asks for deterministic algorithms).
    """

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        (h, w), (height, width) = in_size, out_size
        self.in_size, self.out_size = (h, w), (height, width)
        self.register_buffer("rows", _interpolation_matrix(height, h), persistent=False)
        self.register_buffer("cols", _interpolation_matrix(width, w), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        if tuple(z.shape[-2:]) != self.in_size:
            raise ValueError(f"upsampling expects maps of size {self.in_size}, got {tuple(z.shape[-2:])}")
        rows, cols = self.rows.to(z.dtype), self.cols.to(z.dtype)
        return torch.matmul(torch.matmul(rows, z), cols.T)


class LinearHead(nn.Module):
    """A fully connected layer on a vector representation ``[B x d]`` -> ``[B x out]`` (RW Sec. 5.1)."""

    def __init__(self, rep_dim: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(rep_dim, out)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z)


class FirstTokenHead(nn.Module):
    """A fully connected layer on the first position ([CLS]) of token features ``[B x L x d]`` -> ``[B x out]``.

    The position BERT's sequence classification reads (Devlin et al. 2019, Sec. 3; RW Sec. 5.3 for PAWS-X).
    """

    def __init__(self, rep_dim: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(rep_dim, out)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z[:, 0])


class TokenHead(nn.Module):
    """The same fully connected layer at every position: ``[B x L x d]`` -> ``[B x L x C]`` (UD-POS, RW Sec. 5.3)."""

    def __init__(self, rep_dim: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(rep_dim, out)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z)


class PooledHead(nn.Module):
    """Global average pooling of a feature map ``[B x C x h x w]``, then a fully connected layer -> ``[B x out]``.

    The classifier of a ResNet (He et al. 2016, Sec. 3.4), for a per-example task on a feature-map encoder.
    """

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, out)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z.mean(dim=(-2, -1)))


class DenseHead(nn.Module):
    """conv3x3-ReLU-conv1x1 on a feature map ``[B x C x h x w]``, upsampled to ``[B x out x H x W]``.

    The two-convolution per-task head of MTAN's SegNet (Liu et al. 2019; ExcessMTL App. C.1: "two
    convolutional layers as the task-specific heads"), then bilinear upsampling to the input's size as in
    LibMTL's NYUv2 example (``process_preds``).
    """

    def __init__(self, channels: int, out: int, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, out, kernel_size=1),
        )
        self.upsample = BilinearUpsample(in_size, out_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.conv(z))


def _refuse(task: Task, rep_shape: tuple[int, ...], why: str) -> ValueError:
    return ValueError(f"task {task.name} ({task.kind}): no head for a representation of shape {list(rep_shape)}: {why}")


def make_head(task: Task, rep_shape: Sequence[int], input_shape: Sequence[int]) -> nn.Module:
    """The head of ``task`` on a representation of one example's shape ``rep_shape``.

    ``input_shape`` is one example's input shape (images ``[C x H x W]``); dense heads upsample to its
    ``H x W``. A combination that makes no sense (a dense task on a vector or on token features, tagging on
    a vector or a feature map) raises ValueError naming the task, its kind and the representation's shape.
    The output per example is the layout :mod:`mtlrepro.tasks` lists for the kind.
    """
    rep_shape, input_shape = tuple(int(s) for s in rep_shape), tuple(int(s) for s in input_shape)
    out = task.out_channels
    if len(rep_shape) == 1:  # vector
        if task.kind in _PER_EXAMPLE:
            return LinearHead(rep_shape[0], out)
        raise _refuse(task, rep_shape, "a vector representation has no positions or pixels to predict")
    if len(rep_shape) == 2:  # token features (L, d)
        if task.kind in _PER_EXAMPLE:
            return FirstTokenHead(rep_shape[1], out)
        if task.kind == TAGGING:
            return TokenHead(rep_shape[1], out)
        raise _refuse(task, rep_shape, "token features have no pixels to predict")
    if len(rep_shape) == 3:  # feature map (C, h, w)
        channels, h, w = rep_shape
        if task.kind in _PER_EXAMPLE:
            return PooledHead(channels, out)
        if task.dense:
            if len(input_shape) != 3:
                raise _refuse(task, rep_shape, f"a dense head needs image inputs [C x H x W], got {list(input_shape)}")
            return DenseHead(channels, out, (h, w), input_shape[1:])
        raise _refuse(task, rep_shape, "a feature map has no token positions to tag")
    raise _refuse(task, rep_shape, "expected a vector (d,), token features (L, d) or a feature map (C, h, w)")
