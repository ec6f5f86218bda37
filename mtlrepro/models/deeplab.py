"""DeepLab-style dense prediction of RW's NYUv2 setting (RW Sec. 5.2): dilated ResNet-50 encoder, ASPP heads.

RW: "a ResNet-50 network pre-trained on the ImageNet dataset with dilated convolutions (Yu et al., 2017) is
used as a shared encoder among tasks and the Atrous Spatial Pyramid Pooling (ASPP) (Chen et al., 2018a)
module is used as the task-specific head for each task. Input images are resized to 288x384."

- :class:`DilatedResNet50Encoder`: torchvision's ``resnet50`` with the strides of ``layer3`` and ``layer4``
  replaced by dilation 2 and 4 (``replace_stride_with_dilation=[False, True, True]``), so the 2048-channel
  feature map is at 1/8 of the input resolution (36x48 for 288x384), as LibMTL's ``resnet_dilated``; its
  classifier and pooling are dropped. ImageNet weights are read from disk only
  (:func:`mtlrepro.models.resnet.load_pretrained`), and inputs are then normalised with ImageNet statistics.
- :class:`ASPPHead`: torchvision's DeepLabV3 ``ASPP`` (atrous rates 12, 24, 36 and image pooling, 256
  channels; Chen et al. 2017, Sec. 3.3), a 3x3 conv-BN-ReLU and a 1x1 conv to the task's channels, then
  bilinear upsampling to the input resolution (LibMTL upsamples the predictions to the input size).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.segmentation.deeplabv3 import ASPP

from mtlrepro.errors import ConfigError
from mtlrepro.models.heads import BilinearUpsample
from mtlrepro.models.resnet import load_pretrained

WEIGHTS = ResNet50_Weights.IMAGENET1K_V1
OUTPUT_STRIDE = 8
FEATURES = 2048
ATROUS_RATES = (12, 24, 36)


def dilated_resnet50() -> nn.Module:
    """torchvision's ResNet-50 with dilated ``layer3`` and ``layer4`` (output stride 8)."""
    return resnet50(replace_stride_with_dilation=[False, True, True])


class DilatedResNet50Encoder(nn.Module):
    """``[B x 3 x H x W]`` in [0, 1] -> ``[B x 2048 x H/8 x W/8]``."""

    def __init__(self, pretrained: bool = False, weights: str | Path | None = None) -> None:
        super().__init__()
        if weights is not None and not pretrained:
            raise ConfigError("deeplab_resnet50: `weights` is given but `pretrained` is false; set `pretrained: true`")
        trunk = dilated_resnet50()
        if pretrained:  # dilation changes no parameter shape: the plain ResNet-50 weights fit
            trunk.load_state_dict(
                load_pretrained(None if weights is None else Path(weights), weights=WEIGHTS, build=resnet50)
            )
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layers = nn.Sequential(trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)
        mean = torch.tensor(WEIGHTS.transforms().mean).view(1, 3, 1, 1)
        std = torch.tensor(WEIGHTS.transforms().std).view(1, 3, 1, 1)
        self.register_buffer("mean", mean if pretrained else torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std if pretrained else torch.ones(1, 3, 1, 1), persistent=False)
        self.rep_shape: tuple[int, ...] = (FEATURES, 0, 0)

    @classmethod
    def for_input(
        cls, input_shape: tuple[int, ...], pretrained: bool = False, weights: str | Path | None = None
    ) -> DilatedResNet50Encoder:
        """The encoder for RGB images ``(3, H, W)`` with H and W divisible by 8 (288x384 in RW)."""
        if len(input_shape) != 3 or int(input_shape[0]) != 3:
            raise ValueError(f"deeplab_resnet50 expects RGB images of shape (3, H, W), got {tuple(input_shape)}")
        height, width = int(input_shape[1]), int(input_shape[2])
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(f"deeplab_resnet50 expects H and W divisible by 8, got {height}x{width}")
        encoder = cls(pretrained=pretrained, weights=weights)
        encoder.rep_shape = (FEATURES, height // OUTPUT_STRIDE, width // OUTPUT_STRIDE)
        return encoder

    def last_layer(self) -> nn.Module:
        """The last bottleneck block of ``layer4`` (GradNorm's W)."""
        return self.layers[-1][-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem((x - self.mean) / self.std))


class ASPPHead(nn.Module):
    """A task head: ASPP, 3x3 conv-BN-ReLU, 1x1 conv to ``out`` channels, upsampled to the input's ``H x W``."""

    def __init__(
        self,
        in_channels: int,
        out: int,
        feature_size: tuple[int, int],
        input_size: tuple[int, int],
        rates: Sequence[int] = ATROUS_RATES,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ASPP(in_channels, list(rates), 256),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, out, kernel_size=1),
        )
        self.upsample = BilinearUpsample(feature_size, input_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.upsample(self.body(z))
