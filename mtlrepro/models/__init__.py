"""Shared encoders, by the name a dataset module declares in ``ENCODER``.

An encoder is an ``nn.Module`` class with

- ``for_input(input_shape, **options)``: the encoder for inputs of one example's shape as the training loop
  feeds them (images float ``[C x H x W]`` in [0, 1], text int64 ``[3 x L]`` = (input_ids, token_type_ids,
  attention_mask), tabular float ``[D]``);
- ``rep_shape``: one example's representation z, ``(d,)`` (a vector), ``(L, d)`` (token features) or
  ``(C, h, w)`` (a feature map); ``forward(x)`` returns ``[B x *rep_shape]``;
- ``last_layer()``: its last layer with parameters (GradNorm's W, Chen et al. 2018, Sec. 3).

The task heads on z are built by :func:`mtlrepro.models.heads.make_head`.

=============== ============================================ =====================================
name            network                                      for
=============== ============================================ =====================================
``lenet``       LeNet without its last layer (RW Sec. 5.1)  Multi-MNIST family
``mlp``         3 x Linear(128)-ReLU (ExcessMTL App. C.1)    SARCOS and its stand-in
``small_cnn``   3 conv-BN-ReLU blocks, pooled, fc            CelebA / Office stand-ins (ResNet-18)
``small_dense`` 3 conv-BN-ReLU blocks, 1/4 resolution        NYUv2 / CityScapes stand-ins
``small_bert``  tiny random-init ``transformers.BertModel``  PAWS-X / UD-POS stand-ins (mBERT)
=============== ============================================ =====================================
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mtlrepro.errors import ConfigError
from mtlrepro.models.lenet import LeNetEncoder
from mtlrepro.models.mlp import MLPEncoder
from mtlrepro.models.small_bert import SmallBertEncoder
from mtlrepro.models.small_cnn import SmallCNNEncoder
from mtlrepro.models.small_dense import SmallDenseEncoder

#: encoder name -> encoder class
ENCODERS: dict[str, type[nn.Module]] = {
    "lenet": LeNetEncoder,
    "mlp": MLPEncoder,
    "small_bert": SmallBertEncoder,
    "small_cnn": SmallCNNEncoder,
    "small_dense": SmallDenseEncoder,
}


def encoder_class(name: str) -> type[nn.Module]:
    """The class of encoder ``name``; :class:`ConfigError` if unknown."""
    if name not in ENCODERS:
        raise ConfigError(f"encoder {name!r} is unknown (known encoders: {', '.join(sorted(ENCODERS))})")
    return ENCODERS[name]


def build_encoder(name: str, input_shape: tuple[int, ...], **options: Any) -> tuple[nn.Module, tuple[int, ...]]:
    """Build encoder ``name`` for inputs of one example's shape ``input_shape``; returns it and its ``rep_shape``.

    ``options`` go to the encoder's ``for_input`` (e.g. ``vocab_size`` for ``small_bert``).
    """
    encoder = encoder_class(name).for_input(tuple(input_shape), **options)
    return encoder, tuple(int(s) for s in encoder.rep_shape)
