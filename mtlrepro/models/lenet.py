"""LeNet-style shared encoder for the Multi-MNIST family (RW paper, Sec. 5.1).

"A LeNet-based network (LeCun et al., 1998) except the final fully connected
layer is used as the shared encoder" (RW Sec. 5.1, following Lin et al., 2019):
two 5x5 convolutions (10 and 20 channels), each followed by 2x2 max pooling
and ReLU, then one fully connected layer to a 50-d representation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LeNetEncoder(nn.Module):
    """conv(1->10, 5) - pool - relu - conv(10->20, 5) - pool - relu - fc(-> rep_dim) - relu."""

    def __init__(self, in_channels: int, image_size: int, rep_dim: int = 50) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 10, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, rep_dim), nn.ReLU())
        self.rep_dim = rep_dim
        self.rep_shape: tuple[int, ...] = (rep_dim,)

    @classmethod
    def for_input(cls, input_shape: tuple[int, ...]) -> LeNetEncoder:
        """Build the encoder for inputs of shape (channels, size, size)."""
        channels, height, width = input_shape
        if height != width:
            raise ValueError(f"lenet expects square images, got {height}x{width}")
        return cls(channels, height)

    def last_layer(self) -> nn.Module:
        """The last layer with parameters (the fully connected one)."""
        return self.fc[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))
