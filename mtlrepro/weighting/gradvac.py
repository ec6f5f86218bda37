"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021).

A generalisation of PCGrad (Yu et al. 2020) that aligns task gradients to an
adaptive *target* cosine similarity instead of to orthogonality (Sec. 3,
Algorithm 1). For every task i, every other task j in a random order, and
every parameter group k::

    phi     = cos(g_i', g_j)                       (g_i' the current, already corrected g_i)
    if phi < phi_hat_ij:                           (below the target)
        g_i' <- g_i' + a g_j,
        a = ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (||g_j|| sqrt(1 - phi_hat^2))
    phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi  (EMA of the observed similarity)

After the correction ``cos(g_i', g_j) = phi_hat_ij`` exactly (law of sines in
the plane of g_i' and g_j); with ``phi_hat = 0`` it is PCGrad's projection.
Always against the original g_j; the update is ``sum_i g_i'`` (the sum, as
LibMTL and torchjd). Targets start at 0. Each head gets its own unweighted
gradient. A 1e-8 is added to the two denominators (LibMTL, torchjd).

Computation: as in :mod:`mtlrepro.weighting.pcgrad`, ``g_i' = sum_l C_il g_l``
so every norm and inner product comes from the per-group Gramian; all tasks i
and groups k are processed at once (their corrections are independent), the
partners of a task one after the other. Orders: for each task i one
``randperm(T - 1)`` over the other tasks (in increasing index), from the
method's generator on the device, shared by all groups.

Options, defaults and differences from public code:

* ``beta`` = 1e-2, the paper's value as cited in this project's method
  brief (method-contract.md marks the original value unverified; the paper's
  text was not at hand to re-check it). LibMTL's ``GradVac_beta`` and
  torchjd's default are 0.5.
* ``ema_update``: ``always`` (default; Algorithm 1 as torchjd and LibMTL
  since d2d84fa, 2024-02-15, implement it) updates the EMA for every visited
  pair; ``on_conflict`` updates it only when a correction was made (every
  LibMTL release before 2024-02, including those contemporary with the RW
  paper).
* ``group``: the parameter granularity (LibMTL's ``GradVac_group_type``):
  ``whole_model`` (0, default, LibMTL's default), ``all_layer`` (1: one group
  per leaf module owning shared parameters), ``all_matrix`` (2: one group per
  shared parameter tensor). The paper studies these granularities; targets
  are kept per group, ``phi_hat`` is [K x T x T].
* ``grad_wrt: params`` (the paper; LibMTL refuses representation
  gradients). ``representation`` is allowed here with ``group:
  whole_model`` only, as an extension.
* No task weights are returned (as PCGrad), so ``heads: weighted`` is refused.

State: the EMA targets ``phi_hat`` (a registered buffer, saved with
``state_dict()``; for the finer groupings it is sized at the first step and
re-sized on load). Diagnostic ``corrections`` [T]: per task, the number of
corrections (partners x groups) it received in the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlrepro.weighting.base import Aggregation, GradientAggregator, GradientOptions

EPS = 1e-8
"""Added to the denominators of the cosine and of the coefficient a (LibMTL, torchjd)."""

Group = Literal["whole_model", "all_layer", "all_matrix"]


@dataclass(frozen=True)
class GradVacOptions(GradientOptions):
    """Wang et al. (2021): beta = 1e-2, EMA updated for every pair, one group for the whole shared model."""

    beta: float = 1e-2
    ema_update: Literal["always", "on_conflict"] = "always"
    group: Group = "whole_model"

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.heads != "unweighted":
            raise ValueError("heads: 'weighted' is not possible: GradVac returns no task weights")
        if self.grad_wrt == "representation" and self.group != "whole_model":
            raise ValueError(f"group: {self.group!r} needs grad_wrt: params (groups are sets of shared parameters)")


def partner_orders(n_tasks: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """For each task i, a random order of the other T - 1 tasks, [T x (T - 1)]."""
    if n_tasks < 2:
        return torch.zeros(n_tasks, 0, dtype=torch.long, device=device)
    perms = torch.stack([torch.randperm(n_tasks - 1, generator=generator, device=device) for _ in range(n_tasks)])
    own = torch.arange(n_tasks, device=device)[:, None]
    return perms + (perms >= own).long()  # position p among the others is task p, or p + 1 past task i


def gradvac_coefficients(
    grams: Tensor, targets: Tensor, orders: Tensor, beta: float, ema_update: str = "always"
) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients C [K x T x T] with ``g_i'^(k) = sum_l C_kil g_l^(k)``, the new targets and corrections per task.

    ``grams`` [K x T x T] are the per-group Gramians, ``targets`` [K x T x T]
    the EMA targets phi_hat before the step, ``orders`` [T x (T - 1)] the
    partner order of each task. Wang et al. (2021), Algorithm 1, on the Gramian.
    """
    groups, n, _ = grams.shape
    dtype, device = grams.dtype, grams.device
    index = torch.arange(n, device=device)
    coef = torch.eye(n, dtype=dtype, device=device).expand(groups, n, n).clone()
    targets = targets.clone()
    corrections = torch.zeros(n, dtype=dtype, device=device)
    norms = grams.diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt()  # ||g_j^(k)|| [K x T]
    for step in range(orders.shape[1]):
        j = orders[:, step]  # [T]: partner of each task i
        partner = (index[None, :] == j[:, None]).to(dtype)  # [T x T] one-hot rows
        cg = coef @ grams  # [K x T x T]: (g_i' . g_l)
        dot = (cg * partner).sum(-1)  # g_i' . g_j   [K x T]
        norm_i = (cg * coef).sum(-1).clamp_min(0.0).sqrt()  # ||g_i'||
        norm_j = norms[:, j]  # ||g_j||
        phi = dot / (norm_i * norm_j + EPS)
        target = (targets * partner).sum(-1)  # phi_hat_ij [K x T]
        below = phi < target
        sqrt_phi = (1.0 - phi * phi).clamp_min(0.0).sqrt()
        sqrt_target = (1.0 - target * target).clamp_min(0.0).sqrt()
        a = norm_i * (target * sqrt_phi - phi * sqrt_target) / (norm_j * sqrt_target + EPS)
        a = torch.where(below, a, torch.zeros_like(a))
        coef = coef + a[..., None] * partner
        update = below if ema_update == "on_conflict" else torch.ones_like(below)
        new_target = torch.where(update, (1.0 - beta) * target + beta * phi, target)
        targets = targets + (new_target - target)[..., None] * partner
        corrections = corrections + below.to(dtype).sum(0)
    return coef, targets, corrections


def group_sizes(model: nn.Module, group: str) -> list[int]:
    """Widths of the parameter groups in the flattened shared parameters (LibMTL's ``k_idx``)."""
    shared = list(model.shared_parameters())
    if group == "all_matrix":
        return [p.numel() for p in shared]
    if group == "whole_model":
        return [sum(p.numel() for p in shared)]
    owner = {id(p): id(m) for m in model.modules() for p in m.parameters(recurse=False)}
    sizes: list[int] = []
    last = None
    for p in shared:
        if owner[id(p)] == last:
            sizes[-1] += p.numel()
        else:
            sizes.append(p.numel())
            last = owner[id(p)]
    return sizes


def gradvac_direction(
    grads: Tensor, sizes: Sequence[int], targets: Tensor, orders: Tensor, beta: float, ema_update: str = "always"
) -> tuple[Tensor, Tensor, Tensor]:
    """``sum_i g_i'`` [D] for gradients [T x D] split into groups of ``sizes``; new targets; corrections per task."""
    blocks = torch.split(grads, list(sizes), dim=1)
    grams = torch.stack([b @ b.T for b in blocks])
    coef, targets, corrections = gradvac_coefficients(grams, targets, orders, beta, ema_update)
    weights = coef.sum(dim=1)  # [K x T]: sum over i of the coefficients of g_l in group k
    direction = torch.cat([w @ b for w, b in zip(weights, blocks, strict=True)])
    return direction, targets, corrections


class GradVac(GradientAggregator):
    """Gradient correction towards EMA targets of the pairwise cosine similarity (Wang et al. 2021, Algorithm 1)."""

    name = "gradvac"
    Options = GradVacOptions
    rho_hat: Tensor

    def __init__(self, n_tasks: int, options: GradVacOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        groups = 1 if options.group == "whole_model" else 0  # finer groups: sized at the first step
        self.register_buffer("rho_hat", torch.zeros(groups, n_tasks, n_tasks))
        self._sizes: list[int] | None = None
        self._corrections: Tensor | None = None

    def _group_sizes(self, grads: Tensor, ctx) -> list[int]:
        if self.options.group == "whole_model" or self.options.grad_wrt == "representation":
            return [grads.shape[1]]
        if self._sizes is None:
            self._sizes = group_sizes(ctx.model, self.options.group)
            if sum(self._sizes) != grads.shape[1]:
                raise RuntimeError(f"gradvac: groups cover {sum(self._sizes)} of {grads.shape[1]} shared parameters")
        return self._sizes

    def aggregate(self, grads: Tensor, ctx) -> Aggregation:
        sizes = self._group_sizes(grads, ctx)
        if self.rho_hat.shape[0] != len(sizes):  # first step of a finer grouping
            self.rho_hat = torch.zeros(len(sizes), self.n_tasks, self.n_tasks, dtype=grads.dtype, device=grads.device)
        orders = partner_orders(self.n_tasks, self.generator, grads.device)
        direction, self.rho_hat, self._corrections = gradvac_direction(
            grads, sizes, self.rho_hat.to(grads.dtype), orders, self.options.beta, self.options.ema_update
        )
        return Aggregation(direction=direction)

    def diagnostics(self) -> dict[str, Tensor]:
        return {} if self._corrections is None else {"corrections": self._corrections}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "rho_hat")
        if saved is not None and (saved.shape, saved.dtype) != (self.rho_hat.shape, self.rho_hat.dtype):
            # a finer grouping sized at its first step, or targets kept in the gradients' dtype
            self.rho_hat = torch.zeros_like(saved, device=self.rho_hat.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
