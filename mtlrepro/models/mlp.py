"""Multi-layer perceptron shared encoder for SARCOS (ExcessMTL App. C.1).

"On SARCOS, we use a three-layer MLP with 128 hidden units as the shared feature extract[or]" and "for all
datasets except NYUv2, we use linear layers as task-specific heads" (ExcessMTL App. C.1), with "ReLU activation
on all datasets". The paper does not say how the three layers are counted; here all three are *hidden* layers
of the shared encoder, each Linear-ReLU: ``D -> 128 -> 128 -> 128``, and each joint's head is one Linear
``128 -> 1`` (:mod:`mtlrepro.models.heads`). Counting the heads' output layer as the third layer would leave a
two-layer shared extractor, which the sentence's "as the shared feature extract[or]" does not support.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLPEncoder(nn.Module):
    """``depth`` Linear-ReLU layers of ``hidden`` units on a feature vector ``[B x D]`` -> ``[B x hidden]``."""

    def __init__(self, in_features: int, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        if in_features < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"mlp needs positive sizes, got in_features={in_features} hidden={hidden} depth={depth}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.layers = nn.Sequential(*layers)
        self.rep_dim = hidden
        self.rep_shape: tuple[int, ...] = (hidden,)

    @classmethod
    def for_input(cls, input_shape: tuple[int, ...]) -> MLPEncoder:
        """Build the encoder for feature vectors of shape ``(D,)``."""
        if len(input_shape) != 1:
            raise ValueError(f"mlp expects feature vectors of shape (D,), got {tuple(input_shape)}")
        return cls(int(input_shape[0]))

    def last_layer(self) -> nn.Module:
        """The last layer with parameters (the third Linear)."""
        return self.layers[-2]

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
