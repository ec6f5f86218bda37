"""STL: single-task learning as a loss weighting, lambda = e_k (ExcessMTL Sec. 4.3, Figure 4's dashed lines).

The run trains the shared encoder and head k on task k alone: ``lambda_t = 1``
for the chosen task and 0 for every other (RW Eq. 1 with a one-hot weight). The
other heads receive no gradient and stay at their initialisation, so their
metrics in the run record are those of an untrained head. Single-task runs are
ordinary runs of the pipeline, so the baselines of ExcessMTL Figure 4 are
trained, recorded and cached like every other run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mtlrepro.errors import ConfigError
from mtlrepro.weighting.base import LossOptions, LossWeighting, LossWeights, SetupInfo


@dataclass(frozen=True)
class STLOptions(LossOptions):
    """``task``: the name of the one task trained (empty: the dataset's first task)."""

    task: str = ""


def one_hot(n_tasks: int, index: int, like: torch.Tensor) -> torch.Tensor:
    """The weight vector e_index [T] with ``like``'s dtype and device."""
    weights = torch.zeros(n_tasks, dtype=like.dtype, device=like.device)
    weights[index] = 1.0
    return weights


class STL(LossWeighting):
    """Weight 1 on one task and 0 on the others: single-task learning inside the multi-task model."""

    name = "stl"
    Options = STLOptions

    def __init__(self, n_tasks: int, options: STLOptions, generator: torch.Generator) -> None:
        super().__init__(n_tasks, options, generator)
        self.index: int | None = None

    @classmethod
    def check(cls, options: STLOptions, task_names: Sequence[str], where: str) -> None:
        if options.task and options.task not in task_names:
            raise ConfigError(f"{where}.task: {options.task!r} is not a task of the dataset ({', '.join(task_names)})")

    def setup(self, info: SetupInfo) -> None:
        self.check(self.options, info.task_names, f"methods.{self.name}")
        self.index = info.task_names.index(self.options.task) if self.options.task else 0

    def weigh(self, ctx) -> LossWeights:
        if self.index is None:
            raise RuntimeError("stl: setup() must run before the first step")
        return LossWeights(one_hot(self.n_tasks, self.index, ctx.losses))
