"""The workflow on a real single-node SLURM cluster (tests/slurm_cluster.py) through profiles/slurm.

One cluster serves the module. A small study whose dataset asks for a GPU runs through the profile while one of
its train jobs is cancelled with scancel mid-training; it must complete through sbatch, retry the cancelled job
with the attempt's larger limits, resume that run from its checkpoint, and produce the same table as a local
``snakemake --cores 2`` run of the same config. A study of six one-epoch runs bundled three per SLURM job must go
out as two submissions that fit the node. The cluster needs root (and apt-get where SLURM is missing): elsewhere
these tests skip, saying why.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, small_config
from slurm_cluster import SlurmCluster, SlurmUnavailable, start_cluster

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

COPIED = ("Snakefile", "workflow", "mtlrepro", "envs", "config", "reference", "profiles")
DATA = {"n_train": 64, "n_val": 64, "n_test": 64}
METHODS = ("ew", "rlw")
EPOCHS = 100  # about 5 s of training on one core: long enough to cancel a job mid-run
# the shipped profile, with quicker status checks than a real cluster wants, and every SLURM log kept
PROFILE = (
    "--profile",
    "profiles/slurm",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--seconds-between-status-checks",
    "1",
    "--latency-wait",
    "5",
    "--slurm-keep-successful-logs",
)
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")
TABLE = "results/tables/rw/small/method_table.csv"


def minutes(limit: str) -> int:
    """A SLURM time limit ``[D-]HH:MM:SS`` in minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, _ = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins


def workflow_copy(tmp_path_factory, name: str, config: dict) -> Path:
    """A copy of the checkout (code, workflow, profile) whose embedded config is ``config``."""
    workdir = tmp_path_factory.mktemp(name)
    for item in COPIED:
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, workdir / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, workdir / item)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def study_config(epochs: int = EPOCHS, **resources) -> dict:
    config = small_config(methods=METHODS, seeds=(0,), epochs=epochs)
    config["datasets"]["multi_digits"]["options"] = dict(DATA)
    config["datasets"]["multi_digits"]["resources"] = resources
    config["studies"]["small"]["outputs"] = ["method_table"]
    return config


def read_table(workdir: Path) -> list[dict[str, str]]:
    with (workdir / TABLE).open(newline="") as handle:
        return list(csv.DictReader(handle))


def submitted(log: str) -> list[str]:
    """The SLURM job ids that Snakemake's output reports as submitted."""
    return SUBMITTED.findall(log)


def timed(label: str, started: float) -> None:
    print(f"{label}: {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = time.monotonic()
    try:
        running = start_cluster(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as err:
        pytest.skip(f"no SLURM cluster on this machine: {err}")
    timed("SLURM cluster started", started)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def local_study(tmp_path_factory) -> Path:
    """The study run locally: the reference the cluster's results must equal."""
    started = time.monotonic()
    workdir = workflow_copy(tmp_path_factory, "local", study_config(gpu=1, runtime=5, mem_mb=1000))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2"], cwd=workdir, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    timed("local run", started)
    return workdir


@pytest.fixture(scope="module")
def slurm_study(tmp_path_factory, cluster: SlurmCluster) -> tuple[Path, str, list[str]]:
    """The study run through the profile, its train jobs cancelled once mid-training.

    Returns the workflow directory, Snakemake's output and the SLURM ids of the cancelled jobs.
    """
    started = time.monotonic()
    workdir = workflow_copy(tmp_path_factory, "cluster", study_config(gpu=1, runtime=5, mem_mb=1000))
    runs = [workdir / f"results/runs/multi_digits/hps/{method}/clean/seed0" for method in METHODS]
    output = workdir / "snakemake.out"
    with output.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *PROFILE],
            cwd=workdir,
            env=cluster.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    cancelled: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and not cancelled and time.monotonic() < deadline:
            # a run has finished an epoch and not yet the last: cancel the train jobs running now
            if any((run / "checkpoint.pt").is_file() and not (run / "metrics.json").is_file() for run in runs):
                cancelled = [job["JobId"] for job in cluster.jobs() if job["JobState"] == "RUNNING"]
                if cancelled:
                    cluster.command("scancel", *cancelled, check=False)  # one may have ended meanwhile
            time.sleep(0.05)
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if process.poll() is None:
            process.kill()
    log = output.read_text()
    assert process.returncode == 0, log[-6000:]
    assert cancelled, "no train job was caught mid-training"
    timed(f"SLURM run, {len(cancelled)} job(s) cancelled", started)
    return workdir, log, cancelled


def test_train_jobs_go_through_sbatch_and_give_the_local_run_s_table(slurm_study, local_study, cluster):
    workdir, log, _ = slurm_study
    ids = submitted(log)
    jobs = {job["JobId"]: job for job in cluster.jobs()}
    for job_id in ids:
        job = jobs[job_id]
        assert job["WorkDir"] == str(workdir) and job["Comment"].startswith("rule_train_")
        assert job["JobState"] in {"COMPLETED", "CANCELLED"}
    # one SLURM job per train attempt and nothing else: data, table and scorecard were made on this host
    cancelled = sum(jobs[i]["JobState"] == "CANCELLED" for i in ids)
    assert len(ids) == len(METHODS) + cancelled, log[-4000:]
    assert sum(jobs[i]["JobState"] == "COMPLETED" for i in ids) == len(METHODS)
    table = read_table(workdir)
    assert [row["method"] for row in table] == list(METHODS)
    assert table == read_table(local_study)


def test_a_cancelled_train_job_is_retried_with_larger_limits_and_resumes(slurm_study, cluster):
    workdir, log, cancelled = slurm_study
    ids = submitted(log)
    jobs = {job["JobId"]: job for job in cluster.jobs()}
    first = [i for i in ids if i in cancelled and jobs[i]["JobState"] == "CANCELLED"]
    assert first, f"none of {cancelled} ended as CANCELLED"
    # attempt 2: runtime and memory times the attempt
    retried = [i for i in ids if int(i) > max(int(c) for c in cancelled)]
    assert len(retried) == len(first), log[-4000:]
    for job_id in first:
        assert minutes(jobs[job_id]["TimeLimit"]) == 5 and jobs[job_id]["MinMemoryNode"] == "1000M"
    for job_id in retried:
        assert jobs[job_id]["JobState"] == "COMPLETED"
        assert minutes(jobs[job_id]["TimeLimit"]) == 10 and jobs[job_id]["MinMemoryNode"] == "2000M"
    resumed, stops = [], []
    for method in METHODS:
        record = json.loads((workdir / f"results/runs/multi_digits/hps/{method}/clean/seed0/metrics.json").read_text())
        assert len(record["epochs"]) == EPOCHS
        resumed.append(record["provenance"]["resumed_from_epoch"])
        stops += record["provenance"]["interruptions"]
    assert any(0 < epoch < EPOCHS for epoch in resumed), resumed
    # scancel's SIGTERM reached the training process, which checkpointed where it stood before it ended
    assert stops and all(stop["signal"] == "SIGTERM" for stop in stops), stops


def test_a_dataset_that_asks_for_a_gpu_gets_one_from_slurm_and_runs(slurm_study, cluster):
    workdir, log, _ = slurm_study
    jobs = {job["JobId"]: job for job in cluster.jobs()}
    for job_id in submitted(log):
        assert jobs[job_id]["TresPerJob"] == "gres:gpu:1"
    for method in METHODS:
        record = json.loads((workdir / f"results/runs/multi_digits/hps/{method}/clean/seed0/metrics.json").read_text())
        assert record["environment"]["device"] == "cpu"  # device: auto, and the GPUs are placeholders


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, cluster: SlurmCluster) -> tuple[Path, str]:
    """Six one-epoch runs sent out three per SLURM job on a 2-CPU budget per job."""
    started = time.monotonic()
    config = study_config(epochs=1, threads=1, runtime=5, mem_mb=1000)
    config["studies"]["small"].update(methods=["ew", "rlw", "rgw"], seeds=[0, 1])
    workdir = workflow_copy(tmp_path_factory, "grouped", config)
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", *PROFILE, "--group-components", "train_multi_digits=3", "--cores", "2"],
        cwd=workdir,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    timed("grouped SLURM run", started)
    return workdir, log


def test_a_grouped_study_goes_out_as_one_slurm_job_per_bundle(grouped, cluster):
    workdir, log = grouped
    ids = submitted(log)
    assert len(ids) == 2, log[-4000:]
    jobs = {job["JobId"]: job for job in cluster.jobs()}
    for job_id in ids:
        job = jobs[job_id]
        assert job["JobState"] == "COMPLETED" and job["WorkDir"] == str(workdir)
        # three 1-CPU runs on a 2-CPU budget: two side by side, then one; their runtimes add up
        assert job["NumCPUs"] == "2" and job["MinMemoryNode"] == "2000M" and minutes(job["TimeLimit"]) == 10
    assert len(list(workdir.glob("results/runs/multi_digits/hps/*/clean/seed*/metrics.json"))) == 6
    assert (workdir / TABLE).is_file()
