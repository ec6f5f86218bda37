"""Seeded label noise on the training split (ExcessMTL, Sec. 4.2 "Noise Injection Scheme").

ExcessMTL injects label noise into one or more (but not all) tasks, and only
into the *training* data; validation and test data stay clean. The noise
level of a task is the fraction of its training examples whose label is
corrupted:

- classification: the label is replaced by one drawn uniformly at random over
  all classes ("symmetric noise"; the new label may equal the true one);
- regression: additive Gaussian noise whose variance equals the variance of
  the original target.

Corruption is seeded per task: every task has its own random stream, derived
from the seed and the task's name, so noise on one task never changes the
corruption of another. Within a task, the examples are chosen as a prefix of
one seeded permutation, so for a fixed seed the examples corrupted at a lower
noise level are a subset of those corrupted at a higher one, with the same
replacement labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtlrepro.data import Task
from mtlrepro.errors import ConfigError
from mtlrepro.seeding import derive_seed


def noise_label(noise: Mapping[str, float]) -> str:
    """Canonical directory label of a noise setting.

    ``"clean"`` when no task has a non-zero rate; otherwise ``f"{task}{rate:g}"``
    for every task with a non-zero rate, sorted by task name and joined by
    ``"_"``: ``{"TL": 0.4}`` -> ``"TL0.4"``, ``{"BR": 0.2, "TL": 0.5}`` -> ``"BR0.2_TL0.5"``.
    """
    parts = [f"{task}{float(rate):g}" for task, rate in sorted(noise.items()) if float(rate) != 0.0]
    return "_".join(parts) if parts else "clean"


def check_noise(
    noise: Mapping[str, Any],
    tasks: Sequence[Task],
    where: str,
    dataset: str | None = None,
) -> dict[str, float]:
    """Validate a noise setting (task name -> noise level) and return it as floats.

    ``where`` is the config key of the setting (e.g. ``"studies.digits.noise[0]"``)
    and ``dataset`` the dataset name used in messages. Raises
    :class:`ConfigError` naming ``where`` and the task for a non-mapping, an
    unknown task, a rate that is not a number, or a rate outside [0, 1].
    The result keeps the order of ``tasks``.
    """
    if not isinstance(noise, Mapping):
        raise ConfigError(f"{where}: {noise!r} is not a mapping of task name to noise level")
    names = [task.name for task in tasks]
    owner = f"tasks of {dataset}" if dataset else "known tasks"
    for key, value in noise.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown task ({owner}: {', '.join(names)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{key}: {value!r} is not a number")
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where}.{key}: {value} is outside [0, 1]")
    return {name: float(noise[name]) for name in names if name in noise}


def n_selected(rate: float, n: int) -> int:
    """Number of examples corrupted at noise level ``rate`` among ``n``: ``round(rate * n)``."""
    return round(rate * n)


def corrupt_labels(
    y: Tensor,
    tasks: Sequence[Task],
    noise: Mapping[str, float],
    seed: int,
) -> tuple[Tensor, dict[str, dict[str, float | int]]]:
    """Corrupt the training labels ``y`` [N x T] (one column per task) (ExcessMTL Sec. 4.2).

    For every task ``t`` with rate ``r`` in ``noise``, exactly ``round(r * N)``
    examples are chosen without replacement by the task's own seeded stream;
    a classification task (``n_classes > 0``) gets a label drawn uniformly over
    all ``n_classes`` classes, a regression task (``n_classes == 0``, floating
    ``y``) gets additive Gaussian noise with the standard deviation of its
    column (population std over the N examples).

    Returns a new tensor (``y`` is untouched) and a record
    ``{task: {"rate": r, "selected": k, "changed": m}}``, ``m`` being the number
    of labels that differ afterwards. Raises :class:`ConfigError` for a bad
    ``noise`` and :class:`ValueError` if ``y``'s shape or dtype does not fit.
    """
    rates = check_noise(noise, tasks, "noise")
    if y.dim() != 2 or y.shape[1] != len(tasks):
        raise ValueError(f"labels must have shape [N x {len(tasks)}] (one column per task), got {list(y.shape)}")
    out = y.clone()
    n = int(y.shape[0])
    record: dict[str, dict[str, float | int]] = {}
    for t, task in enumerate(tasks):
        if task.name not in rates:
            continue
        rate = rates[task.name]
        k = n_selected(rate, n)
        generator = torch.Generator().manual_seed(derive_seed(seed, f"noise/{task.name}"))
        order = torch.randperm(n, generator=generator)
        chosen = order[:k]
        column = y[:, t]
        if task.n_classes > 0:
            if y.dtype.is_floating_point or y.dtype.is_complex:
                raise ValueError(f"task {task.name}: classification labels must be integers, got {y.dtype}")
            # drawn for all N positions so lower rates corrupt a prefix of higher rates identically
            fresh = torch.randint(task.n_classes, (n,), generator=generator, dtype=y.dtype)
            out[chosen, t] = fresh[:k]
        else:
            if not y.dtype.is_floating_point:
                raise ValueError(f"task {task.name}: regression targets must be floating point, got {y.dtype}")
            std = column.to(torch.float64).std(correction=0)
            eps = torch.randn(n, generator=generator, dtype=torch.float64)
            out[chosen, t] = (column[chosen].to(torch.float64) + std * eps[:k]).to(y.dtype)
        changed = int((out[:, t] != column).sum())
        record[task.name] = {"rate": rate, "selected": k, "changed": changed}
    return out, record
