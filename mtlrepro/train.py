"""Train one run: data, model, method, loop, evaluation, checkpoint, record.

A run is fully described by its *spec* (see :mod:`mtlrepro.studies`): dataset,
architecture, method, label noise, seed and hyperparameters. :func:`train`
reads the prepared dataset cache, trains, evaluates every epoch, checkpoints
every epoch (so a killed job resumes where it stopped) and, as its last act,
writes ``metrics.json`` atomically into the run directory.

One training step (RW paper, Algorithm 1):

* loss weighting only (EW, RLW): minimise ``sum_t lambda_t l_t``; every
  parameter sees the weights;
* gradient aggregation (RGW, ...): the per-task gradients of the shared
  parameters theta are written into one preallocated matrix ``G`` [T x D] on
  the model's device, the aggregator turns ``G`` into theta's update direction,
  and each head psi_t gets its own gradient ``grad_psi_t l_t``;
* a combination ``loss+grad`` does both: row t of ``G`` and head t's gradient
  come from the weighted loss ``lambda_t l_t``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

import mtlrepro
from mtlrepro import metrics, seeding
from mtlrepro.archs import arch_class, build_model
from mtlrepro.data import MTLData, Split, Task, dataset_module, load
from mtlrepro.data import noise as noise_module
from mtlrepro.data.noise import corrupt_labels
from mtlrepro.errors import ConfigError, TrainingError
from mtlrepro.io import digest, save_torch_atomic, write_json_atomic
from mtlrepro.metrics import HIGHER, correct_count
from mtlrepro.models import encoder_class
from mtlrepro.options import build_options
from mtlrepro.seeding import derive_seed
from mtlrepro.weighting import MethodSpec, resolve_entry
from mtlrepro.weighting.base import GradientAggregator, LossWeighting

RUN_FORMAT = "mtlrepro.run/1"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class TrainingOptions:
    """Optimisation hyperparameters; defaults are the RW paper's Multi-MNIST setting (Sec. 5.1).

    ``weight_sum``: loss weights on the simplex (``one``, the paper's Eq. 1 with
    EW at 1/T) or scaled to sum to T (``tasks``, as in LibMTL's EW).
    ``grad_wrt``: gradient aggregators see per-task gradients of the shared
    parameters (``params``, Algorithm 1) or of the shared representation z
    (``representation``, the cheaper variant of Sec. 3).
    ``selection``: report the epoch with the best validation score (mean over
    tasks of each task's first metric, sign-adjusted) or the last epoch.
    ``noise_seed``: seed of the label corruption, shared by every method and
    seed of a study so that all of them see the same noisy labels.
    """

    epochs: int = 100
    batch_size: int = 256
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    weight_sum: Literal["one", "tasks"] = "one"
    grad_wrt: Literal["params", "representation"] = "params"
    selection: Literal["best_val", "last"] = "best_val"
    eval_batch_size: int = 1024
    noise_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def resolve_training(values: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Validate training options (naming the key ``where`` on error) and fill in defaults."""
    return dataclasses.asdict(build_options(TrainingOptions, values, where))


def pick_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda`` as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was requested but no CUDA device is available")
    return torch.device(requested)


# --------------------------------------------------------------------------- data


def _as_float(x: Tensor) -> Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def batches(split: Split, batch_size: int, order: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x, y) minibatches of ``split`` in ``order`` (default: as stored)."""
    n = len(split)
    index = torch.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        take = index[start : start + batch_size]
        yield split.x[take], split.y[take]


# --------------------------------------------------------------------------- losses and metrics


def task_losses(outputs: Sequence[Tensor], y: Tensor, tasks: Sequence[Task]) -> Tensor:
    """The vector of task losses [T] of one batch (cross-entropy per classification task)."""
    losses = []
    for t, (out, task) in enumerate(zip(outputs, tasks, strict=True)):
        if task.loss != "cross_entropy":
            raise ConfigError(f"task {task.name}: loss {task.loss!r} is not supported")
        losses.append(F.cross_entropy(out, y[:, t]))
    return torch.stack(losses)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, tasks: Sequence[Task], device: torch.device, batch_size: int) -> dict:
    """Metrics of every task on ``split``: task -> metric -> value (accuracy in %)."""
    model.eval()
    correct = torch.zeros(len(tasks), dtype=torch.long)
    for x, y in batches(split, batch_size):
        outputs = model(_as_float(x.to(device)))
        for t, out in enumerate(outputs):
            correct[t] += correct_count(out.cpu(), y[:, t])
    model.train()
    return {task.name: {"acc": 100.0 * float(correct[t]) / len(split)} for t, task in enumerate(tasks)}


def selection_score(metrics: Mapping[str, Mapping[str, float]], tasks: Sequence[Task]) -> float:
    """Mean over tasks of each task's first metric, negated when lower is better."""
    scores = []
    for task in tasks:
        name, direction = next(iter(task.metrics.items()))
        value = metrics[task.name][name]
        scores.append(value if direction == HIGHER else -value)
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------- one step


class Stepper:
    """Computes and applies one update for a model under a loss weighting and/or aggregator."""

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        loss_weighting: LossWeighting | None,
        aggregator: GradientAggregator | None,
        options: TrainingOptions,
    ) -> None:
        self.model = model
        self.tasks = tasks
        self.n_tasks = len(tasks)
        self.loss_weighting = loss_weighting
        self.aggregator = aggregator
        self.options = options
        self.shared = model.shared_parameters()
        self.heads = [model.task_parameters(t) for t in range(self.n_tasks)]
        self._grads: Tensor | None = None  # preallocated G [T x D], reused every step

    def _matrix(self, width: int, like: Tensor) -> Tensor:
        if self._grads is None or self._grads.shape[1] != width:
            self._grads = torch.empty(self.n_tasks, width, dtype=like.dtype, device=like.device)
        return self._grads

    def step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Set every parameter's ``.grad`` for batch (x, y); return losses, loss and gradient weights."""
        z = self.model.encode(x)
        if self.aggregator is not None and self.options.grad_wrt == "representation":
            z_in = z.detach().requires_grad_(True)
        else:
            z_in = z
        losses = task_losses(self.model.decode(z_in), y, self.tasks)

        loss_weights = None
        weighted = losses
        if self.loss_weighting is not None:
            loss_weights = self.loss_weighting.weights(losses).detach()
            if self.options.weight_sum == "tasks":
                loss_weights = loss_weights * self.n_tasks
            weighted = losses * loss_weights

        if self.aggregator is None:
            weighted.sum().backward()
            return losses.detach(), loss_weights, None

        wrt = [z_in] if self.options.grad_wrt == "representation" else self.shared
        width = sum(p.numel() for p in wrt)
        grads = self._matrix(width, weighted)
        for t in range(self.n_tasks):
            inputs = [*wrt, *self.heads[t]]
            task_grads = torch.autograd.grad(weighted[t], inputs, retain_graph=t < self.n_tasks - 1)
            offset = 0
            for g in task_grads[: len(wrt)]:
                grads[t, offset : offset + g.numel()].copy_(g.reshape(-1))
                offset += g.numel()
            for p, g in zip(self.heads[t], task_grads[len(wrt) :], strict=True):
                p.grad = g
        aggregation = self.aggregator.aggregate(grads)
        direction = aggregation.direction
        if self.options.grad_wrt == "representation":
            z.backward(direction.view_as(z))
        else:
            offset = 0
            for p in self.shared:
                p.grad = direction[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        weights = None if aggregation.weights is None else aggregation.weights.detach()
        return losses.detach(), loss_weights, weights


# --------------------------------------------------------------------------- run assembly


def build_method(spec: Mapping[str, Any]) -> MethodSpec:
    """Rebuild the :class:`MethodSpec` recorded in a run spec."""
    components = {}
    for kind in ("loss", "gradient"):
        entry = spec["method"].get(kind)
        components[kind] = None if entry is None else resolve_entry(entry["entry"], entry["config"])
    return MethodSpec(expression=spec["method"]["expression"], loss=components["loss"], gradient=components["gradient"])


def code_files(spec: Mapping[str, Any]) -> list[Path]:
    """The code files a run's numbers depend on.

    The training core (this module, metrics, seeding, label noise), the run's
    architecture and encoder modules, and its method's modules. The workflow
    declares them as inputs of the run's job; :func:`run_provenance` hashes them.
    """
    encoder = dataset_module(spec["dataset"]).ENCODER
    core = (sys.modules[__name__], metrics, seeding, noise_module, arch_class(spec["arch"]), encoder_class(encoder))
    files = {Path(inspect.getfile(obj)) for obj in core}
    for component in build_method(spec).components:
        files.update(component.sources)
    return sorted(files)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def run_provenance(spec: Mapping[str, Any], data_path: str | Path) -> dict[str, Any]:
    """What a run's numbers are a function of: its spec, its data cache and its code, as hashes.

    A checkpoint is resumed only under an equal provenance, so a job that is
    rerun because its method's code or its data changed trains from scratch,
    while a killed job resumes.
    """
    package = Path(inspect.getfile(mtlrepro)).parent
    code = {str(path.relative_to(package)): file_sha256(path) for path in code_files(spec)}
    return {"spec_hash": digest(spec), "data_sha256": file_sha256(data_path), "code_sha256": code}


def _generator(seed: int, purpose: str, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, purpose))


def make_optimizer(model: nn.Module, options: TrainingOptions) -> torch.optim.Optimizer:
    """SGD with momentum or Adam, as the dataset's setting asks."""
    if options.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)


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


# --------------------------------------------------------------------------- the run


def train(
    spec: Mapping[str, Any],
    data_path: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train the run described by ``spec`` and write ``out_dir/metrics.json``; return its content."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(spec["seed"])
    options = build_options(TrainingOptions, spec["training"], "training")
    dev = pick_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=dev.type == "cuda")

    # data: the prepared cache, with the study's label noise on the training split only
    data: MTLData = load(spec["dataset"], data_path)
    provenance = run_provenance(spec, data_path)
    run_hash = digest(provenance)
    tasks = data.tasks
    train_split = data.splits["train"]
    noise_record = {}
    if any(rate > 0 for rate in spec["noise"].values()):
        noisy_y, noise_record = corrupt_labels(train_split.y, tasks, spec["noise"], seed=options.noise_seed)
        train_split = Split(x=train_split.x, y=noisy_y, source=train_split.source)

    # model: the architecture around the dataset's encoder, seeded
    torch.manual_seed(derive_seed(seed, "init"))
    encoder = dataset_module(spec["dataset"]).ENCODER
    model = build_model(spec["arch"], encoder, tuple(train_split.x.shape[1:]), [t.n_classes for t in tasks]).to(dev)

    # method: loss weighting and/or gradient aggregator, each with its own generator
    method = build_method(spec)
    loss_weighting = None if method.loss is None else method.loss.build(len(tasks), _generator(seed, "loss", dev))
    aggregator = None if method.gradient is None else method.gradient.build(len(tasks), _generator(seed, "grad", dev))
    stepper = Stepper(model, tasks, loss_weighting, aggregator, options)  # type: ignore[arg-type]
    optimizer = make_optimizer(model, options)

    # resume: only from a checkpoint of this very spec, data and code
    history: list[dict[str, Any]] = []
    train_seconds, iterations = 0.0, 0
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if checkpoint_path.is_file():
        # on the CPU: generator states must stay CPU byte tensors; load_state_dict moves the rest
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("run_hash") == run_hash:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            for m, s in zip((loss_weighting, aggregator), state["methods"], strict=True):
                if m is not None:
                    m.load_state_dict(s)
            history, train_seconds, iterations = state["history"], state["train_seconds"], state["iterations"]
    resumed_from = len(history)

    # loop
    n_batches = -(-len(train_split) // options.batch_size)
    with tqdm(
        total=options.epochs * n_batches,
        initial=len(history) * n_batches,
        disable=not progress,
        desc=f"{spec['method']['expression']} seed{seed}",
        mininterval=2.0,
    ) as bar:
        for epoch in range(len(history) + 1, options.epochs + 1):
            epoch_start = time.perf_counter()
            order = torch.randperm(len(train_split), generator=_generator(seed, f"shuffle{epoch}", torch.device("cpu")))
            loss_sum = torch.zeros(len(tasks), dtype=torch.float64, device=dev)
            lw_sum = torch.zeros(len(tasks), dtype=torch.float64, device=dev)
            gw_sum = torch.zeros(len(tasks), dtype=torch.float64, device=dev)
            steps = 0
            for x, y in batches(train_split, options.batch_size, order):
                x, y = _as_float(x.to(dev, non_blocking=True)), y.to(dev, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                losses, lw, gw = stepper.step(x, y)
                optimizer.step()
                loss_sum += losses
                if lw is not None:
                    lw_sum += lw
                if gw is not None:
                    gw_sum += gw
                steps += 1
                bar.update()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            train_seconds += time.perf_counter() - epoch_start
            iterations += steps
            mean_loss = (loss_sum / steps).cpu()
            if not torch.isfinite(mean_loss).all():
                bad = [task.name for task, ok in zip(tasks, torch.isfinite(mean_loss).tolist(), strict=True) if not ok]
                raise TrainingError(
                    f"non-finite training loss for task(s) {', '.join(bad)} in epoch {epoch} of run "
                    f"{spec['method']['expression']} seed {seed}: lower the learning rate (training.lr = {options.lr})"
                )

            # evaluation
            record = {
                "epoch": epoch,
                "train_loss": _by_task(mean_loss, tasks),
                "loss_weights": _by_task(lw_sum.cpu() / steps if loss_weighting else None, tasks),
                "grad_weights": _by_task(gw_sum.cpu() / steps if aggregator else None, tasks),
                "val": evaluate(model, data.splits["val"], tasks, dev, options.eval_batch_size),
                "test": evaluate(model, data.splits["test"], tasks, dev, options.eval_batch_size),
                "seconds": time.perf_counter() - epoch_start,
            }
            history.append(record)
            bar.set_postfix(epoch=epoch, val=f"{selection_score(record['val'], tasks):.2f}")

            # checkpoint
            save_torch_atomic(
                checkpoint_path,
                {
                    "run_hash": run_hash,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "methods": [None if m is None else m.state_dict() for m in (loss_weighting, aggregator)],
                    "history": history,
                    "train_seconds": train_seconds,
                    "iterations": iterations,
                },
            )
            if on_checkpoint is not None:
                on_checkpoint(epoch)

    # selection and the run record, written last and atomically
    if options.selection == "last":
        chosen = history[-1]
    else:
        chosen = max(history, key=lambda r: (selection_score(r["val"], tasks), -r["epoch"]))
    result = {
        "format": RUN_FORMAT,
        "run": {
            "dataset": spec["dataset"],
            "arch": spec["arch"],
            "method": spec["method"]["expression"],
            "noise": spec["noise_label"],
            "seed": seed,
            "dir": str(out_dir),
        },
        "spec": dict(spec),
        "spec_hash": provenance["spec_hash"],
        "provenance": provenance | {"run_hash": run_hash, "resumed_from_epoch": resumed_from},
        "dataset": {
            "name": data.name,
            "stand_in": data.stand_in,
            "tasks": [{"name": t.name, "metrics": dict(t.metrics)} for t in tasks],
            "sizes": {name: len(split) for name, split in data.splits.items()},
            "provenance": data.meta,
            "noise": noise_record,
        },
        "methods": [m.describe() for m in (loss_weighting, aggregator) if m is not None],
        "epochs": history,
        "selection": {
            "rule": options.selection,
            "description": "highest mean validation score over tasks"
            if options.selection == "best_val"
            else "last epoch",
            "epoch": chosen["epoch"],
        },
        "final": {"val": chosen["val"], "test": chosen["test"]},
        "timing": {
            "wall_seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,
            "iterations": iterations,
            "ms_per_iter": 1000.0 * train_seconds / max(iterations, 1),
        },
        "memory": {
            "peak_rss_mb": _peak_rss_mb(),
            "peak_device_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        },
        "environment": environment(dev),
    }
    write_json_atomic(out_dir / METRICS_FILE, result)
    return result
