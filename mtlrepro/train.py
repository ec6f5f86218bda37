"""Train one run: data, model, method, loop, evaluation, checkpoint, record.

A run is fully described by its :class:`~mtlrepro.run.RunSpec`. :func:`train`
reads the prepared dataset cache, trains, evaluates every epoch, checkpoints
every epoch (so a killed job resumes where it stopped) and, as its last act,
writes ``metrics.json`` atomically into the run directory. What one update
does -- per-task gradients, where the weights act -- is :mod:`mtlrepro.step`.

Preemption. Checkpoints are also written within an epoch every
``checkpoint_minutes`` and when SIGTERM or SIGINT arrives (then training stops
with :class:`~mtlrepro.interrupt.Interrupted`). A checkpoint holds the exact
point reached -- the epoch, the batches of its seeded shuffle already done,
their running sums, every random state -- so a resumed run ends with the very
numbers of an uninterrupted one. A checkpoint that cannot be read is reported
on stderr, removed, and the run starts from scratch.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import platform
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mtlrepro.archs import build_model
from mtlrepro.checkpoint import Checkpoints, describe_error, discard_checkpoint, read_checkpoint, run_directory
from mtlrepro.data import MTLData, Split, as_input, dataset_module, load
from mtlrepro.data.noise import corrupt_targets
from mtlrepro.errors import ConfigError, TrainingError
from mtlrepro.interrupt import StopRequest
from mtlrepro.io import digest, save_torch_atomic, write_json_atomic
from mtlrepro.metrics import delta_p
from mtlrepro.run import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    RUN_FORMAT,
    SELECTED_FILE,
    RunSpec,
    TrainingOptions,
    run_provenance,
)
from mtlrepro.seeding import derive_seed
from mtlrepro.step import Stepper, StepResult
from mtlrepro.tasks import Task
from mtlrepro.weighting import build_stage
from mtlrepro.weighting.base import GRADIENT, LOSS, Batch, Method, Need


def pick_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda`` as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was requested but no CUDA device is available")
    return torch.device(requested)


# --------------------------------------------------------------------------- data


@dataclass
class Part:
    """The examples of one training split a run uses: rows ``index`` of ``split``, read with targets ``y``.

    ``y`` holds the split's targets, after label noise when the run asks for
    it (the split's own tensors otherwise). Nothing is copied: a batch gathers
    its rows from the (memory-mapped) cache.
    """

    split: Split
    y: tuple[Tensor, ...]
    index: Tensor

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def take(self, rows: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Inputs and targets of the part's examples at positions ``rows``."""
        pick = self.index[rows]
        return self.split.x[pick], tuple(target[pick] for target in self.y)


def held_out_slice(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint (train, held-out) index sets of a training split of size ``n``: a seeded random ``fraction``.

    The held-out part feeds bilevel methods (MOML) and is never the test split;
    ExcessMTL Sec. 4.3 takes 20% of the training data.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "held_out")))
    size = max(1, round(fraction * n))
    return order[size:].sort().values, order[:size].sort().values


@dataclass
class RunData:
    """What one run trains and evaluates on: the dataset, and its training parts after noise and held-out slice.

    ``train`` (and ``held_out``) hold one :class:`Part` for a single-input
    dataset, one per task for a multi-input one.
    """

    data: MTLData
    train: tuple[Part, ...]
    held_out: tuple[Part, ...] | None
    noise: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        """Training examples used (all tasks' for a multi-input dataset)."""
        return sum(len(part) for part in self.train)


def prepare_run_data(spec: RunSpec, data_path: str | Path, held_out: tuple[float, str] | None) -> RunData:
    """Load the cache, corrupt the training targets (train split only), and carve the held-out slice.

    The corruption follows the noise seed alone (never the run seed), so every
    method and seed of a study sees the same noisy targets. ``held_out`` is
    (fraction, ``clean``/``noisy``) when a method needs one: its examples leave
    the training set and keep their clean or noisy targets.
    """
    data = load(spec.dataset, data_path, options=spec.data_options)
    splits = data.splits["train"]
    splits = splits if isinstance(splits, tuple) else (splits,)
    task_groups = [(task,) for task in data.tasks] if data.multi_input else [data.tasks]
    noisy: list[tuple[Tensor, ...]] = []
    record: dict[str, Any] = {}
    for split, tasks in zip(splits, task_groups, strict=True):
        rates = {t.name: spec.noise[t.name] for t in tasks if spec.noise.get(t.name, 0) > 0}
        if rates:
            y, found = corrupt_targets(split.y, tasks, rates, seed=spec.training.noise_seed)
            noisy.append(y)
            record |= found
        else:
            noisy.append(split.y)
    train, held = [], []
    for i, (split, y) in enumerate(zip(splits, noisy, strict=True)):
        everything = torch.arange(len(split))
        if held_out is None:
            train.append(Part(split, y, everything))
            continue
        fraction, labels = held_out
        seed = spec.seed if len(splits) == 1 else derive_seed(spec.seed, data.tasks[i].name)
        keep, hold = held_out_slice(len(split), fraction, seed)
        train.append(Part(split, y, keep))
        held.append(Part(split, split.y if labels == "clean" else y, hold))
    return RunData(data=data, train=tuple(train), held_out=tuple(held) if held else None, noise=record)


class EpochBatches:
    """The seeded batches of one epoch, numbered 0, 1, ... ; batch ``k`` is a pure function of (seed, epoch, k).

    Single-input: one pass over a seeded permutation of the part. Multi-input
    (one part per task): every step draws one batch of every task; the epoch
    has as many steps as the longest task has batches, and a shorter task
    starts a fresh seeded permutation each time it runs out (its ``c``-th
    cycle in epoch ``e`` is seeded by ``(seed, e, task, c)``). Nothing but the
    step number is needed to resume mid-epoch.
    """

    def __init__(self, parts: Sequence[Part], tasks: Sequence[Task], batch_size: int, seed: int, epoch: int) -> None:
        self.parts, self.tasks, self.batch_size, self.seed, self.epoch = parts, tasks, batch_size, seed, epoch
        self.per_part = [-(-len(part) // batch_size) for part in parts]
        self._orders: dict[int, tuple[int, Tensor]] = {}  # part -> (cycle, its permutation)

    def __len__(self) -> int:
        return max(self.per_part)

    def _order(self, i: int, cycle: int) -> Tensor:
        held = self._orders.get(i)
        if held is None or held[0] != cycle:
            purpose = f"shuffle{self.epoch}"
            if len(self.parts) > 1:
                purpose += f"/{self.tasks[i].name}/{cycle}"
            generator = torch.Generator().manual_seed(derive_seed(self.seed, purpose))
            self._orders[i] = (cycle, torch.randperm(len(self.parts[i]), generator=generator))
        return self._orders[i][1]

    def __getitem__(self, k: int) -> Batch:
        """Batch ``k`` (CPU, stored dtypes): inputs stacked over tasks, the targets, and each task's rows."""
        xs, ys = [], []
        for i, part in enumerate(self.parts):
            cycle, j = divmod(k, self.per_part[i])
            rows = self._order(i, cycle)[j * self.batch_size : (j + 1) * self.batch_size]
            x, y = part.take(rows)
            xs.append(x)
            ys.extend(y)
        return stack_tasks(xs, ys)


def stack_tasks(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Batch:
    """One batch from the inputs of one part (single-input) or of one part per task, stacked, with their rows."""
    if len(xs) == 1:
        return Batch(xs[0], tuple(ys))
    bounds = list(itertools.accumulate((len(x) for x in xs), initial=0))
    return Batch(torch.cat(xs), tuple(ys), tuple(slice(a, b) for a, b in itertools.pairwise(bounds)))


def to_device(batch: Batch, tasks: Sequence[Task], device: torch.device) -> Batch:
    """A stored batch as the model reads it, on ``device``: inputs via :func:`as_input`, targets via the tasks."""
    x = as_input(batch.x.to(device, non_blocking=True))
    y = tuple(task.target(t.to(device, non_blocking=True)) for task, t in zip(tasks, batch.y, strict=True))
    return Batch(x, y, batch.rows)


# --------------------------------------------------------------------------- losses and metrics


def task_losses(outputs: Sequence[Tensor], y: Sequence[Tensor], tasks: Sequence[Task]) -> Tensor:
    """The vector of task losses [T] of one batch: each task's own loss on its head's output and its targets."""
    return torch.stack([task.loss(out, target) for out, target, task in zip(outputs, y, tasks, strict=True)])


@torch.no_grad()
def evaluate(model: nn.Module, data: MTLData, split: str, device: torch.device, batch_size: int) -> dict:
    """Metrics of every task on ``split`` over the whole set: task -> metric -> value.

    ``model`` maps inputs to the list of head outputs (the step's
    :class:`~mtlrepro.step.Predictor`, so transformed head inputs are evaluated
    as trained). Each task's accumulator sums over every batch of the split
    (:mod:`mtlrepro.accumulators`); a multi-input task is scored on its own inputs.
    """
    model.eval()
    tasks = data.tasks
    found = {}
    groups = [[t] for t in range(len(tasks))] if data.multi_input else [list(range(len(tasks)))]
    for group in groups:
        x, _ = data.task_split(split, group[0])
        targets = [data.task_split(split, t)[1] for t in group]
        accumulators = {t: tasks[t].accumulator() for t in group}
        for start in range(0, len(x), batch_size):
            outputs = model(as_input(x[start : start + batch_size].to(device)))
            for t, target in zip(group, targets, strict=True):
                accumulators[t].update(outputs[t], tasks[t].target(target[start : start + batch_size].to(device)))
        found |= {tasks[t].name: accumulators[t].compute() for t in group}
    model.train()
    return {task.name: found[task.name] for task in tasks}


def selection_score(
    metrics: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]], tasks: Sequence[Task]
) -> float:
    """Delta_p of validation ``metrics`` against ``base`` (the first epoch's), over every metric of every task.

    RW's Delta_p (:func:`~mtlrepro.metrics.delta_p`), as LibMTL selects epochs
    against its first evaluation, but on the validation split: scale-free, so
    a segmentation mIoU in percent and a depth error in metres count alike.
    Metrics whose base is 0 are left out (their relative change is undefined).
    """
    directions = {}
    for task in tasks:
        usable = {k: d for k, d in task.metrics.items() if base[task.name][k] != 0}
        if usable:
            directions[task.name] = usable
    return delta_p(metrics, base, directions) if directions else 0.0


# --------------------------------------------------------------------------- assembly


def _generator(seed: int, purpose: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose))


def build_methods(spec: RunSpec, n_tasks: int, device: torch.device) -> list[Method]:
    """The run's method stages in order (loss weighting first), each with its own random generator."""
    purposes = {LOSS: "loss", GRADIENT: "grad"}
    methods = []
    for ref in spec.stages:
        method = build_stage(ref, n_tasks, torch.Generator(device=device))
        method.generator.manual_seed(derive_seed(spec.seed, purposes[method.kind]))
        methods.append(method)
    return methods


def held_out_request(methods: Sequence[Method]) -> tuple[float, str] | None:
    """(fraction, labels) of the held-out slice some method needs, or None."""
    for method in methods:
        if Need.HELD_OUT in method.needs:
            return float(method.options.held_out_fraction), str(method.options.held_out_labels)
    return None


def make_optimizer(model: nn.Module, methods: Sequence[Method], options: TrainingOptions) -> torch.optim.Optimizer:
    """SGD with momentum or Adam over the model; each method's own parameters in their own group.

    A method's parameters train with the method's learning rate and no weight
    decay, never inheriting the model's by accident.
    """
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    for method in methods:
        own = list(method.parameters())
        if own:
            groups.append({"params": own, "lr": method.lr, "weight_decay": 0.0})
    if options.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)
    return torch.optim.Adam(groups, lr=options.lr, weight_decay=options.weight_decay)


class HeldOutSampler:
    """Random batches of the held-out slice (one per task, multi-input), from a generator the checkpoint keeps."""

    def __init__(
        self,
        parts: Sequence[Part],
        tasks: Sequence[Task],
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        self.parts, self.tasks, self.batch_size = parts, tasks, batch_size
        self.generator, self.device = generator, device

    def __call__(self) -> Batch:
        xs, ys = [], []
        for part in self.parts:
            x, y = part.take(torch.randperm(len(part), generator=self.generator)[: self.batch_size])
            xs.append(x)
            ys.extend(y)
        return to_device(stack_tasks(xs, ys), self.tasks, self.device)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, so every number traces back to the software that made it."""
    versions = {}
    for package in ("mtlrepro", "torch", "numpy", "scikit-learn", "snakemake"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _by_task(values: Tensor | None, tasks: Sequence[Task]) -> dict[str, float] | None:
    if values is None:
        return None
    return {task.name: float(v) for task, v in zip(tasks, values.tolist(), strict=True)}


class EpochSums:
    """Device-side running sums of one epoch's step results (no host sync until the epoch ends)."""

    def __init__(self) -> None:
        self.steps = 0
        self.sums: dict[str, Tensor] = {}

    def add(self, result: StepResult) -> None:
        self.steps += 1
        values = {"loss": result.losses, "loss_weights": result.loss_weights, "grad_weights": result.grad_weights}
        for key, value in (values | result.diagnostics).items():
            if value is not None:
                value = value.detach().double()
                self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()

    def mean(self, key: str) -> Tensor | None:
        return None if key not in self.sums else (self.sums[key] / self.steps).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "sums": dict(self.sums)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: torch.device) -> EpochSums:
        sums = cls()
        sums.steps = int(state["steps"])
        sums.sums = {str(key): value.to(device) for key, value in state["sums"].items()}
        return sums


@dataclass
class EpochInProgress:
    """The epoch being trained: its number, the sums of the steps done so far, when it started (perf_counter)."""

    epoch: int
    sums: EpochSums
    started: float

    @property
    def steps(self) -> int:
        """The steps of this epoch done so far."""
        return self.sums.steps

    @classmethod
    def start(cls, epoch: int) -> EpochInProgress:
        return cls(epoch, EpochSums(), time.perf_counter())

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "sums": self.sums.state_dict(), "seconds": time.perf_counter() - self.started}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: torch.device) -> EpochInProgress:
        sums = EpochSums.from_state_dict(state["sums"], device)
        return cls(int(state["epoch"]), sums, time.perf_counter() - float(state["seconds"]))


def _rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """torch's global random states (CPU, and the run's CUDA device): nothing draws from them now, but a
    method or layer that does must not make a resumed run differ."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: Mapping[str, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------- the run


@dataclass
class Session:
    """Everything a checkpoint must hold to continue a run bit-identically."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    methods: list[Method]
    stepper: Stepper
    held_out: HeldOutSampler | None
    device: torch.device
    history: list[dict[str, Any]] = field(default_factory=list)
    clock: dict[str, Any] = field(default_factory=lambda: {"train_seconds": 0.0, "iterations": 0})
    selected: dict[str, Any] | None = None
    """``{"epoch", "model"}``: the weights of the epoch the selection rule picks so far (on the CPU)."""

    def consider(self, tasks: Sequence[Task], rule: str) -> None:
        """Keep the latest epoch's weights if the selection rule now picks it (validation split only)."""
        chosen = select_epoch(self.history, tasks, rule)
        if self.selected is None or chosen["epoch"] != self.selected["epoch"]:
            model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.selected = {"epoch": chosen["epoch"], "model": model}

    def state_dict(self, run_hash: str, unfinished: EpochInProgress | None = None) -> dict[str, Any]:
        """The checkpoint: after ``history``'s epochs and, if given, the steps done of the ``unfinished`` one."""
        return {
            "run_hash": run_hash,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "methods": [method.state_dict() for method in self.methods],
            "held_out": None if self.held_out is None else self.held_out.generator.get_state(),
            "history": self.history,
            "clock": self.clock,
            "selected": self.selected,
            "rng": _rng_state(self.device),
            "unfinished": None if unfinished is None else unfinished.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> EpochInProgress | None:
        """Continue from a checkpoint of :meth:`state_dict`; return the epoch it stopped within, if any."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for method, method_state in zip(self.methods, state["methods"], strict=True):
            method.load_state_dict(method_state)
        if self.held_out is not None:
            self.held_out.generator.set_state(state["held_out"])
        self.history, self.clock = list(state["history"]), dict(state["clock"])
        self.selected = state["selected"]
        unfinished = None
        if state["unfinished"] is not None:
            unfinished = EpochInProgress.from_state_dict(state["unfinished"], self.device)
            if unfinished.epoch != len(self.history) + 1:
                raise ValueError(f"unfinished epoch {unfinished.epoch} does not follow epoch {len(self.history)}")
        _set_rng_state(state["rng"], self.device)
        return unfinished


def build_session(spec: RunSpec, run_data: RunData, methods: list[Method], device: torch.device) -> Session:
    """Model (seeded), step, methods set up on the device, optimizer with the methods' own parameter groups."""
    tasks, options = run_data.data.tasks, spec.training
    torch.manual_seed(derive_seed(spec.seed, "init"))
    module = dataset_module(spec.dataset)
    first = run_data.train[0]
    sample = as_input(first.split.x[first.index[:1]]).to(device)
    encoder_options = getattr(module, "ENCODER_OPTIONS", None)
    model = build_model(spec.arch, module.ENCODER, tuple(sample.shape[1:]), tasks, encoder_options).to(device)
    held_out = None
    if run_data.held_out is not None:
        generator = _generator(spec.seed, "held_out_batches", torch.device("cpu"))
        held_out = HeldOutSampler(run_data.held_out, tasks, options.batch_size, generator, device)
    loss_weighting, aggregator = (next((m for m in methods if m.kind == kind), None) for kind in (LOSS, GRADIENT))
    stepper = Stepper(model, len(tasks), partial(task_losses, tasks=tasks), loss_weighting, aggregator, held_out)
    steps = len(EpochBatches(run_data.train, tasks, options.batch_size, spec.seed, 1))
    stepper.setup(sample, steps, options.epochs, [t.name for t in tasks])
    return Session(model, make_optimizer(model, methods, options), methods, stepper, held_out, device)


def train_epoch(
    session: Session,
    run_data: RunData,
    spec: RunSpec,
    current: EpochInProgress,
    device: torch.device,
    bar: tqdm,
    after_step: Callable[[], None] | None = None,
) -> EpochSums:
    """The rest of one epoch of seeded batches (:class:`EpochBatches`): those after the ``current.sums.steps``
    already done, each augmented when the dataset says how (seeded per step). ``after_step`` runs after every
    optimizer step. Returns the epoch's device-side sums."""
    epoch, sums, tasks = current.epoch, current.sums, run_data.data.tasks
    epoch_batches = EpochBatches(run_data.train, tasks, spec.training.batch_size, spec.seed, epoch)
    augment = getattr(dataset_module(spec.dataset), "augment", None) if spec.training.augment else None
    for k in range(sums.steps, len(epoch_batches)):
        x, y, rows = to_device(epoch_batches[k], tasks, device)
        if augment is not None:
            x, y = augment(x, y, _generator(spec.seed, f"augment{epoch}/{k}", device))
        session.optimizer.zero_grad(set_to_none=True)
        iteration = session.clock["iterations"] + sums.steps
        sums.add(session.stepper.step(x, y, epoch=epoch, iteration=iteration, rows=rows))
        session.optimizer.step()
        bar.update()
        if after_step is not None:
            after_step()
    return sums


def finish_epoch(
    session: Session, current: EpochInProgress, run_data: RunData, spec: RunSpec, device: torch.device
) -> dict[str, Any]:
    """Close a trained epoch: clock, finite-loss check, the methods' epoch end, evaluation, history, selection.

    Returns the epoch's record (also appended to the session's history).
    """
    sums, epoch = current.sums, current.epoch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    session.clock["train_seconds"] += time.perf_counter() - current.started
    session.clock["iterations"] += sums.steps
    _check_finite(sums.mean("loss"), run_data.data.tasks, epoch, spec)
    for method in session.methods:
        method.on_epoch_end(epoch, sums.mean("loss").to(device))
    record = epoch_record(epoch, sums, session, run_data, spec, device)
    session.history.append(record | {"seconds": time.perf_counter() - current.started})
    session.consider(run_data.data.tasks, spec.training.selection)
    return record


def epoch_record(
    epoch: int, sums: EpochSums, session: Session, run_data: RunData, spec: RunSpec, device: torch.device
) -> dict[str, Any]:
    """One epoch's entry of the run record: mean training losses and weights, diagnostics, val/test metrics."""
    tasks, batch = run_data.data.tasks, spec.training.eval_batch_size
    scalars = ("loss", "loss_weights", "grad_weights")
    return {
        "epoch": epoch,
        "train_loss": _by_task(sums.mean("loss"), tasks),
        "loss_weights": _by_task(sums.mean("loss_weights"), tasks),
        "grad_weights": _by_task(sums.mean("grad_weights"), tasks),
        "diagnostics": {key: _by_task(sums.mean(key), tasks) for key in sums.sums if key not in scalars},
        "val": evaluate(session.stepper.predictor, run_data.data, "val", device, batch),
        "test": evaluate(session.stepper.predictor, run_data.data, "test", device, batch),
    }


def train(
    spec: RunSpec,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
    checkpoint_minutes: float | None = None,
) -> dict[str, Any]:
    """Train the run described by ``spec`` and write ``out_dir/metrics.json``; return its content.

    ``checkpoint_minutes``: also checkpoint within an epoch once that many minutes have passed since the last
    checkpoint (0: after every step; None: at epoch ends only). It never changes the numbers. SIGTERM or SIGINT
    stops training at the next step with a checkpoint and :class:`~mtlrepro.interrupt.Interrupted`;
    ``on_checkpoint(epoch)`` is called after every epoch's checkpoint.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_execution_options(threads, checkpoint_minutes)
    dev = pick_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=dev.type == "cuda")

    with StopRequest() as stop, run_directory(out_dir):
        # method: loss weighting and/or gradient aggregator, each with its own generator
        methods = build_methods(spec, len(dataset_module(spec.dataset).TASKS), dev)

        # data: the prepared cache, label noise on the training split only, a held-out slice if asked for
        run_data = prepare_run_data(spec, data_path, held_out_request(methods))
        provenance = run_provenance(spec, data_path)
        run_hash = digest(provenance)

        # model, step and optimizer, resumed from a checkpoint of this very spec, data and code
        checkpoints = Checkpoints(out_dir / CHECKPOINT_FILE, run_hash, checkpoint_minutes, stop)
        session, unfinished = resume_or_start(spec, run_data, methods, dev, checkpoints.path, run_hash)
        resumed = (len(session.history), 0 if unfinished is None else unfinished.sums.steps)

        # loop: train an epoch (checkpointing within it when due or asked to stop), evaluate, checkpoint
        n_batches = len(EpochBatches(run_data.train, run_data.data.tasks, spec.training.batch_size, spec.seed, 1))
        with progress_bar(spec, n_batches, resumed, progress) as bar:
            for epoch in range(resumed[0] + 1, spec.training.epochs + 1):
                current, unfinished = unfinished or EpochInProgress.start(epoch), None
                after_step = partial(checkpoints.after_step, session, current)
                train_epoch(session, run_data, spec, current, dev, bar, after_step)
                record = finish_epoch(session, current, run_data, spec, dev)
                score = selection_score(record["val"], session.history[0]["val"], run_data.data.tasks)
                bar.set_postfix(epoch=epoch, val_delta_p=f"{score:+.2f}")

                checkpoints.save(session)
                if on_checkpoint is not None:
                    on_checkpoint(epoch)
                checkpoints.stop_if_asked(session)

        # the selected epoch's weights, then the run record, written last and atomically
        save_torch_atomic(out_dir / SELECTED_FILE, session.selected)
        provenance |= {
            "run_hash": run_hash,
            "resumed_from_epoch": resumed[0],
            "resumed_from_step": resumed[1],
            "interruptions": session.clock.get("interruptions", []),
        }
        result = run_record(
            spec, run_data, session.methods, session.history, provenance, session.clock, started, dev, out_dir
        )
        write_json_atomic(out_dir / METRICS_FILE, result)
    return result


def progress_bar(spec: RunSpec, n_batches: int, resumed: tuple[int, int], enabled: bool) -> tqdm:
    """A bar over every step of the run (``n_batches`` per epoch), from the (epochs, steps) ``resumed``."""
    return tqdm(
        total=spec.training.epochs * n_batches,
        initial=resumed[0] * n_batches + resumed[1],
        disable=not enabled,
        desc=f"{spec.method} seed{spec.seed}",
        mininterval=2.0,
    )


def _check_execution_options(threads: int | None, checkpoint_minutes: float | None) -> None:
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads}")
    if checkpoint_minutes is not None and not checkpoint_minutes >= 0:  # NaN included
        raise ConfigError(f"checkpoint_minutes must be 0 or more (0: after every step), got {checkpoint_minutes}")


# --------------------------------------------------------------------------- resuming


def resume_or_start(
    spec: RunSpec, run_data: RunData, methods: list[Method], device: torch.device, path: Path, run_hash: str
) -> tuple[Session, EpochInProgress | None]:
    """A new session, continued from the checkpoint at ``path`` if it was written under ``run_hash``.

    Returns the session and the epoch the checkpoint stopped within (None at an
    epoch boundary). A checkpoint that does not fit the session is reported,
    removed, and the run starts from scratch with freshly built methods.
    """
    session = build_session(spec, run_data, methods, device)
    state = read_checkpoint(path, run_hash)
    if state is None:
        return session, None
    try:
        return session, session.load_state_dict(state)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        discard_checkpoint(path, f"it does not fit this run ({describe_error(err)})")
    fresh = build_methods(spec, len(run_data.data.tasks), device)
    return build_session(spec, run_data, fresh, device), None


def _check_finite(mean_loss: Tensor, tasks: Sequence[Task], epoch: int, spec: RunSpec) -> None:
    if not torch.isfinite(mean_loss).all():
        bad = [task.name for task, ok in zip(tasks, torch.isfinite(mean_loss).tolist(), strict=True) if not ok]
        raise TrainingError(
            f"non-finite training loss for task(s) {', '.join(bad)} in epoch {epoch} of run "
            f"{spec.method} seed {spec.seed}: lower the learning rate (training.lr = {spec.training.lr})"
        )


def select_epoch(history: Sequence[Mapping[str, Any]], tasks: Sequence[Task], rule: str) -> Mapping[str, Any]:
    """The reported epoch: the last, or the best on the validation split (earliest on ties); never the test split."""
    if rule == "last":
        return history[-1]
    base = history[0]["val"]
    return max(history, key=lambda r: (selection_score(r["val"], base, tasks), -r["epoch"]))


def run_record(
    spec: RunSpec,
    run_data: RunData,
    methods: Sequence[Method],
    history: list[dict[str, Any]],
    provenance: dict[str, Any],
    clock: Mapping[str, Any],
    started: float,
    device: torch.device,
    out_dir: Path,
) -> dict[str, Any]:
    """The content of ``metrics.json`` (format :data:`~mtlrepro.run.RUN_FORMAT`)."""
    data, tasks = run_data.data, run_data.data.tasks
    rule = spec.training.selection
    chosen = select_epoch(history, tasks, rule)
    sizes: dict[str, Any] = {}
    for name, part in data.splits.items():
        multi = isinstance(part, tuple)
        sizes[name] = {t.name: len(p) for t, p in zip(tasks, part, strict=True)} if multi else len(part)
    sizes["train_used"] = run_data.n_train
    if run_data.held_out is not None:
        sizes["held_out"] = sum(len(part) for part in run_data.held_out)
    return {
        "format": RUN_FORMAT,
        "run": {
            "dataset": spec.dataset,
            "arch": spec.arch,
            "method": spec.method,
            "noise": spec.noise_label,
            "seed": spec.seed,
            "dir": str(out_dir),
        },
        "spec": spec.to_json(),
        "spec_hash": provenance["spec_hash"],
        "provenance": provenance,
        "dataset": {
            "name": data.name,
            "stand_in": data.stand_in,
            "tasks": [{"name": t.name, "metrics": dict(t.metrics)} for t in tasks],
            "sizes": sizes,
            "provenance": data.meta,
            "noise": run_data.noise,
        },
        "methods": [m.describe() for m in methods],
        "epochs": history,
        "selection": {
            "rule": rule,
            "description": (
                "highest Delta_p of the validation metrics against the first epoch's"
                if rule == "best_val"
                else "last epoch"
            ),
            "epoch": chosen["epoch"],
        },
        "final": {"val": chosen["val"], "test": chosen["test"]},
        "timing": {
            "wall_seconds": time.perf_counter() - started,
            "train_seconds": clock["train_seconds"],
            "iterations": clock["iterations"],
            "ms_per_iter": 1000.0 * clock["train_seconds"] / max(clock["iterations"], 1),
        },
        "memory": {
            "peak_rss_mb": _peak_rss_mb(),
            "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        },
        "environment": environment(device),
    }
