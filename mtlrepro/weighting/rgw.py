"""RGW: Random Gradient Weighting (RW paper, Sec. 3, Eq. 2 and Algorithm 1, blue line).

The shared parameters theta are updated with ``sum_t lambda_t g_t`` where
``g_t = grad_theta l_t`` are the rows of the per-task gradient matrix and
lambda is sampled as in RLW (Algorithm 1, line 8). The task-specific heads are
*not* weighted: each head psi_t gets its own ``grad_psi_t l_t`` (line 10,
second choice). ``grad_wrt: representation`` applies the weights to the
gradients w.r.t. the shared representation instead (RW Sec. 3; LibMTL's RGW).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mtlrepro.weighting._random_weights import Distribution, sample_weights
from mtlrepro.weighting.base import Aggregation, GradientAggregator, WeightedGradientOptions, weighted_sum


@dataclass(frozen=True)
class RGWOptions(WeightedGradientOptions):
    """RW Sec. 3: lambda = softmax(N(0, I)); heads unweighted."""

    distribution: Distribution = "normal"


class RGW(GradientAggregator):
    """Random gradient weights, freshly sampled every iteration (RW paper, Algorithm 1)."""

    name = "rgw"
    Options = RGWOptions

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        weights = sample_weights(
            self.options.distribution, self.n_tasks, self.generator, dtype=grads.dtype, device=grads.device
        )
        return Aggregation(direction=weighted_sum(grads, weights), weights=weights)
