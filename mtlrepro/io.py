"""File helpers shared by every stage: canonical JSON and atomic writes.

A pipeline stage must never leave a half-written output behind, so every
result file is written to a temporary file in the same directory and moved
into place with :func:`os.replace`, which is atomic on POSIX file systems.
A write that fails (no permission, a parent that is not a directory, a full
disk) removes its temporary file and raises :class:`~mtlrepro.errors.OutputError`
naming the output and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtlrepro.errors import OutputError

#: flags of a new temporary file: created here or not at all, never through a link, closed in child processes
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_TEMP_TRIES = 100


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` with sorted keys and no spaces, so equal specs give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def digest(obj: Any) -> str:
    """Return the sha256 hex digest of ``obj``'s canonical JSON form."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _not_a_directory(directory: Path) -> Path | None:
    """The first ancestor of ``directory`` (or itself), from the root down, that exists but is not a directory."""
    for ancestor in reversed((directory, *directory.parents)):
        try:
            if ancestor.exists() and not ancestor.is_dir():
                return ancestor
        except OSError:  # an ancestor we may not look into: the OS reason is reported instead
            return None
    return None


#: what to do about an output that cannot be written, by errno
_ADVICE = {
    errno.EACCES: "make its directory writable or choose another output path",
    errno.EPERM: "make its directory writable or choose another output path",
    errno.EROFS: "the file system is read-only: choose another output path",
    errno.ENOSPC: "the disk is full: free some space and rerun",
    errno.EDQUOT: "the disk quota is exceeded: free some space and rerun",
    errno.EISDIR: "a directory of that name is in the way: remove it or choose another output path",
    errno.EFBIG: "the file exceeds the size allowed: free some space or raise the limit and rerun",
}


def _failure(err: OSError, path: Path) -> str:
    """One line: the OS reason ``err`` could not write ``path``, the file it concerns, and what to do."""
    blocker = _not_a_directory(path.parent) if err.errno in (errno.ENOTDIR, errno.EEXIST) else None
    if blocker is not None:
        return f"{blocker} is a file, not a directory: move it away or choose another output path"
    reason = err.strerror or str(err)
    concerned = err.filename
    if concerned is not None and Path(os.fsdecode(concerned)).parent != path.parent:
        reason += f" ({os.fsdecode(concerned)})"  # a directory on the way, not the file or its temporary twin
    advice = _ADVICE.get(err.errno)
    return f"{reason}; {advice}" if advice else reason


def sync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to the storage device."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def stale_temporaries(directory: Path) -> list[Path]:
    """The temporary files of atomic writes in ``directory`` that a killed writer left behind.

    Only a directory no other process writes into (a run directory while its
    job runs) may be swept with this.
    """
    return sorted(directory.glob(".*.tmp")) if directory.is_dir() else []


def _create_temp(path: Path) -> Path:
    """Create an empty temporary file beside ``path``, with mode 0666 less the umask in force now.

    The kernel applies the umask at creation (as for any file a program
    writes), so results are shared like the user's other files; ``mkstemp``
    would make them 0600.
    """
    for _ in range(_TEMP_TRIES):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, _CREATE, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path} after {_TEMP_TRIES} tries")


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it onto ``path``.

    The file gets mode ``0o666 & ~umask`` (the umask at the time of writing).
    :class:`OutputError` names ``path`` and the OS reason when it cannot be
    written; no temporary file is left behind in any case. Errors of ``write``
    other than :class:`OSError` (bugs) propagate unchanged.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path)
        write(tmp)
        sync(tmp)  # on disk before it takes the name: a crash leaves the old file or the new, never an empty one
        os.replace(tmp, path)
        tmp = None
        sync(path.parent)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_failure(err, path)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file + rename)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (temp file + rename)."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj``, as bytes.

    Saved through a file object, so the archive inside is always named
    ``archive/`` (saved to a path, torch names it after the file): the same
    object gives the same bytes, whatever file it ends up in.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (temp file + rename); equal objects give equal bytes.

    The object is serialised in memory first and written with a plain file
    write, so a full disk is reported with its OS reason (torch's own writer
    would report a position mismatch).
    """
    data = torch_bytes(obj)
    write_atomic(path, lambda tmp: tmp.write_bytes(data))
