"""A small convolutional encoder for small RGB images (the face-attribute stand-in for CelebA).

The papers use a ResNet-18 for CelebA and Office (RW App. C, Sec. 5.4; ExcessMTL App. C.1); this stand-in is
a much smaller network of the same shape for a CPU demo: three 3x3 conv-BatchNorm-ReLU blocks (16, 32, 64
channels; the first two followed by 2x2 max pooling), global average pooling as in a ResNet (He et al. 2016,
Sec. 3.4), then a fully connected layer with ReLU to a ``rep_dim``-d representation, the position of the
Linear-BN-ReLU layer LibMTL's Office example appends to its ResNet-18 inside the shared encoder
(``examples/office/main.py``). Global pooling makes it accept any image size (32x32 to 64x64 intended).
"""

from __future__ import annotations

from torch import Tensor, nn


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class SmallCNNEncoder(nn.Module):
    """(conv-BN-ReLU-pool) x2, conv-BN-ReLU, global average pool, fc-ReLU: ``[B x C x H x W]`` -> ``[B x rep_dim]``."""

    def __init__(self, in_channels: int = 3, rep_dim: int = 64, width: int = 16) -> None:
        super().__init__()
        if in_channels < 1 or rep_dim < 1 or width < 1:
            raise ValueError(f"small_cnn needs positive sizes, got {in_channels=} {rep_dim=} {width=}")
        self.features = nn.Sequential(
            _block(in_channels, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(4 * width, rep_dim), nn.ReLU())
        self.rep_dim = rep_dim
        self.rep_shape: tuple[int, ...] = (rep_dim,)

    @classmethod
    def for_input(cls, input_shape: tuple[int, ...]) -> SmallCNNEncoder:
        """Build the encoder for images of shape ``(C, H, W)``, both sides at least 4 pixels."""
        if len(input_shape) != 3:
            raise ValueError(f"small_cnn expects images of shape (C, H, W), got {tuple(input_shape)}")
        channels, height, width = (int(s) for s in input_shape)
        if height < 4 or width < 4:
            raise ValueError(f"small_cnn expects images of at least 4x4 pixels, got {height}x{width}")
        return cls(channels)

    def last_layer(self) -> nn.Module:
        """The last layer with parameters (the fully connected one)."""
        return self.fc[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))
