"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020, "Just Pick a Sign", Eq. 1-4 and Algorithm 1).

GradDrop acts on the gradients of the task losses with respect to a shared
activation A -- here the shared representation z [B x d...] (``grad_wrt:
representation``, the only mode: ``representation_only``). For task i:

* Eq. 1-2: the input-signed gradient ``grad_i = sum_batch sign(A) * dL_i/dA``,
  summed over the batch dimension (the paper's batch-separated form), one value
  per element of an example's activation;
* Eq. 3: the Gradient Positive Sign Purity
  ``P = 1/2 (1 + sum_i grad_i / sum_i |grad_i|)`` in [0, 1] (where every
  ``grad_i`` is 0 the ratio is taken as 0, P = 1/2; LibMTL adds 1e-7 to the
  denominator instead);
* Eq. 4 and Algorithm 1: with ``U ~ Uniform(0, 1)`` drawn per element (from the
  method's own generator), the masks
  ``M_i = I[P > U] I[grad_i > 0] + I[P < U] I[grad_i < 0]`` keep, per element,
  only the tasks whose signed gradient has the sign that was picked (positive
  with probability P); the new activation gradient is
  ``sum_i (l_i + (1 - l_i) M_i) * dL_i/dA``, the masks broadcast over the batch,
  with the leak ``l_i`` (option ``leak``, the same for every task; default
  0.0 as LibMTL: no leak). The monotone transform f(P) of the paper is the
  identity (its default).

The direction is back-propagated once through the encoder. GradDrop produces no
task weights: heads get their own unweighted gradients (``heads:
unweighted``), ``scale`` does not apply and ``rep_reduce: batch_sum`` is refused
(the registry refuses it for methods without weights), since the masks need the
per-example gradients.

Public code: LibMTL (``GradDrop.py``) implements exactly this on the
representation (the sum over the batch of ``per-example grad * sign(z)``);
torchjd's ``GradDrop`` works on any Jacobian, without the sign(A) step and
without a batch dimension (tested equal here for B = 1 and z > 0); CAGrad's
repository applies it to parameter gradients (not offered: the paper's
quantity is the activation gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtlrepro.weighting.base import Aggregation, GradientAggregator, GradientOptions, Need


@dataclass(frozen=True)
class GradDropOptions(GradientOptions):
    """Chen et al. 2020: activation (representation) gradients, no leak (LibMTL default), heads unweighted."""

    grad_wrt: Literal["params", "representation"] = "representation"
    leak: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.leak <= 1.0:
            raise ValueError(f"leak must be in [0, 1], got {self.leak}")


def sign_purity(signed: Tensor) -> Tensor:
    """Eq. 3: ``P = 1/2 (1 + sum_i grad_i / sum_i |grad_i|)`` per element of ``signed`` [T x F]; 1/2 where all are 0."""
    total = signed.abs().sum(dim=0)
    ratio = signed.sum(dim=0) / total.clamp_min(torch.finfo(signed.dtype).tiny)
    return 0.5 * (1.0 + ratio)


def graddrop_masks(signed: Tensor, purity: Tensor, uniform: Tensor) -> Tensor:
    """Eq. 4: ``M_i = I[P > U] I[grad_i > 0] + I[P < U] I[grad_i < 0]`` as a {0, 1} tensor [T x F]."""
    keep_positive = (purity > uniform)[None, :] & (signed > 0)
    keep_negative = (purity < uniform)[None, :] & (signed < 0)
    return (keep_positive | keep_negative).to(signed.dtype)


def graddrop_direction(
    rep_grads: Tensor, representation: Tensor, generator: torch.Generator, leak: float = 0.0
) -> tuple[Tensor, Tensor]:
    """The GradDrop activation gradient [B x F] and the masks [T x F].

    ``rep_grads`` [T x B x F] are the per-task gradients w.r.t. the
    representation ``representation`` [B x F]; U [F] is drawn from ``generator``.
    """
    signed = (rep_grads * torch.sign(representation)[None]).sum(dim=1)  # Eq. 1-2, [T x F]
    purity = sign_purity(signed)
    uniform = torch.rand(purity.shape, generator=generator, dtype=purity.dtype, device=purity.device)
    masks = graddrop_masks(signed, purity, uniform)
    factors = leak + (1.0 - leak) * masks
    return (factors[:, None, :] * rep_grads).sum(dim=0), masks


class GradDrop(GradientAggregator):
    """Sign dropout of the per-task representation gradients, by the sign purity of each element."""

    name = "graddrop"
    Options = GradDropOptions
    needs = frozenset({Need.JACOBIAN, Need.REPRESENTATION})
    representation_only = True

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        if self.options.grad_wrt != "representation" or self.options.rep_reduce != "full":
            raise ValueError("graddrop needs the full per-example representation gradients (grad_wrt: representation)")
        representation = ctx.representation
        batch = representation.shape[0]
        flat = representation.reshape(batch, -1).to(grads.dtype)
        direction, _ = graddrop_direction(
            grads.reshape(self.n_tasks, batch, -1), flat, self.generator, self.options.leak
        )
        return Aggregation(direction=direction.reshape(-1))
