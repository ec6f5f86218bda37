"""IMTL: the hybrid of Impartial Multi-Task Learning (Liu et al., ICLR 2021, Sec. 3.3, Algorithm 1; LibMTL's IMTL).

Loss balance and gradient balance together: every task loss is first scaled,
``L_t -> e^{s_t} L_t - s_t`` with a learnable s initialised to 0 (IMTL Eq. 6,
:func:`~mtlrepro.weighting._imtl.imtl_l_terms`), then the shared update is
IMTL-G's closed form (:func:`~mtlrepro.weighting._imtl.imtl_g_weights`) applied
to the gradients of the *scaled* losses, ``diag(e^s) G``:

    direction = alpha^T diag(e^s) G,     alpha = IMTL-G(diag(e^s) G),  sum_t alpha_t = 1.

The task heads get the gradient of their scaled loss, ``e^{s_t} grad L_t``, not
scaled by alpha (Algorithm 1; LibMTL's backward passes accumulate exactly that in
the heads). s is trained by the loss ``sum_t (e^{s_t} L_t - s_t)`` with L detached
(gradient ``e^{s_t} L_t - 1``). In a combination ``<loss>+imtl`` the loss vector
is the loss stage's ``lambda * L`` (the step already hands over
``diag(lambda) G``), so s balances the weighted losses.

How the contract expresses it: the returned ``weights`` are those of the
direction, ``alpha * e^s`` (``direction = weights^T G``), and ``head_weights``
are the loss scales ``e^s``, so that ``heads: weighted`` (the default) gives the
heads ``e^{s_t}`` and nothing else; alpha alone is also reported as the
diagnostic ``alpha``. The same update is the combination ``imtl_l+imtl_g``
(loss stage e^s on heads and shared parameters, then IMTL-G on
``diag(e^s) G`` with unweighted heads).

Defaults and public-code differences (options):

* ``grad_wrt: representation`` with ``rep_reduce: full`` -- Algorithm 1 takes
  the gradients of the shared feature z; LibMTL's default is the shared
  parameters (``params``) and its representation mode sums over the batch
  (``rep_reduce: batch_sum``).
* ``lr`` of s, default ``1e-3`` (our choice; LibMTL trains s with the model
  optimizer: model lr and weight decay; the paper as read here states none).
* LibMTL's ``torch.inverse`` has no guard for singular systems; here the
  pseudo-inverse fallback of :mod:`mtlrepro.weighting._imtl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtlrepro.weighting._imtl import imtl_g_weights, imtl_l_terms
from mtlrepro.weighting.base import Aggregation, GradientAggregator, WeightedGradientOptions, WeightScale


@dataclass(frozen=True)
class IMTLOptions(WeightedGradientOptions):
    """IMTL Algorithm 1: z-gradients of the scaled losses; heads see e^s (not alpha); ``lr`` of s."""

    scale: WeightScale = "free"
    grad_wrt: Literal["params", "representation"] = "representation"
    heads: Literal["unweighted", "weighted"] = "weighted"
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


class IMTL(GradientAggregator):
    """Learned loss scales e^s (IMTL-L) and impartial gradient weights on the scaled gradients (IMTL-G)."""

    name = "imtl"
    Options = IMTLOptions
    lr_option = "lr"

    def __init__(self, n_tasks: int, options: IMTLOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self.log_scale = nn.Parameter(torch.zeros(n_tasks))
        """s [T], the log of the loss scales (IMTL Eq. 6), initialised to 0."""
        self._alpha: Tensor | None = None

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        losses = ctx.losses if ctx.loss_weights is None else ctx.losses * ctx.loss_weights
        scale, method_loss = imtl_l_terms(self.log_scale, losses)
        scale = scale.to(grads.dtype)
        scaled = scale[:, None] * grads
        alpha = imtl_g_weights(scaled @ scaled.T)
        self._alpha = alpha.detach()
        return Aggregation(direction=alpha @ scaled, weights=alpha * scale, method_loss=method_loss, head_weights=scale)

    def diagnostics(self) -> dict[str, Tensor]:
        return {} if self._alpha is None else {"alpha": self._alpha}
