"""ExcessMTL: task weights driven by estimated excess risks (He et al., ICML 2024, "Robust Multi-Task Learning
with Excess Risks"; ``shared/papers/excess-mtl.txt``).

Each step (EM Algorithm 1):

1. per-task gradients of the shared parameters ``g_i = grad_theta_sh l_i`` (Alg. 1 line "Compute gradient");
2. diagonal empirical-Fisher Hessian proxy ``H_i = diag(sum_{tau <= t} g_i g_i^T)^{1/2}`` (Eq. 7), kept as a
   [T x D] accumulator of squared gradients that includes the current step;
3. excess-risk estimate ``E_i = g_i^T H_i^{-1} g_i = sum_j g_ij^2 / sqrt(acc_ij + eps)`` (Eq. 6 with the factor
   1/2 dropped, as the text after Eq. 6 and Alg. 1 do; ``eps`` = 1e-7 inside the root as in the public code);
4. scale processing (Sec. 3.2): ``E_i / E0_i`` with ``E0`` the initial excess risk;
5. multiplicative (exponentiated-gradient) update ``alpha_i <- alpha_i exp(eta E_i / E0_i)``, normalised onto
   the simplex (Eq. 9, Alg. 1), computed in log space (``log_softmax(log alpha + eta E / E0)``, the same
   quantity, without overflow);
6. the model minimises ``sum_i alpha_i^{(t+1)} l_i``: the shared parameters get ``alpha^T G`` with the
   *updated* weights (Alg. 1, last line); the heads get their own unweighted gradient (Alg. 1, head update).

Defaults (paper): ``alpha^(1) = 1/m`` and weights on the simplex (``scale: simplex``), heads ``unweighted``,
warm-up of EM Appendix C.1 -- "we do not do weight update in the first 3 epochs to collect the average risks
over those epochs as an estimation of the initial excess risk" -- i.e. ``warmup: epochs`` with
``warmup_epochs: 3``: during the first 3 epochs the weights stay uniform (the accumulator is filled all the
same) and ``E0`` is the mean per-step risk over those epochs; weights move from the first step of epoch 4.

``eta`` (the paper's ``eta_alpha``): not stated in the paper. The public code's config default is 1e-2
(``robust_step_size``); the authors' README runs Office-Home with 1; torchjd defaults to 1.0. We take
**1.0**, the only value the authors use in a documented experiment; ``E/E0`` is of order 1 and decays roughly
like 1/sqrt(t) (the accumulator grows), so with 1e-2 the weights move little in a run of a few thousand steps.

Paper vs public code (yifei-he/ExcessMTL ``LibMTL/weighting/ExcessMTL.py``; ``method-contract.md`` §4), each
an option:

=================  =====================================  =======================================
item               paper (default here)                   public code (option)
=================  =====================================  =======================================
warm-up/baseline   3 epochs, E0 = mean risk (App. C.1)    ``warmup: first_step``: E0 = risk of the
                                                          first step, no update at that step, updates
                                                          from step 2
weight scale       simplex, init 1/m (Alg. 1)             ``scale: tasks`` (sum T, init 1)
heads              unweighted (Alg. 1)                    ``heads: weighted``
eta                not stated                             ``eta: 0.01`` (config default)
=================  =====================================  =======================================

The multiplicative update is invariant to the initial scale after normalisation, so ``scale: tasks`` with
``warmup: first_step`` and ``heads: weighted`` reproduces the code's weights exactly. The code divides by
``E0`` with no guard; here ``E0`` is floored at ``eps`` (identical unless a task's initial gradient vanishes).
torchjd's ``ExcessMTL(n_warmup_steps=0)`` differs from the public code at the first step: it takes the first
risk as baseline *and* already updates with the unscaled risk; we follow the public code.

Representation mode is not supported: the risk needs parameter gradients (EM Eq. 6-7), and a loss weighting
cannot set ``grad_wrt`` (the registry refuses it; in the public code the rep-grad path returns zero gradients
and NaN weights, ``method-contract.md`` §4).

State across steps (registered buffers, so checkpointed): the log-weights [T] (up to a constant), the squared-gradient
accumulator [T x D] (allocated in :meth:`setup` from ``info.shared_dim``), the warm-up risk sum [T] and the
baseline ``E0`` [T]; the warm-up step count and whether ``E0`` is set travel in :meth:`extra_state`.
:meth:`diagnostics` reports the per-step excess-risk estimate ``excess_risk`` (Eq. 6 without 1/2, before
scale processing), the quantity of EM Figure 2. Everything stays on the Jacobian's device; no host sync.

Behaviour worth knowing (measured in ``tests/test_excess_mtl.py`` and its exploration): scale processing makes
each task's risk relative to its *own* initial estimate. A noisy task whose loss first falls to its floor
(labels independent of the input but with a skewed marginal) then keeps only mini-batch noise in its gradient,
its relative risk drops faster than a clean task's and its weight falls, as the paper claims. A task that is
at its floor from the first step (uniform random labels), or still learning a weak signal (80% symmetric
flips), keeps a stationary noise gradient whose relative risk decays *slower* than a clean task that is
being learned; in small synthetic runs such a task then receives more weight, not less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtlrepro.weighting.base import LossOptions, LossWeighting, LossWeights, Need, SetupInfo


@dataclass(frozen=True)
class ExcessMTLOptions(LossOptions):
    """EM Algorithm 1 and Appendix C.1: simplex weights, unweighted heads, 3-epoch warm-up, eta = 1."""

    heads: Literal["weighted", "unweighted"] = "unweighted"
    eta: float = 1.0
    """Step size eta_alpha of the exponentiated update (Eq. 9); paper: not stated, code 1e-2, README 1."""
    warmup: Literal["epochs", "first_step"] = "epochs"
    """``epochs``: App. C.1 (no update for ``warmup_epochs``, E0 = mean risk); ``first_step``: public code."""
    warmup_epochs: int = 3
    eps: float = 1e-7
    """Added inside the square root of Eq. 7 (public code: 1e-7) and the floor of E0."""

    def __post_init__(self) -> None:
        if not self.eta > 0:
            raise ValueError(f"eta must be positive, got {self.eta}")
        if self.warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be at least 1, got {self.warmup_epochs}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")


# --------------------------------------------------------------------------- the maths (pure functions)


def excess_risk(grads: Tensor, grad_sq_sum: Tensor, eps: float) -> Tensor:
    """EM Eq. 6-7 without the 1/2: ``E_i = sum_j g_ij^2 / sqrt(sum_tau g_ij^2 + eps)`` for grads [T x D] -> [T].

    ``grad_sq_sum`` [T x D] must already include the current step's squared gradients (Eq. 7 sums to t).
    """
    return (grads.square() / (grad_sq_sum + eps).sqrt()).sum(dim=1)


def relative_risk(risk: Tensor, baseline: Tensor, eps: float) -> Tensor:
    """Scale processing (EM Sec. 3.2): the risk divided by the initial risk ``E0`` (floored at ``eps``)."""
    return risk / baseline.clamp_min(eps)


def exponentiated_update(log_weights: Tensor, risk: Tensor, eta: float) -> Tensor:
    """EM Eq. 9 in log space: ``log(alpha exp(eta E) / sum_j alpha_j exp(eta E_j))`` for log alpha [T]."""
    return torch.log_softmax(log_weights + eta * risk, dim=0)


# --------------------------------------------------------------------------- the method


class ExcessMTL(LossWeighting):
    """Loss weights by exponentiated updates on estimated excess risks (EM Algorithm 1)."""

    name = "excess_mtl"
    Options = ExcessMTLOptions
    needs = frozenset({Need.JACOBIAN})

    log_weights: Tensor
    grad_sq_sum: Tensor | None
    risk_sum: Tensor
    baseline: Tensor

    def __init__(self, n_tasks: int, options: ExcessMTLOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self.register_buffer("log_weights", torch.zeros(n_tasks))  # log alpha up to a constant: alpha^(1) = 1/m
        self.register_buffer("grad_sq_sum", None)  # [T x D], allocated in setup (or at the first step)
        self.register_buffer("risk_sum", torch.zeros(n_tasks))
        self.register_buffer("baseline", torch.zeros(n_tasks))
        self._warmup_steps = 0
        self._baseline_ready = False
        self._last_risk: Tensor | None = None

    # ------------------------------------------------------------------ lifecycle and state
    def setup(self, info: SetupInfo) -> None:
        self.grad_sq_sum = torch.zeros(self.n_tasks, info.shared_dim, device=info.device)

    def extra_state(self) -> dict[str, Any]:
        return {"warmup_steps": self._warmup_steps, "baseline_ready": self._baseline_ready}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._warmup_steps = int(state["warmup_steps"])
        self._baseline_ready = bool(state["baseline_ready"])

    def diagnostics(self) -> dict[str, Tensor]:
        return {} if self._last_risk is None else {"excess_risk": self._last_risk}

    def _match(self, grads: Tensor) -> None:
        """Allocate the accumulator if :meth:`setup` was not called; follow the Jacobian's dtype and device."""
        if self.grad_sq_sum is None:
            self.grad_sq_sum = torch.zeros_like(grads)
        for name in ("log_weights", "grad_sq_sum", "risk_sum", "baseline"):
            buffer = getattr(self, name)
            if buffer.dtype != grads.dtype or buffer.device != grads.device:
                setattr(self, name, buffer.to(device=grads.device, dtype=grads.dtype))
        if self.grad_sq_sum.shape != grads.shape:
            raise RuntimeError(
                f"{self.name}: accumulator {tuple(self.grad_sq_sum.shape)} != Jacobian {tuple(grads.shape)}"
            )

    def _in_warmup(self, epoch: int) -> bool:
        if self._warmup_steps == 0:  # the baseline needs at least one step (``first_step``: exactly one)
            return True
        return self.options.warmup == "epochs" and not self._baseline_ready and epoch <= self.options.warmup_epochs

    # ------------------------------------------------------------------ the step
    def weigh(self, ctx) -> LossWeights:
        grads = ctx.jacobian("params").detach()
        self._match(grads)
        eps = self.options.eps
        self.grad_sq_sum.add_(grads.square())
        risk = excess_risk(grads, self.grad_sq_sum, eps)
        self._last_risk = risk
        if self._in_warmup(ctx.epoch):
            self.risk_sum.add_(risk)
            self._warmup_steps += 1
        else:
            if not self._baseline_ready:
                self.baseline.copy_(self.risk_sum / self._warmup_steps)
                self._baseline_ready = True
            update = exponentiated_update(self.log_weights, relative_risk(risk, self.baseline, eps), self.options.eta)
            self.log_weights.copy_(update)
        return LossWeights(torch.softmax(self.log_weights, dim=0))
