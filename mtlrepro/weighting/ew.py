"""EW: equal weighting, the conventional baseline (RW paper, Sec. 2, Eq. 1 with lambda_t = 1/T).

``scale: simplex`` (default) gives lambda_t = 1/T as in the paper; ``scale:
tasks`` gives lambda_t = 1, the plain loss sum of LibMTL's EW.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlrepro.weighting.base import LossWeighting, LossWeights


def equal_weights(n_tasks: int, like: Tensor) -> Tensor:
    """The constant weight vector (1/T, ..., 1/T) with ``like``'s dtype and device."""
    return torch.full((n_tasks,), 1.0 / n_tasks, dtype=like.dtype, device=like.device)


class EW(LossWeighting):
    """Equal loss weights lambda_t = 1/T in every iteration (RW paper, Sec. 2)."""

    name = "ew"

    def weigh(self, ctx) -> LossWeights:
        return LossWeights(equal_weights(self.n_tasks, ctx.losses))
