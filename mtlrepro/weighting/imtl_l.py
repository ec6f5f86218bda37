"""IMTL-L: loss balance of Impartial Multi-Task Learning (Liu et al., ICLR 2021, Sec. 3.2, Eq. 6 with a = e, b = 1).

Each task loss L_t is replaced by the scaled loss ``e^{s_t} L_t - s_t`` with a
learnable scale ``s`` in R^T initialised to 0 (:func:`~mtlrepro.weighting._imtl.imtl_l_terms`).
As a loss weighting this is:

* loss weights ``lambda_t = e^{s_t}`` for the model (shared parameters and heads:
  the paper applies the scaled loss to every parameter, ``heads: weighted``),
  as computed (``scale: free``; at s = 0 they are all 1, the plain loss sum);
* the method loss ``sum_t (e^{s_t} L_t.detach() - s_t)``, which trains s only;
  its gradient ``e^{s_t} L_t - 1`` drives every scaled loss towards 1.

Learning rate of s (option ``lr``, default ``1e-3``). Neither the paper as
read here, LibMTL nor torchjd fixes one: LibMTL's IMTL puts s in the model's
optimizer (model lr and weight decay), torchjd leaves it to the user's
optimizer. Here s has its own parameter group without weight decay (contract);
1e-3 is our documented choice; set ``lr`` to the model's learning rate to
mimic LibMTL (minus its weight decay on s).

Public code: there is no standalone IMTL-L in LibMTL (only inside its hybrid
IMTL, :mod:`~mtlrepro.weighting.imtl`); torchjd's ``scalarization.IMTLL`` is the
same objective, init 0. One backward pass per step (no per-task gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtlrepro.weighting._imtl import imtl_l_terms
from mtlrepro.weighting.base import LossOptions, LossWeighting, LossWeights, WeightScale


@dataclass(frozen=True)
class IMTLLOptions(LossOptions):
    """IMTL Eq. 6: weights e^s as computed, heads weighted; ``lr`` of s (our choice, see module docstring)."""

    scale: WeightScale = "free"
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


class IMTLL(LossWeighting):
    """Learned loss scales e^s with the regulariser -s (IMTL-L)."""

    name = "imtl_l"
    Options = IMTLLOptions
    lr_option = "lr"

    def __init__(self, n_tasks: int, options: IMTLLOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self.log_scale = nn.Parameter(torch.zeros(n_tasks))
        """s [T], the log of the loss scales (IMTL Eq. 6), initialised to 0."""

    def weigh(self, ctx) -> LossWeights:
        weights, method_loss = imtl_l_terms(self.log_scale, ctx.losses)
        return LossWeights(weights, method_loss)
