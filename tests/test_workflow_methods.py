"""Every registered method and the RW Table 4 grid of combinations, trained by the real pipeline.

One Snakemake run on a temporary copy of the workflow: a study with every
method alone and a study with every loss weighting of RW Table 4 combined with
every gradient method of that table. Each run must finish with finite losses
and appear in its study's table.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from mtlrepro.weighting import registry
from mtlrepro.weighting.base import GRADIENT, LOSS

from conftest import copy_workflow, small_config, snakemake

pytestmark = pytest.mark.workflow

TABLE4_LOSSES = ("uw", "dwa", "imtl_l", "rlw")
TABLE4_GRADIENTS = ("mgda", "gradnorm", "pcgrad", "graddrop", "imtl_g", "gradvac", "cagrad", "rotograd")


def grid() -> list[str]:
    """RW Table 4's loss x gradient combinations whose methods are registered."""
    methods = registry()
    losses = [m for m in TABLE4_LOSSES if m in methods and methods[m].kind == LOSS]
    gradients = [m for m in TABLE4_GRADIENTS if m in methods and methods[m].kind == GRADIENT]
    return [f"{loss}+{gradient}" for loss in losses for gradient in gradients]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("methods")
    copy_workflow(workdir)
    config = small_config(methods=sorted(registry()), seeds=(0,), epochs=1)
    config["datasets"]["multi_digits"]["options"] = {"n_train": 256, "n_val": 128, "n_test": 128}
    config["studies"]["combinations"] = {"dataset": "multi_digits", "methods": ["ew", *grid()], "seeds": [0]}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "2", "--keep-going")
    assert result.returncode == 0, result.stderr[-6000:]
    return workdir


def test_grid_covers_rw_table4():
    assert len(grid()) == len(TABLE4_LOSSES) * len(TABLE4_GRADIENTS), "a method of RW Table 4 is missing"


@pytest.mark.parametrize("study", ["small", "combinations"])
def test_every_run_is_finite_and_in_its_table(finished, study):
    config = yaml.safe_load((finished / "config" / "config.yaml").read_text())
    table = (finished / f"results/tables/rw/{study}/method_table.md").read_text()
    for method in config["studies"][study]["methods"]:
        record = json.loads((finished / f"results/runs/multi_digits/hps/{method}/clean/seed0/metrics.json").read_text())
        losses = record["epochs"][-1]["train_loss"].values()
        assert all(math.isfinite(v) for v in losses), f"{method}: non-finite training loss"
        assert f"| {method} " in table, f"{method} missing from the {study} table"
