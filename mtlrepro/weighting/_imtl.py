"""The maths of Impartial Multi-Task Learning (Liu et al., ICLR 2021), shared by IMTL-G, IMTL-L and IMTL.

Two pure functions, used by :mod:`~mtlrepro.weighting.imtl_g`,
:mod:`~mtlrepro.weighting.imtl_l` and the hybrid :mod:`~mtlrepro.weighting.imtl`:

* :func:`imtl_g_weights` -- *gradient balance* (IMTL paper, Sec. 3.1 and
  Algorithm 1). With task gradients g_t, unit gradients u_t = g_t / ||g_t||,
  ``D = [g_1 - g_2; ...; g_1 - g_T]`` and ``U = [u_1 - u_2; ...; u_1 - u_T]``
  (rows), the aggregated gradient ``g = sum_t alpha_t g_t`` with
  ``sum_t alpha_t = 1`` has equal projections ``g . u_t`` on every task iff
  ``g (u_1 - u_t) = 0`` for t >= 2, whose closed form is::

      alpha_{2:T} = g_1 U^T (D U^T)^{-1},        alpha_1 = 1 - sum_{t >= 2} alpha_t.

  Every entry of ``D U^T`` and ``g_1 U^T`` is an inner product ``g_i . u_j =
  K_ij / ||g_j||`` of the Gramian ``K = G G^T``, so the weights are computed
  from the T x T Gramian alone (no D-sized work besides forming K). The
  weights sum to 1 and may be negative.
* :func:`imtl_l_terms` -- *loss balance* (IMTL paper, Sec. 3.2, Eq. 6 with the
  paper's choice a = e, b = 1): each loss is replaced by ``e^{s_t} L_t - s_t``
  with a learnable scale s (init 0). For the model this is the loss weight
  ``e^{s_t}``; for s it is the loss ``sum_t (e^{s_t} L_t - s_t)`` with L
  detached, whose gradient ``e^{s_t} L_t - 1`` vanishes when the scaled loss is 1.

The paper text is not in ``shared/papers``: Eq. 6 (loss balance, a = e, b = 1)
is the number torchjd's IMTL-L cites; the section numbers used in these modules
(3.1 gradient balance, 3.2 loss balance, 3.3 hybrid) and the closed form's place
in Algorithm 1 are from our reading of the published version, not verified
against a stored copy.

Singular systems. ``D U^T`` is singular when gradients are linearly dependent
in the way that makes the balance condition under- or over-determined (e.g.
two identical task gradients, or T > dimension). LibMTL inverts it without a
guard (``torch.inverse``), Nash-MTL's repository adds ``1e-8 I``, torchjd uses a
pseudo-inverse of the Gramian. Here the system is solved by LU
(``torch.linalg.solve_ex``, which reports failure without a host sync) and,
where the LU fails or gives non-finite values, by the minimum-norm
least-squares (pseudo-inverse) solution, computed as a Tikhonov-regularised
solve with a ridge of sqrt(machine epsilon) relative size (``torch.linalg.pinv``
would synchronise with the host on CUDA); the choice is made on device with
``torch.where``. A near-singular system that the LU does not flag is solved as
is. Gradient norms of exactly zero are clamped to the smallest positive number
of the dtype, so a task without gradient gives u_t = 0 rather than NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor


def imtl_g_weights(gramian: Tensor) -> Tensor:
    """IMTL-G weights alpha [T] (summing to 1) from the Gramian ``K = G G^T`` [T x T] (IMTL Sec. 3.1).

    Solves ``alpha_{2:T} (D U^T) = g_1 U^T`` through the Gramian: ``(g_i . u_j)
    = K_ij / ||g_j||``. See the module docstring for the singular case.
    """
    n_tasks = gramian.shape[0]
    if n_tasks == 1:
        return torch.ones(1, dtype=gramian.dtype, device=gramian.device)
    norms = torch.diagonal(gramian).clamp_min(0.0).sqrt().clamp_min(torch.finfo(gramian.dtype).tiny)
    proj = gramian / norms[None, :]  # proj[i, j] = g_i . u_j
    first_u = proj[0, 0] - proj[0, 1:]  # (g_1 U^T)_j = g_1 . (u_1 - u_j)
    # (D U^T)_ij = (g_1 - g_i) . (u_1 - u_j), for i, j = 2..T
    system = first_u[None, :] - proj[1:, :1] + proj[1:, 1:]
    # alpha_{2:T} is a row vector with alpha_{2:T} system = first_u, i.e. system^T alpha_{2:T}^T = first_u^T
    solved, info = torch.linalg.solve_ex(system.mT, first_u)
    ok = (info == 0) & torch.isfinite(solved).all()
    rest = torch.where(ok, solved, _least_squares(system.mT, first_u))
    return torch.cat([(1.0 - rest.sum()).reshape(1), rest])


def _least_squares(matrix: Tensor, rhs: Tensor) -> Tensor:
    """Minimum-norm least-squares solution of ``matrix x = rhs``, as a Tikhonov limit (no host sync).

    ``(A^T A + delta I)^{-1} A^T b`` with ``delta = sqrt(eps) * trace(A^T A) / n``
    (plus the smallest positive number, so that A = 0 gives x = 0): the
    pseudo-inverse solution up to a relative O(sqrt(eps) cond(A)^2) bias; a
    smaller ridge would let rounding noise in the null space through.
    ``torch.linalg.pinv`` would be exact, but its SVD checks for errors with a
    host synchronisation on CUDA.
    """
    normal = matrix.mT @ matrix
    info = torch.finfo(matrix.dtype)
    delta = info.eps**0.5 * torch.diagonal(normal).mean() + info.tiny
    eye = torch.eye(normal.shape[0], dtype=matrix.dtype, device=matrix.device)
    solution, _ = torch.linalg.solve_ex(normal + delta * eye, matrix.mT @ rhs)
    return solution


def imtl_l_terms(log_scale: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
    """IMTL-L (IMTL Eq. 6, a = e, b = 1): loss weights ``e^s`` [T] (detached) and the loss of s.

    ``log_scale`` is the learnable s [T]; ``losses`` [T] are detached here, so
    the returned loss ``sum_t (e^{s_t} L_t - s_t)`` trains s only.
    """
    scale = torch.exp(log_scale)
    method_loss = (scale * losses.detach().to(log_scale.dtype) - log_scale).sum()
    return scale.detach().to(losses.dtype), method_loss
