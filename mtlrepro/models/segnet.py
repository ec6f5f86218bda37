"""SegNet encoder-decoder as the shared feature extractor of NYUv2 in ExcessMTL (App. C.1).

ExcessMTL: "we use the SegNet architecture with four convolutional encoder layers and four convolutional
decoder layers. For each of the three tasks, we use two convolutional layers as the task-specific heads"
(following Liu et al. 2019, MTAN). SegNet (Badrinarayanan et al., 2017) pools with 2x2 max pooling in the
encoder and upsamples in the decoder by max-unpooling with the encoder's pooling indices (:func:`unpool2x2`).
Here each of the four encoder layers is a 3x3 convolution, batch norm and ReLU followed by 2x2 max pooling
(indices kept), and each of the four decoder layers max-unpools with the mirrored indices followed by a 3x3
convolution, batch norm and ReLU; channels 64, 128, 256, 512 down and back to 64. The representation is the
decoder's output at the input's resolution, ``(64, H, W)``, which every task's two-convolution head reads
(:func:`mtlrepro.models.heads.make_head`). H and W must be divisible by 16. Unpooling is written with
elementwise operations because PyTorch's ``max_unpool2d`` has no deterministic implementation.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

CHANNELS = (64, 128, 256, 512)


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    )


class SegNetEncoder(nn.Module):
    """Four conv-pool encoder and four unpool-conv decoder layers: ``[B x C x H x W]`` -> ``[B x 64 x H x W]``."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = CHANNELS) -> None:
        super().__init__()
        widths = (in_channels, *channels)
        self.down = nn.ModuleList(_conv(a, b) for a, b in itertools.pairwise(widths))
        # decoder layer k maps the width of encoder layer k+1's output back to encoder layer k's input width,
        # except the last, which keeps the first layer's width as the representation
        ups = [*reversed(channels[:-1]), channels[0]]
        self.up = nn.ModuleList(_conv(a, b) for a, b in zip(reversed(channels), ups, strict=True))
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.rep_shape: tuple[int, ...] = (channels[0], 0, 0)

    @classmethod
    def for_input(cls, input_shape: tuple[int, ...]) -> SegNetEncoder:
        """The encoder for images of shape ``(C, H, W)`` with H and W divisible by 16 (four poolings)."""
        if len(input_shape) != 3:
            raise ValueError(f"segnet expects images of shape (C, H, W), got {tuple(input_shape)}")
        channels, height, width = (int(s) for s in input_shape)
        if height % 16 or width % 16:
            raise ValueError(f"segnet expects H and W divisible by 16 (four 2x2 poolings), got {height}x{width}")
        encoder = cls(channels)
        encoder.rep_shape = (CHANNELS[0], height, width)
        return encoder

    def last_layer(self) -> nn.Module:
        """The last decoder convolution (GradNorm's W)."""
        return self.up[-1][0]

    def forward(self, x: Tensor) -> Tensor:
        indices, sizes = [], []
        for layer in self.down:
            x = layer(x)
            sizes.append(x.shape)
            x, index = self.pool(x)
            indices.append(index)
        for layer, index, size in zip(self.up, reversed(indices), reversed(sizes), strict=True):
            x = layer(unpool2x2(x, index, size[-1]))
        return x


def unpool2x2(values: Tensor, indices: Tensor, width: int) -> Tensor:
    """Max-unpooling of a 2x2, stride-2 pooling: each value back at its maximum's place, zeros elsewhere.

    ``indices`` are :class:`torch.nn.MaxPool2d`'s (flat positions in the ``2h x width`` input). Written with
    a one-hot of the position inside each 2x2 window rather than ``max_unpool2d``, which has no deterministic
    implementation in PyTorch (the training loop runs in deterministic mode).
    """
    b, c, h, w = values.shape
    row, col = indices // width, indices % width
    corner = torch.nn.functional.one_hot((row % 2) * 2 + col % 2, 4).to(values.dtype)  # [B, C, h, w, 4]
    blocks = (corner * values.unsqueeze(-1)).view(b, c, h, w, 2, 2)
    return blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, c, 2 * h, 2 * w)
