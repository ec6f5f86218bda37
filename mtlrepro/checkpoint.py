"""A run's checkpoint on disk: when it is written, how it is read back, and the run directory that holds it.

:class:`Checkpoints` writes the run's state at every epoch end, every
``checkpoint_minutes`` within an epoch, and at once when a stop signal came
(then training stops with :class:`~mtlrepro.interrupt.Interrupted`).
:func:`read_checkpoint` gives back a checkpoint only if it was written under
the same run hash (spec, data and code); one that is empty, unreadable or not
a checkpoint of this program is reported on stderr in one line, removed, and
the run starts from scratch. :func:`run_directory` makes the run directory,
checks it can be written, sweeps the half-written files a killed attempt left,
and removes what it made if the run fails before writing anything.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch

from mtlrepro.errors import OutputError
from mtlrepro.interrupt import Interrupted, StopRequest
from mtlrepro.io import save_torch_atomic, stale_temporaries


class Resumable(Protocol):
    """What a checkpoint is made of: the training session (see :class:`mtlrepro.train.Session`)."""

    history: list[dict[str, Any]]
    clock: dict[str, Any]

    def state_dict(self, run_hash: str, unfinished: Any = None) -> dict[str, Any]: ...


class InProgress(Protocol):
    """The epoch being trained (see :class:`mtlrepro.train.EpochInProgress`)."""

    epoch: int

    @property
    def steps(self) -> int: ...


class Checkpoints:
    """When and where the run's checkpoint is written: every epoch end, every ``minutes`` within an epoch (0: after
    every step, None: never), and at once when a stop signal came -- then training stops."""

    def __init__(self, path: Path, run_hash: str, minutes: float | None, stop: StopRequest) -> None:
        self.path, self.run_hash, self.stop = path, run_hash, stop
        self.interval = None if minutes is None else 60.0 * minutes
        self.last = time.monotonic()

    def save(self, session: Resumable, unfinished: InProgress | None = None) -> None:
        """Write the checkpoint now (atomically): after the history's epochs and the steps done of ``unfinished``."""
        save_torch_atomic(self.path, session.state_dict(self.run_hash, unfinished))
        self.last = time.monotonic()

    def after_step(self, session: Resumable, current: InProgress) -> None:
        """After a step of ``current``: checkpoint when due; when a stop was asked for, checkpoint and stop."""
        self.stop_if_asked(session, current)
        if self.interval is not None and time.monotonic() - self.last >= self.interval:
            self.save(session, current)

    def stop_if_asked(self, session: Resumable, current: InProgress | None = None) -> None:
        """If a stop signal came: note it in the run's clock, checkpoint, and raise :class:`Interrupted`.

        ``current`` is the epoch stopped within; None after an epoch's own checkpoint.
        """
        if self.stop.received is None:
            return
        epoch, step = (len(session.history), 0) if current is None else (current.epoch, current.steps)
        signal_name = signal.Signals(self.stop.received).name
        session.clock.setdefault("interruptions", []).append({"signal": signal_name, "epoch": epoch, "step": step})
        self.save(session, current)
        where = f"at the end of epoch {epoch}" if current is None else f"in epoch {epoch} at step {step}"
        raise Interrupted(self.stop.received, where, self.path)


#: the keys every checkpoint of :meth:`mtlrepro.train.Session.state_dict` has
CHECKPOINT_KEYS = frozenset(
    {"run_hash", "model", "optimizer", "methods", "held_out", "history", "clock", "selected", "rng", "unfinished"}
)


def read_checkpoint(path: Path, run_hash: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written under ``run_hash`` (same spec, data and code), else None.

    A checkpoint of another run hash is left to be overwritten; one that cannot
    be read or lacks keys is reported on stderr and removed.
    """
    if not path.exists():
        return None
    if not path.is_file():
        raise OutputError(f"the checkpoint {path} is not a file: remove it or choose another run directory")
    if path.stat().st_size == 0:
        discard_checkpoint(path, "it is empty")
        return None
    try:
        # on the CPU: generator states must stay CPU byte tensors; load_state_dict moves the rest. Only tensors and
        # plain containers are unpickled (no code runs), and torch's warnings about odd bytes would be extra lines.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling damaged bytes can raise anything; the file is then of no use
        discard_checkpoint(path, f"it cannot be read ({describe_error(err)})")
        return None
    missing = CHECKPOINT_KEYS - state.keys() if isinstance(state, dict) else None
    if missing is None or missing:
        found = f"a {type(state).__name__}" if missing is None else f"no {', '.join(sorted(missing))}"
        discard_checkpoint(path, f"it is not a checkpoint of this program ({found})")
        return None
    if state["run_hash"] != run_hash:
        warn(f"note: checkpoint {path} was written under another spec, data or code; training from scratch")
        return None
    return state


def discard_checkpoint(path: Path, reason: str) -> None:
    """Report the damaged checkpoint ``path`` on stderr (one line) and remove it."""
    warn(f"warning: damaged checkpoint {path}: {reason}; removed it, training from scratch")
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(f"cannot remove the damaged checkpoint {path} ({err.strerror}); remove it by hand") from None


def warn(message: str) -> None:
    """One line ``mtlrepro: message`` on stderr (it lands in the job's log)."""
    print(f"mtlrepro: {message}", file=sys.stderr, flush=True)


def describe_error(err: BaseException) -> str:
    """An exception as a short single line: its type and the gist of its message.

    The gist is the first sentence, or for torch's long "weights only" refusal the unpickler's own complaint.
    """
    message = str(err)
    _, marker, after = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (after if marker else message).splitlines() if line.strip()]
    gist = lines[0].split(". ")[0] if lines else ""
    text = f"{type(err).__name__}: {gist}" if gist else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def run_directory(path: Path) -> Iterator[Path]:
    """Make the run directory ``path`` and check that files can be written in it, for the ``with`` block.

    If the block fails, the directories this made (``path`` and missing
    parents) are removed again as long as they are empty: a run that failed
    before its first checkpoint leaves nothing behind.
    """
    if path.exists() and not path.is_dir():
        raise OutputError(f"the run directory {path} is an existing file: remove it or choose another directory")
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        _remove_empty(made)
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a directory" if blocker is not None else err.strerror or str(err)
        raise OutputError(f"cannot write in the run directory {path}: {reason}") from None
    for stale in stale_temporaries(path):  # a half-written checkpoint of an attempt killed while saving
        stale.unlink(missing_ok=True)
    try:
        yield path
    except BaseException:
        _remove_empty(made)
        raise


def _remove_empty(directories: Sequence[Path]) -> None:
    """Remove ``directories`` (deepest first), stopping at the first that is not empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return
