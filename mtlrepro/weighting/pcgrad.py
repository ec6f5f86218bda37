"""PCGrad: project conflicting gradients (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

Algorithm 1 of the paper: for every task i, ``g_i^PC <- g_i``; then for every
other task j, in a random order, if ``g_i^PC . g_j < 0`` project ``g_i^PC`` onto
the normal plane of ``g_j``::

    g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2  g_j

always against the *original* g_j. The update is ``sum_i g_i^PC`` (the sum, as
LibMTL and torchjd; no 1/T). Each head gets its own unweighted gradient.

Computation: every projection adds a multiple of an original g_j, so
``g_i^PC = sum_k C_ik g_k`` and ``g_i^PC . g_j = (C M)_ij`` with ``M = G G^T``.
The projections therefore run on the T x T Gramian (exact algebra, not an
approximation), all tasks i at once (their projections are independent), and
the direction is ``(1^T C) G``. The random orders are one ``randperm(T)`` per
task i drawn from the method's generator on the device (task i itself is
skipped when it comes up); no host round trip.

Options and differences from public code:

* ``grad_wrt: params`` by default, as the paper (all shared parameters) and
  LibMTL, which refuses representation gradients. ``representation`` is
  allowed here (the projections are well defined on any gradient matrix); it
  is not the paper's method. ``rep_reduce: batch_sum`` is refused: PCGrad
  produces no task weights to apply to per-example gradients.
* Some public copies (PyTorch ports with ``reduction='mean'``, and a PCGrad
  copy shipped with CAGrad's experiments) average the projected gradients
  instead of summing them: a 1/T learning-rate factor, not an option here.
* PCGrad returns no task weights (the coefficients ``1^T C`` are an
  artefact of the projections), so ``heads: weighted`` is refused.

Diagnostic ``conflicts`` [T]: per task, how many projections it received in
the step (0 .. T-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtlrepro.weighting.base import Aggregation, GradientAggregator, GradientOptions


@dataclass(frozen=True)
class PCGradOptions(GradientOptions):
    """Yu et al. (2020), Algorithm 1: shared-parameter gradients, heads unweighted; PCGrad has no hyperparameter."""

    def __post_init__(self) -> None:
        if self.heads != "unweighted":
            raise ValueError("heads: 'weighted' is not possible: PCGrad returns no task weights")


def task_orders(n_tasks: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """One random permutation of the T tasks per task i, [T x T] (row i: the order in which i visits the others)."""
    return torch.stack([torch.randperm(n_tasks, generator=generator, device=device) for _ in range(n_tasks)])


def pcgrad_coefficients(gram: Tensor, orders: Tensor) -> tuple[Tensor, Tensor]:
    """Coefficients C [T x T] with ``g_i^PC = sum_k C_ik g_k``, and the number of projections per task [T].

    ``gram`` is ``G G^T``; ``orders[i]`` is a permutation of the tasks (task i
    itself is skipped). Yu et al. (2020), Algorithm 1, on the Gramian.
    """
    n = gram.shape[0]
    tiny = torch.finfo(gram.dtype).tiny
    index = torch.arange(n, device=gram.device)
    coef = torch.eye(n, dtype=gram.dtype, device=gram.device)
    conflicts = torch.zeros(n, dtype=gram.dtype, device=gram.device)
    squared_norms = gram.diagonal()
    for step in range(n):
        j = orders[:, step]  # for each task i, the partner it meets at this step
        inner = (coef @ gram).gather(1, j[:, None]).squeeze(1)  # g_i^PC . g_j
        project = (j != index) & (inner < 0)
        factor = torch.where(project, -inner / squared_norms[j].clamp_min(tiny), torch.zeros_like(inner))
        coef = coef + factor[:, None] * (index[None, :] == j[:, None]).to(gram.dtype)
        conflicts = conflicts + project.to(gram.dtype)
    return coef, conflicts


def pcgrad_direction(grads: Tensor, orders: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_i g_i^PC`` [D] for gradients [T x D] and task orders [T x T]; also the projections per task."""
    coef, conflicts = pcgrad_coefficients(grads @ grads.T, orders)
    return coef.sum(dim=0) @ grads, conflicts


class PCGrad(GradientAggregator):
    """Sum of the gradients after projecting away each pairwise conflict (Yu et al. 2020, Algorithm 1)."""

    name = "pcgrad"
    Options = PCGradOptions

    def __init__(self, n_tasks: int, options: PCGradOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self._conflicts: Tensor | None = None

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        orders = task_orders(self.n_tasks, self.generator, grads.device)
        direction, self._conflicts = pcgrad_direction(grads, orders)
        return Aggregation(direction=direction)

    def diagnostics(self) -> dict[str, Tensor]:
        return {} if self._conflicts is None else {"conflicts": self._conflicts}
