"""GroupDRO: group distributionally robust optimisation with tasks as groups (Sagawa, Koh, Hashimoto and Liang,
ICLR 2020, "Distributionally Robust Neural Networks for Group Shifts", Sec. 3 and Algorithm 1), the baseline of
the ExcessMTL paper (He et al., Sec. 3.3 and Sec. 4).

The weights q are an online exponentiated-gradient ascent on the worst-group objective (Algorithm 1): at every
step, *before* the model update and with the current losses,

    q_t <- q_t exp(eta * L_t),    q <- q / sum_i q_i,

and the model minimises ``sum_t q_t L_t`` with the new q. ``eta`` is ``robust_step_size`` (1e-2: the
ExcessMTL code's default, ``LibMTL/config.py``, which is also the default of Sagawa et al.'s code). We keep q in
log space, ``log q <- log_softmax(log q + eta L)``, which is the same recursion without underflow.

Paper vs public code, as options:

* ``scale``: Sagawa's q lives on the simplex (init 1/m, sum 1); ExcessMTL's code (``LibMTL/weighting/
  GroupDRO.py``) initialises q to 1 and renormalises it to sum to T every step. The multiplicative update is
  invariant to the scale of q, so the two differ only by the factor T on the weights: default ``tasks`` (the
  code the ExcessMTL paper ran), ``simplex`` for the paper's form.
* ``heads``: ExcessMTL's code back-propagates ``sum_t q_t L_t`` through every parameter, heads included
  (``weighted``, the default); Sagawa's model has no task heads.

Not offered: Algorithm 1 samples one group per step and updates only its q_g (the form analysed in the paper);
Sagawa's and ExcessMTL's code update every group present in the batch, as here (every task has a loss at every
step). Sagawa's group-size adjustment ``C / sqrt(n_g)`` (``--generalization_adjustment``, default 0 in their
code) has no meaning for tasks; their code's other switches (``--use_normalized_loss``, ``--btl``, off by
default) are not in the paper's algorithm and are not offered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtlrepro.weighting.base import LossOptions, LossWeighting, LossWeights, WeightScale


@dataclass(frozen=True)
class GroupDROOptions(LossOptions):
    """ExcessMTL code defaults: step size 1e-2, weights summing to T, heads weighted."""

    scale: WeightScale = "tasks"
    robust_step_size: float = 1e-2

    def __post_init__(self) -> None:
        if self.robust_step_size < 0:
            raise ValueError(f"robust_step_size must be non-negative, got {self.robust_step_size}")


def exponentiated_gradient_step(log_q: Tensor, losses: Tensor, step_size: float) -> Tensor:
    """Sagawa et al. 2020, Algorithm 1: ``log(normalise(q * exp(eta * losses)))`` for log weights ``log_q`` [T]."""
    return torch.log_softmax(log_q + step_size * losses, dim=0)


class GroupDRO(LossWeighting):
    """Worst-case task weighting by exponentiated-gradient ascent on the task losses (Sagawa et al. 2020)."""

    name = "groupdro"
    Options = GroupDROOptions

    def __init__(self, n_tasks: int, options: GroupDROOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        # log q on the simplex, uniform at the start (q = 1/T; the ExcessMTL code's q = 1 up to the scale), kept in
        # double precision because it accumulates eta * L over the whole run
        self.register_buffer("log_q", torch.full((n_tasks,), -math.log(n_tasks), dtype=torch.float64))

    def weigh(self, ctx) -> LossWeights:
        losses = ctx.losses
        self.log_q.copy_(
            exponentiated_gradient_step(self.log_q, losses.detach().to(self.log_q.dtype), self.options.robust_step_size)
        )
        return LossWeights(torch.exp(self.log_q).to(losses.dtype))
