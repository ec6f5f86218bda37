"""The contract every weighting method meets (DESIGN: "Weighting methods").

Two kinds, and their combination (RW paper, Eq. 1, Eq. 2 and Table 4):

*Loss weighting* (:class:`LossWeighting`) looks at the step (task losses and
whatever else it :attr:`~Method.needs`) and returns loss weights ``lambda`` [T]
and, for methods with trainable parameters, a *method loss* whose gradient
trains those parameters. The model minimises ``sum_t lambda_t * loss_t``. With
``heads: weighted`` (the default of most methods) the task heads see the
weights too; with ``heads: unweighted`` only the shared parameters do and each
head gets its own task's gradient.

*Gradient aggregation* (:class:`GradientAggregator`) maps the per-task
gradients of the shared parameters -- or of the shared representation ``z``
(``grad_wrt: representation``) -- stacked as one matrix ``G`` [T x D], to one
update direction [D]. By default each task head gets its own unweighted
gradient (RW paper, Algorithm 1, line 10); methods whose paper weights the
heads (Nash-MTL) say ``heads: weighted``.

A *combination* ``loss+grad`` applies the loss stage first: the gradient stage
aggregates the per-task gradients of the transformed loss vector
``lambda * losses``, i.e. ``diag(lambda) G`` (LibMTL's IMTL pattern).

Every method declares what the step must compute for it (:class:`Need`) and
nothing more is computed: EW and RLW cost one backward pass. Weight *scales*
are part of a method's semantics and one of its options (:data:`WeightScale`):
``simplex`` (sum to 1, RW Eq. 1), ``tasks`` (sum to T, LibMTL) or ``free`` (as
the method computes them). Every option, these included, is recorded in the
run's ``metrics.json``.

A method is an ``nn.Module`` so that its trainable parameters (UW's log
variances, RotoGrad's rotations, ...) and buffers (accumulators, running
averages) move with ``.to(device)`` and are saved by ``state_dict()``. Its
private random generator and any lazily built state travel through
:meth:`Method.extra_state`, so a resumed run continues bit-identically.
Own parameters are trained in their own optimizer parameter group with the
method's ``lr`` option and no weight decay (see :attr:`Method.lr`).
"""

from __future__ import annotations

import dataclasses
import enum
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # the step imports this module, not the other way round
    from mtlrepro.step import StepContext

LOSS = "loss"
GRADIENT = "gradient"

WeightScale = Literal["simplex", "tasks", "free"]
"""How weights are normalised: sum to 1, sum to T, or as the method computes them."""


class Need(enum.Enum):
    """What a method asks the step to compute, beyond the task losses (always there)."""

    JACOBIAN = "per-task gradients of the shared parameters (or representation), G [T x D]"
    REPRESENTATION = "the values of the shared representation z"
    LAST_SHARED = "per-task gradients of the last shared layer only"
    HELD_OUT = "batches of a held-out slice of the training split"
    FORWARD = "the model and a functional forward pass (bilevel methods)"


Rows = tuple[slice, ...] | None
"""Multi-input batches: the rows of ``x`` that belong to each task (None: every task reads every row)."""


class Batch(NamedTuple):
    """A batch as a step sees it: inputs, targets (whatever the loss function reads), and, for a multi-input
    problem, each task's rows of the inputs (one batch per task, stacked)."""

    x: Tensor
    y: Any
    rows: Rows = None

    def state(self) -> dict[str, Any]:
        """A checkpointable form (slices become [start, stop] pairs)."""
        rows = None if self.rows is None else [[r.start, r.stop] for r in self.rows]
        return {"x": self.x, "y": self.y, "rows": rows}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Batch:
        """The batch of :meth:`state`, on ``device``."""
        y = state["y"]
        y = y.to(device) if isinstance(y, Tensor) else type(y)(t.to(device) for t in y)
        rows = None if state["rows"] is None else tuple(slice(int(a), int(b)) for a, b in state["rows"])
        return cls(state["x"].to(device), y, rows)


@dataclass(frozen=True)
class LossOptions:
    """Options every loss weighting has: weight scale and whether heads see the weights."""

    scale: WeightScale = "simplex"
    heads: Literal["weighted", "unweighted"] = "weighted"


@dataclass(frozen=True)
class GradientOptions:
    """Options every gradient aggregator has.

    ``grad_wrt``: per-task gradients of the shared parameters (``params``, RW
    Algorithm 1) or of the shared representation z (``representation``, the
    cheaper variant of RW Sec. 3 and MGDA-UB). ``rep_reduce``: in
    representation mode, G's rows are the gradients w.r.t. the full z tensor
    [B x d] flattened (``full``, as the original MGDA-UB code) or summed over the
    batch to [d] (``batch_sum``, as LibMTL); with ``batch_sum`` the method must
    produce weights, which are then applied to the full per-example gradients.
    ``heads``: each head gets its own unweighted gradient, or its gradient
    scaled by the method's weight for that task.
    """

    grad_wrt: Literal["params", "representation"] = "params"
    rep_reduce: Literal["full", "batch_sum"] = "full"
    heads: Literal["unweighted", "weighted"] = "unweighted"


@dataclass(frozen=True)
class WeightedGradientOptions(GradientOptions):
    """Options of an aggregator whose direction is a weighted sum ``w^T G``: adds the weight scale."""

    scale: WeightScale = "simplex"


def scale_factor(weights: Tensor, scale: str) -> Tensor | float:
    """The factor that brings ``weights`` [T] to ``scale``: sum 1 (``simplex``), sum T (``tasks``), 1 (``free``)."""
    if scale == "free":
        return 1.0
    target = 1.0 if scale == "simplex" else float(weights.shape[0])
    return target / weights.sum()


def apply_scale(weights: Tensor, scale: str) -> Tensor:
    """Normalise ``weights`` [T] to ``scale`` (see :func:`scale_factor`)."""
    return weights if scale == "free" else weights * scale_factor(weights, scale)


@dataclass(frozen=True)
class SetupInfo:
    """What a method may need to know before the first step."""

    n_tasks: int
    device: torch.device
    shared_dim: int
    """Number of shared parameters (D in parameter mode)."""
    rep_shape: tuple[int, ...] | None
    """Shape of one example's representation z (None if the architecture has none)."""
    steps_per_epoch: int
    epochs: int
    task_names: tuple[str, ...] = ()


@dataclass
class LossWeights:
    """A loss weighting's answer: weights [T] (detached) and, optionally, a loss training its own parameters.

    ``method_loss`` must depend on the model only through detached values: its
    gradient reaches the method's parameters alone.
    """

    weights: Tensor
    method_loss: Tensor | None = None


@dataclass
class Aggregation:
    """An aggregator's answer: the shared update direction [D] and, when it is a weighted sum, its weights.

    ``head_weights`` [T], when given, is what the heads are scaled by under
    ``heads: weighted`` instead of ``weights`` (IMTL scales the heads by e^s
    but the shared gradients by alpha * e^s).
    """

    direction: Tensor
    weights: Tensor | None = None
    method_loss: Tensor | None = None
    head_weights: Tensor | None = None


class Method(nn.Module):
    """State and declarations shared by both kinds.

    Subclasses set ``name`` (equal to their module's name), ``kind`` (through
    the two base classes), ``Options`` (a frozen dataclass with the paper's
    defaults) and ``needs``. ``lr_option`` names the option holding the
    learning rate of the method's own parameters, if it has any.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    Options: ClassVar[type] = LossOptions
    needs: ClassVar[frozenset[Need]] = frozenset()
    lr_option: ClassVar[str | None] = None

    def __init__(self, n_tasks: int, options: Any, generator: torch.Generator) -> None:
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"{self.name}: need at least one task, got {n_tasks}")
        self.n_tasks = n_tasks
        self.options = options
        self.generator = generator

    @classmethod
    def check(cls, options: Any, task_names: Sequence[str], where: str) -> None:
        """Refuse options that do not fit the study's dataset (a :class:`ConfigError` naming ``where``'s key)."""

    # ------------------------------------------------------------------ lifecycle
    def setup(self, info: SetupInfo) -> None:
        """Called once before the first step (and before a checkpoint is loaded): allocate state."""

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Called after every training epoch with its 1-based index and the epoch-mean task losses [T]."""

    def diagnostics(self) -> dict[str, Tensor]:
        """Per-task quantities [T] of the last step to record, averaged per epoch (e.g. a risk estimate)."""
        return {}

    # ------------------------------------------------------------------ own parameters
    @property
    def lr(self) -> float | None:
        """Learning rate of the method's own parameters (None for methods without any)."""
        return None if self.lr_option is None else float(getattr(self.options, self.lr_option))

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        """State outside parameters and registered buffers (plain values, lazily built tensors)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "extra": self.extra_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.load_extra_state(state["extra"])

    def describe(self) -> dict[str, Any]:
        """Name, kind, resolved options and needs, for the run record."""
        return {
            "name": self.name,
            "kind": self.kind,
            "options": dataclasses.asdict(self.options),
            "needs": sorted(n.name.lower() for n in self.needs),
        }


class LossWeighting(Method):
    """Maps the step (losses and declared needs) to loss weights [T]."""

    kind = LOSS
    Options = LossOptions

    @abstractmethod
    def weigh(self, ctx: StepContext) -> LossWeights:
        """Weights for this step (before scaling to ``options.scale``; the step applies it)."""


class GradientAggregator(Method):
    """Maps the per-task gradient matrix ``G`` [T x D] to one update direction [D]."""

    kind = GRADIENT
    Options = GradientOptions
    needs = frozenset({Need.JACOBIAN})
    #: representation-only methods (GradDrop, RotoGrad) refuse ``grad_wrt: params``
    representation_only: ClassVar[bool] = False
    #: methods that cannot run on the representation (their paper's choice) refuse it
    params_only: ClassVar[bool] = False

    @abstractmethod
    def aggregate(self, grads: Tensor, ctx: StepContext) -> Aggregation:
        """Combine the rows of ``grads`` into one direction for the shared parameters (or z)."""

    def head_inputs(self, zs: Sequence[Tensor]) -> Sequence[Tensor] | None:
        """What each head reads instead of its copy ``zs[t]`` of z (RotoGrad's rotations), or None for the copies.

        ``zs`` are T detached leaf copies of z; the per-task representation
        gradients the step hands to :meth:`aggregate` are taken w.r.t. them.
        """
        return None


def weighted_sum(grads: Tensor, weights: Tensor) -> Tensor:
    """``weights^T G``: the weighted sum of the rows of ``grads`` [T x D]."""
    return weights @ grads
