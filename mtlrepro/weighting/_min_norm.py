"""Frank-Wolfe on the probability simplex for the small dual problems of MGDA-UB and CAGrad.

Both methods pick task weights ``w`` on the simplex ``Delta = {w >= 0, sum w = 1}``
from the Gramian ``M = G G^T`` [T x T] of the task gradients alone:

* MGDA (Sener & Koltun 2018, Sec. 3.1): the min-norm element of the convex hull
  of the gradients, ``min_w ||G^T w||``;
* CAGrad (Liu et al. 2021, Sec. 3.1, the dual of the conflict-averse problem):
  ``min_w w^T M 1/T + sqrt(phi) ||G^T w||`` (the first term is ``g_w^T g_0``).

Both are instances of one convex problem, solved here::

    min_{w in Delta}  F(w) = b^T w + r * sqrt(w^T M w)          (b in R^T, r >= 0)

(MGDA: ``b = 0, r = 1``; minimising ``||g_w||`` or ``||g_w||^2`` has the same
minimiser.) The solver is Frank-Wolfe, the algorithm of Sener & Koltun
(Algorithm 2): move from ``w`` towards the simplex vertex ``e_s`` with the
smallest partial derivative, with an exact line search. For MGDA that line
search is their closed-form two-point min-norm (Algorithm 1); for the general
``F`` it is the closed form derived in :func:`_line_search`. With
``away_steps=True`` the solver may also move *away* from the worst vertex in the
current support (Lacoste-Julien & Jaggi, "On the global linear convergence of
Frank-Wolfe optimization variants", NeurIPS 2015, Algorithm 1), which converges
linearly instead of as O(1/k): plain Frank-Wolfe started at the centre, as in
Algorithm 2, cannot drop a task's weight to zero in finitely many steps and
after 250 iterations still misses the min-norm point by up to about 70% in
direction on random T = 3..10 problems; with away steps the same budget is
exact to about 1e-8 there (at T = 40 about 1e-3 is left after 250 iterations).

Everything stays on the device of ``M``, in float64 (a T x T problem; in
float32 the small ``w^T M w`` near the optimum drowns in cancellation and the
duality gap never reaches a 1e-6 tolerance): a fixed number of iterations with
a convergence mask (an iteration after convergence leaves ``w`` bit-identical),
no data-dependent Python branching. So as not to burn the whole budget on a
solved problem, the loop reads one boolean from the device every
:data:`SYNC_EVERY` iterations (every iteration on the CPU) and stops once the
problem has converged; the result is identical to running all ``max_iter``
iterations.
"""

from __future__ import annotations

import torch
from torch import Tensor

SYNC_EVERY = 25
"""Iterations between the (single-boolean) host reads that end a converged solve early (every iteration on the CPU,
where reading a value costs nothing)."""


def _line_search(slope: Tensor, radius: Tensor, a0: Tensor, a1: Tensor, a2: Tensor, step_max: Tensor) -> Tensor:
    """Exact minimiser over ``gamma in [0, step_max]`` of ``phi(gamma) = slope*gamma + r*sqrt(q(gamma))``.

    ``q(gamma) = a0 + 2 a1 gamma + a2 gamma^2 = ||g_w + gamma G^T d||^2`` (so
    ``a0 = w^T M w``, ``a1 = w^T M d``, ``a2 = d^T M d``) and ``slope = b^T d``.
    ``phi`` is convex. Its derivative ``slope + r u / sqrt(q)`` with ``u = a1 + a2 gamma``
    is zero where ``u / sqrt(q) = kappa := -slope / r``. Writing
    ``q = h + u^2 / a2`` with ``h = a0 - a1^2 / a2 >= 0`` (Cauchy-Schwarz), the
    root is ``u = kappa sqrt(h / (1 - kappa^2 / a2))``, which exists iff
    ``kappa^2 < a2``; otherwise ``phi`` is monotone and the answer is an end
    point. For ``slope = 0, r = 1`` this is ``gamma = -a1 / a2``, the two-point
    min-norm step of Sener & Koltun (Algorithm 1).
    """
    tiny = torch.finfo(a2.dtype).tiny
    flat = a2 <= tiny  # M d = 0: phi is linear with slope `slope`
    safe_a2 = a2.clamp_min(tiny)
    safe_r = radius.clamp_min(tiny)
    kappa = -slope / safe_r
    h = (a0 - a1 * a1 / safe_a2).clamp_min(0.0)
    room = 1.0 - kappa * kappa / safe_a2
    has_root = (room > 0) & (radius > 0) & ~flat
    u = kappa * (h / room.clamp_min(tiny)).sqrt()
    interior = (u - a1) / safe_a2
    # no root: phi is monotone, decreasing iff slope < 0 (for r > 0: kappa >= sqrt(a2) > 0)
    end = torch.where(slope < 0, step_max, torch.zeros_like(step_max))
    gamma = torch.where(has_root, interior, end)
    return torch.minimum(gamma.clamp_min(0.0), step_max)


def simplex_frank_wolfe(
    gram: Tensor,
    linear: Tensor | None = None,
    radius: Tensor | float = 1.0,
    *,
    max_iter: int = 250,
    tol: float = 1e-5,
    away_steps: bool = True,
) -> Tensor:
    """Weights ``w`` [T] on the simplex minimising ``linear^T w + radius * sqrt(w^T gram w)``.

    ``gram`` is a PSD matrix [T x T]; ``linear`` defaults to zero (the min-norm
    problem of MGDA). Starts at the centre ``1/T`` (Sener & Koltun, Algorithm 2)
    and runs at most ``max_iter`` Frank-Wolfe iterations (with away steps if
    ``away_steps``). Stops when the Frank-Wolfe duality gap
    ``grad F(w)^T (w - e_s)``, an upper bound on ``F(w) - min F``, is at most
    ``tol * (|b^T w| + r ||g_w||)``: a relative tolerance on the objective. For
    MGDA (``b = 0, r = 1``) it bounds the direction's error: with ``d = G^T w``
    and ``d*`` the min-norm point, ``||d - d*||^2 <= ||d||^2 - ||d*||^2 <=
    2 ||d|| gap``, so ``||d - d*|| <= sqrt(2 tol) ||d||``.
    """
    n = gram.shape[0]
    out_dtype, device = gram.dtype, gram.device
    dtype = torch.float64  # the T x T solve: float32 would lose small ||g_w||^2 = w^T M w to cancellation
    gram = gram.to(dtype)
    tiny = torch.finfo(dtype).tiny
    b = torch.zeros(n, dtype=dtype, device=device) if linear is None else linear.to(dtype)
    r = radius.to(dtype) if isinstance(radius, Tensor) else torch.full((), radius, dtype=dtype, device=device)
    w = torch.full((n,), 1.0 / n, dtype=dtype, device=device)
    if n == 1:
        return w.to(out_dtype)
    index = torch.arange(n, device=device)
    active = torch.ones((), dtype=torch.bool, device=device)
    check_every = 1 if device.type == "cpu" else SYNC_EVERY
    for it in range(max_iter):
        mw = gram @ w
        norm = (w @ mw).clamp_min(0.0).sqrt()
        grad = b + r * mw / norm.clamp_min(tiny)
        at_w = w @ grad
        lowest, s = torch.min(grad, dim=0)  # values and indices: no indexing by a device scalar (a host read)
        gap_fw = at_w - lowest
        active = active & (gap_fw > tol * ((b @ w).abs() + r * norm))
        toward = (index == s).to(dtype) - w
        if away_steps:
            highest, v = torch.max(torch.where(w > 0, grad, torch.full_like(grad, -torch.inf)), dim=0)
            use_fw = gap_fw >= highest - at_w
            e_v = (index == v).to(dtype)
            direction = torch.where(use_fw, toward, w - e_v)
            w_v = w @ e_v
            step_max = torch.where(use_fw, torch.ones_like(w_v), w_v / (1.0 - w_v).clamp_min(tiny))
        else:
            direction = toward
            step_max = torch.ones((), dtype=dtype, device=device)
        md = gram @ direction
        gamma = _line_search(b @ direction, r, norm * norm, mw @ direction, direction @ md, step_max)
        gamma = torch.where(active, gamma, torch.zeros_like(gamma))
        new_w = (w + gamma * direction).clamp_min(0.0)
        if away_steps:  # a full away step drops vertex v from the support: make it exactly zero
            dropped = ~use_fw & (gamma >= step_max)
            new_w = torch.where(dropped & (e_v > 0), torch.zeros_like(new_w), new_w)
        w = torch.where(active, new_w, w)
        if (it + 1) % check_every == 0 and not bool(active):
            break
    return (w / w.sum()).to(out_dtype)
