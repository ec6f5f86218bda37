"""Stopping a run cleanly when the scheduler asks: SIGTERM and SIGINT become a request, not a crash.

A cluster scheduler ends a job with SIGTERM (preemption, time limit) and
kills it with SIGKILL after a grace period. While :class:`StopRequest` is
active, SIGTERM and SIGINT only record that a stop was asked for; the training
loop looks at :attr:`StopRequest.received` after every optimizer step, saves a
checkpoint of that exact point and raises :class:`Interrupted`, which the
command turns into one line and the shell's exit status of a signal death
(128 + the signal's number: 143 for SIGTERM, 130 for SIGINT). A second signal
while the first is still pending is handled as it would have been without
this module (SIGTERM ends the process at once, SIGINT raises
``KeyboardInterrupt``), so a stuck run can still be stopped by hand. A signal
that is ignored when the run starts (``nohup``-style launchers) stays ignored.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from mtlrepro.errors import UserError

#: the signals that ask a run to stop at its next step boundary
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(UserError):
    """Training stopped on a signal after saving a checkpoint; running the same command again resumes it."""

    def __init__(self, signum: int, where: str, checkpoint: Path) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} {where}; checkpoint saved to {checkpoint}; rerun to resume"
        )

    @property
    def exit_code(self) -> int:
        """The exit status of a process killed by this signal, as shells report it (128 + signal number)."""
        return 128 + self.signum


class StopRequest:
    """A context manager that turns :data:`STOP_SIGNALS` into a flag for the duration of a run.

    The previous handlers are restored on exit, whether the run returned or
    raised. Signals ignored on entry stay ignored. Outside the main thread,
    where Python cannot install signal handlers, it installs nothing and
    :attr:`received` stays None.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: int | None = None
        """The first stop signal received, or None."""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                if signal.getsignal(signum) != signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is the closest
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            return
        # asked twice: stop waiting for the step boundary and let the signal do what it did before
        self._restore()
        signal.raise_signal(signum)
