"""The real Snakemake workflow on a temporary copy: a full run, then what each change reruns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_workflow, small_config, snakemake
from fixtures.sarcos import write_sarcos

pytestmark = pytest.mark.workflow

METHODS = ("ew", "rlw", "rgw", "rlw+rgw")


def scheduled(workdir: Path, *args: str) -> dict[str, set[str]]:
    """Rule name -> outputs of the jobs a dry run would execute."""
    result = snakemake(workdir, "-n", "--cores", "1", *args)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs: dict[str, set[str]] = {}
    rule = None
    for line in (result.stdout + result.stderr).splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = match.group(1)
            jobs.setdefault(rule, set())
        elif rule and (match := re.match(r"^output: (.*)$", line.strip())):
            jobs[rule].update(part.strip() for part in match.group(1).split(","))
    return jobs


@contextmanager
def edited(path: Path):
    """Append a comment to ``path`` (a real edit, newer than every output), then restore it."""
    text, stat = path.read_text(), path.stat()
    try:
        path.write_text(text + "\n# edited\n")
        os.utime(path, (time.time() + 5, time.time() + 5))
        yield
    finally:
        path.write_text(text)
        os.utime(path, (stat.st_atime, stat.st_mtime))


def run_dirs(jobs: dict[str, set[str]]) -> set[str]:
    """The run directories (method/noise/seed) of the scheduled train jobs."""
    return {"/".join(Path(o).parts[4:7]) for o in jobs.get("train", set())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A copy of the workflow with a small config, run to completion."""
    workdir = tmp_path_factory.mktemp("workflow")
    copy_workflow(workdir)
    config = small_config(methods=METHODS, seeds=(0,), epochs=1)
    config["analysis"] = {"flatness": {"batches": 2, "batch_size": 64}}
    config["studies"]["small"].update(
        reproduces="RW Table 4",
        outputs=["method_table", "combination_grid", "learning_curves", "weight_trajectories", "flatness"],
        published="rw/table4_combinations",
    )
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def test_full_run_writes_runs_table_figure_and_logs(finished):
    for method in METHODS:
        assert (finished / f"results/runs/multi_digits/hps/{method}/clean/seed0/metrics.json").is_file()
        assert (finished / f"results/logs/train/multi_digits/hps/{method}/clean/seed0.log").is_file()
    table = (finished / "results/tables/rw/small/method_table.md").read_text()
    assert "Stand-in data" in table and "rlw+rgw" in table and "over 1 seed" in table
    assert "\\begin{tabular}" in (finished / "results/tables/rw/small/method_table.tex").read_text()
    for figure in ("learning_curves.png", "learning_curves.pdf"):
        assert (finished / "results/figures/rw/small" / figure).stat().st_size > 1000
    scorecard = (finished / "results/scorecard.md").read_text()
    assert "rw-rlw-comparable" in scorecard and "Published numbers" in scorecard


def test_every_output_of_the_study_is_written(finished):
    tables, figures = finished / "results/tables/rw/small", finished / "results/figures/rw/small"
    for kind in ("method_table", "combination_grid", "flatness", "combination_grid_vs_published"):
        for suffix in (".csv", ".md", ".tex"):
            assert (tables / f"{kind}{suffix}").stat().st_size > 100, f"{kind}{suffix}"
    for kind in ("learning_curves", "weight_trajectories", "flatness"):
        for suffix in (".png", ".pdf"):
            assert (figures / f"{kind}{suffix}").stat().st_size > 1000, f"{kind}{suffix}"
    twin = (tables / "combination_grid_vs_published.csv").read_text()
    # RW Table 4: Vanilla x RLW = +1.04 (our rlw), RGW x EW = +0.62 (our rgw)
    assert "published_in_ci" in twin and "1.04" in twin and "0.62" in twin
    analysis = json.loads((finished / "results/analysis/multi_digits/hps/rlw/clean/seed0/flatness.json").read_text())
    assert analysis["top_eigenvalue"] > 0 and analysis["batch_size"] == 64


def test_nothing_changed_schedules_nothing(finished):
    assert scheduled(finished) == {}


def test_editing_a_method_module_reruns_only_its_runs(finished):
    with edited(finished / "mtlrepro" / "weighting" / "rlw.py"):
        jobs = scheduled(finished)
    assert run_dirs(jobs) == {"rlw/clean/seed0", "rlw+rgw/clean/seed0"}
    assert set(jobs) == {"train", "flatness", "study_table", "study_figure", "study_twin", "scorecard", "all"}
    flatness = {"/".join(Path(o).parts[4:7]) for o in jobs["flatness"]}
    assert flatness == {"rlw/clean/seed0", "rlw+rgw/clean/seed0"}


def test_changing_a_method_hyperparameter_reruns_only_its_runs(finished):
    config = yaml.safe_load((finished / "config" / "config.yaml").read_text())
    config["methods"]["rlw"]["distribution"] = "dirichlet"
    (finished / "changed.yaml").write_text(yaml.safe_dump(config))
    jobs = scheduled(finished, "--configfile", "changed.yaml")
    assert run_dirs(jobs) == {"rlw/clean/seed0", "rlw+rgw/clean/seed0"}
    assert "prepare_data" not in jobs


def test_adding_a_seed_schedules_only_that_seed(finished):
    config = yaml.safe_load((finished / "config" / "config.yaml").read_text())
    config["studies"]["small"]["seeds"] = [0, 1]
    (finished / "more_seeds.yaml").write_text(yaml.safe_dump(config))
    jobs = scheduled(finished, "--configfile", "more_seeds.yaml")
    assert run_dirs(jobs) == {f"{m}/clean/seed1" for m in METHODS}


def test_a_configfile_runs_exactly_its_own_studies(finished):
    # --configfile replaces the embedded default (config/config.yaml): no study of the default is merged in
    default = finished / "config" / "config.yaml"
    original = default.read_text()
    config = yaml.safe_load(original)
    config["studies"] = {"only": {"dataset": "multi_digits", "methods": ["ew"], "seeds": [5]}}
    (finished / "only.yaml").write_text(yaml.safe_dump(config))
    extra = {"default": {"dataset": "multi_digits", "methods": ["rlw"], "seeds": [7]}}
    default.write_text(yaml.safe_dump({**config, "studies": extra}))
    try:
        jobs = scheduled(finished, "--configfile", "only.yaml")
    finally:
        default.write_text(original)
    assert run_dirs(jobs) == {"ew/clean/seed5"}
    assert all("/only/" in out for out in jobs["study_table"] | jobs["study_figure"])


def test_editing_the_training_core_reruns_every_run(finished):
    with edited(finished / "mtlrepro" / "train.py"):
        jobs = scheduled(finished)
    assert run_dirs(jobs) == {f"{m}/clean/seed0" for m in METHODS}


def test_rerun_after_a_method_edit_trains_from_scratch(finished):
    # The finished run's checkpoint must not be resumed once its method's code changed.
    target = "results/runs/multi_digits/hps/rlw/clean/seed0/metrics.json"
    before = json.loads((finished / target).read_text())["provenance"]
    with edited(finished / "mtlrepro" / "weighting" / "rlw.py"):
        result = snakemake(finished, "--cores", "2", target)
        assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((finished / target).read_text())["provenance"]
    assert after["resumed_from_epoch"] == 0
    assert after["code_sha256"]["weighting/rlw.py"] != before["code_sha256"]["weighting/rlw.py"]
    assert after["code_sha256"]["train.py"] == before["code_sha256"]["train.py"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["studies"]["small"]["methods"].append("pcgradd"), "unknown method 'pcgradd'"),
        (lambda c: c["studies"]["small"]["methods"].append("rgw+rlw"), "the first method must be a loss weighting"),
        (
            lambda c: c["methods"]["rlw"].update(grad_wrt="representation"),
            "methods.rlw.grad_wrt: 'representation' is not possible",
        ),
        (lambda c: c["methods"]["rgw"].update(distribution=3), "methods.rgw.distribution: 3 is not one of"),
        (lambda c: c["studies"]["small"].update(dataset="nope"), "dataset 'nope' is unknown"),
        (lambda c: c["studies"]["small"].update(seeds=["x"]), "seeds[0]: 'x' is not of type 'integer'"),
        (
            lambda c: c["studies"].update(other={"dataset": "multi_digits", "seeds": [0]}),
            "studies.other: 'methods' is a required property",
        ),
    ],
)
def test_bad_config_stops_before_any_job(finished, edit, message):
    config = yaml.safe_load((finished / "config" / "config.yaml").read_text())
    edit(config)
    (finished / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished, "-n", "--cores", "1", "--configfile", "bad.yaml")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output
    assert "Traceback" not in output
    assert "rule train" not in output


def test_report_bundles_table_and_figure(finished):
    result = snakemake(finished, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (finished / "report.html").read_text(errors="replace")
    assert "method_table.csv" in html and "learning_curves.png" in html and "scorecard.md" in html


def test_lint_and_format_are_clean():
    lint = snakemake(REPO, "--lint")
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    fmt = subprocess.run(["snakefmt", "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml"])
def test_shipped_configs_build_their_whole_dag(configfile):
    # every output of every study resolves to exactly one rule (no ambiguous or missing targets)
    result = snakemake(REPO, "-n", "--cores", "1", "--configfile", configfile)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "scorecard" in result.stdout and "study_twin" in result.stdout


def test_data_already_on_disk_is_read_from_its_path_and_a_generated_one_refuses_a_path(tmp_path):
    # SARCOS's two .mat files in a folder of the user's: the prepare job reads them there (no download, no
    # resources/raw/), a noise sweep on two joints trains on them, and its figure is drawn
    workdir = tmp_path / "project"
    workdir.mkdir()
    copy_workflow(workdir)
    raw = tmp_path / "my-sarcos"
    write_sarcos(raw, n_train=120, n_test=30)
    config = {
        "datasets": {
            "sarcos": {
                "path": str(raw),
                "training": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 0.001},
            }
        },
        "methods": {"ew": {}},
        "studies": {
            "sweep": {
                "paper": "excess_mtl",
                "dataset": "sarcos",
                "methods": ["ew", "excess_mtl"],
                "seeds": [0],
                "noise": [{}, {"joint1": 0.5, "joint2": 0.5}],
                "outputs": ["noise_sweep"],
            }
        },
    }
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (workdir / "results/figures/excess_mtl/sweep/noise_sweep.png").stat().st_size > 0
    assert not (workdir / "resources" / "raw").exists()
    record = json.loads((workdir / "results/runs/sarcos/hps/ew/joint10.5_joint20.5/seed0/metrics.json").read_text())
    assert set(record["dataset"]["noise"]) == {"joint1", "joint2"}
    assert record["dataset"]["sizes"]["test"] == 30

    config["datasets"]["multi_digits"] = {"path": str(raw)}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    refused = snakemake(workdir, "-n", "--cores", "1")
    assert refused.returncode != 0
    assert "datasets.multi_digits.path: multi_digits is generated" in refused.stdout + refused.stderr
