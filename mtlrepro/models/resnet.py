"""ResNet-18 from torchvision as a shared encoder (CelebA: RW App. C.2; Office-31/Home: RW App. C.3, ExcessMTL C.1).

The encoder is torchvision's ``resnet18`` up to its global average pooling, giving a 512-d representation;
the task heads sit on top (:mod:`mtlrepro.models.heads`). RW trains Office from ImageNet-pretrained weights,
ExcessMTL trains Office-Home from scratch ("without pretraining", App. C.1), so ``pretrained`` is an explicit
choice, never a fallback.

Pretrained weights are read only from disk, never downloaded: ``weights`` names a file holding torchvision's
``resnet18`` state dict; by default it is torchvision's own cache file
(``<torch hub dir>/checkpoints/resnet18-f37072fd.pth``, where ``torchvision.models.resnet18(weights=
ResNet18_Weights.IMAGENET1K_V1)`` puts it on a connected machine). When the file is missing or does not fit,
one :class:`~mtlrepro.errors.ConfigError` names it and says how to provide it or to set ``pretrained: false``.
With pretrained weights the inputs (in [0, 1]) are normalised with ImageNet's mean and standard deviation, as
the weights expect (torchvision's ``IMAGENET1K_V1`` transforms).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, WeightsEnum, resnet18

from mtlrepro.errors import ConfigError

WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
"""The ImageNet weights RW's pretrained encoders start from."""

REP_DIM = 512


def default_weights_file(weights: WeightsEnum = WEIGHTS) -> Path:
    """Where torchvision caches ``weights`` (``torch.hub.get_dir()/checkpoints/<file name of the URL>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _how_to_provide(path: Path, weights: WeightsEnum, builder: str) -> str:
    return (
        f"on a connected machine run `python -c \"import torchvision; torchvision.models.{builder}(weights='"
        f"{weights.name}')\"` and copy {Path(weights.url).name} to {path}, or give the file's path as the "
        "encoder's `weights`, or train from scratch with `pretrained: false`"
    )


def load_pretrained(
    path: Path | None = None, *, weights: WeightsEnum = WEIGHTS, build: Callable[[], nn.Module] = resnet18
) -> dict[str, Tensor]:
    """The ImageNet state dict ``weights`` of the network ``build()`` makes, read from ``path`` (default
    :func:`default_weights_file`); never downloaded.

    :class:`ConfigError` naming the file when it is missing or is not a state dict of that network.
    """
    path = Path(path) if path is not None else default_weights_file(weights)
    builder = getattr(build, "__name__", "resnet")
    how = _how_to_provide(path, weights, builder)
    if not path.is_file():
        raise ConfigError(f"pretrained {builder} weights {path} do not exist: {how}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ConfigError(f"pretrained {builder} weights {path} cannot be read ({type(err).__name__}): {how}") from None
    expected = set(build().state_dict())
    if not isinstance(state, dict) or set(state) != expected:
        raise ConfigError(f"{path} is not a state dict of torchvision's {builder}: {how}")
    return state


class ResNet18Encoder(nn.Module):
    """torchvision's ResNet-18 without its classifier: ``[B x 3 x H x W]`` in [0, 1] -> ``[B x 512]``."""

    def __init__(self, pretrained: bool = False, weights: str | Path | None = None) -> None:
        super().__init__()
        if weights is not None and not pretrained:
            raise ConfigError("resnet18: `weights` is given but `pretrained` is false; set `pretrained: true`")
        trunk = resnet18()
        if pretrained:
            trunk.load_state_dict(load_pretrained(None if weights is None else Path(weights)))
        trunk.fc = nn.Identity()
        self.trunk = trunk
        self.pretrained = pretrained
        mean = torch.tensor(WEIGHTS.transforms().mean).view(1, 3, 1, 1)
        std = torch.tensor(WEIGHTS.transforms().std).view(1, 3, 1, 1)
        self.register_buffer("mean", mean if pretrained else torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std if pretrained else torch.ones(1, 3, 1, 1), persistent=False)
        self.rep_dim = REP_DIM
        self.rep_shape: tuple[int, ...] = (REP_DIM,)

    @classmethod
    def for_input(
        cls, input_shape: tuple[int, ...], pretrained: bool = False, weights: str | Path | None = None
    ) -> ResNet18Encoder:
        """The encoder for RGB images of shape ``(3, H, W)`` (at least 32x32: five stride-2 stages)."""
        if len(input_shape) != 3 or int(input_shape[0]) != 3:
            raise ValueError(f"resnet18 expects RGB images of shape (3, H, W), got {tuple(input_shape)}")
        if min(int(input_shape[1]), int(input_shape[2])) < 32:
            raise ValueError(f"resnet18 expects images of at least 32x32 pixels, got {tuple(input_shape[1:])}")
        return cls(pretrained=pretrained, weights=weights)

    def last_layer(self) -> nn.Module:
        """The last residual block (GradNorm's W, Chen et al. 2018, Sec. 3)."""
        return self.trunk.layer4[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk((x - self.mean) / self.std)
