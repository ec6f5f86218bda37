"""MOML: Multi-Objective Meta Learning used as a loss weighting (Ye et al., NeurIPS 2021).

The RW paper (Sec. 6) describes MOML as learning loss weights "in a
meta-learning-based hyperparameter optimization manner, where the loss weights
are cast as the function of model parameters and updated by minimizing the loss
on the validation dataset"; ExcessMTL (Sec. 4.3, Fig. 5) runs it on a clean
validation set carved from 20% of the training data. Bilevel problem of Ye et
al. (2021) with a multi-objective upper level, the lower level approximated by
one gradient step (as in LibMTL; the MOML paper text is not in shared/papers,
so no equation numbers are cited):

* weights ``lambda = softmax(alpha)`` (simplex), ``alpha`` [T] trainable;
* inner step on the training batch::

      theta'(lambda) = theta - inner_lr * grad_theta sum_t lambda_t L_t^train(theta)

* upper level on a held-out batch: the T losses ``L_s^val(theta'(lambda))``,
  a multi-objective problem. ``upper: mgda`` (default) takes MOML's
  multi-objective step: the MGDA combination of the T hypergradient rows
  ``dL_s^val / dalpha``, each l2-normalised, with weights ``gamma`` the
  min-norm point of their convex hull (Desideri 2012; Sener & Koltun 2018,
  Sec. 3.1), solved from the T x T Gramian of the unit rows by the Frank-Wolfe
  solver shared with ``mgda`` and ``cagrad``
  (:func:`~mtlrepro.weighting._min_norm.simplex_frank_wolfe`, away steps, at
  most 250 iterations, relative duality gap 1e-5 -- ``mgda``'s defaults, the
  original ``MAX_ITER`` and ``STOP_CRIT``; the combination is then within
  ``sqrt(2e-5) ~ 4.5e-3`` of the exact min-norm point, relative to its norm).
  ``upper: sum`` descends the sum of the T held-out losses instead (one
  hypergradient row);
* hypergradient through the inner step and the softmax: with ``g_t =
  grad_theta L_t^train(theta)`` and ``v_s = grad L_s^val(theta')``,
  ``dL_s^val / dlambda_t = -inner_lr * v_s^T g_t`` (exact: theta' is linear in
  lambda), then ``dL/dalpha = J_softmax^T dL/dlambda`` with ``J_softmax =
  diag(lambda) - lambda lambda^T``.

Two exact ways to compute the hypergradient (option ``hypergrad``):
``autograd`` differentiates the inner gradient (``create_graph=True``) and the
functional forward ``ctx.forward_losses(batch, params=theta')`` back to lambda
(one double-backward per upper objective); ``jacobian`` forms the per-task
training gradients G [T x P] and the held-out gradient(s) at theta' and uses
the closed form above (T + 1 backward passes for ``sum``, 2T for ``mgda``, as
LibMTL). The tests check that both agree, and against finite differences.

The model is updated with ``lambda`` (heads weighted, weights on the simplex);
``alpha`` is stepped by the run's optimizer in its own parameter group
(``lr``) through ``method_loss = (alpha * hypergrad.detach()).sum()``.

Theta is *every* model parameter (shared and heads), as LibMTL's inner SGD step
on a copy of the whole model. The training losses of the inner step are the
step's own ``ctx.losses`` when their graph reaches every parameter (MOML alone,
heads weighted: the step's single backward pass); in a combination with a
gradient aggregator, or with ``heads: unweighted``, the heads read detached
copies of z, so a functional forward on the same training batch recomputes
them (one more forward pass). Buffers
(batch-norm statistics) are cloned for every functional forward, so the inner
and held-out passes never change the model's state.

Defaults: ``lr`` 1e-3 (LibMTL ``outer_lr``), ``inner_lr`` 0.1 (LibMTL
``inner_lr``), ``upper: mgda`` (l2-normalised hypergradient rows, solver at
most 250 iterations, relative duality gap 1e-5), held-out slice 20% of the
training split with clean labels (ExcessMTL Sec. 4.3; carved by
``mtlrepro.train.held_out_slice``, never the test split), ``alpha`` = 0
(lambda = 1/T).

Paper vs public code (LibMTL HEAD ``trainer.py:543-611``; MOML's own code: not found):

* ``upper``: MOML's upper level is multi-objective; LibMTL combines the T
  hypergradients by MGDA with l2 normalisation and ExcessMTL Sec. 4.3 describes
  MOML as assigning "weights using MGDA on a clean validation set": ``mgda``,
  the default. ``sum`` is the single validation loss of RW Sec. 6's wording
  (cheaper: one hypergradient row). Whatever solver a public code uses for the
  min-norm problem, its solution is one point; the shared Frank-Wolfe solver
  reaches it up to the duality-gap tolerance above.
* LibMTL's inner and upper batches are half-batches of the *training* loader,
  not a held-out split; here ``held_out_fraction`` / ``held_out_labels`` choose
  the held-out slice (``noisy`` keeps the training noise on it).
* LibMTL's default ``inner_step 5`` trips its own ``assert inner_step == 1``;
  one inner step is implemented (no option).
* LibMTL first steps alpha with Adam and then updates the model with the new
  weights on a third, full-size training batch. Here the step's batch is the
  inner batch and the model update uses ``lambda(alpha_t)``; alpha is stepped
  after the step by the run's optimizer type (one-step lag, no third batch).
  Not expressible as an option (see the report).

Randomness: none (the held-out batches come from the loop's sampler).
Everything stays on the device of the inputs; ``upper: mgda`` reads one
boolean back from the device every 25 solver iterations to stop a converged
solve early (as ``mgda``, see :mod:`mtlrepro.weighting._min_norm`), ``sum``
reads nothing. Cost per step (``autograd``): the step's backward, one double
backward through the inner gradient and one forward on the held-out batch
with ``sum``; ``mgda`` (default) adds T - 1 backward passes through the same
graph (one per further held-out loss) and a T x T solve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtlrepro.weighting._min_norm import simplex_frank_wolfe
from mtlrepro.weighting.base import LossOptions, LossWeighting, LossWeights, Need

MGDA_MAX_ITER = 250
"""Frank-Wolfe iterations at most for the ``mgda`` upper level (``mgda``'s default, the original ``MAX_ITER``)."""
MGDA_TOL = 1e-5
"""Relative duality gap at which the ``mgda`` upper level's solve stops (``mgda``'s default, the original
``STOP_CRIT``)."""

_EPS = 1e-12

ValLosses = Callable[[dict[str, Tensor]], Tensor]
"""Maps replacement parameters (name -> tensor) to the held-out task losses [T]."""


@dataclass(frozen=True)
class MOMLOptions(LossOptions):
    """MOML (Ye et al. 2021) as in LibMTL: MGDA upper level, outer lr 1e-3, inner lr 0.1, one inner step."""

    lr: float = 1e-3
    inner_lr: float = 0.1
    upper: Literal["mgda", "sum"] = "mgda"
    hypergrad: Literal["autograd", "jacobian"] = "autograd"
    held_out_fraction: float = 0.2
    held_out_labels: Literal["clean", "noisy"] = "clean"

    def __post_init__(self) -> None:
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must lie in (0, 1), got {self.held_out_fraction}")
        if self.inner_lr <= 0.0:
            raise ValueError(f"inner_lr must be positive, got {self.inner_lr}")
        if self.lr < 0.0:
            raise ValueError(f"lr must be non-negative, got {self.lr}")


# --------------------------------------------------------------------------- the maths


def softmax_vjp(weights: Tensor, grad: Tensor) -> Tensor:
    """``J_softmax^T grad`` for ``weights = softmax(alpha)``: ``weights * (grad - <weights, grad>)``, row-wise."""
    return weights * (grad - (grad @ weights).unsqueeze(-1))


def mgda_combination(rows: Tensor, *, max_iter: int = MGDA_MAX_ITER, tol: float = MGDA_TOL) -> Tensor:
    """MGDA on the l2-normalised rows [S x T]: ``sum_s gamma_s rows_s / ||rows_s||`` with min-norm gamma.

    gamma minimises ``||sum_s gamma_s u_s||`` on the simplex, solved from the Gramian ``U U^T`` of the unit rows
    by the Frank-Wolfe solver shared with ``mgda`` and ``cagrad``
    (:func:`~mtlrepro.weighting._min_norm.simplex_frank_wolfe`, away steps); it stops at a relative duality gap
    ``tol``, so the combination is within ``sqrt(2 tol) ||d||`` of the exact min-norm point ``d``.
    """
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(_EPS)
    gamma = simplex_frank_wolfe(unit @ unit.T, max_iter=max_iter, tol=tol)
    return gamma @ unit


def combine_upper(alpha_rows: Tensor, upper: str) -> Tensor:
    """The hypergradient [T] w.r.t. alpha from the upper level's rows (one row for ``sum``, T for ``mgda``)."""
    if upper == "mgda":
        return mgda_combination(alpha_rows)
    return alpha_rows.sum(dim=0)


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _grads_or_none(output: Tensor, inputs: Sequence[Tensor], create_graph: bool = False) -> tuple[Tensor, ...] | None:
    """Gradients of ``output`` w.r.t. ``inputs`` (graph retained), or None if some input is not reached."""
    grads = torch.autograd.grad(output, inputs, retain_graph=True, create_graph=create_graph, allow_unused=True)
    return None if any(g is None for g in grads) else grads


def hypergradient_autograd(
    train_losses: Tensor,
    params: dict[str, Tensor],
    weights: Tensor,
    inner_lr: float,
    val_losses: ValLosses,
    per_task: bool,
) -> tuple[Tensor, Tensor] | None:
    """Rows ``dL^val/dlambda`` by autograd through the inner step; and the held-out losses at theta'.

    ``per_task``: one row per held-out task loss [T x T]; else one row for their
    sum [1 x T]. None if the training losses do not reach every parameter.
    """
    lam = weights.detach().requires_grad_(True)
    names = list(params)
    grads = _grads_or_none((lam * train_losses).sum(), [params[n] for n in names], create_graph=True)
    if grads is None:
        return None
    inner = {n: params[n].detach() - inner_lr * g for n, g in zip(names, grads, strict=True)}
    val = val_losses(inner)
    if per_task:
        rows = [torch.autograd.grad(val[s], lam, retain_graph=True)[0] for s in range(val.shape[0])]
        return torch.stack(rows), val.detach()
    return torch.autograd.grad(val.sum(), lam)[0].unsqueeze(0), val.detach()


def hypergradient_jacobian(
    train_losses: Tensor,
    params: dict[str, Tensor],
    weights: Tensor,
    inner_lr: float,
    val_losses: ValLosses,
    per_task: bool,
) -> tuple[Tensor, Tensor] | None:
    """Rows ``dL^val/dlambda = -inner_lr * V G^T`` from explicit gradients; and the held-out losses at theta'.

    G [T x P] holds the training gradients at theta, V the held-out gradient(s)
    at theta' (one row per task if ``per_task``, else of their sum).
    """
    names = list(params)
    tensors = [params[n] for n in names]
    n_tasks = train_losses.shape[0]
    width = sum(t.numel() for t in tensors)
    jac = torch.empty(n_tasks, width, dtype=train_losses.dtype, device=train_losses.device)
    for t in range(n_tasks):
        grads = _grads_or_none(train_losses[t], tensors)
        if grads is None:
            return None
        jac[t].copy_(_flat(grads))
    update = weights.to(jac.dtype) @ jac
    inner: dict[str, Tensor] = {}
    offset = 0
    for name, p in zip(names, tensors, strict=True):
        step = update[offset : offset + p.numel()].view_as(p)
        inner[name] = (p.detach() - inner_lr * step).requires_grad_(True)
        offset += p.numel()
    leaves = [inner[n] for n in names]
    val = val_losses(inner)
    if per_task:
        v = torch.stack([_flat(torch.autograd.grad(val[s], leaves, retain_graph=True)) for s in range(n_tasks)])
    else:
        v = _flat(torch.autograd.grad(val.sum(), leaves)).unsqueeze(0)
    return -inner_lr * (v @ jac.T), val.detach()


# --------------------------------------------------------------------------- the method


class MOML(LossWeighting):
    """Loss weights ``softmax(alpha)``; alpha follows the hypergradient of the held-out loss (one-step bilevel)."""

    name = "moml"
    Options = MOMLOptions
    needs = frozenset({Need.HELD_OUT, Need.FORWARD})
    lr_option = "lr"

    def __init__(self, n_tasks: int, options: MOMLOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self.logits = nn.Parameter(torch.zeros(n_tasks, device=generator.device))
        self._diagnostics: dict[str, Tensor] = {}

    def weights(self) -> Tensor:
        """The current loss weights ``softmax(alpha)`` [T] (detached)."""
        return torch.softmax(self.logits.detach(), dim=0)

    def weigh(self, ctx) -> LossWeights:
        losses = ctx.losses
        lam = self.weights().to(losses.dtype)
        model = ctx.model
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}

        def buffers() -> dict[str, Tensor]:
            return {n: b.clone() for n, b in model.named_buffers()}

        held_out = ctx.held_out_batch()

        def val_losses(replacement: dict[str, Tensor]) -> Tensor:
            return ctx.forward_losses(held_out, params={**replacement, **buffers()})

        compute = hypergradient_autograd if self.options.hypergrad == "autograd" else hypergradient_jacobian
        per_task = self.options.upper == "mgda"
        inner_lr = self.options.inner_lr
        found = compute(losses, params, lam, inner_lr, val_losses, per_task)
        if found is None:  # the heads read detached copies of z: recompute the training losses functionally
            fresh = ctx.forward_losses(ctx.batch, params={**params, **buffers()})
            found = compute(fresh, params, lam, inner_lr, val_losses, per_task)
            if found is None:
                raise RuntimeError("moml: a model parameter does not influence the training losses")
        lam_rows, val = found
        hypergrad = combine_upper(softmax_vjp(lam, lam_rows), self.options.upper)
        self._diagnostics = {"val_loss": val, "hypergrad": hypergrad.detach()}
        method_loss = (self.logits * hypergrad.detach().to(self.logits.dtype)).sum()
        return LossWeights(weights=lam, method_loss=method_loss)

    def diagnostics(self) -> dict[str, Tensor]:
        """Held-out task losses after the inner step and the hypergradient w.r.t. alpha, of the last step."""
        return dict(self._diagnostics)
