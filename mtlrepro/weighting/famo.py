"""FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone and Liu, NeurIPS 2023), Algorithm 1 and its
practical form, Algorithm 2 (Appendix C).

The model step descends the log losses with task logits xi, ``z = softmax(xi)`` (Algorithm 1, model update):

    d = c sum_t (z_t / L_t) grad L_t,    c = (sum_t z_t / L_t)^{-1},

i.e. loss weights ``lambda_t = (z_t / L_t) / sum_i (z_i / L_i)`` on the raw losses, which sum to 1 (``scale:
simplex``) and act on the shared parameters and the heads (``heads: weighted``, the official code
back-propagates ``c sum_t z_t log L_t`` through the whole model). ``L_t`` is ``L_t - b + eps`` with the lower
bound ``b`` (``min_loss``, 0) and ``eps = 1e-8``, as the official code.

After the model step the logits follow the decrease of the log losses across that step (Algorithm 1, logit
update), ``delta_t = log L_t(theta_k) - log L_t(theta_{k+1})``, with the gradient ``J_softmax(xi)^T delta``
(closed form ``z * (delta - z . delta)``) and the regulariser ``gamma xi``:

* ``xi_optimizer: adam`` (default): one Adam step (betas 0.9/0.999, eps 1e-8, L2 weight decay ``gamma`` added
  to the gradient, PyTorch's ``Adam(weight_decay=gamma)``) with learning rate ``lr`` -- Algorithm 2, the
  official code (``methods/weight_methods.py``, ``famo.py``), LibMTL's ``FAMO.py`` and torchjd's FAMO;
* ``xi_optimizer: sgd``: ``xi <- xi - lr (J^T delta + gamma xi)``, Algorithm 1 as printed.

The logits are *not* trained by the run's optimizer: they are buffers stepped here with their own optimizer
state (like the official code's private Adam), so ``lr_option`` is None and the run's optimizer kind (SGD or
Adam) does not change FAMO.

When the losses after the step are taken (the contract has no hook after the optimizer step, so the logit
update of step k is made at the start of step k + 1, before its weights are computed -- the same order as
the official code, which updates right after the optimizer step):

* ``delta: same_batch`` (default): as the paper's algorithm, the official code, LibMTL and torchjd, both losses
  of delta are on step k's batch: ``L(theta_{k+1})`` is recomputed on that batch after the model update (one
  extra forward pass per step, under ``no_grad``). Here step k's batch is kept and its losses are recomputed at
  step k + 1 with :meth:`~mtlrepro.step.StepContext.forward_losses` (``Need.FORWARD``); the parameters are the
  same as right after step k's update, so delta is the official one. The extra forward runs in training mode,
  as in the official code (batch-norm running statistics are updated by it, one forward later than there).
* ``delta: next_batch``: our cheaper approximation of it: ``L(theta_{k+1})`` is the loss vector of step k + 1,
  on *its* batch, at no extra cost (no extra forward, no ``Need.FORWARD``); the batch-to-batch noise of the
  losses then enters delta.

Defaults: ``delta: same_batch`` (paper's algorithm, official code, LibMTL, torchjd); ``lr`` 0.025 (paper,
official code, LibMTL); ``gamma`` 1e-3 (Algorithm 2, LibMTL, torchjd, and the official ``run.sh`` for NYUv2,
CelebA and QM9; the official ``weight_methods.py`` defaults to 1e-5, its ``experiments/utils.py`` and
``famo.py`` to 1e-2, CityScapes' ``run.sh`` uses 1e-2). Not covered: the official ``WeightMethod.backward``
calls ``clip_grad_norm_(shared, max_norm=1)`` *before* ``loss.backward()``, i.e. on already-zeroed gradients, so
it has no effect there; clipping is not a weighting's job here.

State across steps (buffers, saved by ``state_dict()``): logits xi, Adam moments, the previous step's losses;
in :meth:`~mtlrepro.weighting.base.Method.extra_state`: the Adam step count, whether a previous step exists and,
for ``same_batch``, the previous batch. Equation references are to the algorithms' lines; the paper's text is
not in ``shared/papers`` and was not checked line by line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtlrepro.weighting.base import Batch, LossOptions, LossWeighting, LossWeights, Need, WeightScale

EPS = 1e-8
"""Added to ``L - b`` before dividing or taking its log (official code)."""
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

XiOptimizer = Literal["adam", "sgd"]
Delta = Literal["same_batch", "next_batch"]


@dataclass(frozen=True)
class FAMOOptions(LossOptions):
    """FAMO Algorithm 2: logits lr 0.025, decay 1e-3, Adam; delta on the step's own batch after the update."""

    scale: WeightScale = "simplex"
    lr: float = 0.025
    gamma: float = 1e-3
    xi_optimizer: XiOptimizer = "adam"
    delta: Delta = "same_batch"
    min_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.lr < 0:
            raise ValueError(f"lr must be non-negative, got {self.lr}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {self.gamma}")


def famo_weights(z: Tensor, losses: Tensor, min_loss: float) -> Tensor:
    """Loss weights of FAMO's direction: ``(z_t / L_t) / sum_i (z_i / L_i)`` with ``L = losses - b + eps`` [T]."""
    inverse = z / (losses - min_loss + EPS)
    return inverse / inverse.sum()


def log_loss_decrease(before: Tensor, after: Tensor, min_loss: float) -> Tensor:
    """``delta = log(before - b + eps) - log(after - b + eps)`` [T]: how much each log loss went down."""
    return torch.log(before - min_loss + EPS) - torch.log(after - min_loss + EPS)


def softmax_vjp(logits: Tensor, vector: Tensor) -> Tensor:
    """``J^T v`` for ``J`` the Jacobian of ``softmax(logits)`` (symmetric ``diag(z) - z z^T``): ``z * (v - z.v)``."""
    z = torch.softmax(logits, dim=0)
    return z * (vector - (z * vector).sum())


def adam_step(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int, lr: float, weight_decay: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam step (Kingma and Ba 2015, Algorithm 1) with L2 decay added to the gradient; ``step`` is 1-based.

    Returns the new parameter and moment estimates.
    """
    beta1, beta2 = ADAM_BETAS
    grad = grad + weight_decay * param
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    corrected_avg = exp_avg / (1 - beta1**step)
    corrected_sq = exp_avg_sq / (1 - beta2**step)
    return param - lr * corrected_avg / (corrected_sq.sqrt() + ADAM_EPS), exp_avg, exp_avg_sq


def sgd_step(param: Tensor, grad: Tensor, lr: float, weight_decay: float) -> Tensor:
    """FAMO Algorithm 1's logit update ``xi - lr (grad + gamma xi)``."""
    return param - lr * (grad + weight_decay * param)


class FAMO(LossWeighting):
    """Loss weights balancing the decrease rates of the log losses, with logits learned from that rate."""

    name = "famo"
    Options = FAMOOptions

    def __init__(self, n_tasks: int, options: FAMOOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self.needs = frozenset({Need.FORWARD}) if options.delta == "same_batch" else frozenset()
        double = {"dtype": torch.float64}
        self.register_buffer("xi", torch.zeros(n_tasks, **double))  # xi_1 = 0: uniform z
        self.register_buffer("exp_avg", torch.zeros(n_tasks, **double))
        self.register_buffer("exp_avg_sq", torch.zeros(n_tasks, **double))
        self.register_buffer("prev_losses", torch.ones(n_tasks, **double))
        self.steps = 0
        """Logit updates made so far (Adam's step count)."""
        self.has_prev = False
        self.prev_batch: Batch | None = None

    def weigh(self, ctx) -> LossWeights:
        losses = ctx.losses.detach()
        current = losses.to(self.xi.dtype)
        if self.has_prev:
            self._update_logits(self._losses_after_last_step(ctx, current))
        weights = famo_weights(torch.softmax(self.xi, dim=0), current, self.options.min_loss)
        self.prev_losses.copy_(current)
        self.has_prev = True
        if self.options.delta == "same_batch":
            self.prev_batch = ctx.batch
        return LossWeights(weights.to(losses.dtype))

    def _losses_after_last_step(self, ctx, current: Tensor) -> Tensor:
        if self.options.delta == "next_batch":
            return current
        with torch.no_grad():
            return ctx.forward_losses(self.prev_batch).to(self.xi.dtype)

    def _update_logits(self, after: Tensor) -> None:
        options = self.options
        grad = softmax_vjp(self.xi, log_loss_decrease(self.prev_losses, after, options.min_loss))
        self.steps += 1
        if options.xi_optimizer == "adam":
            xi, exp_avg, exp_avg_sq = adam_step(
                self.xi, grad, self.exp_avg, self.exp_avg_sq, self.steps, options.lr, options.gamma
            )
            self.exp_avg.copy_(exp_avg)
            self.exp_avg_sq.copy_(exp_avg_sq)
        else:
            xi = sgd_step(self.xi, grad, options.lr, options.gamma)
        self.xi.copy_(xi)

    def diagnostics(self) -> dict[str, Tensor]:
        """FAMO's task weights ``z = softmax(xi)`` [T] of the last step (the paper's plotted weights)."""
        return {"z": torch.softmax(self.xi, dim=0)}

    def extra_state(self) -> dict[str, Any]:
        batch = None if self.prev_batch is None else self.prev_batch.state()
        return {"steps": self.steps, "has_prev": self.has_prev, "prev_batch": batch}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.has_prev = bool(state["has_prev"])
        batch = state["prev_batch"]
        device = self.xi.device
        self.prev_batch = None if batch is None else Batch.from_state(batch, device)
