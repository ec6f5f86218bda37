"""GradNorm: learned task weights that balance gradient norms (Chen et al., ICML 2018, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", Sec. 3 and Algorithm 1).

RW classifies GradNorm as a gradient balancing method and combines it with loss weightings (RW Table 4:
UW+GradNorm, RLW+GradNorm), so it is a gradient aggregator here: it receives ``grads = diag(lambda) G`` and
returns the direction ``w^T grads`` with its weights ``w`` [T] (``scale: tasks``, sum T as in the paper).

The quantities of GradNorm Sec. 3.1, at step t:

* ``G_W^(i) = ||grad_W w_i L_i||_2`` on the chosen shared weights W; as ``w_i > 0`` this is
  ``w_i ||grad_W L_i||``, so the norms come from the per-task gradients without a double backward;
* ``Gbar_W = mean_i G_W^(i)``;
* ``L~_i = L_i(t) / L_i(0)`` (loss ratio) and ``r_i = L~_i / mean_j L~_j`` (relative inverse training rate);
* the GradNorm loss (Eq. 2) ``L_grad = sum_i | G_W^(i) - Gbar_W r_i^alpha |`` whose target
  ``Gbar_W r_i^alpha`` is held constant (Sec. 3.2; Eq. 1, the desired gradient norm); its gradient w.r.t. the
  weights is returned as ``method_loss`` (it depends on the model only through detached norms and losses),
  back-propagated by the step into the weights' own parameter and applied by the optimizer (own parameter
  group, learning rate ``lr``, no weight decay);
* after each update the weights are renormalised to ``sum_i w_i = T`` (Algorithm 1, last line).

The direction of step t uses ``w(t)``, the weights before this step's update (Algorithm 1: both updates are
computed from step t's quantities). ``L_i`` are the *raw* task losses (a combination's loss weights would
make the training rates as random as the weights); in a combination the norms are those of the gradients of
``lambda_i L_i``, the rows of ``grads``, as ``G_W^(i)`` is defined on the loss the weights multiply.

Defaults: ``alpha = 1.5`` (the paper's NYUv2 value; LibMTL's default); W = the last shared layer of weights
(the paper's choice in Sec. 3, to keep the extra cost small), ``initial_loss: first_step`` (L_i(0) of Algorithm 1's
first iteration t = 0), ``parametrisation: direct`` (w_i itself is learned, initialised to 1, renormalised
to sum T after each update -- Algorithm 1), heads ``weighted`` (the paper's whole loss is ``sum_i w_i L_i``),
``lr = 0.025``: the paper gives no separate learning rate for the weights; 0.025 is the own-parameter rate of
the Nash-MTL code base for its loss-weighting baselines (``method-contract.md`` §1, UW row).

Paper vs public code (LibMTL ``GradNorm.py``; ``method-contract.md`` §1 and LibMTL issue #64), as options:

=====================  =======================================  =========================================
item                   paper (default)                          LibMTL (option)
=====================  =======================================  =========================================
gradient norms of      the last shared layer W                  ``layer: all``: every shared parameter
                                                                (or z in representation mode), i.e. the
                                                                rows of ``grads``
L_i(0)                 first step                               ``initial_loss: first_epoch``: epoch 1 is
                                                                an EW warm-up (w = 1, no update) and
                                                                L_i(0) is its mean loss
weights                w_i learned, renormalised to sum T       ``parametrisation: softmax``:
                                                                w = T softmax(logits)
heads                  weighted by w                            ``heads: unweighted``
=====================  =======================================  =========================================

With ``initial_loss: first_epoch`` L_i(0) is the plain mean of epoch 1's per-step losses (LibMTL weights by
batch size; the two differ only through a smaller last batch). With ``parametrisation: direct`` the
renormalisation of step t's update happens when step t + 1 starts, before the weights are used (the same
sequence of weights); weights are floored at ``1e-6`` before renormalising (the paper does not say how it
keeps them positive). Everything stays on the device of the gradients; no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlrepro.weighting.base import (
    Aggregation,
    GradientAggregator,
    Need,
    WeightedGradientOptions,
    WeightScale,
    weighted_sum,
)

WEIGHT_FLOOR = 1e-6
"""Smallest weight kept by the renormalisation of ``parametrisation: direct`` (before rescaling to sum T)."""


@dataclass(frozen=True)
class GradNormOptions(WeightedGradientOptions):
    """GradNorm (Chen et al. 2018): alpha 1.5, last shared layer, L(0) at the first step, weights sum to T."""

    scale: WeightScale = "tasks"
    heads: Literal["unweighted", "weighted"] = "weighted"
    alpha: float = 1.5
    """Asymmetry of the target norms ``Gbar r_i^alpha`` (Sec. 3.2); 1.5 for NYUv2 in the paper."""
    lr: float = 0.025
    """Learning rate of the weights' own parameter (paper: not given)."""
    layer: Literal["last", "all"] = "last"
    """``last``: norms on the last shared layer (paper); ``all``: on the rows of ``grads`` (LibMTL)."""
    initial_loss: Literal["first_step", "first_epoch"] = "first_step"
    """``first_step``: L(0) = first step's losses (paper); ``first_epoch``: EW epoch 1, its mean loss (LibMTL)."""
    parametrisation: Literal["direct", "softmax"] = "direct"
    """``direct``: learned w_i renormalised to sum T (paper); ``softmax``: w = T softmax(logits) (LibMTL)."""

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


# --------------------------------------------------------------------------- the maths (pure functions)


def inverse_training_rates(losses: Tensor, initial_losses: Tensor) -> Tensor:
    """GradNorm Sec. 3.1: ``r_i = L~_i / mean_j L~_j`` with loss ratios ``L~_i = L_i(t) / L_i(0)`` [T]."""
    ratios = losses / initial_losses.clamp_min(torch.finfo(losses.dtype).tiny)
    return ratios / ratios.mean()


def target_norms(weighted_norms: Tensor, rates: Tensor, alpha: float) -> Tensor:
    """GradNorm Eq. 1: the desired norms ``Gbar_W r_i^alpha``, a constant (detached) [T]."""
    return (weighted_norms.mean() * rates.pow(alpha)).detach()


def gradnorm_loss(weights: Tensor, norms: Tensor, targets: Tensor) -> Tensor:
    """GradNorm Eq. 2: ``sum_i |w_i ||grad_W L_i|| - target_i|``, differentiable in ``weights`` only."""
    return (weights * norms.detach() - targets.detach()).abs().sum()


def renormalise(weights: Tensor, total: float, floor: float = WEIGHT_FLOOR) -> Tensor:
    """GradNorm Algorithm 1, last line: positive weights rescaled to sum ``total`` (= T)."""
    positive = weights.clamp_min(floor)
    return positive * (total / positive.sum())


def softmax_weights(logits: Tensor) -> Tensor:
    """LibMTL's parametrisation: ``w = T softmax(logits)`` (sums to T by construction)."""
    return logits.shape[0] * torch.softmax(logits, dim=0)


# --------------------------------------------------------------------------- the method


class GradNorm(GradientAggregator):
    """Direction ``w^T grads`` with weights trained to balance the task gradient norms (GradNorm, Sec. 3)."""

    name = "gradnorm"
    Options = GradNormOptions
    needs = frozenset({Need.JACOBIAN, Need.LAST_SHARED})
    lr_option = "lr"

    initial_losses: Tensor
    loss_sum: Tensor

    def __init__(self, n_tasks: int, options: GradNormOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        start = 1.0 if options.parametrisation == "direct" else 0.0  # w_i(0) = 1 either way
        self.weight = nn.Parameter(torch.full((n_tasks,), start))
        self.register_buffer("initial_losses", torch.ones(n_tasks))
        self.register_buffer("loss_sum", torch.zeros(n_tasks))  # epoch-1 sum for ``initial_loss: first_epoch``
        self._loss_steps = 0
        self._have_initial = False
        self._last_norms: Tensor | None = None

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {"loss_steps": self._loss_steps, "have_initial": self._have_initial}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._loss_steps = int(state["loss_steps"])
        self._have_initial = bool(state["have_initial"])

    def diagnostics(self) -> dict[str, Tensor]:
        """``grad_norm``: the weighted norms G_W^(i) of the last step (GradNorm Sec. 3.1)."""
        return {} if self._last_norms is None else {"grad_norm": self._last_norms}

    def _match(self, like: Tensor) -> None:
        for name in ("initial_losses", "loss_sum"):
            buffer = getattr(self, name)
            if buffer.dtype != like.dtype or buffer.device != like.device:
                setattr(self, name, buffer.to(device=like.device, dtype=like.dtype))

    # ------------------------------------------------------------------ weights
    def current_weights(self) -> Tensor:
        """``w(t)`` [T], attached to the own parameter (renormalising the last update first if ``direct``)."""
        if self.options.parametrisation == "softmax":
            return softmax_weights(self.weight)
        with torch.no_grad():
            self.weight.copy_(renormalise(self.weight, float(self.n_tasks)))
        return self.weight

    def task_norms(self, grads: Tensor, ctx) -> Tensor:
        """``||grad_W (lambda_i L_i)||`` [T] on the last shared layer (``layer: last``) or the rows of ``grads``."""
        if self.options.layer == "all":
            return torch.linalg.vector_norm(grads, dim=1)
        rows = ctx.last_shared_jacobian()
        if rows.shape[1] == 0:
            raise RuntimeError(f"{self.name}: the model has no last shared layer; use layer: all")
        norms = torch.linalg.vector_norm(rows, dim=1)
        if ctx.loss_weights is not None:
            norms = norms * ctx.loss_weights.abs()
        return norms.to(grads.dtype)

    # ------------------------------------------------------------------ the step
    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        losses = ctx.losses.detach()
        self._match(losses)
        weights = self.current_weights().to(grads.dtype)
        norms = self.task_norms(grads, ctx).detach()
        fixed = weights.detach().clone()  # not a view of the parameter the optimizer will change
        self._last_norms = fixed * norms
        if not self._have_initial:
            if self.options.initial_loss == "first_step":
                self.initial_losses.copy_(losses)
                self._have_initial = True
            elif ctx.epoch <= 1:  # LibMTL: epoch 1 is an EW warm-up that measures L(0)
                self.loss_sum.add_(losses)
                self._loss_steps += 1
                ones = torch.ones_like(fixed)
                self._last_norms = norms
                return Aggregation(direction=weighted_sum(grads, ones), weights=ones)
            else:  # (a run that never saw epoch 1 falls back to this step's losses)
                self.initial_losses.copy_(self.loss_sum / self._loss_steps if self._loss_steps else losses)
                self._have_initial = True
        rates = inverse_training_rates(losses, self.initial_losses)
        targets = target_norms(fixed * norms, rates, self.options.alpha)
        method_loss = gradnorm_loss(weights, norms, targets)
        return Aggregation(direction=weighted_sum(grads, fixed), weights=fixed, method_loss=method_loss)
