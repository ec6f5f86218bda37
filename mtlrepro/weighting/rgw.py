"""RGW: Random Gradient Weighting (RW paper, Sec. 3 and Algorithm 1, blue line).

The shared parameters theta are updated with ``sum_t lambda_t g_t`` where
``g_t = grad_theta l_t`` are the rows of the per-task gradient matrix and
lambda is sampled as in RLW (Algorithm 1, line 8). The task-specific heads are
*not* weighted: each head psi_t gets its own ``grad_psi_t l_t`` (line 10,
second choice); the training loop guarantees that for every gradient aggregator.
"""

from __future__ import annotations

from torch import Tensor

from mtlrepro.weighting.base import Aggregation, GradientAggregator
from mtlrepro.weighting.random_weights import RandomWeightOptions, sample_weights


def weighted_sum(grads: Tensor, weights: Tensor) -> Tensor:
    """``weights^T G``: the weighted sum of the rows of ``grads`` [T x D]."""
    return weights @ grads


class RGW(GradientAggregator):
    """Random gradient weights, freshly sampled every iteration (RW paper, Algorithm 1)."""

    name = "rgw"
    Options = RandomWeightOptions

    def aggregate(self, grads: Tensor) -> Aggregation:
        weights = sample_weights(
            self.options.distribution, self.n_tasks, self.generator, dtype=grads.dtype, device=grads.device
        )
        return Aggregation(direction=weighted_sum(grads, weights), weights=weights)
