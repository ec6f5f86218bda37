"""Shared encoders, by the name a dataset module declares in ``ENCODER``.

An encoder is an ``nn.Module`` class with a ``for_input(input_shape)``
constructor and a ``rep_dim`` attribute (the size of the representation z).
"""

from __future__ import annotations

from torch import nn

from mtlrepro.errors import ConfigError
from mtlrepro.models.lenet import LeNetEncoder

#: encoder name -> encoder class
ENCODERS: dict[str, type[nn.Module]] = {"lenet": LeNetEncoder}


def encoder_class(name: str) -> type[nn.Module]:
    """The class of encoder ``name``; :class:`ConfigError` if unknown."""
    if name not in ENCODERS:
        raise ConfigError(f"encoder {name!r} is unknown (known encoders: {', '.join(sorted(ENCODERS))})")
    return ENCODERS[name]


def build_encoder(name: str, input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """Build encoder ``name`` for inputs of ``input_shape``; returns it and its output size."""
    encoder = encoder_class(name).for_input(input_shape)
    return encoder, int(encoder.rep_dim)
