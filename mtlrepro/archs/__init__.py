"""Multi-task architectures: how the shared encoder and the task heads are wired."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from mtlrepro.archs.hps import HPS
from mtlrepro.errors import ConfigError
from mtlrepro.models import build_encoder
from mtlrepro.models.heads import make_head
from mtlrepro.tasks import Task

ARCHS: dict[str, type[nn.Module]] = {"hps": HPS}


def arch_class(arch: str) -> type[nn.Module]:
    """The class of architecture ``arch``; :class:`ConfigError` if unknown."""
    if arch not in ARCHS:
        raise ConfigError(f"architecture {arch!r} is unknown (known architectures: {', '.join(sorted(ARCHS))})")
    return ARCHS[arch]


def build_model(
    arch: str,
    encoder: str,
    input_shape: tuple[int, ...],
    tasks: Sequence[Task],
    encoder_options: Mapping[str, Any] | None = None,
) -> HPS:
    """Build architecture ``arch`` around encoder ``encoder`` with one head per task, fitting the task's kind.

    ``input_shape`` is one example's shape as the model reads it; ``encoder_options`` are what the encoder must
    know of the data (a dataset module's ``ENCODER_OPTIONS``, e.g. the vocabulary size of a text encoder).
    """
    cls = arch_class(arch)
    module, rep_shape = build_encoder(encoder, input_shape, **(encoder_options or {}))
    return cls(module, [make_head(task, rep_shape, input_shape) for task in tasks])
