"""Damaged inputs and unwritable outputs end in one clear message naming the file or key; nothing half-written.

Run specs as ``mtlrepro train --spec`` gets them, atomic writes that cannot
write (a parent that is a file, a read-only directory, a full disk), the mode
of written files under several umasks, and run records that reports read.
Process-level conditions (a file size limit, a umask) are set in child
Python processes, never in the test process; another user only in a forked
child that touches no torch code (torch's thread pool does not survive a fork).
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mtlrepro.cli import main
from mtlrepro.config import check_config
from mtlrepro.errors import ConfigError, DataError, OutputError
from mtlrepro.io import save_torch_atomic, write_atomic, write_json_atomic, write_text_atomic
from mtlrepro.report.runs import load_runs
from mtlrepro.run import RunSpec

from conftest import small_config, spec_for

NOBODY = 65534
CHILD_TIMEOUT = 60


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtlrepro: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def leftovers(directory: Path) -> list[str]:
    """Temporary files of atomic writes left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def in_child(work: Callable[[], str], setup: Callable[[], None] = lambda: None) -> tuple[str, str]:
    """Run ``setup()`` then ``work()`` in a forked child process; ``(stage, text)`` of how it ended.

    ``stage`` is ``"setup"`` (setup raised: ``text`` says why), ``"ok"`` (``text`` is what work returned)
    or ``"error"`` (``text`` is ``ExceptionName: message``). The child never returns into pytest. It
    must not call into torch: the parent's thread pools do not survive a fork (use :func:`in_python`).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, then leave without running any pytest code
        stage, text = "setup", ""
        try:
            os.close(read)
            setup()
            stage = "ok"
            text = work()
        except Exception as err:  # everything is reported to the parent, which asserts on it
            stage = "error" if stage == "ok" else stage
            text = f"{type(err).__name__}: {err}"
        finally:
            os.write(write, json.dumps([stage, text]).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        if not select.select([pipe], [], [], CHILD_TIMEOUT)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child process did not answer within {CHILD_TIMEOUT} s")
        stage, text = json.loads(pipe.read() or '["setup", "the child died"]')
    os.waitpid(pid, 0)
    return stage, text


CHILD_PROGRAM = """
import json, sys, torch
from mtlrepro.io import save_torch_atomic, write_json_atomic, write_text_atomic
try:
    print(json.dumps(["ok", str(eval(sys.argv[1]))]))
except Exception as err:
    print(json.dumps(["error", f"{type(err).__name__}: {err}"]))
"""


def in_python(expression: str, **process: object) -> tuple[str, str]:
    """Evaluate ``expression`` in a fresh Python (``process``: umask, preexec_fn...); ``(stage, text)`` as in_child."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD_PROGRAM, expression],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        **process,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stage, text = json.loads(result.stdout.strip().splitlines()[-1])
    return stage, text


# --------------------------------------------------------------------------- run specs


def test_a_spec_round_trips_through_json():
    spec = spec_for("rlw+rgw", seed=3, noise=[{"BR": 0.4}])
    again = RunSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and again.hash == spec.hash


def spec_json() -> dict:
    return spec_for("rlw+rgw").to_json()


def without(*keys: str) -> Callable[[dict], None]:
    return lambda spec: [spec.pop(key) for key in keys]


BAD_SPECS = {
    "empty": (lambda s: s.clear(), "run spec: missing keys 'dataset', 'arch', 'method', 'seed'"),
    "no arch and seed": (without("arch", "seed"), "run spec: missing keys 'arch', 'seed'"),
    "no method expression": (lambda s: s["method"].pop("expression"), "run spec: missing key 'method.expression'"),
    "stage without weighting": (
        lambda s: s["method"]["loss"].pop("weighting"),
        "run spec: missing key 'method.loss.weighting'",
    ),
    "unknown keys": (
        lambda s: s.update(sed=1, lr=0.1),
        "run spec: unknown keys 'sed', 'lr' (known keys: dataset, arch, method, seed",
    ),
    "unknown stage key": (lambda s: s["method"].update(grad={}), "run spec: unknown key 'method.grad'"),
    "seed a string": (lambda s: s.update(seed="3"), "run spec: seed must be an integer >= 0, got '3'"),
    "method a string": (lambda s: s.update(method="rgw"), "run spec: method must be a JSON object, got 'rgw'"),
    "dataset a number": (lambda s: s.update(dataset=7), "run spec: dataset must be a non-empty string, got 7"),
    "training a list": (lambda s: s.update(training=[1]), "run spec: training must be a JSON object"),
    "NaN learning rate": (
        lambda s: s["training"].update(lr=float("nan")),
        "run spec: training.lr: nan is not a finite number",
    ),
    "bad data option": (lambda s: s["data_options"].update(n_train=0), "run spec: data_options: n_train must be > 0"),
    "noise not a rate": (lambda s: s.update(noise={"BR": "high"}), "run spec: noise.BR must be a number in [0, 1]"),
    "noise label disagrees": (lambda s: s.update(noise_label="BR0.4"), "run spec: noise_label 'BR0.4' does not match"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_a_bad_spec_is_one_config_error_naming_the_keys(case):
    edit, message = BAD_SPECS[case]
    spec = spec_json()
    edit(spec)
    with pytest.raises(ConfigError) as caught:
        RunSpec.from_json(json.loads(json.dumps(spec)))
    assert message in str(caught.value)


def test_train_with_a_spec_missing_keys_exits_with_one_line(tmp_path, capsys):
    spec = spec_json()
    del spec["seed"], spec["method"]
    status = main(["train", "--spec", json.dumps(spec), "--data", str(tmp_path / "d.pt"), "--out", str(tmp_path)])
    assert status == 2
    assert one_line_error(capsys) == "mtlrepro: error: run spec: missing keys 'method', 'seed'"


def test_a_spec_resolves_its_data_options_as_the_config_does():
    spec = spec_json()
    spec["data_options"] = {"n_train": 512}
    resolved = RunSpec.from_json(spec).data_options
    assert resolved["n_train"] == 512 and resolved["canvas"] == 36 and "generation_seed" in resolved


# --------------------------------------------------------------------------- atomic writes that cannot write


SMALL_STATE = {"w": torch.arange(4096)}
WRITERS = {
    "text": lambda path: write_text_atomic(path, "new\n"),
    "json": lambda path: write_json_atomic(path, {"new": [1, 2]}),
    "torch": lambda path: save_torch_atomic(path, SMALL_STATE),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_parent_that_is_a_file_is_named(tmp_path, writer):
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    for target in (blocker / "metrics.json", blocker / "runs" / "seed0" / "metrics.json"):
        with pytest.raises(OutputError) as caught:
            WRITERS[writer](target)
        assert str(caught.value) == (
            f"cannot write {target}: {blocker} is a file, not a directory: move it away or choose another output path"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and blocker.read_text() == "not a directory"


def test_a_directory_in_the_way_is_named_and_no_temporary_file_stays(tmp_path):
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(OutputError, match=r"cannot write .*metrics\.json: Is a directory; a directory of that name"):
        write_json_atomic(tmp_path / "metrics.json", {})
    assert leftovers(tmp_path) == []


def test_a_failing_writer_leaves_neither_output_nor_temporary_file(tmp_path):
    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise TypeError("a bug in the writer")

    with pytest.raises(TypeError, match="a bug in the writer"):  # bugs are not the user's: they propagate as they are
        write_atomic(tmp_path / "out.txt", broken)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_of_a_cli_command_is_one_line(tmp_path, capsys):
    (tmp_path / "resources").write_text("")
    out = tmp_path / "resources" / "data" / "multi_digits.pt"
    options = json.dumps({"n_train": 200, "n_val": 100, "n_test": 100})
    assert main(["prepare", "multi_digits", "--options", options, "--out", str(out)]) == 1
    assert one_line_error(capsys) == (
        f"mtlrepro: error: cannot write {out}: {tmp_path / 'resources'} is a file, not a directory: "
        "move it away or choose another output path"
    )


def test_a_read_only_directory_is_named(tmp_path):
    """As root, permissions are not enforced: the write then happens in a child process running as nobody."""
    if os.geteuid() != 0:
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        try:
            with pytest.raises(OutputError) as caught:
                write_json_atomic(readonly / "metrics.json", {})
            assert leftovers(readonly) == [] and not (readonly / "metrics.json").exists()
        finally:
            readonly.chmod(0o755)
        message = str(caught.value)
    else:
        top = Path(tempfile.mkdtemp())  # the system's temporary directory: nobody can reach it, unlike tmp_path
        try:
            top.chmod(0o755)
            readonly = top / "readonly"
            readonly.mkdir(mode=0o555)
            readonly.chmod(0o555)

            def become_nobody() -> None:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)

            stage, message = in_child(lambda: str(write_json_atomic(readonly / "metrics.json", {})), become_nobody)
            if stage == "setup":
                pytest.skip(f"cannot run a child process as user nobody ({message})")
            stage_sub, message_sub = in_child(
                lambda: str(write_json_atomic(readonly / "run" / "metrics.json", {})), become_nobody
            )
            assert leftovers(readonly) == [] and list(readonly.iterdir()) == []
        finally:
            shutil.rmtree(top, ignore_errors=True)
        assert stage == "error" and message.startswith("OutputError: "), message
        message = message.removeprefix("OutputError: ")
        assert stage_sub == "error" and message_sub == (
            f"OutputError: cannot write {readonly / 'run' / 'metrics.json'}: Permission denied ({readonly / 'run'}); "
            "make its directory writable or choose another output path"
        )
    assert message == (
        f"cannot write {readonly / 'metrics.json'}: Permission denied; "
        "make its directory writable or choose another output path"
    )


def limit_file_size() -> None:
    """Stand in for a full disk: writes past 4 KiB fail (EFBIG) instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_full_disk_keeps_the_previous_file_and_no_temporary_one(tmp_path, writer):
    target = tmp_path / "out"
    target.write_text("previous\n")
    big = {
        "text": f"write_text_atomic({str(target)!r}, 'x' * 100_000)",
        "json": f"write_json_atomic({str(target)!r}, list(range(100_000)))",
        "torch": f"save_torch_atomic({str(target)!r}, {{'w': torch.ones(100_000)}})",
    }[writer]
    stage, message = in_python(big, preexec_fn=limit_file_size)
    assert stage == "error", message
    assert message == (
        f"OutputError: cannot write {target}: File too large; "
        "the file exceeds the size allowed: free some space or raise the limit and rerun"
    )
    assert target.read_text() == "previous\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_umask_in_force_when_written(tmp_path, umask, mode):
    """The umask is changed in a child process after it imported mtlrepro.io."""

    paths = {name: str(tmp_path / name) for name in sorted(WRITERS)}
    writes = (
        f"write_json_atomic({paths['json']!r}, {{'new': [1, 2]}}), "
        f"save_torch_atomic({paths['torch']!r}, {{'w': torch.arange(4096)}}), "
        f"write_text_atomic({paths['text']!r}, 'new')"
    )
    # the umask changes after mtlrepro.io was imported: it must be read when writing
    stage, text = in_python(f"[__import__('os').umask({umask}), {writes}] and None", umask=0o022)
    assert stage == "ok", text
    modes = [stat.S_IMODE(os.stat(path).st_mode) for path in paths.values()]
    assert modes == [mode] * len(WRITERS)


# --------------------------------------------------------------------------- run records read by reports


def study_json() -> str:
    return json.dumps(check_config(small_config(methods=("ew",)))["small"].to_json())


def test_a_run_record_that_is_not_utf8_stops_the_table_with_one_line(tmp_path, capsys):
    record = tmp_path / "metrics.json"
    record.write_bytes(b'{"format": "mtlrepro.run/2", "note": "caf\xe9"}')
    out = tmp_path / "tables" / "method_table"
    assert main(["table", "method_table", str(record), "--study", study_json(), "--out", str(out)]) == 1
    assert one_line_error(capsys) == (
        f"mtlrepro: error: {record}: not a UTF-8 text file (byte 0xe9 at offset 41); "
        "delete it and rerun snakemake, which trains that run again"
    )
    assert not (tmp_path / "tables").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"format": "mtlrepro.run/2", ',
            "not valid JSON (Expecting property name enclosed in double quotes at line 1)",
        ),
        (b"[1, 2]", "a run file must hold a JSON object"),
        (b'{"format": "mtlrepro.run/1"}', "format is 'mtlrepro.run/1', expected 'mtlrepro.run/2'"),
        (b'{"format": "mtlrepro.run/2"}', "missing key 'run'"),
        (b"[" * 100_000 + b"]" * 100_000, "not a run record (JSON nested too deeply)"),
    ],
    ids=["truncated", "a list", "old format", "no run", "nested"],
)
def test_a_damaged_run_record_says_to_delete_it_and_rerun(tmp_path, content, message):
    record = tmp_path / "metrics.json"
    record.write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_runs([record])
    assert str(caught.value) == f"{record}: {message}; delete it and rerun snakemake, which trains that run again"
