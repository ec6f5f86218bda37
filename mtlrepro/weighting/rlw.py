"""RLW: Random Loss Weighting (RW paper, Sec. 3 and Algorithm 1, red line).

In each iteration, loss weights lambda are sampled from p(lambda~) and mapped
onto the simplex by f; the model minimises ``lambda^T l(theta)`` (Eq. 1), so
the task-specific heads are updated with the weighted gradient
``grad_psi_t lambda_t l_t`` (Algorithm 1, line 10, first choice). The default
distribution is the standard normal with softmax (Sec. 3); the others are
those of Sec. 5.4 (see :mod:`mtlrepro.weighting._random_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlrepro.weighting._random_weights import Distribution, sample_weights
from mtlrepro.weighting.base import LossOptions, LossWeighting, LossWeights


@dataclass(frozen=True)
class RLWOptions(LossOptions):
    """RW Sec. 3: lambda = softmax(N(0, I)) on the simplex; heads see the weights."""

    distribution: Distribution = "normal"


class RLW(LossWeighting):
    """Random loss weights, freshly sampled every iteration (RW paper, Algorithm 1)."""

    name = "rlw"
    Options = RLWOptions

    def weigh(self, ctx) -> LossWeights:
        losses = ctx.losses
        weights = sample_weights(
            self.options.distribution, self.n_tasks, self.generator, dtype=losses.dtype, device=losses.device
        )
        return LossWeights(weights)
