"""IMTL-G: gradient balance of Impartial Multi-Task Learning (Liu et al., ICLR 2021, Sec. 3.1, Algorithm 1).

The shared update is ``g = sum_t alpha_t g_t`` with the closed-form weights

    alpha_{2:T} = g_1 U^T (D U^T)^{-1},    alpha_1 = 1 - sum_{t >= 2} alpha_t,

where ``D`` stacks ``g_1 - g_t`` and ``U`` stacks ``u_1 - u_t`` (u_t = g_t /
||g_t||), so that g has the same projection on every unit task gradient:
``g . u_1 = g . u_t`` for all t (:func:`~mtlrepro.weighting._imtl.imtl_g_weights`,
computed from the T x T Gramian; singular systems fall back to the
pseudo-inverse, see :mod:`mtlrepro.weighting._imtl`). The weights sum to 1 and
may be negative, so the default scale is ``free`` (``simplex`` would only
rescale by ``1 / sum = 1``, ``tasks`` multiplies by T).

Defaults and where public code differs (each difference an option):

* ``grad_wrt: representation`` -- the paper's Algorithm 1 computes the task
  gradients with respect to the shared feature z (as MGDA-UB); LibMTL's
  IMTL and torchjd's IMTLG use the shared parameters by default (``params``).
  ``rep_reduce: full`` uses the gradient w.r.t. the whole [B x d] feature
  (Algorithm 1); LibMTL's representation mode sums it over the batch first
  (``batch_sum``; the weights are then applied to the per-example gradients).
* ``heads: unweighted`` -- Algorithm 1 updates each task-specific head with the
  gradient of its own loss, not scaled by alpha.
* LibMTL inverts ``D U^T`` without a guard (NaN on singular systems); here a
  pseudo-inverse fallback (documented in :mod:`mtlrepro.weighting._imtl`).

Cost: the per-task gradients (T vector-Jacobian products in parameter mode, one
backward through the heads in representation mode) plus O(T^2 D) for the
Gramian and O(T^3) for the solve, all on the device of the gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from mtlrepro.weighting._imtl import imtl_g_weights
from mtlrepro.weighting.base import Aggregation, GradientAggregator, WeightedGradientOptions, WeightScale, weighted_sum


@dataclass(frozen=True)
class IMTLGOptions(WeightedGradientOptions):
    """IMTL Algorithm 1: gradients w.r.t. the shared feature z, weights as computed (sum 1), heads unweighted."""

    grad_wrt: Literal["params", "representation"] = "representation"
    scale: WeightScale = "free"


class IMTLG(GradientAggregator):
    """Impartial gradient weights: the aggregate projects equally on every task's unit gradient."""

    name = "imtl_g"
    Options = IMTLGOptions

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        weights = imtl_g_weights(grads @ grads.T)
        return Aggregation(direction=weighted_sum(grads, weights), weights=weights)
