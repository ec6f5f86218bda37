"""Seeded label noise on the training targets of every kind of task (ExcessMTL, Sec. 4.2 "Noise Injection Scheme").

ExcessMTL injects label noise into one or more (but not all) tasks, and only into the *training* data;
validation and test data stay clean. The noise level (``rate``) of a task is the fraction of its training
EXAMPLES subject to the noise injection procedure. Per kind of task (:mod:`mtlrepro.tasks`):

- ``classification``: the label is replaced by one drawn uniformly over all ``n_classes`` classes
  (symmetric noise, "flipping the true label to any possible labels uniformly at random", Sec. 4.2, after
  Kim et al. 2019). The draw may return the true class, so the expected fraction of *changed* labels is
  ``rate * (C - 1) / C``; the record keeps both the ``selected`` and the ``changed`` count.
- ``binary``: the 0/1 label is redrawn uniformly over {0, 1} (the same rule with C = 2).
- ``tagging``: every scored token (label != :data:`~mtlrepro.tasks.IGNORE`) of a selected sentence gets a
  label drawn uniformly over the tags; unscored positions stay -1.
- ``segmentation``: per-pixel symmetric noise: every labelled pixel (!= -1) of a selected image gets a label
  drawn uniformly over the classes; unlabelled pixels stay -1 (the public code's draw over [-1, C-1] would
  turn about 1/(C+1) of the pixels into ignore labels, ``method-contract.md`` Sec. 4).
- ``depth``: additive Gaussian noise (Sec. 4.2, after Hu et al. 2020) on the valid pixels (depth != 0) of a
  selected image, with the variance of the valid depths of the given (training) split: the population
  variance over all of its valid pixels. A noisy depth below the smallest valid depth of the split is
  clamped to that depth, so a valid pixel stays valid (> 0) and inside the observed range; invalid pixels
  stay 0. (The public code *replaces* the depth by N(0, 1), which also destroys the validity mask.)
- ``normals``: the papers give no rule. Here: additive Gaussian noise on the valid pixels (vector != 0) of
  a selected image, with per component the population standard deviation of that component over the valid
  pixels of the split, then renormalised to unit length; invalid pixels stay the zero vector. In the
  (measure-zero) case that the noisy vector has length below 1e-6, the pixel keeps its true normal.
- ``regression``: additive Gaussian noise with the population standard deviation of the target (Sec. 4.2).

The noise is drawn once, when the training targets are prepared, and stays fixed for the whole run (the
public Office-Home code redraws a label at every access, so every epoch sees other labels; not done here).

Seeding: every task has its own torch generator, seeded by
:func:`mtlrepro.seeding.derive_seed(seed, "noise/<task name>") <mtlrepro.seeding.derive_seed>`, so the noise
on one task never changes that of another. The stream first draws one permutation of the N examples; the
first ``n_selected(rate, N)`` of it are corrupted. Then the replacements are drawn for ALL N examples (and
all their positions), in example order, whatever the rate: for a fixed seed the examples corrupted at a
lower rate are a subset of those corrupted at a higher one, with identical replacements. Dense and tagging
targets are processed :data:`CHUNK` examples at a time (one draw per chunk from the same stream, in a fixed
order), so memory stays at a few chunks beside the output. Everything runs on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtlrepro.errors import ConfigError
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import (
    BINARY,
    CLASSIFICATION,
    DEPTH,
    IGNORE,
    NORMALS,
    REGRESSION,
    SEGMENTATION,
    TAGGING,
    Task,
    check_target,
)

CHUNK = 64
"""Examples of a dense or tagging target processed (and drawn for) at a time."""

#: length below which a noisy normal is not renormalised (the pixel keeps its true normal)
_MIN_NORM = 1e-6

Record = dict[str, Any]
"""What :func:`corrupt_task` reports for one task (JSON-serialisable)."""


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


# --------------------------------------------------------------------------- helpers


def _chunks(n: int) -> Iterator[slice]:
    """Consecutive slices of :data:`CHUNK` examples covering ``range(n)``."""
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


def _per_example(mask: Tensor) -> Tensor:
    """``[b x ...]`` boolean -> ``[b]``: whether any position of the example is set."""
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def _expand(selected: Tensor, like: Tensor) -> Tensor:
    """Per-example flags ``[b]`` broadcastable against ``like`` ``[b x ...]``."""
    return selected.reshape(-1, *([1] * (like.dim() - 1)))


def _valid(task: Task, chunk: Tensor) -> Tensor:
    """Scored positions of a chunk: label != IGNORE, depth != 0, normal vector != 0 (``[b x ...]``, per pixel)."""
    if task.kind == DEPTH:
        return chunk[:, 0] != 0
    if task.kind == NORMALS:
        return chunk.abs().sum(dim=1) != 0
    return chunk != IGNORE


def _valid_stats(target: Tensor, task: Task) -> tuple[Tensor, Tensor, float]:
    """Population mean and std (float64, one per channel) and the minimum of the valid pixels of a dense target.

    Invalid pixels of depth and normals targets are exact zeros, so they add nothing to the sums of values
    and of squares; only the count and the minimum need the validity mask. One pass over chunks, sums in
    float64. Returns zeros when no pixel is valid.
    """
    channels = int(target.shape[1])
    count = 0
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    low = math.inf
    for part in _chunks(int(target.shape[0])):
        chunk = target[part].to(torch.float32)
        valid = _valid(task, chunk)
        count += int(valid.sum())
        total += chunk.sum(dim=(0, 2, 3), dtype=torch.float64)
        squares += (chunk * chunk).sum(dim=(0, 2, 3), dtype=torch.float64)
        if task.kind == DEPTH and bool(valid.any()):
            low = min(low, float(chunk[:, 0][valid].min()))
    if count == 0:
        zero = torch.zeros(channels, dtype=torch.float64)
        return zero, zero, 0.0
    mean = total / count
    return mean, (squares / count - mean * mean).clamp_min(0.0).sqrt(), low


# --------------------------------------------------------------------------- per kind


def _corrupt_vector(target: Tensor, task: Task, selected: Tensor, generator: torch.Generator) -> tuple[Tensor, Record]:
    """Classification, binary and regression targets ``[N]``: one replacement (or noise) per example."""
    n = int(target.shape[0])
    record: Record = {}
    if task.kind == REGRESSION:
        values = target.to(torch.float64)
        std = values.std(correction=0) if n > 0 else torch.zeros((), dtype=torch.float64)
        eps = torch.randn(n, generator=generator, dtype=torch.float64)
        out = torch.where(selected, values + std * eps, values).to(target.dtype)
        record["std"] = float(std)
    else:
        classes = task.n_classes if task.kind == CLASSIFICATION else 2
        fresh = torch.randint(classes, (n,), generator=generator, dtype=torch.int64)
        out = torch.where(selected, fresh.to(target.dtype), target)
    return out, record


def _corrupt_dense(target: Tensor, task: Task, selected: Tensor, generator: torch.Generator) -> tuple[Tensor, Record]:
    """Tagging, segmentation, depth and normals targets, :data:`CHUNK` examples at a time."""
    n = int(target.shape[0])
    out = torch.empty_like(target, memory_format=torch.contiguous_format)
    record: Record = {}
    scale, floor = torch.zeros(()), 0.0  # the Gaussian kinds' noise scale and depth floor
    if task.kind in (DEPTH, NORMALS):
        _, std, floor = _valid_stats(target, task)
        scale = std.to(torch.float32).reshape(1, -1, 1, 1)
        record["std"] = float(std[0]) if task.kind == DEPTH else [float(s) for s in std]
    changed = positions_changed = positions_scored = 0
    for part in _chunks(n):
        chunk = target[part]
        valid = _valid(task, chunk)
        if task.kind in (TAGGING, SEGMENTATION):
            fresh = torch.randint(task.n_classes, chunk.shape, generator=generator, dtype=torch.int64)
            replace = valid & _expand(selected[part], valid)
            new = torch.where(replace, fresh.to(chunk.dtype), chunk)
        else:
            eps = torch.randn(chunk.shape, generator=generator, dtype=torch.float32)
            noisy = chunk.to(torch.float32) + scale * eps
            if task.kind == DEPTH:
                noisy = noisy.clamp_min(floor)
                replace = valid & _expand(selected[part], valid)
                new = torch.where(replace.unsqueeze(1), noisy.to(chunk.dtype), chunk)
            else:
                length = (noisy[:, 0:1] ** 2 + noisy[:, 1:2] ** 2 + noisy[:, 2:3] ** 2).sqrt()
                noisy = noisy / length.clamp_min(_MIN_NORM)
                replace = valid & _expand(selected[part], valid) & (length[:, 0] >= _MIN_NORM)
                new = torch.where(replace.unsqueeze(1), noisy.to(chunk.dtype), chunk)
        differs = new != chunk
        if differs.dim() == 4:  # depth / normals: a pixel differs if any channel does
            differs = differs.any(dim=1)
        out[part] = new
        changed += int(_per_example(differs).sum())
        positions_changed += int(differs.sum())
        positions_scored += int(valid.sum())
    counts = {"changed": changed, "positions_changed": positions_changed, "positions_scored": positions_scored}
    return out, counts | record


# --------------------------------------------------------------------------- public API


def corrupt_task(target: Tensor, task: Task, rate: float, seed: int) -> tuple[Tensor, Record]:
    """Corrupt the stored training targets ``target`` ``[N x ...]`` of one task (ExcessMTL Sec. 4.2).

    Exactly ``n_selected(rate, N)`` examples, a prefix of one permutation drawn from the task's stream
    (``derive_seed(seed, f"noise/{task.name}")``), are corrupted by the rule of ``task.kind`` (see the module
    docstring). Returns a new tensor of the same shape and dtype, on the CPU (``target`` is untouched), and a
    record ``{"rate", "selected", "changed"}``: ``selected`` examples, of which ``changed`` have a target that
    differs afterwards. Tagging and dense kinds add ``"positions_changed"`` (tokens/pixels that differ) and
    ``"positions_scored"`` (scored tokens / valid pixels of all N examples), whose ratio is the realised
    per-position noise level; the Gaussian kinds add ``"std"``, the standard deviation of the noise (a list of
    three for normals). Raises :class:`ValueError` for a target that does not fit ``task``
    (:func:`~mtlrepro.tasks.check_target`) or a rate outside [0, 1].
    """
    check_target(task, target)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"task {task.name}: noise rate {rate!r} is not a number in [0, 1]")
    target = target.detach().cpu()
    n = int(target.shape[0])
    k = n_selected(float(rate), n)
    generator = torch.Generator().manual_seed(derive_seed(seed, f"noise/{task.name}"))
    order = torch.randperm(n, generator=generator)
    selected = torch.zeros(n, dtype=torch.bool)
    selected[order[:k]] = True
    if task.kind in (CLASSIFICATION, BINARY, REGRESSION):
        out, extra = _corrupt_vector(target, task, selected, generator)
        extra = {"changed": int((out != target).sum())} | extra
    else:
        out, extra = _corrupt_dense(target, task, selected, generator)
    return out, {"rate": float(rate), "selected": k} | extra


def corrupt_targets(
    targets: Sequence[Tensor],
    tasks: Sequence[Task],
    noise: Mapping[str, float],
    seed: int,
) -> tuple[tuple[Tensor, ...], dict[str, Record]]:
    """Corrupt the training targets of a split, one tensor per task in ``tasks`` order (ExcessMTL Sec. 4.2).

    ``noise`` maps task names to rates and is validated by :func:`check_noise` (:class:`ConfigError`).
    Every task with a non-zero rate goes through :func:`corrupt_task` with its own stream; every other
    target is returned as the very same tensor object. Returns the tuple of targets and
    ``{task name: record}`` for the corrupted tasks only. Raises :class:`ValueError` when the number of
    targets differs from the number of tasks.
    """
    rates = check_noise(noise, tasks, "noise")
    targets = tuple(targets)
    if len(targets) != len(tasks):
        raise ValueError(f"{len(targets)} target tensors for {len(tasks)} tasks ({', '.join(t.name for t in tasks)})")
    out = list(targets)
    record: dict[str, Record] = {}
    for t, task in enumerate(tasks):
        rate = rates.get(task.name, 0.0)
        if rate > 0.0:
            out[t], record[task.name] = corrupt_task(targets[t], task, rate, seed)
    return tuple(out), record
