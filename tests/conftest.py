"""Shared fixtures: a small prepared multi_digits cache and run specs built from a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlrepro.data import prepare
from mtlrepro.run import RunSpec
from mtlrepro.studies import expand

REPO = Path(__file__).resolve().parents[1]
SMALL_DATA = {"n_train": 512, "n_val": 256, "n_test": 256}
SMALL_TRAINING = {"epochs": 2, "batch_size": 128, "lr": 0.05}


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
