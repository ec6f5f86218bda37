"""Preemption: SIGTERM/SIGINT stop a run at a step with a checkpoint, SIGKILL loses only the work since the last
one, damaged checkpoints are replaced, a failed run leaves no empty directory, and the command refuses bad options.

Every resumed run must end with exactly the numbers of an uninterrupted one. The process tests run the real
``python -m mtlrepro train`` and send it real signals; in-process tests raise the signal from inside a step.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from mtlrepro import checkpoint as checkpoint_module
from mtlrepro import train as train_module
from mtlrepro.checkpoint import CHECKPOINT_KEYS
from mtlrepro.cli import main
from mtlrepro.errors import DataError, TrainingError
from mtlrepro.interrupt import Interrupted
from mtlrepro.io import digest
from mtlrepro.run import CHECKPOINT_FILE, METRICS_FILE, SELECTED_FILE, run_provenance
from mtlrepro.step import Stepper
from mtlrepro.train import train

from conftest import spec_for

#: long enough (8 epochs of 4 steps, about 2 s) that a signal sent after the first checkpoint lands before the end
PROCESS_SPEC = spec_for("dwa", epochs=8)
SUMMARY = re.compile(r"^\S+: epoch \d+ selected; test TL acc=[\d.]+, BR acc=[\d.]+$")
STOPPED = re.compile(
    r"^mtlrepro: interrupted by (?P<signal>SIG\w+) (in epoch (?P<epoch>\d+) at step (?P<step>\d+)|at the end of "
    r"epoch (?P<end>\d+)); checkpoint saved to (?P<path>\S+); rerun to resume$"
)


def numbers(record: dict) -> dict:
    """The parts of a run record that must be reproducible (no timings, paths or versions)."""
    return {key: record[key] for key in ("selection", "final", "spec_hash")} | {
        "epochs": [{k: v for k, v in e.items() if k != "seconds"} for e in record["epochs"]]
    }


def resumed_at(record: dict) -> tuple[int, int]:
    """(epochs done, steps of the next epoch done) when the run was resumed."""
    return record["provenance"]["resumed_from_epoch"], record["provenance"]["resumed_from_step"]


def checkpoint_position(path: Path) -> tuple[int, int]:
    """(epochs done, steps of the next epoch done) that a checkpoint holds."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    unfinished = state["unfinished"]
    return len(state["history"]), 0 if unfinished is None else unfinished["sums"]["steps"]


def command(spec, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mtlrepro",
        "train",
        "--spec",
        json.dumps(spec.to_json()),
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def started_until_checkpoint(args: list[str], checkpoint: Path, timeout: float = 120.0) -> subprocess.Popen:
    """Start ``args`` and return once ``checkpoint`` exists (the process is then mid-training)."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint after {timeout} s")
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be stopped: give it more epochs"
    return process


@pytest.fixture(scope="module")
def uninterrupted(small_data, tmp_path_factory) -> dict:
    """The record of :data:`PROCESS_SPEC` trained by the same command, without interruption."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = subprocess.run(command(PROCESS_SPEC, small_data, out), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads((out / METRICS_FILE).read_text())


@pytest.fixture
def stop_signals_handled():
    """Make sure neither stop signal is ignored in this process (an ignored signal stays ignored by design)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    for signum, handler in previous.items():
        if handler == signal.SIG_IGN:
            signal.signal(signum, defaults[signum])
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def signal_at(monkeypatch, signals_by_iteration: dict[int, list[signal.Signals]]) -> None:
    """Make every training step raise the given signals (to this process) after the step numbered ``iteration``."""
    real_step = Stepper.step

    def step(self, x, y, epoch=1, iteration=0, rows=None):
        result = real_step(self, x, y, epoch=epoch, iteration=iteration, rows=rows)
        for signum in signals_by_iteration.get(iteration, ()):
            signal.raise_signal(signum)
        return result

    monkeypatch.setattr(Stepper, "step", step)


# --------------------------------------------------------------------------- real signals to a real process


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_a_rerun_ends_with_the_same_numbers(
    small_data, tmp_path, uninterrupted
):
    out = tmp_path / "run"
    args = command(PROCESS_SPEC, small_data, out, "--checkpoint-minutes", "0")
    process = started_until_checkpoint(args, out / CHECKPOINT_FILE)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 143, stderr
    assert stdout == ""
    assert len(stderr.splitlines()) == 1, stderr
    stopped = STOPPED.match(stderr.strip())
    assert stopped, stderr
    assert stopped["signal"] == "SIGTERM" and stopped["path"] == str(out / CHECKPOINT_FILE)
    where = (int(stopped["epoch"]) - 1, int(stopped["step"])) if stopped["end"] is None else (int(stopped["end"]), 0)
    assert checkpoint_position(out / CHECKPOINT_FILE) == where
    assert not (out / METRICS_FILE).exists()

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert SUMMARY.match(rerun.stdout.strip()), rerun.stdout
    record = json.loads((out / METRICS_FILE).read_text())
    assert resumed_at(record) == where
    stop = (
        {"epoch": int(stopped["epoch"]), "step": int(stopped["step"])}
        if stopped["end"] is None
        else {
            "epoch": int(stopped["end"]),
            "step": 0,
        }
    )
    assert record["provenance"]["interruptions"] == [{"signal": "SIGTERM", **stop}]
    assert numbers(record) == numbers(uninterrupted)
    assert uninterrupted["provenance"]["interruptions"] == []


def test_sigkill_loses_only_the_work_since_the_last_checkpoint(small_data, tmp_path, uninterrupted):
    out = tmp_path / "run"
    args = command(PROCESS_SPEC, small_data, out, "--checkpoint-minutes", "0")
    process = started_until_checkpoint(args, out / CHECKPOINT_FILE)
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / METRICS_FILE).exists()
    saved = checkpoint_position(out / CHECKPOINT_FILE)
    assert saved != (0, 0)
    # as if the kill had come while a checkpoint was being written
    half_written = out / f".{CHECKPOINT_FILE}.0a1b2c3d.tmp"
    half_written.write_bytes((out / CHECKPOINT_FILE).read_bytes()[:100])

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    record = json.loads((out / METRICS_FILE).read_text())
    assert resumed_at(record) == saved
    assert numbers(record) == numbers(uninterrupted)
    assert record["provenance"]["interruptions"] == []  # a kill leaves no word: only a stop signal is noted
    assert not half_written.exists()


# --------------------------------------------------------------------------- signals raised from inside a step


def test_sigint_stops_the_command_with_exit_130_and_a_rerun_resumes(
    small_data, tmp_path, monkeypatch, capsys, stop_signals_handled
):
    spec = spec_for("rlw", epochs=2)
    straight = train(spec, small_data, tmp_path / "straight", progress=False, device="cpu")
    out = tmp_path / "run"
    args = ["train", "--spec", json.dumps(spec.to_json()), "--data", str(small_data), "--out", str(out)]
    args += ["--device", "cpu", "--no-progress"]
    signal_at(monkeypatch, {2: [signal.SIGINT]})

    assert main(args) == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"mtlrepro: interrupted by SIGINT in epoch 1 at step 3; checkpoint saved to {out / CHECKPOINT_FILE}; "
        "rerun to resume\n"
    )
    assert not (out / METRICS_FILE).exists()

    monkeypatch.undo()
    assert main(args) == 0
    record = json.loads((out / METRICS_FILE).read_text())
    assert resumed_at(record) == (0, 3)
    assert numbers(record) == numbers(straight)


def test_a_stop_after_the_last_step_of_an_epoch_resumes_at_its_end(small_data, tmp_path, monkeypatch):
    spec = spec_for("famo", epochs=2)
    straight = train(spec, small_data, tmp_path / "straight", progress=False, device="cpu")
    signal_at(monkeypatch, {3: [signal.SIGTERM]})  # step 4 of 4 of epoch 1, before the epoch's evaluation
    with pytest.raises(Interrupted, match="in epoch 1 at step 4") as stopped:
        train(spec, small_data, tmp_path / "run", progress=False, device="cpu")
    assert stopped.value.exit_code == 143
    assert checkpoint_position(tmp_path / "run" / CHECKPOINT_FILE) == (0, 4)
    monkeypatch.undo()
    resumed = train(spec, small_data, tmp_path / "run", progress=False, device="cpu")
    assert resumed_at(resumed) == (0, 4)
    assert numbers(resumed) == numbers(straight)


def test_previous_signal_handlers_are_restored_whether_train_returns_or_raises(small_data, tmp_path, monkeypatch):
    def mine(signum, frame):
        raise AssertionError("the run's own handler must be in place while it trains")

    spec = spec_for("ew", epochs=1)
    before = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        train(spec, small_data, tmp_path / "a", progress=False, device="cpu")
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
        signal_at(monkeypatch, {0: [signal.SIGTERM]})
        with pytest.raises(Interrupted):
            train(spec, small_data, tmp_path / "b", progress=False, device="cpu")
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_a_second_sigint_stops_at_once_and_leaves_no_empty_directory(
    small_data, tmp_path, monkeypatch, capsys, stop_signals_handled
):
    signal_at(monkeypatch, {0: [signal.SIGINT, signal.SIGINT]})
    with pytest.raises(KeyboardInterrupt):
        train(spec_for("ew", epochs=1), small_data, tmp_path / "new" / "run", progress=False, device="cpu")
    assert not (tmp_path / "new").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    assert main(_train_args(small_data, tmp_path / "new" / "run")) == 130
    assert capsys.readouterr().err == "mtlrepro: interrupted\n"
    assert not (tmp_path / "new").exists()


def test_train_runs_outside_the_main_thread_without_signal_handling(small_data, tmp_path):
    import threading

    outcome = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            record=train(spec_for("ew", epochs=1), small_data, tmp_path / "run", progress=False)
        )
    )
    worker.start()
    worker.join(timeout=300)
    assert outcome["record"]["selection"]["epoch"] == 1


@pytest.mark.parametrize(("minutes", "checkpoints"), [(None, 2), (0, 2 * 4 + 2), (60, 2)])
def test_checkpoint_minutes_sets_how_often_a_checkpoint_is_written_and_never_the_numbers(
    small_data, tmp_path, monkeypatch, minutes, checkpoints
):
    spec = spec_for("moml", epochs=2)
    written = []
    real_save = train_module.save_torch_atomic

    def counting_save(path, obj):
        written.append(Path(path).name)
        real_save(path, obj)

    straight = train(spec, small_data, tmp_path / "straight", progress=False, device="cpu")
    monkeypatch.setattr(train_module, "save_torch_atomic", counting_save)
    monkeypatch.setattr(checkpoint_module, "save_torch_atomic", counting_save)
    record = train(spec, small_data, tmp_path / "run", progress=False, device="cpu", checkpoint_minutes=minutes)
    assert written.count(CHECKPOINT_FILE) == checkpoints
    assert numbers(record) == numbers(straight)


# --------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def clean_run(small_data, tmp_path_factory) -> tuple[dict, Path]:
    """A clean run of a method with epoch-level state and its final checkpoint."""
    out = tmp_path_factory.mktemp("clean") / "run"
    record = train(spec_for("dwa", epochs=2), small_data, out, progress=False, device="cpu")
    return record, out / CHECKPOINT_FILE


def _truncated(good: Path, spec, data) -> bytes:
    return good.read_bytes()[: good.stat().st_size // 2]


def _random_bytes(good: Path, spec, data) -> bytes:
    return random.Random(0).randbytes(4096)


def _empty(good: Path, spec, data) -> bytes:
    return b""


def _saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _a_list(good: Path, spec, data) -> bytes:
    return _saved(["not", "a", "checkpoint"])


def _keys_missing(good: Path, spec, data) -> bytes:
    return _saved({"run_hash": digest(run_provenance(spec, data)), "model": {}})


def _foreign_object(good: Path, spec, data) -> bytes:
    return _saved({"run_hash": Fraction(1, 3)})  # unpickling it would import and call code: refused


def _plain_pickle(good: Path, spec, data) -> bytes:
    return pickle.dumps(CHECKPOINT_KEYS)


def _wrong_model(good: Path, spec, data) -> bytes:
    state = torch.load(good, map_location="cpu", weights_only=True)
    state["model"] = {"bogus": torch.zeros(3)}
    state["history"] = state["history"][:1]  # resuming would continue at epoch 2, after loading the model
    return _saved(state)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncated, "cannot be read"),
        (_random_bytes, "cannot be read"),
        (_empty, "is empty"),
        (_foreign_object, "cannot be read"),
        (_plain_pickle, "cannot be read"),
        (_a_list, "is not a checkpoint of this program"),
        (_keys_missing, "is not a checkpoint of this program"),
        (_wrong_model, "does not fit this run"),
    ],
)
def test_a_damaged_checkpoint_is_reported_replaced_and_training_starts_from_scratch(
    small_data, tmp_path, capsys, clean_run, damage, reason
):
    record, good = clean_run
    spec = spec_for("dwa", epochs=2)
    checkpoint = tmp_path / "run" / CHECKPOINT_FILE
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(damage(good, spec, small_data))

    again = train(spec, small_data, tmp_path / "run", progress=False, device="cpu")
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"mtlrepro: warning: damaged checkpoint {checkpoint}: it {reason}"), err
    assert err.endswith("training from scratch\n")
    assert resumed_at(again) == (0, 0)
    assert numbers(again) == numbers(record)
    assert torch.load(checkpoint, map_location="cpu", weights_only=True).keys() >= CHECKPOINT_KEYS


def test_the_command_reports_a_damaged_checkpoint_in_one_line_and_completes(small_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_FILE).write_bytes(b"\x80\x04garbage")  # a pickle header, then nonsense
    result = subprocess.run(command(spec_for("ew", epochs=1), small_data, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(out / CHECKPOINT_FILE) in result.stderr and "training from scratch" in result.stderr
    assert SUMMARY.match(result.stdout.strip()), result.stdout


# --------------------------------------------------------------------------- failures leave nothing behind


def test_a_missing_data_cache_creates_no_run_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope\.pt does not exist"):
        train(spec_for("ew"), tmp_path / "nope.pt", tmp_path / "new" / "run", progress=False)
    assert not (tmp_path / "new").exists()


def test_a_non_finite_loss_in_epoch_one_leaves_no_run_directory(small_data, tmp_path):
    spec = spec_for("ew", lr=1e12)
    with pytest.raises(TrainingError, match="non-finite training loss"):
        train(spec, small_data, tmp_path / "new" / "run", progress=False)
    assert list(tmp_path.iterdir()) == []
    # a directory the caller made (as Snakemake does) is the caller's: it stays, empty
    (tmp_path / "given").mkdir()
    with pytest.raises(TrainingError):
        train(spec, small_data, tmp_path / "given", progress=False)
    assert list((tmp_path / "given").iterdir()) == []


# --------------------------------------------------------------------------- the command's options


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--threads", "0", "argument --threads: must be a positive integer, got 0"),
        ("--threads", "-2", "argument --threads: must be a positive integer, got -2"),
        ("--threads", "two", "argument --threads: 'two' is not a positive integer"),
        ("--checkpoint-minutes", "-1", "argument --checkpoint-minutes: must be a number of minutes, 0 or more, got -1"),
        (
            "--checkpoint-minutes",
            "nan",
            "argument --checkpoint-minutes: must be a number of minutes, 0 or more, got nan",
        ),
    ],
)
def test_bad_train_options_are_refused_before_anything_runs(tmp_path, capsys, option, value, message):
    args = ["train", "--spec", "{}", "--data", str(tmp_path / "d.pt"), "--out", str(tmp_path / "run"), option, value]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _train_args(small_data, out: Path) -> list[str]:
    spec = json.dumps(spec_for("ew", epochs=1).to_json())
    return ["train", "--spec", spec, "--data", str(small_data), "--out", str(out), "--no-progress"]


def test_out_naming_a_file_is_refused_in_one_line(small_data, tmp_path, capsys):
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    assert main(_train_args(small_data, target)) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"mtlrepro: error: the run directory {target} is an existing file: remove it or choose another directory\n"
    )
    assert target.read_text() == "{}"


def test_a_run_directory_below_a_file_is_refused_in_one_line(small_data, tmp_path, capsys):
    # a directory that cannot be created, whoever runs the test (root included)
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "run"
    assert main(_train_args(small_data, out)) == 1
    err = capsys.readouterr().err
    assert err == f"mtlrepro: error: cannot write in the run directory {out}: {blocker} is a file, not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("existing", [True, False], ids=["existing", "to-create"])
def test_a_read_only_run_directory_is_refused_in_one_line(small_data, tmp_path, capsys, existing):
    if os.geteuid() == 0:
        pytest.skip("running as root, which ignores directory permissions; the below-a-file test covers this path")
    parent = tmp_path / "read-only"
    parent.mkdir()
    out = parent / "run"
    if existing:
        out.mkdir()
    locked = out if existing else parent
    locked.chmod(0o555)
    try:
        assert main(_train_args(small_data, out)) == 1
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert err == f"mtlrepro: error: cannot write in the run directory {out}: Permission denied\n"
    assert list(parent.iterdir()) == ([out] if existing else [])


@pytest.mark.parametrize("in_the_way", [CHECKPOINT_FILE, SELECTED_FILE])
def test_an_output_that_cannot_be_written_ends_in_one_line_naming_it(small_data, tmp_path, capsys, in_the_way):
    # a root-proof unwritable output: a directory where the run writes a file (read first, or written at the end)
    out = tmp_path / "run"
    (out / in_the_way).mkdir(parents=True)
    assert main(_train_args(small_data, out)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mtlrepro: error: "), err
    assert str(out / in_the_way) in err
    assert not (out / METRICS_FILE).exists()
