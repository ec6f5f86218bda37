"""Multi-task architectures: how the shared encoder and the task heads are wired."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mtlrepro.archs.hps import HPS
from mtlrepro.errors import ConfigError
from mtlrepro.models import build_encoder

ARCHS: dict[str, type[nn.Module]] = {"hps": HPS}


def arch_class(arch: str) -> type[nn.Module]:
    """The class of architecture ``arch``; :class:`ConfigError` if unknown."""
    if arch not in ARCHS:
        raise ConfigError(f"architecture {arch!r} is unknown (known architectures: {', '.join(sorted(ARCHS))})")
    return ARCHS[arch]


def build_model(arch: str, encoder: str, input_shape: tuple[int, ...], out_dims: Sequence[int]) -> HPS:
    """Build architecture ``arch`` around encoder ``encoder`` with one head per entry of ``out_dims``."""
    cls = arch_class(arch)
    module, rep_dim = build_encoder(encoder, input_shape)
    return cls(module, rep_dim, out_dims)
