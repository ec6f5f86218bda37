"""Flatness of the minimum a run reached: top Hessian eigenvalue and gradient variance (RW Sec. 5.1, Figure 1).

RW (Sec. 5.1, "Flatness Measures") compares EW and RLW by "the maximum eigenvalue of Hessian
nabla^2 L(theta) computed on the whole training dataset (Foret et al., 2020) and the variance of gradient
nabla L(theta) over all batches on the training dataset (Jiang et al., 2020)"; lower means flatter. Both are
measured here on the weights of a run's *selected* epoch (its own selection rule, validation split only).

The training loss. A multi-task model has one loss per task; the paper's "training loss" L(theta) is taken
as the **equal-weighted mean of the task losses**, L = (1/T) sum_t l_t, for every method: RW's analysis
(Sec. 4) studies L(theta) = mu^T l(theta) with mu = E[lambda] proportional to (1/T, ..., 1/T) (Sec. 3 and
Appendix B), so the same L is the common yardstick for EW and RLW alike. Each l_t is the mean cross-entropy
of task t over a minibatch (the tasks of the Multi-MNIST family are classifications).

Data. Both measures are computed on a fixed, seeded subset of the training split (``n_batches`` disjoint
minibatches of ``batch_size`` examples, drawn without replacement), with the labels the run trained on (label
noise applied as in training). The model is evaluated in ``eval`` mode so that the loss is a deterministic
function of the weights. The paper uses the whole training set; a subset keeps the cost bounded.

Top eigenvalue. Power iteration on Hessian-vector products (Pearlmutter, 1994) by PyHessian (Yao et al., 2020,
"PyHessian: Neural Networks Through the Lens of the Hessian"), ``pyhessian.hessian(...).eigenvalues(top_n=1)``,
over the whole subset: the Hessian of the mean loss over the subset. Power iteration converges to the
eigenvalue of largest *magnitude* (the largest one at a minimum, where the Hessian is nearly positive
semi-definite). The paper uses the Lanczos algorithm (Ghorbani et al., 2019) of pytorch-hessian-eigenthings;
both estimate the same quantity.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlrepro.archs import build_model
from mtlrepro.data import Split, as_input, dataset_module, load
from mtlrepro.data.noise import corrupt_targets
from mtlrepro.errors import ConfigError, DataError
from mtlrepro.io import write_json_atomic
from mtlrepro.run import METRICS_FILE, SELECTED_FILE, RunSpec
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import Task

FLATNESS_FORMAT = "mtlrepro.flatness/1"
LOSS_DESCRIPTION = "mean of task losses"
"""The loss whose Hessian and gradients are measured: (1/T) sum_t l_t (see the module docstring)."""

MEASURES = {
    "top_eigenvalue": "largest-magnitude eigenvalue of the Hessian of the training loss over the subset "
    "(PyHessian power iteration)",
    "gradient_variance": "per-parameter sample variance (ddof=1) of the minibatch gradient of the training loss "
    "over the subset's minibatches, averaged over parameters: tr(Cov[g_b]) / D",
}

TaskLosses = Callable[[Sequence[Tensor], Any], Tensor]
"""``loss_fn(outputs, y) -> [T]``: the vector of task losses of one batch (``outputs``: the model's head outputs)."""

Batch = tuple[Tensor, Any]


# --------------------------------------------------------------------------- loss and data


def task_losses(tasks: Sequence[Task]) -> TaskLosses:
    """The per-task losses of ``tasks`` as training computes them: task t's loss of head t against targets ``y[t]``."""
    n_tasks = len(tasks)

    def loss_fn(outputs: Sequence[Tensor], y: Sequence[Tensor]) -> Tensor:
        if len(outputs) != n_tasks:
            raise ValueError(f"expected {n_tasks} head outputs, got {len(outputs)}")
        return torch.stack(
            [task.loss(out, task.target(target)) for out, target, task in zip(outputs, y, tasks, strict=True)]
        )

    return loss_fn


def training_batches(split: Split, n_batches: int, batch_size: int, seed: int) -> list[Batch]:
    """``n_batches`` disjoint minibatches of ``batch_size`` examples of ``split``, drawn without replacement.

    The subset is a seeded permutation (its own generator, seed derived from ``seed``; the global RNG is not
    used). Inputs are converted to float as in training. :class:`ConfigError` if the split is too small or a
    size is not positive; at least two batches are needed for a variance.
    """
    if n_batches < 2 or batch_size < 1:
        raise ConfigError(f"flatness: need n_batches >= 2 and batch_size >= 1, got {n_batches} and {batch_size}")
    needed = n_batches * batch_size
    if needed > len(split):
        raise ConfigError(
            f"flatness: {n_batches} batches of {batch_size} need {needed} training examples, "
            f"the training split has {len(split)}"
        )
    generator = torch.Generator().manual_seed(derive_seed(seed, "flatness_batches"))
    order = torch.randperm(len(split), generator=generator)[:needed]
    return [
        (as_input(split.x[take]), tuple(target[take] for target in split.y))
        for take in order.split(batch_size)
        if len(take) == batch_size
    ]


# --------------------------------------------------------------------------- the two measures


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Run with ``model`` in eval mode; afterwards restore its train/eval mode and its ``.grad`` fields."""
    was_training = model.training
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        for p, grad in grads:
            p.grad = grad


class _Flattened(nn.Module):
    """A multi-head model as one output: the heads' outputs flattened and concatenated, [B x sum_t D_t].

    PyHessian calls ``criterion(model(x), y)`` with one output tensor; :meth:`split` gives the heads back.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.shapes: list[torch.Size] = []

    def forward(self, x: Tensor) -> Tensor:
        outputs = self.model(x)
        self.shapes = [out.shape[1:] for out in outputs]
        return torch.cat([out.flatten(1) for out in outputs], dim=1)

    def split(self, flat: Tensor) -> list[Tensor]:
        sizes = [math.prod(shape) for shape in self.shapes]
        parts = torch.split(flat, sizes, dim=1)
        return [part.reshape(part.shape[0], *shape) for part, shape in zip(parts, self.shapes, strict=True)]


class _Targets(tuple):
    """A batch's per-task targets as PyHessian handles targets: it calls ``targets.to(device)``."""

    def to(self, device: torch.device | str) -> _Targets:
        return _Targets(t.to(device) for t in self)


def _check_batches(batches: Sequence[Batch], minimum: int) -> list[Batch]:
    batches = list(batches)
    if len(batches) < minimum:
        raise ValueError(f"need at least {minimum} batch(es), got {len(batches)}")
    return batches


def top_hessian_eigenvalue(
    model: nn.Module,
    loss_fn: TaskLosses,
    batches: Sequence[Batch],
    seed: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
) -> float:
    """The top eigenvalue of the Hessian of L = mean_t l_t (mean of the task losses) over ``batches``.

    Power iteration by PyHessian on the Hessian of the example-weighted mean of the batch losses, stopping after
    ``max_iter`` iterations or when the estimate changes by less than ``tol`` (relative). PyHessian draws its
    start vector from torch's global CPU generator: it is seeded with ``seed`` here and the global RNG state is
    restored afterwards, so the result is a function of (model, data, seed) and the caller's random stream is
    untouched. The model is evaluated in eval mode; its mode and ``.grad`` fields are restored afterwards.
    PyHessian normalises vectors as v / (||v|| + 1e-6), which biases the estimate low by about 2e-6 relative.
    """
    from pyhessian import hessian  # type: ignore[import-untyped]  # untyped; imported here: only this needs it

    batches = _check_batches(batches, 1)
    wrapped = _Flattened(model)

    def criterion(flat: Tensor, y: Tensor) -> Tensor:
        return loss_fn(wrapped.split(flat), y).mean()

    cuda = next(model.parameters()).is_cuda
    with _untouched(model), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # PyHessian differentiates through loss.backward(create_graph=True); _untouched resets the .grad fields
        warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True", category=UserWarning)
        torch.manual_seed(seed)
        data = [(x, y if isinstance(y, Tensor) else _Targets(y)) for x, y in batches]
        eigenvalues, _ = hessian(wrapped, criterion, dataloader=data, cuda=cuda).eigenvalues(
            maxIter=max_iter, tol=tol, top_n=1
        )
    return float(eigenvalues[0])


def gradient_variance(model: nn.Module, loss_fn: TaskLosses, batches: Sequence[Batch]) -> float:
    """Mean over parameters of the variance across minibatches of the gradient of L = mean_t l_t.

    With g_b in R^D the gradient of L on minibatch b (all D trainable parameters, flattened) and B batches:

        GV = (1 / D) * sum_i (1 / (B - 1)) * sum_b (g_{b,i} - gbar_i)^2  =  tr(Cov_b[g_b]) / D,

    the sample (ddof = 1) estimate of the trace of the minibatch-gradient covariance, i.e. of the variance
    E||g_b - E g_b||^2 of the stochastic gradient (Bottou, Curtis & Nocedal, 2018, "Optimization Methods for
    Large-Scale Machine Learning", SIAM Review, Sec. 4.2, V[g]), divided by D so that models of different sizes
    compare; RW takes the measure from Jiang et al. (2020). Multiply by D for the trace. The variance is
    accumulated in float64 with Welford's online update (Welford, 1962, Technometrics 4(3); Knuth, TAOCP
    vol. 2, Sec. 4.2.2), so memory stays O(D) whatever B. Eval mode; ``.grad`` fields are not used.
    """
    batches = _check_batches(batches, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    count, mean, m2 = 0, torch.zeros(0), torch.zeros(0)
    with _untouched(model):
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model(x), y).mean(), params, allow_unused=True)
            g = torch.cat(
                [
                    (torch.zeros_like(p) if grad is None else grad).flatten()
                    for p, grad in zip(params, grads, strict=True)
                ]
            ).to(torch.float64)
            if count == 0:
                mean, m2 = torch.zeros_like(g), torch.zeros_like(g)
            count += 1
            delta = g - mean
            mean += delta / count
            m2 += delta * (g - mean)
    return float(m2.sum() / (count - 1) / m2.numel())


# --------------------------------------------------------------------------- one run


def _read_record(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: run record does not exist (has the run finished?)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    for key in ("spec", "selection", "dataset", "run"):
        if not isinstance(record, dict) or key not in record:
            raise DataError(f"{path}: missing key {key!r}")
    if "epoch" not in record["selection"]:
        raise DataError(f"{path}: missing key 'selection.epoch'")
    return record


def _read_selected(path: Path, epoch: int) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: the selected epoch's weights do not exist")
    try:
        selected = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise DataError(f"{path}: cannot be read as a weights file ({err})") from None
    if not isinstance(selected, dict) or "model" not in selected or "epoch" not in selected:
        raise DataError(f"{path}: expected {{'epoch', 'model'}}")
    if int(selected["epoch"]) != int(epoch):
        raise DataError(f"{path}: holds epoch {selected['epoch']}, but the run record selected epoch {epoch}")
    return selected


def _trained_labels(split: Split, tasks: Sequence[Task], spec: RunSpec) -> tuple[Split, str]:
    """The training split with the labels the run trained on (its label noise, same seed as training)."""
    if not any(rate > 0 for rate in spec.noise.values()):
        return split, "clean"
    noisy, _ = corrupt_targets(split.y, tasks, spec.noise, seed=spec.training.noise_seed)
    return Split(x=split.x, y=noisy, source=split.source), f"noisy as trained ({spec.noise_label})"


def analyse_run(
    run_dir: str | Path,
    data_path: str | Path,
    out_json: str | Path,
    n_batches: int,
    batch_size: int,
    seed: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    threads: int | None = None,
) -> dict[str, Any]:
    """Measure the flatness of run ``run_dir``'s selected epoch on CPU and write ``out_json`` atomically.

    Reads ``metrics.json`` (spec, selection) and ``selected.pt`` (``{"epoch", "model"}``, checked against the
    record's selected epoch), rebuilds the model, and computes :func:`top_hessian_eigenvalue` and
    :func:`gradient_variance` of the mean task loss on ``n_batches`` x ``batch_size`` seeded training examples
    (:func:`training_batches`) with the run's training labels. Methods that hold out part of the training split
    (MOML, ExcessMTL's held-out slice) are measured on examples of the whole training split. ``threads`` sets
    torch's CPU threads during the computation (restored afterwards; results are bit-identical for the same
    inputs and thread count); the global RNG is left as it was. Returns the JSON written: ``top_eigenvalue``,
    ``gradient_variance``, ``epoch``, ``n_batches``, ``batch_size``, ``seed``, ``loss``, plus the run, its
    selection, the stand-in label, the labels used and the sizes needed to read the numbers.
    :class:`DataError` naming the file on a missing or inconsistent input.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    record = _read_record(metrics_path)
    try:
        spec = RunSpec.from_json(record["spec"])
    except (ConfigError, ValueError, TypeError) as err:
        raise DataError(f"{metrics_path}: bad run spec ({err})") from None
    epoch = int(record["selection"]["epoch"])
    selected_path = run_dir / SELECTED_FILE
    selected = _read_selected(selected_path, epoch)
    data = load(spec.dataset, data_path, options=spec.data_options)
    if data.multi_input:
        raise ConfigError(
            f"flatness: dataset {spec.dataset} gives every task its own inputs; the Hessian of the mean task loss "
            "is measured on single-input datasets (RW Figure 1: the Multi-MNIST family)"
        )
    train, labels = _trained_labels(data.splits["train"], data.tasks, spec)
    loss_fn = task_losses(data.tasks)
    input_shape = tuple(as_input(train.x[:1]).shape[1:])
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten; keep the caller's RNG as it was
        module = dataset_module(spec.dataset)
        model = build_model(
            spec.arch, module.ENCODER, input_shape, data.tasks, getattr(module, "ENCODER_OPTIONS", None)
        )
    try:
        model.load_state_dict(selected["model"])
    except RuntimeError as err:
        raise DataError(f"{selected_path}: weights do not fit the run's model ({err})") from None
    model = model.float().cpu()

    batches = training_batches(train, n_batches, batch_size, seed)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        top = top_hessian_eigenvalue(model, loss_fn, batches, seed, max_iter=max_iter, tol=tol)
        variance = gradient_variance(model, loss_fn, batches)
    finally:
        torch.set_num_threads(previous_threads)
    result = {
        "format": FLATNESS_FORMAT,
        "top_eigenvalue": top,
        "gradient_variance": variance,
        "epoch": epoch,
        "n_batches": n_batches,
        "batch_size": batch_size,
        "seed": seed,
        "loss": LOSS_DESCRIPTION,
        "measures": MEASURES,
        "labels": labels,
        "n_examples": n_batches * batch_size,
        "n_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "power_iteration": {"max_iter": max_iter, "tol": tol},
        "run": record["run"],
        "selection": record["selection"],
        "stand_in": record["dataset"].get("stand_in"),
        "source": str(metrics_path),
    }
    write_json_atomic(out_json, result)
    return result
