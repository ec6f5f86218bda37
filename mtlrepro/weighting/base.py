"""The two kinds of weighting method and their contract (DESIGN: "Weighting methods").

*Loss weighting* (:class:`LossWeighting`) maps the current task losses to
weights ``lambda`` [T]; the model minimises ``sum_t lambda_t * loss_t`` (RW paper,
Eq. 1), so the shared encoder and every task head see the weights.

*Gradient aggregation* (:class:`GradientAggregator`) maps the per-task
gradients of the shared parameters, stacked as one matrix ``G`` [T x D], to one
update direction [D] (RW paper, Eq. 2). The task heads are not touched by it:
each head gets its own task's gradient (RW paper, Algorithm 1, line 10).

A *combination* ``loss+grad`` (RW paper, Table 4) weights the losses first and
aggregates the gradients of the weighted losses.

Each method is one module of :mod:`mtlrepro.weighting` that defines one
subclass with ``name`` equal to the module's name and an ``Options`` frozen
dataclass holding the method's hyperparameters with its paper's defaults.
The maths lives in small pure functions; the classes only hold state (a random
generator, running statistics) between steps.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

LOSS = "loss"
GRADIENT = "gradient"


@dataclass(frozen=True)
class NoOptions:
    """Options of a method without hyperparameters."""


class Method(ABC):
    """State shared by both kinds: task count, options, a private random generator."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, n_tasks: int, options: Any, generator: torch.Generator) -> None:
        if n_tasks < 1:
            raise ValueError(f"{self.name}: need at least one task, got {n_tasks}")
        self.n_tasks = n_tasks
        self.options = options
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the method exactly (generator state included)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.generator.set_state(state["generator"])

    def describe(self) -> dict[str, Any]:
        """Name, kind and resolved options, for the run record."""
        return {"name": self.name, "kind": self.kind, "options": dataclasses.asdict(self.options)}


class LossWeighting(Method):
    """Maps task losses [T] to loss weights [T] (detached; on the simplex unless stated)."""

    kind = LOSS

    @abstractmethod
    def weights(self, losses: Tensor) -> Tensor:
        """Weights for this step, given the (attached) task losses of the batch."""


@dataclass(frozen=True)
class Aggregation:
    """An aggregated update direction and, when the method is a weighted sum, its weights."""

    direction: Tensor
    weights: Tensor | None


class GradientAggregator(Method):
    """Maps the per-task gradient matrix ``G`` [T x D] to one update direction [D]."""

    kind = GRADIENT

    @abstractmethod
    def aggregate(self, grads: Tensor) -> Aggregation:
        """Combine the rows of ``grads`` into one direction for the shared parameters."""
