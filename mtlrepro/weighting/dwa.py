"""DWA: Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019, "End-to-End Multi-Task Learning with
Attention", Eq. 7).

    lambda_t(e) = T exp(r_t(e-1) / temp) / sum_i exp(r_i(e-1) / temp),    r_t(e-1) = L_t(e-1) / L_t(e-2),

where ``L_t(e)`` is task t's training loss averaged over epoch e, ``temp`` the softmax temperature (paper: 2)
and ``T`` the number of tasks, so the weights sum to T (``scale: tasks``, as the paper and LibMTL). For the
first two epochs the paper sets ``r_t = 1``, i.e. all weights are 1 (MTAN ``im2im_pred/utils.py``, LibMTL
``DWA.py``: epochs 0 and 1 of their 0-based count). The weights act on the shared parameters and the heads
(``heads: weighted``). The epoch means come from :meth:`DWA.on_epoch_end`, which the training loop calls with the
mean of the per-batch task losses of the epoch (as MTAN; LibMTL weights each batch by its size, which differs
only when the last batch is smaller). The weights of an epoch are fixed when the previous epoch ends, so a step
costs nothing beyond the one backward pass.

Known variants, as options:

* ``history: iterations`` is Nash-MTL's DWA (``methods/weight_methods.py``, ``DynamicWeightAverage``): the
  epoch means are replaced by means over the last ``window`` (25) *iterations* against the ``window`` before
  them, from a FIFO of the last ``2 window`` loss vectors initialised to ones, which includes the current step's
  losses; the weights are 1 for the first ``window + 1`` steps. Nash-MTL also averages
  (``mean``) instead of summing the weighted losses, i.e. its weights sum to 1: ``scale: simplex``.
* ``temp``: the temperature (2 in the paper, MTAN, LibMTL and Nash-MTL).

State across steps (registered buffers, so ``state_dict()`` resumes exactly): the last two epoch means and the
current weights (``epochs``), or the FIFO of recent losses and the current weights (``iterations``); the number
of epochs / iterations seen is a plain integer in :meth:`~mtlrepro.weighting.base.Method.extra_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtlrepro.weighting.base import LossOptions, LossWeighting, LossWeights, WeightScale

History = Literal["epochs", "iterations"]


@dataclass(frozen=True)
class DWAOptions(LossOptions):
    """Liu et al. 2019, Eq. 7: temperature 2, epoch means, weights summing to T; heads see the weights."""

    scale: WeightScale = "tasks"
    temp: float = 2.0
    history: History = "epochs"
    window: int = 25

    def __post_init__(self) -> None:
        if self.temp <= 0:
            raise ValueError(f"temp must be positive, got {self.temp}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")


def dwa_weights(newer: Tensor, older: Tensor, temp: float) -> Tensor:
    """Eq. 7: ``T softmax((newer / older) / temp)`` from the mean losses of the two previous periods [T]."""
    rates = newer / older
    return newer.shape[0] * torch.softmax(rates / temp, dim=0)


class DWA(LossWeighting):
    """Loss weights from the relative descending rate of each task's loss (Liu et al. 2019, Eq. 7)."""

    name = "dwa"
    Options = DWAOptions

    def __init__(self, n_tasks: int, options: DWAOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        # double precision: the ratios of two nearby means are what matters
        self.register_buffer("weights", torch.ones(n_tasks, dtype=torch.float64))
        if options.history == "epochs":
            # row 0: mean losses of epoch e-2, row 1: of epoch e-1
            self.register_buffer("means", torch.ones(2, n_tasks, dtype=torch.float64))
        else:
            # Nash-MTL's FIFO of the last 2 * window loss vectors, oldest first, initialised to ones
            self.register_buffer("costs", torch.ones(2 * options.window, n_tasks, dtype=torch.float64))
        self.seen = 0
        """Epochs (``epochs``) or iterations (``iterations``) recorded so far."""

    def weigh(self, ctx) -> LossWeights:
        losses = ctx.losses
        if self.options.history == "iterations":
            self._record_iteration(losses.detach())
        return LossWeights(self.weights.to(losses.dtype))

    def _record_iteration(self, losses: Tensor) -> None:
        window = self.options.window
        self.costs.copy_(torch.cat([self.costs[1:], losses.to(self.costs.dtype)[None]]))
        if self.seen > window:
            newer = self.costs[window:].mean(dim=0)
            older = self.costs[:window].mean(dim=0)
            self.weights.copy_(dwa_weights(newer, older, self.options.temp))
        self.seen += 1

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        if self.options.history != "epochs":
            return
        self.means.copy_(torch.stack([self.means[1], mean_losses.to(self.means)]))
        self.seen += 1
        if self.seen >= 2:
            self.weights.copy_(dwa_weights(self.means[1], self.means[0], self.options.temp))

    def extra_state(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
