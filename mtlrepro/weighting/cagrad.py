"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021).

With ``g_0 = (1/T) sum_i g_i`` the average gradient, CAGrad looks for the
update that maximises the worst task's local improvement while staying in a
ball around g_0 (Sec. 3.1)::

    max_d  min_i  g_i . d     s.t.  ||d - g_0|| <= c ||g_0||

Its dual over the simplex (Sec. 3.1, and Algorithm 1) with ``phi = c^2 ||g_0||^2``::

    w* = argmin_{w in simplex}  g_w . g_0 + sqrt(phi) ||g_w||,      g_w = sum_i w_i g_i
    d  = g_0 + sqrt(phi) / ||g_w*||  g_w*

so d is a weighted sum of the task gradients with weights
``1/T + sqrt(phi) w*_i / ||g_w*||`` (returned as the step's weights). The
dual depends on the Gramian ``M = G G^T`` alone (``g_w . g_0 = w^T M 1/T``,
``||g_w||^2 = w^T M w``, ``||g_0||^2 = 1^T M 1 / T^2``) and is solved on the
device by Frank-Wolfe with away steps and an exact line search
(:mod:`mtlrepro.weighting._min_norm`) instead of scipy's SLSQP on the CPU
every step (original code, LibMTL) or cvxpy (torchjd).

Options and defaults:

* ``c`` = 0.4: the value of the paper's NYUv2 runs (original code,
  ``nyuv2/run.sh``; its CityScapes runs use 0.4 and 0.6); LibMTL's default
  ``calpha`` is 0.5.
* ``rescale`` = 1: the direction is divided by ``1 + c^2`` (``0``: not
  rescaled, the d of Algorithm 1 as printed; ``2``: divided by ``1 + c``).
  Default 1 because every supervised run of the original code calls
  ``cagrad(grads, alpha, rescale=1)`` (NYUv2 and CityScapes), so the paper's
  numbers were produced with it, and LibMTL (the RW paper's implementation)
  defaults to it too. Under Adam it hardly matters; under SGD it is a
  learning-rate factor of 1.16 at c = 0.4. torchjd's ``CAGrad`` is
  ``rescale: 0``.
* ``grad_wrt: params`` (the paper; LibMTL refuses representation gradients).
  ``representation`` is allowed here as an extension; ``rep_reduce:
  batch_sum`` is refused (the weights are not a task weighting to scale).
* ``max_iter`` (250) / ``tol`` (1e-8, relative duality gap) of the dual solver; it typically
  converges in a handful of iterations. The original code runs scipy's SLSQP at its defaults.
* Degenerate case ``g_w* = 0`` (0 in the hull and the dual optimum there):
  ``d = g_0`` (the original code divides by ``||g_w|| + 1e-8``, giving g_0 as
  well); torchjd returns the zero vector instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtlrepro.weighting._min_norm import simplex_frank_wolfe
from mtlrepro.weighting.base import Aggregation, GradientAggregator, GradientOptions, weighted_sum


@dataclass(frozen=True)
class CAGradOptions(GradientOptions):
    """Liu et al. (2021): c = 0.4, the original code's rescaling by 1/(1 + c^2), shared-parameter gradients."""

    c: float = 0.4
    rescale: Literal[0, 1, 2] = 1
    max_iter: int = 250
    tol: float = 1e-8

    def __post_init__(self) -> None:
        if self.c < 0:
            raise ValueError(f"c must be non-negative, got {self.c}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {self.max_iter}")


def rescale_factor(c: float, rescale: int) -> float:
    """The divisor of the direction: 1, 1 + c^2 or 1 + c (original code's and LibMTL's ``rescale``)."""
    return {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]


def cagrad_weights(gram: Tensor, c: float, *, max_iter: int = 250, tol: float = 1e-8) -> Tensor:
    """Weights [T] with ``d = weights^T G`` the CAGrad direction (Algorithm 1, before any rescaling)."""
    n = gram.shape[0]
    tiny = torch.finfo(gram.dtype).tiny
    mean = torch.full((n,), 1.0 / n, dtype=gram.dtype, device=gram.device)
    to_mean = gram @ mean  # g_i . g_0
    radius = c * (mean @ to_mean).clamp_min(0.0).sqrt()  # sqrt(phi) = c ||g_0||
    w = simplex_frank_wolfe(gram, to_mean, radius, max_iter=max_iter, tol=tol)
    norm_w = (w @ gram @ w).clamp_min(0.0).sqrt()
    lam = torch.where(norm_w > tiny, radius / norm_w.clamp_min(tiny), torch.zeros_like(norm_w))
    return mean + lam * w


class CAGrad(GradientAggregator):
    """The best worst-task improvement in a ball around the mean gradient (Liu et al. 2021, Algorithm 1)."""

    name = "cagrad"
    Options = CAGradOptions

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        options = self.options
        weights = cagrad_weights(grads @ grads.T, options.c, max_iter=options.max_iter, tol=options.tol)
        weights = weights / rescale_factor(options.c, options.rescale)
        return Aggregation(direction=weighted_sum(grads, weights), weights=weights)
