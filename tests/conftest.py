"""Shared fixtures: a small prepared multi_digits cache and run specs built from a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlrepro.data import prepare
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


def spec_for(method: str = "rgw", seed: int = 0, noise=None, **training) -> dict:
    """The spec of one run of :func:`small_config`."""
    config = small_config(methods=(method,), seeds=(seed,), noise=noise, **training)
    (run,) = expand(config)["small"].runs
    return run.spec()


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return prepare("multi_digits", SMALL_DATA, tmp_path_factory.mktemp("data") / "multi_digits.pt")
