"""Shared fixtures and helpers: a small prepared multi_digits cache, run specs built from a config, a tiny
double-precision HPS LeNet with a batch, per-task losses and gradients, and random gradient matrices."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mtlrepro.archs import build_model
from mtlrepro.data import Task, prepare
from mtlrepro.run import RunSpec
from mtlrepro.studies import expand

from fixtures.server import Server, local_server, no_proxy

REPO = Path(__file__).resolve().parents[1]
SMALL_DATA = {"n_train": 512, "n_val": 256, "n_test": 256}
SMALL_TRAINING = {"epochs": 2, "batch_size": 128, "lr": 0.05}
TASKS = (Task("A", n_classes=10), Task("B", n_classes=10), Task("C", n_classes=10))


def digit_tasks(n: int) -> list[Task]:
    """``n`` ten-class classification tasks t0, t1, ... (heads of the test models)."""
    return [Task(f"t{i}", n_classes=10) for i in range(n)]


#: what a workflow needs of the checkout
WORKFLOW_FILES = ("Snakefile", "workflow", "mtlrepro", "envs", "config", "reference", "profiles")


def copy_workflow(workdir: Path) -> Path:
    """Copy the workflow's files of the checkout into ``workdir`` (a throwaway project directory)."""
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
        elif source.exists():
            shutil.copy2(source, workdir / name)
    return workdir


def snakemake(workdir: Path, *args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``snakemake`` command in ``workdir``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def small_config(methods=("ew", "rlw", "rgw", "rlw+rgw"), seeds=(0,), noise=None, **training) -> dict:
    """A config for quick runs: small data, two epochs."""
    study = {"dataset": "multi_digits", "methods": list(methods), "seeds": list(seeds)}
    if noise is not None:
        study["noise"] = noise
    return {
        "datasets": {"multi_digits": {"options": dict(SMALL_DATA), "training": {**SMALL_TRAINING, **training}}},
        "methods": {"ew": {}, "rlw": {"distribution": "normal"}, "rgw": {"distribution": "normal"}},
        "studies": {"small": study},
    }


def spec_for(method: str = "rgw", seed: int = 0, noise=None, methods_config=None, **training) -> RunSpec:
    """The spec of one run of :func:`small_config` (``methods_config`` adds method entries)."""
    config = small_config(methods=(method,), seeds=(seed,), noise=noise, **training)
    config["methods"].update(methods_config or {})
    (run,) = expand(config)["small"].runs
    return run


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return prepare("multi_digits", SMALL_DATA, tmp_path_factory.mktemp("data") / "multi_digits.pt")


def make_stepper(model, tasks, expression: str, entries=None, seeds=(11, 12), held_out=None):
    """A :class:`~mtlrepro.step.Stepper` for ``expression`` (config ``entries`` optional) with seeded generators.

    The loss is cross-entropy per task on labels y [B x T], as in training.
    """
    import torch
    import torch.nn.functional as F

    from mtlrepro.step import Stepper
    from mtlrepro.weighting import parse_method

    spec = parse_method(expression, entries or {}, "test")
    n = len(tasks)
    loss = None if spec.loss is None else spec.loss.build(n, torch.Generator().manual_seed(seeds[0]))
    grad = None if spec.gradient is None else spec.gradient.build(n, torch.Generator().manual_seed(seeds[1]))

    def loss_fn(outputs, y):
        return torch.stack([F.cross_entropy(o, y[:, t]) for t, o in enumerate(outputs)])

    stepper = Stepper(model, n, loss_fn, loss, grad, held_out)
    first = next(m for m in model.encoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    shape = (first.in_channels, 36, 36) if isinstance(first, torch.nn.Conv2d) else (first.in_features,)
    stepper.setup(torch.zeros(1, *shape, dtype=first.weight.dtype), steps_per_epoch=4, epochs=3)
    return stepper


# --------------------------------------------------------------------------- a tiny HPS and its gradients


def tiny_model(n_tasks: int = len(TASKS)):
    """The HPS LeNet on 1 x 36 x 36 inputs with ``n_tasks`` 10-class heads, in float64, from seed 0."""
    torch.manual_seed(0)
    return build_model("hps", "lenet", (1, 36, 36), digit_tasks(n_tasks)).double()


def batch(seed: int | None = 0, size: int = 8, n_tasks: int = len(TASKS)) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [size x 1 x 36 x 36] (float64) and labels [size x n_tasks], from a generator seeded with ``seed``
    (``None``: the global generator)."""
    g = None if seed is None else torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, 36, 36, generator=g, dtype=torch.float64)
    return x, torch.randint(10, (size, n_tasks), generator=g)


def make_model_and_batch(batch_size: int = 8, batch_seed: int | None = None):
    """:func:`tiny_model` for :data:`TASKS` and then a :func:`batch` (by default from the global generator)."""
    model = tiny_model(len(TASKS))
    return (model, *batch(batch_seed, batch_size, len(TASKS)))


@pytest.fixture
def model_and_batch():
    """``(model, x, y)``: :func:`make_model_and_batch` with a batch of 8 from the global generator (a test module
    needing other numbers overrides this fixture with its own call of :func:`make_model_and_batch`)."""
    return make_model_and_batch()


def losses_of(model, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared representation z and the cross-entropy loss of every task [T]."""
    z = model.encode(x)
    outs = model.decode(z)
    return z, torch.stack([torch.nn.functional.cross_entropy(o, y[:, t]) for t, o in enumerate(outs)])


def grads_of(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_grads(a, b) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=f"gradient of {name} differs")


# --------------------------------------------------------------------------- random gradient matrices


def gradient_matrices(n_tasks: int, seed: int, seed_base: int = 1000, dim: int = 40) -> list[tuple[str, torch.Tensor]]:
    """Random [T x dim] matrices (float64): generic, with a conflicting pair, near-parallel, one dominant task;
    the generator is seeded with ``seed_base * n_tasks + seed``."""
    g = torch.Generator().manual_seed(seed_base * n_tasks + seed)
    out = [("generic", torch.randn(n_tasks, dim, generator=g, dtype=torch.float64))]
    conflict = torch.randn(n_tasks, dim, generator=g, dtype=torch.float64)
    conflict[1] = -0.8 * conflict[0] + 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)
    out.append(("conflicting", conflict))
    base = torch.randn(dim, generator=g, dtype=torch.float64)
    out.append(("near-parallel", base + 1e-3 * torch.randn(n_tasks, dim, generator=g, dtype=torch.float64)))
    dominant = torch.randn(n_tasks, dim, generator=g, dtype=torch.float64)
    dominant[0] *= 30.0
    out.append(("dominant", dominant))
    return out


def gradient_cases(seed_base: int = 1000) -> tuple[list[tuple[int, str, torch.Tensor]], list[str]]:
    """``(cases, ids)``: (n_tasks, kind, matrix) of :func:`gradient_matrices` for 2, 3, 5, 10 tasks and seeds 0, 1,
    with ids ``T{n}-{kind}-{seed}``."""
    cases = [
        (n, name, m) for n in (2, 3, 5, 10) for seed in (0, 1) for name, m in gradient_matrices(n, seed, seed_base)
    ]
    ids = [f"T{n}-{name}-{i % 8 // 4}" for i, (n, name, _) in enumerate(cases)]
    return cases, ids


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A throwaway HTTP server on 127.0.0.1 (:mod:`fixtures.server`), with proxies bypassed, for one test."""
    no_proxy(monkeypatch)
    with local_server() as state:
        yield state
