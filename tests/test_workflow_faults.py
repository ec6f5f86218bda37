"""The real workflow when things go wrong: lost records, damaged caches, two invocations, shared directories."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import copy_workflow, small_config, snakemake

pytestmark = pytest.mark.workflow

RECORD = "results/runs/multi_digits/hps/rlw/clean/seed0/metrics.json"
TABLE = "results/tables/rw/small/method_table.csv"
CACHE = "resources/data/multi_digits.pt"
UMASK = 0o002


def group_shared(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``snakemake`` as a user of a group-shared project directory runs it (umask 002)."""
    return snakemake(workdir, *args, preexec_fn=lambda: os.umask(UMASK))


def numbers(record: Path) -> dict:
    data = json.loads(record.read_text())
    return {"final": data["final"], "spec_hash": data["spec_hash"], "train": [e["train_loss"] for e in data["epochs"]]}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the workflow with a two-run study, run to completion under umask 002."""
    workdir = copy_workflow(tmp_path_factory.mktemp("faults"))
    config = small_config(methods=("ew", "rlw"), seeds=(0,), epochs=1)
    config["studies"]["small"]["outputs"] = ["method_table"]
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    result = group_shared(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


def nothing_to_do(workdir: Path) -> bool:
    result = snakemake(workdir, "-n", "--cores", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return "Nothing to be done" in result.stdout + result.stderr


def test_every_result_file_gets_the_users_umask(project):
    files = [p for top in ("results", "resources") for p in (project / top).rglob("*")]
    assert any(p.name == "metrics.json" for p in files) and any(p.suffix == ".pt" for p in files)
    assert any(p.suffix == ".csv" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~UMASK
        assert mode == expected, f"{path.relative_to(project)}: {oct(mode)}, expected {oct(expected)}"


def test_a_lost_run_record_is_rebuilt_by_a_plain_rerun_and_the_table_follows(project):
    record, table = project / RECORD, project / TABLE
    before, table_before = numbers(record), table.read_text()
    table_time = table.stat().st_mtime
    record.unlink()  # what Snakemake does to the output of a failed job
    assert not nothing_to_do(project)
    result = group_shared(project, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert numbers(record) == before
    assert table.stat().st_mtime > table_time and table.read_text() == table_before
    assert nothing_to_do(project)


def test_a_damaged_cache_fails_with_its_name_and_a_plain_rerun_after_deleting_it_restores_everything(project):
    cache, record = project / CACHE, project / RECORD
    before, cache_bytes = numbers(record), cache.read_bytes()
    cache.write_bytes(cache_bytes[: len(cache_bytes) // 3])  # truncated, and newer than every run
    failed = group_shared(project, "--cores", "2")
    assert failed.returncode != 0
    log = (project / "results/logs/train/multi_digits/hps/rlw/clean/seed0.log").read_text()
    assert CACHE in log and "damaged" in log and "Traceback" not in log
    assert not record.exists()  # Snakemake removed the failed job's output; the old table stays
    cache.unlink()  # the fix the message names
    result = group_shared(project, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert cache.read_bytes() == cache_bytes  # rebuilt byte for byte: provenance unchanged
    assert numbers(record) == before
    assert nothing_to_do(project)


def test_a_second_invocation_on_the_same_directory_is_refused_and_nothing_is_corrupted(project):
    first = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--forcerun", "train"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        locks = project / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not any(locks.glob("*")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "the first invocation ended before the second could start"
        second = snakemake(project, "--cores", "1")
        assert second.returncode != 0
        # Snakemake refuses with a LockException, or, when the first one already has a job running, earlier with
        # its incomplete-files check (the running job's outputs are marked incomplete): either way, nothing runs
        said = second.stdout + second.stderr
        assert "LockException" in said or "Incomplete files" in said, said[-2000:]
    finally:
        output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output[-3000:]
    for method in ("ew", "rlw"):
        json.loads((project / RECORD.replace("rlw", method)).read_text())
    assert nothing_to_do(project)


def test_a_study_written_twice_is_refused_naming_the_key(project):
    text = (project / "config" / "config.yaml").read_text()
    study = text[text.index("studies:") :]
    (project / "twice.yaml").write_text(text + study.replace("studies:", "", 1))
    result = snakemake(project, "-n", "--cores", "1", "--configfile", "twice.yaml")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "duplicate key" in output and "'small'" in output and "twice.yaml" in output
    assert "rule train" not in output
