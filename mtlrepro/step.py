"""One update: compute what the run's methods need, and nothing more; put the weights where they act.

The model is an architecture with one shared representation ``z =
encode(x)`` read by every task head (``decode``). A step of a loss weighting
``lambda`` and/or a gradient aggregator ``A`` (RW paper, Algorithm 1):

1. *forward*: z, the head outputs and the task losses l [T];
2. *loss stage*: ``lambda = scale(weigh(ctx))`` (1 if there is no loss weighting);
3. *gradient stage*: ``d = A(diag(lambda) G)`` where ``G`` holds the per-task
   gradients of the shared parameters theta (or of z); without an aggregator
   the shared update is ``lambda^T G``;
4. *apply*: theta (or z, then back-propagated once through the encoder) gets
   ``d``; head t gets ``grad_psi_t l_t`` times ``lambda_t`` (if the loss
   weighting's ``heads`` is ``weighted``) times the aggregator's weight ``w_t``
   (if the aggregator's ``heads`` is ``weighted``);
5. *method losses* of methods with their own parameters are back-propagated
   into those parameters.

Cost. A run whose methods need no per-task gradient and weight every head
(EW, RLW, DWA, UW, GroupDRO...) takes one backward pass of ``sum_t lambda_t
l_t``. Otherwise each head reads its own detached copy ``z_t`` of z, so one
backward pass through the heads yields every ``dl_t/dz`` (the representation
Jacobian) and every head's own gradient; parameter-mode Jacobian rows are then
``(dz/dtheta)^T dl_t/dz``, one vector-Jacobian product per task through the
encoder (the floor of one forward and T backward passes) written into one
preallocated [T x D] matrix on the model's device. No value leaves the device.

Multi-input problems (each task its own inputs) stack one batch per task;
``rows[t]`` are task t's rows. Each task's rows pass the encoder on their own,
and head t reads only its task's rows of z, so dl_t/dz is zero outside them and
the parameter Jacobian is built by the same vector-Jacobian products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mtlrepro.weighting.base import (
    Aggregation,
    Batch,
    GradientAggregator,
    LossWeighting,
    Method,
    Need,
    Rows,
    SetupInfo,
    apply_scale,
    scale_factor,
)

LossFn = Callable[[Sequence[Tensor], Any], Tensor]
"""Maps head outputs and a batch's targets (whatever the loss function reads) to the task-loss vector [T]."""


def encode(model: nn.Module, x: Tensor, rows: Rows) -> Tensor:
    """The shared representation of every row of ``x``; each task's rows pass the encoder on their own.

    A multi-input batch stacks one batch per task; encoding them separately
    keeps batch-norm statistics per task's batch, as LibMTL's multi-input
    trainer does (one forward pass per task).
    """
    if rows is None:
        return model.encode(x)
    return torch.cat([model.encode(x[r]) for r in rows])


def task_inputs(inputs: Sequence[Tensor], rows: Rows) -> list[Tensor]:
    """Head t's input: its copy of the representation, restricted to task t's rows (multi-input)."""
    if rows is None:
        return list(inputs)
    return [z[r] for z, r in zip(inputs, rows, strict=True)]


@dataclass
class StepResult:
    """What one step reports: task losses, loss and gradient weights, method diagnostics (all detached)."""

    losses: Tensor
    loss_weights: Tensor | None
    grad_weights: Tensor | None
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


class StepContext:
    """What one step offers to the methods. Everything beyond the losses is computed on first request.

    ``losses`` [T] is attached to the graph. :meth:`jacobian` gives the per-task
    gradients of the *raw* task losses (the step applies the loss weights
    itself), :attr:`representation` the
    detached values of z, :meth:`last_shared_jacobian` the per-task gradients of
    the last shared layer, :meth:`held_out_batch` a batch of the held-out slice
    and :meth:`forward_losses` a (functional) forward pass.
    """

    def __init__(
        self,
        stepper: Stepper,
        batch: Batch,
        z: Tensor,
        z_heads: Sequence[Tensor] | None,
        losses: Tensor,
        epoch: int,
        iteration: int,
    ) -> None:
        self._stepper = stepper
        self.batch = batch
        self.x = batch.x
        self.y = batch.y
        self.losses = losses
        self.epoch = epoch
        self.iteration = iteration
        self.n_tasks = stepper.n_tasks
        self.loss_weights: Tensor | None = None
        """The loss stage's scaled weights (set before the gradient stage; None without a loss weighting)."""
        self._z = z
        self._z_heads = z_heads
        self._rep_grads: Tensor | None = None
        self._param_jacobian: Tensor | None = None

    # ----------------------------------------------------------------- gradients
    @property
    def representation(self) -> Tensor:
        """The values of the shared representation z [B x ...] (detached)."""
        return self._z.detach()

    @property
    def model(self) -> nn.Module:
        return self._stepper.model

    def _backward_heads(self) -> Tensor:
        """One backward pass through the heads: every head's own gradient and every dl_t/dz, [T x B x ...]."""
        if self._rep_grads is None:
            if self._z_heads is None:
                raise RuntimeError("the step did not give the heads separate representation copies")
            self.losses.sum().backward(inputs=[*self._z_heads, *self._stepper.head_params])
            self._rep_grads = torch.stack([z.grad for z in self._z_heads])
        return self._rep_grads

    def jacobian(self, wrt: str = "params", reduce: str = "full") -> Tensor:
        """Per-task gradients of the raw task losses: [T x D] (params) or [T x B*d] / [T x d] (representation)."""
        if wrt == "representation":
            rows = self._backward_heads()
            if reduce == "batch_sum":
                return rows.sum(dim=1).reshape(self.n_tasks, -1)
            return rows.reshape(self.n_tasks, -1)
        if self._param_jacobian is None:
            rows = self._backward_heads()
            self._param_jacobian = self._stepper.encoder_vjp(self._z, rows, self._stepper.shared)
        return self._param_jacobian

    def last_shared_jacobian(self) -> Tensor:
        """Per-task gradients of the raw task losses w.r.t. the last shared layer only, [T x D_W]."""
        rows = self._backward_heads()
        if self._param_jacobian is not None:
            return self._param_jacobian[:, self._stepper.last_shared_slice]
        return self._stepper.encoder_vjp(self._z, rows, self._stepper.last_shared, buffer=False)

    # ----------------------------------------------------------------- data and model
    def held_out_batch(self) -> Batch:
        """A batch of the held-out slice of the training split, on the model's device."""
        return self._stepper.held_out_batch()

    def forward_losses(self, batch: Batch, params: dict[str, Tensor] | None = None) -> Tensor:
        """Task losses [T] of the model on ``batch``, with ``params`` (name -> tensor) replacing its own if given."""
        predictor = self._stepper.predictor
        if params is None:
            outputs = predictor(batch.x, batch.rows)
        else:
            replaced = {f"model.{k}": v for k, v in params.items()}
            outputs = torch.func.functional_call(predictor, replaced, (batch.x, batch.rows))
        return self._stepper.loss_fn(outputs, batch.y)


class Stepper:
    """Computes and applies one update for a model under a loss weighting and/or an aggregator.

    ``model`` must have ``encode``, ``decode``, ``shared_parameters``,
    ``task_parameters(t)`` and ``last_shared_parameters``. ``held_out`` is a
    callable returning the next held-out batch (only for methods that need one).
    """

    def __init__(
        self,
        model: nn.Module,
        n_tasks: int,
        loss_fn: LossFn,
        loss_weighting: LossWeighting | None,
        aggregator: GradientAggregator | None,
        held_out: Callable[[], Batch] | None = None,
    ) -> None:
        if loss_weighting is None and aggregator is None:
            raise ValueError("a step needs a loss weighting, a gradient aggregator or both")
        self.model = model
        self.n_tasks = n_tasks
        self.loss_fn = loss_fn
        self.loss_weighting = loss_weighting
        self.aggregator = aggregator
        self._held_out = held_out
        self.shared = list(model.shared_parameters())
        self.heads = [list(model.task_parameters(t)) for t in range(n_tasks)]
        self.head_params = [p for head in self.heads for p in head]
        self.last_shared = list(model.last_shared_parameters())
        self.last_shared_slice = _slice_of(self.shared, self.last_shared)
        self._matrix: Tensor | None = None  # the preallocated parameter Jacobian [T x D]
        self.predictor = Predictor(model, aggregator)
        needs = set().union(*(m.needs for m in self.methods))
        # one plain backward suffices when nobody needs a gradient and every head sees the weights
        self.plain = (
            aggregator is None
            and not needs & {Need.JACOBIAN, Need.LAST_SHARED}
            and loss_weighting is not None
            and loss_weighting.options.heads == "weighted"
        )

    def setup(self, sample: Tensor, steps_per_epoch: int, epochs: int, task_names: Sequence[str] = ()) -> None:
        """Set every method up for this model (sizes from one input ``sample`` [1 x ...]) and move it to its device."""
        with torch.no_grad():
            rep_shape = tuple(self.model.encode(sample).shape[1:])
        info = SetupInfo(
            n_tasks=self.n_tasks,
            device=sample.device,
            shared_dim=sum(p.numel() for p in self.shared),
            rep_shape=rep_shape,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            task_names=tuple(task_names),
        )
        for method in self.methods:
            method.setup(info)
            method.to(sample.device)

    @property
    def methods(self) -> list[Method]:
        return [m for m in (self.loss_weighting, self.aggregator) if m is not None]

    def held_out_batch(self) -> Batch:
        if self._held_out is None:
            raise RuntimeError("this run has no held-out slice (no method declared Need.HELD_OUT)")
        return self._held_out()

    # ----------------------------------------------------------------- helpers
    def encoder_vjp(self, z: Tensor, rows: Tensor, params: Sequence[nn.Parameter], buffer: bool = True) -> Tensor:
        """``(dz/dparams)^T rows[t]`` for every t, flattened into a [T x D] matrix (preallocated if ``buffer``)."""
        width = sum(p.numel() for p in params)
        if buffer:
            if self._matrix is None or self._matrix.shape != (self.n_tasks, width):
                self._matrix = torch.empty(self.n_tasks, width, dtype=z.dtype, device=z.device)
            out = self._matrix
        else:
            out = torch.empty(self.n_tasks, width, dtype=z.dtype, device=z.device)
        for t in range(self.n_tasks):
            grads = torch.autograd.grad(z, params, grad_outputs=rows[t], retain_graph=True)
            offset = 0
            for g in grads:
                out[t, offset : offset + g.numel()].copy_(g.reshape(-1))
                offset += g.numel()
        return out

    def _set_shared(self, direction: Tensor) -> None:
        offset = 0
        for p in self.shared:
            g = direction[offset : offset + p.numel()].view_as(p)
            p.grad = g.clone() if p.grad is None else p.grad + g
            offset += p.numel()

    def _scale_heads(self, factors: Tensor | None) -> None:
        if factors is None:
            return
        for t, head in enumerate(self.heads):
            for p in head:
                if p.grad is not None:
                    p.grad.mul_(factors[t])

    # ----------------------------------------------------------------- the step
    def step(self, x: Tensor, y: Any, epoch: int = 1, iteration: int = 0, rows: Rows = None) -> StepResult:
        """Set every parameter's ``.grad`` (model and methods) for batch (x, y); report what happened.

        ``rows`` (multi-input): task t's loss reads rows ``rows[t]`` of ``x`` only.
        """
        z = encode(self.model, x, rows)
        if self.plain:
            z_heads = None
            outputs = (
                self.model.decode(z) if rows is None else self.model.decode_each(task_inputs([z] * self.n_tasks, rows))
            )
        else:
            z_heads = [z.detach().requires_grad_(True) for _ in range(self.n_tasks)]
            inputs = self.aggregator.head_inputs(z_heads) if self.aggregator is not None else None
            outputs = self.model.decode_each(task_inputs(inputs if inputs is not None else z_heads, rows))
        losses = self.loss_fn(outputs, y)
        ctx = StepContext(self, Batch(x, y, rows), z, z_heads, losses, epoch, iteration)
        method_losses: list[Tensor] = []

        # loss stage
        lam = None
        if self.loss_weighting is not None:
            answer = self.loss_weighting.weigh(ctx)
            lam = apply_scale(answer.weights.detach(), self.loss_weighting.options.scale)
            ctx.loss_weights = lam
            if answer.method_loss is not None:
                method_losses.append(answer.method_loss)

        grad_weights = None
        if self.plain:
            (lam * losses).sum().backward()
        else:
            head_factor = lam if (lam is not None and self.loss_weighting.options.heads == "weighted") else None
            if self.aggregator is not None:
                aggregation, grad_weights = self._aggregate(ctx, lam)
                if aggregation.method_loss is not None:
                    method_losses.append(aggregation.method_loss)
                heads = aggregation.head_weights if aggregation.head_weights is not None else grad_weights
                if self.aggregator.options.heads == "weighted" and heads is not None:
                    heads = heads.detach()
                    head_factor = heads if head_factor is None else head_factor * heads
            else:
                self._apply_loss_weights(ctx, lam)
            ctx._backward_heads()  # heads get their own gradient (if nothing asked for it yet)
            self._scale_heads(head_factor)

        # 5. method losses train the methods' own parameters only
        if method_losses:
            torch.autograd.backward(method_losses, inputs=[p for m in self.methods for p in m.parameters()])
        return StepResult(losses.detach(), lam, grad_weights, self._diagnostics())

    def _apply_loss_weights(self, ctx: StepContext, lam: Tensor) -> None:
        """Shared update ``lambda^T G`` of a loss weighting, from whatever Jacobian the step already has."""
        if ctx._param_jacobian is not None:
            self._set_shared(lam @ ctx._param_jacobian)
            return
        rows = ctx._backward_heads()
        self.model_backward(ctx._z, torch.tensordot(lam, rows, dims=1))

    def model_backward(self, z: Tensor, z_grad: Tensor) -> None:
        """Back-propagate ``z_grad`` from the representation into the shared parameters."""
        z.backward(z_grad, inputs=self.shared)

    def _aggregate(self, ctx: StepContext, lam: Tensor | None) -> tuple[Aggregation, Tensor | None]:
        options = self.aggregator.options
        wrt = options.grad_wrt
        reduce = options.rep_reduce if wrt == "representation" else "full"
        grads = ctx.jacobian(wrt, reduce)
        if lam is not None:
            grads = lam[:, None] * grads
        aggregation = self.aggregator.aggregate(grads, ctx)
        weights = aggregation.weights
        direction = aggregation.direction
        scale = getattr(options, "scale", None)
        if weights is not None and scale is not None and scale != "free":
            factor = scale_factor(weights, scale)
            weights = weights * factor
            direction = direction * factor
        if wrt == "representation":
            if reduce == "batch_sum":
                full = ctx.jacobian("representation", "full")
                if lam is not None:
                    full = lam[:, None] * full
                direction = weights @ full
            self.model_backward(ctx._z, direction.view_as(ctx._z))
        else:
            self._set_shared(direction)
        return aggregation, None if weights is None else weights.detach()

    def _diagnostics(self) -> dict[str, Tensor]:
        found: dict[str, Tensor] = {}
        for method in self.methods:
            for key, value in method.diagnostics().items():
                found[f"{method.name}.{key}"] = value.detach()
        return found


class Predictor(nn.Module):
    """The model's outputs as the method sees them: heads read what the aggregator's ``head_inputs`` gives.

    Evaluation and functional forward passes (MOML) go through it, so a method
    that transforms the heads' input (RotoGrad's rotations) is evaluated as it
    is trained.
    """

    def __init__(self, model: nn.Module, aggregator: GradientAggregator | None) -> None:
        super().__init__()
        self.model = model
        self.aggregator = aggregator

    def forward(self, x: Tensor, rows: Rows = None) -> list[Tensor]:
        """Every head's output; with ``rows`` (multi-input), head t's output for task t's rows only."""
        z = encode(self.model, x, rows)
        inputs = None
        if self.aggregator is not None:
            inputs = self.aggregator.head_inputs([z] * self.aggregator.n_tasks)
        if inputs is None and rows is None:
            return self.model.decode(z)
        return self.model.decode_each(task_inputs(inputs if inputs is not None else [z] * len(rows), rows))


def _slice_of(shared: Sequence[nn.Parameter], part: Sequence[nn.Parameter]) -> slice:
    """The columns of the flattened shared parameters that ``part`` (a contiguous run of them) occupies."""
    ids = [id(p) for p in shared]
    if not part:
        return slice(0, 0)
    start_index = ids.index(id(part[0]))
    if [id(p) for p in shared[start_index : start_index + len(part)]] != [id(p) for p in part]:
        raise ValueError("the last shared layer's parameters must be a contiguous run of the shared parameters")
    start = sum(p.numel() for p in shared[:start_index])
    return slice(start, start + sum(p.numel() for p in part))
