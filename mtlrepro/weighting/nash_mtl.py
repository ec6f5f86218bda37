"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022, Eq. 2 and Algorithm 1).

The Nash bargaining solution is the update ``d = sum_t alpha_t g_t`` whose
weights alpha > 0 solve (paper, Eq. 2)

    G G^T alpha = 1 / alpha      (elementwise: alpha_t (K alpha)_t = 1, K = G G^T),

the stationarity condition of the strictly convex problem
``min_{alpha > 0} 1/2 alpha^T K alpha - sum_t log alpha_t``. At the solution
``||d||^2 = alpha^T K alpha = T`` whatever the gradient scale: alpha scales as
``1 / ||g||``. Algorithm 1 then sets the loss ``sum_t alpha_t L_t`` (so the task
heads see alpha: ``heads: weighted``) and clips the norm of the shared
gradient to ``max_norm`` (``clip_grad_norm_``).

Solver (departure from the paper's code, documented). The original repository
(and LibMTL, torchjd) solves a sequence of convex programs (CCCP, up to
``optim_niter = 20`` cvxpy/ECOS solves on the CPU, warm-started from the
previous step's alpha, stopping early at a residual of 1e-3) on K normalised by
its Frobenius norm; with cvxpy's constraint ``alpha_t (K alpha)_t >= 1`` in the
*unnormalised* K the answer is the alpha of K itself (checked against torchjd
0.18 with cvxpy 1.9/ECOS: ``alpha_t (K alpha)_t = 1`` to 1e-7 on random
matrices; on near-parallel, badly scaled and some conflicting ones its solve
fails silently and returns the previous, initially all-ones, weights, with
residuals up to 1e2, where the solver below still agrees with scipy). Here
:func:`nash_weights` solves the same condition on the device with a fixed
number (``optim_niter``) of damped Newton steps on the convex objective above:

* Reparametrisation: with ``n = sqrt(diag K)``, ``C = K / (n n^T)`` (the
  gradients' cosine matrix) and ``alpha = beta / n``, the condition becomes
  ``C beta = 1 / beta``. This diagonal normalisation replaces the original's
  Frobenius normalisation (both only condition the problem; the solution is
  the same), and keeps tasks whose gradient norms differ by orders of
  magnitude well resolved.
* Damped Newton: ``beta <- beta - H^{-1} r / (1 + lambda)`` with ``r = C beta -
  1/beta``, ``H = C + diag(1/beta^2)`` and the Newton decrement ``lambda =
  sqrt(r^T H^{-1} r)``. The objective is self-concordant, so this step never
  leaves ``beta > 0`` and converges globally, quadratically near the solution
  (Nesterov & Nemirovski; Boyd & Vandenberghe, Sec. 9.6). Start: beta = c 1
  with c minimising the objective along 1. 20 steps reach a residual of about
  1e-12 (float64) on random, conflicting, near-parallel and badly scaled
  gradients for T <= 10 (tests/test_nash_graddrop.py).
* No warm start (each step's answer does not depend on the previous one);
  the previous alpha is kept only for ``update_every > 1`` and as the fallback
  when the condition has no solution: a task with a zero gradient, or a
  non-finite result. This is the original's behaviour when its solver fails
  (it keeps the previous alpha, initially all ones); the choice is made on
  device with ``torch.where``.
* ``ridge`` (default 0, the exact condition) adds ``ridge * I`` to C: a
  Tikhonov term that bounds alpha when gradients (nearly) cancel, where the
  exact condition has no (or a huge) solution.

Clipping. The direction is scaled by ``min(1, max_norm / (||d|| + 1e-6))``, the
formula of ``torch.nn.utils.clip_grad_norm_``; since the step writes the
direction into the shared parameters' gradients (which hold nothing else), this
equals the original's ``clip_grad_norm_(shared_parameters, max_norm)`` after the
weighted backward. The returned weights (applied to the heads) are not clipped,
as in the original, where only the shared parameters are clipped. ``max_norm:
0`` disables clipping. With ``scale`` other than ``free`` the step rescales
weights and the clipped direction afterwards.

Defaults: update_every 1, optim_niter 20, max_norm 1.0 (Navon et al.'s
repository and LibMTL), heads weighted, scale free, shared parameters only
(``params_only``, as the paper and LibMTL, which forbids representation
gradients; clipping a z-gradient would not be the paper's clipping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtlrepro.weighting.base import Aggregation, GradientAggregator, WeightedGradientOptions, WeightScale

CLIP_EPS = 1e-6
"""The constant ``torch.nn.utils.clip_grad_norm_`` adds to the norm."""


@dataclass(frozen=True)
class NashMTLOptions(WeightedGradientOptions):
    """Navon et al. (repository defaults): heads weighted, weights as solved, clip the shared gradient at 1.

    ``optim_niter`` is the original's iteration budget (CCCP steps); here it is
    the number of damped Newton steps. ``ridge`` is ours (0: the exact Eq. 2).
    """

    heads: Literal["unweighted", "weighted"] = "weighted"
    scale: WeightScale = "free"
    update_every: int = 1
    optim_niter: int = 20
    max_norm: float = 1.0
    ridge: float = 0.0

    def __post_init__(self) -> None:
        if self.update_every < 1:
            raise ValueError(f"update_every must be at least 1, got {self.update_every}")
        if self.optim_niter < 1:
            raise ValueError(f"optim_niter must be at least 1, got {self.optim_niter}")
        if self.max_norm < 0:
            raise ValueError(f"max_norm must be non-negative (0 disables clipping), got {self.max_norm}")
        if self.ridge < 0:
            raise ValueError(f"ridge must be non-negative, got {self.ridge}")


def nash_weights(gramian: Tensor, n_iter: int = 20, ridge: float = 0.0) -> Tensor:
    """alpha > 0 with ``alpha_t (K alpha)_t = 1`` for the Gramian K [T x T] (Nash-MTL Eq. 2), by damped Newton.

    Non-finite where the condition has no solution (see the module docstring);
    the caller decides the fallback.
    """
    n_tasks = gramian.shape[0]
    eye = torch.eye(n_tasks, dtype=gramian.dtype, device=gramian.device)
    norms = torch.diagonal(gramian).clamp_min(0.0).sqrt().clamp_min(torch.finfo(gramian.dtype).tiny)
    cosines = gramian / (norms[:, None] * norms[None, :]) + ridge * eye
    # beta = c * 1 minimising 1/2 c^2 1^T C 1 - T log c: c = sqrt(T / 1^T C 1)
    along_ones = cosines.sum().clamp_min(n_tasks * torch.finfo(gramian.dtype).eps)
    beta = torch.ones(n_tasks, dtype=gramian.dtype, device=gramian.device) * torch.sqrt(n_tasks / along_ones)
    for _ in range(n_iter):
        residual = cosines @ beta - 1.0 / beta
        hessian = cosines + torch.diag(beta.pow(-2))
        newton, _ = torch.linalg.solve_ex(hessian, residual)
        decrement = torch.sqrt((residual * newton).sum().clamp_min(0.0))
        beta = beta - newton / (1.0 + decrement)
    return beta / norms


def clip_norm(direction: Tensor, max_norm: float) -> Tensor:
    """``direction`` scaled by ``min(1, max_norm / (||direction|| + 1e-6))`` (``clip_grad_norm_``); 0 = no clip."""
    if max_norm <= 0:
        return direction
    factor = (max_norm / (torch.linalg.vector_norm(direction) + CLIP_EPS)).clamp(max=1.0)
    return direction * factor


class NashMTL(GradientAggregator):
    """Nash bargaining weights (Eq. 2) solved on device; the shared update's norm clipped to ``max_norm``."""

    name = "nash_mtl"
    Options = NashMTLOptions
    params_only = True

    def __init__(self, n_tasks: int, options: NashMTLOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self._step = 0
        self._alpha: Tensor | None = None

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        if self._alpha is None or self._step % self.options.update_every == 0:
            previous = (
                torch.ones(self.n_tasks, dtype=grads.dtype, device=grads.device)
                if self._alpha is None
                else self._alpha.to(grads)
            )
            gramian = grads @ grads.T
            alpha = nash_weights(gramian, self.options.optim_niter, self.options.ridge)
            solvable = torch.isfinite(alpha).all() & (torch.diagonal(gramian) > 0).all()
            self._alpha = torch.where(solvable, alpha, previous).detach()
        self._step += 1
        alpha = self._alpha.to(grads)
        return Aggregation(direction=clip_norm(alpha @ grads, self.options.max_norm), weights=alpha)

    def extra_state(self) -> dict[str, Any]:
        return {"step": self._step, "alpha": self._alpha}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])
        self._alpha = state["alpha"]
