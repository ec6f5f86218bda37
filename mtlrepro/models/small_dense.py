"""A small fully convolutional encoder for dense prediction (the NYUv2 / CityScapes stand-ins).

The papers use a dilated ResNet-50 (RW Sec. 5.2: "pre-trained ... with dilated convolutions (Yu et al.,
2017)", output stride 8, then per-task ASPP heads) or a SegNet (ExcessMTL App. C.1). This stand-in keeps the
ingredients at CPU-demo size: three 3x3 conv-BatchNorm-ReLU blocks, the first two with stride 2 (the two
downsamplings), the third dilated (dilation 2, as the dilated ResNet replaces strides by dilation to keep
resolution while widening the receptive field). The feature map is at 1/4 of the input's resolution,
``ceil(H / 4) x ceil(W / 4)``; the dense heads (:mod:`mtlrepro.models.heads`) upsample back to ``H x W``.
"""

from __future__ import annotations

from torch import Tensor, nn


def _block(in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def _strided(size: int) -> int:
    """Output size of a 3x3 convolution with stride 2 and padding 1."""
    return (size - 1) // 2 + 1


class SmallDenseEncoder(nn.Module):
    """conv-BN-ReLU /2, conv-BN-ReLU /2, dilated conv-BN-ReLU: ``[B x C x H x W]`` -> ``[B x channels x H/4 x W/4]``."""

    def __init__(self, in_channels: int, image_size: tuple[int, int], width: int = 16) -> None:
        super().__init__()
        height, wide = image_size
        if in_channels < 1 or width < 1 or height < 1 or wide < 1:
            raise ValueError(f"small_dense needs positive sizes, got {in_channels=} {image_size=} {width=}")
        self.blocks = nn.Sequential(
            _block(in_channels, width, stride=2),
            _block(width, 2 * width, stride=2),
            _block(2 * width, 4 * width, dilation=2),
        )
        self.rep_shape: tuple[int, ...] = (4 * width, _strided(_strided(height)), _strided(_strided(wide)))

    @classmethod
    def for_input(cls, input_shape: tuple[int, ...]) -> SmallDenseEncoder:
        """Build the encoder for images of shape ``(C, H, W)``."""
        if len(input_shape) != 3:
            raise ValueError(f"small_dense expects images of shape (C, H, W), got {tuple(input_shape)}")
        channels, height, width = (int(s) for s in input_shape)
        return cls(channels, (height, width))

    def last_layer(self) -> nn.Module:
        """The last layer with parameters: the dilated conv-BN block (its convolution and BatchNorm affine)."""
        return self.blocks[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)
