"""Checksummed, resumable downloads of dataset sources, and safe unpacking of archives.

A dataset module declares its raw sources as :class:`Source` objects (a URL,
its sha256 and size, optional mirrors). :func:`fetch` brings one into a
directory:

- a file already there with the right size and sha256 is used as it is, with
  no network access;
- otherwise it is downloaded into ``.<filename>.part`` beside it. The name is
  fixed, so a download that was interrupted (a dropped connection, a killed
  job) is resumed by the next call with an HTTP ``Range`` request;
- transient failures (connection refused or reset, timeouts, HTTP 5xx, short
  reads) are retried with exponential backoff, then the mirrors are tried in
  order;
- the result is checked against the declared size and sha256 and only then
  moved onto its name (:func:`os.replace`), so the final name never holds a
  partial or corrupt file. A mismatch deletes the partial file and raises
  :class:`~mtlrepro.errors.DataError`. A source whose publisher gives no
  checksum has ``sha256=None``: its file is trusted on first use (only the
  size, when known, is checked) and the dataset records the sha256 it saw;
- when no URL can deliver the file, one :class:`~mtlrepro.errors.DataError`
  line names every URL with its last error and says how to put the file in
  place by hand.

:func:`unpack` extracts a ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` or a
single-file ``.gz`` beside its destination and renames the result into place,
refusing members that would land outside it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import re
import secrets
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from mtlrepro.errors import DataError, OutputError
from mtlrepro.io import sync

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
#: flags of a new partial file: never through a link, closed in child processes
_NEW_PART = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_APPEND_PART = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
#: HTTP statuses worth asking again for: the server is busy or failing, not refusing
_TRANSIENT_STATUS = frozenset({408, 425, 429})
#: what a damaged archive raises while it is read
_BAD_ARCHIVE = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError)


@dataclass(frozen=True)
class Source:
    """One raw file of a dataset: where it is, its sha256 and its size in bytes (``None`` if unknown).

    ``filename`` (default: the last path segment of ``url``) is the name it
    gets on disk; ``mirrors`` are other URLs serving the same bytes, tried in
    order after ``url``.
    """

    url: str
    sha256: str | None
    size: int | None
    filename: str | None = None
    mirrors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for url in (self.url, *self.mirrors):
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"source URL {url!r} is not an http(s) URL")
        if self.sha256 is not None:
            if not _SHA256.fullmatch(self.sha256.lower()):
                raise ValueError(f"sha256 of {self.url} must be 64 hex digits, not {self.sha256!r}")
            object.__setattr__(self, "sha256", self.sha256.lower())
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        if self.size is not None and self.size < 0:
            raise ValueError(f"size of {self.url} must be a number of bytes, not {self.size!r}")
        name = self.filename
        if name is None:
            name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(self.url).path).name)
            object.__setattr__(self, "filename", name)
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise ValueError(f"source {self.url} needs a plain file name, not {name!r}: give filename=...")

    @property
    def urls(self) -> tuple[str, ...]:
        """``url`` followed by the mirrors, in the order they are tried."""
        return (self.url, *self.mirrors)


class _Failure(Exception):
    """One attempt at one URL failed; ``transient`` says whether asking again may help."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.reason = " ".join(reason.split())  # one line, whatever the server or the OS said
        self.transient = transient


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of the file at ``path``."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _intact(path: Path, source: Source) -> bool:
    """Whether ``path`` is a file with ``source``'s size (when known) and sha256."""
    try:
        if not path.is_file() or (source.size is not None and path.stat().st_size != source.size):
            return False
        return source.sha256 is None or sha256_file(path) == source.sha256
    except OSError:
        return False


def _size(path: Path) -> int:
    """Size of ``path`` in bytes; 0 if it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _classify(err: BaseException) -> _Failure:
    """The :class:`_Failure` a network error amounts to: a refusal (4xx, no such host) is not retried."""
    if isinstance(err, urllib.error.HTTPError):
        transient = err.code >= 500 or err.code in _TRANSIENT_STATUS
        return _Failure(f"HTTP {err.code} {err.reason}", transient)
    if isinstance(err, urllib.error.URLError):
        reason = err.reason
        if isinstance(reason, socket.gaierror):
            return _Failure(f"host not found ({reason.strerror or reason})", False)
        if isinstance(reason, OSError):
            return _Failure(reason.strerror or str(reason) or type(reason).__name__, True)
        return _Failure(str(reason), False)
    if isinstance(err, TimeoutError):
        return _Failure("timed out", True)
    if isinstance(err, http.client.IncompleteRead):
        return _Failure(f"connection closed after {len(err.partial)} bytes of the reply", True)
    if isinstance(err, OSError):
        return _Failure(err.strerror or str(err) or type(err).__name__, True)
    return _Failure(str(err) or type(err).__name__, True)


#: what talking to a server can raise (HTTPError and URLError are OSErrors)
_NETWORK = (OSError, http.client.HTTPException, ValueError)


def _open_part(part: Path, restart: bool) -> int:
    """A descriptor appending to ``part``; created anew (mode 0666 less the umask) when ``restart`` or missing."""
    if restart:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    try:
        return os.open(part, _APPEND_PART)
    except FileNotFoundError:
        return os.open(part, _NEW_PART, 0o666)


def _attempt(
    opener: urllib.request.OpenerDirector, url: str, part: Path, source: Source, timeout: float, progress: bool
) -> None:
    """Bring ``part`` to the end of ``url``'s content, resuming from its current size.

    Raises :class:`_Failure` when the server or the network fails; an
    :class:`OSError` of the local file propagates.
    """
    offset = _size(part)
    if source.size is not None and offset > source.size:
        part.unlink()  # longer than the file can be: not a prefix of it
        offset = 0
    if offset and offset == source.size:
        return  # complete: the caller verifies it
    headers = {"User-Agent": "mtlrepro", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return  # nothing after what we have: complete, the caller verifies it
        raise _classify(err) from None
    except _NETWORK as err:
        raise _classify(err) from None
    with response:
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if match is None or int(match.group(1)) != offset:
                part.unlink()
                raise _Failure(f"the server resumed at another byte than {offset}; starting over", True)
        elif response.status == 200:
            offset = 0  # the server sends the whole file (it ignored the Range or there was none)
        else:
            raise _Failure(f"unexpected HTTP {response.status} {response.reason}", True)
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        total = source.size if source.size is not None else None if length is None else offset + length
        received = 0
        descriptor = _open_part(part, restart=offset == 0)
        with (
            os.fdopen(descriptor, "ab") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=source.filename,
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(CHUNK)
                except _NETWORK as err:
                    raise _classify(err) from None
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    expected = length if length is not None else None if source.size is None else source.size - offset
    if expected is not None and received < expected:
        raise _Failure(f"connection closed after {received} of {expected} bytes", True)


def _manual_step(path: Path, source: Source, dataset: str | None, manual: str | None) -> str:
    """How to put the file in place by hand."""
    key = f"datasets.{dataset or '<name>'}.path"
    step = (
        f"download it by hand and put it at {path}{f' (sha256 {source.sha256})' if source.sha256 else ''}, "
        f"or set `{key}` to a directory that holds it"
    )
    return f"{step}; {' '.join(manual.split())}" if manual else step


def fetch(
    source: Source,
    directory: str | os.PathLike[str],
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: bool = False,
    manual: str | None = None,
    dataset: str | None = None,
) -> Path:
    """Make sure ``directory/source.filename`` holds ``source``'s bytes, downloading them if needed; return its path.

    A file already there with the right size and sha256 is returned without
    network access. Otherwise the file is downloaded into
    ``directory/.<filename>.part``, resuming a partial file left by an earlier
    call (``Range`` request; a server answering 200 restarts it, one answering
    416 means it is complete). Each URL (``source.url``, then the mirrors) is
    retried ``retries`` times after transient failures (connection refused or
    reset, timeouts, HTTP 5xx, short reads), waiting ``backoff * 2**k``
    seconds before the k-th retry; ``timeout`` bounds every network
    operation. ``progress`` shows a progress bar on stderr.

    The downloaded file is checked against ``source.size`` (when known) and
    ``source.sha256`` and moved onto its name atomically, with mode
    ``0o666 & ~umask``. Raises :class:`DataError` when the bytes do not match
    (the partial file is deleted) or when no URL delivered them; the latter
    names every URL with its last error and the manual step, to which
    ``manual`` (dataset-specific instructions) is appended; ``dataset`` is the
    registry name the message mentions in ``datasets.<dataset>.path``.
    :class:`OutputError` when the directory cannot be written.
    """
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError(f"fetch needs retries >= 0, timeout > 0 and backoff >= 0, not {retries}, {timeout}, {backoff}")
    assert source.filename is not None  # set by Source.__post_init__
    directory = Path(directory)
    path = directory / source.filename
    if _intact(path, source):
        return path
    part = directory / f".{source.filename}.part"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {directory} for {source.filename}: {err.strerror or err}") from None
    opener = urllib.request.build_opener()  # built per call, so the proxy settings in force now apply
    errors: dict[str, str] = {}
    for url in source.urls:
        for k in range(retries + 1):
            if k:
                time.sleep(backoff * 2 ** (k - 1))
            try:
                _attempt(opener, url, part, source, timeout, progress)
            except _Failure as failure:
                errors[url] = failure.reason
                if failure.transient:
                    continue
                break
            except OSError as err:
                raise OutputError(f"cannot write {part}: {err.strerror or err}") from None
            _verify(part, source, url)
            return _move(part, path)
    tried = "; ".join(f"{url} ({reason})" for url, reason in errors.items())
    present = ""
    if path.is_file():
        present = f" ({path} exists but is not the expected file: {_describe_mismatch(path, source)})"
    raise DataError(
        f"cannot download {source.filename}{present}: tried {tried}: {_manual_step(path, source, dataset, manual)}"
    )


def _describe_mismatch(path: Path, source: Source) -> str:
    """What differs between the file at ``path`` and ``source``: its size, or its sha256."""
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        return f"{size} bytes instead of {source.size}"
    if source.sha256 is None:
        return "it cannot be read"
    return f"sha256 {sha256_file(path)[:12]}… instead of {source.sha256[:12]}…"


def _verify(part: Path, source: Source, url: str) -> None:
    """Refuse (deleting it) a downloaded ``part`` whose size or sha256 is not ``source``'s."""
    try:
        size = part.stat().st_size
        actual = sha256_file(part)
    except OSError as err:
        raise DataError(f"cannot read the download of {source.filename} ({part}): {err.strerror or err}") from None
    if (source.size is None or size == source.size) and source.sha256 in (None, actual):
        return
    with contextlib.suppress(OSError):
        part.unlink()
    sizes = f", {size} bytes instead of {source.size}" if source.size is not None and size != source.size else ""
    if source.sha256 is None:
        raise DataError(
            f"download of {source.filename} from {url} is truncated or the source changed: {size} bytes instead "
            f"of {source.size}; the partial file was deleted: rerun to download it again"
        )
    raise DataError(
        f"download of {source.filename} from {url} is corrupt or the source changed: "
        f"expected sha256 {source.sha256[:12]}…, got {actual[:12]}…{sizes}; the partial file was deleted: "
        "rerun to download it again, or update the declared checksum if the source changed on purpose"
    )


def _move(part: Path, path: Path) -> Path:
    """Move the verified ``part`` onto ``path`` atomically; :class:`OutputError` if that fails."""
    try:
        os.replace(part, path)
        sync(path.parent)
    except OSError as err:
        raise OutputError(f"cannot move the download {part} to {path}: {err.strerror or err}") from None
    return path


def _member_problem(name: str) -> str | None:
    """Why an archive member named ``name`` would land outside the destination, or ``None``."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"[A-Za-z]:", posix):
        return "an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "a path leaving the destination (..)"
    return None


def _kind(archive: Path) -> str:
    """``zip``, ``tar``, ``tar.gz`` or ``gz`` from ``archive``'s name; :class:`DataError` for another name."""
    name = archive.name.lower()
    for suffix, kind in ((".tar.gz", "tar.gz"), (".tgz", "tar.gz"), (".tar", "tar"), (".zip", "zip"), (".gz", "gz")):
        if name.endswith(suffix):
            return kind
    raise DataError(f"cannot unpack {archive}: not a .zip, .tar, .tar.gz, .tgz or .gz file")


def _beside(destination: Path, what: str) -> Path:
    """A fresh name beside ``destination`` for a temporary ``what`` (a directory or a file)."""
    return destination.parent / f".{destination.name}.{secrets.token_hex(4)}.{what}"


def _extract_zip(archive: Path, target: Path) -> None:
    """Extract a zip file into the directory ``target``, after checking every member's name."""
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.namelist():
            problem = _member_problem(member)
            if problem is not None:
                raise DataError(f"archive {archive} holds member {member!r} with {problem}: refusing to unpack it")
        zipped.extractall(target)


def _extract_tar(archive: Path, target: Path) -> None:
    """Extract a (compressed) tar file into ``target`` with the ``"data"`` filter, after checking member names."""
    with tarfile.open(archive) as tarred:
        for member in tarred.getmembers():
            problem = _member_problem(member.name)
            if problem is not None:
                raise DataError(f"archive {archive} holds member {member.name!r} with {problem}: refusing to unpack it")
        try:
            tarred.extractall(target, filter="data")
        except tarfile.FilterError as err:
            name = err.tarinfo.name if err.tarinfo is not None else "?"
            raise DataError(
                f"archive {archive} holds member {name!r} that is unsafe ({err}): refusing to unpack it"
            ) from None


def _gunzip(archive: Path, target: Path) -> None:
    """Decompress a single-file gzip into the new file ``target``."""
    with gzip.open(archive, "rb") as packed, open(target, "xb") as out:
        shutil.copyfileobj(packed, out, CHUNK)


def unpack(archive: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Unpack ``archive`` to ``destination`` atomically; return ``destination``.

    A ``.zip``, ``.tar``, ``.tar.gz`` or ``.tgz`` is extracted into a directory
    ``destination``; a ``.gz`` is decompressed into a file ``destination``.
    Everything is unpacked beside ``destination`` first and renamed into place
    once complete, so an existing ``destination`` is a complete earlier unpack
    and is returned as it is. Members with an absolute path or a ``..`` (and,
    for tar files, links or devices that :mod:`tarfile`'s ``"data"`` filter
    refuses) raise :class:`DataError` naming the archive and the member; so
    does a damaged archive. Nothing is left behind on failure.
    """
    archive, destination = Path(archive), Path(destination)
    kind = _kind(archive)
    if destination.exists():
        return destination
    if not archive.is_file():
        raise DataError(f"cannot unpack {archive}: it does not exist")
    extract: Callable[[Path, Path], None] = {
        "zip": _extract_zip,
        "tar": _extract_tar,
        "tar.gz": _extract_tar,
        "gz": _gunzip,
    }[kind]
    temporary: Path | None = None
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = _beside(destination, "unpack")
        if kind != "gz":
            os.mkdir(temporary, 0o777)  # the umask applies, as to every file extracted into it
        extract(archive, temporary)
        os.replace(temporary, destination)
        temporary = None
        sync(destination.parent)
    except _BAD_ARCHIVE as err:
        raise DataError(
            f"archive {archive} is damaged ({type(err).__name__}: {err}): delete it and download it again"
        ) from None
    except OSError as err:
        raise OutputError(f"cannot unpack {archive} to {destination}: {err.strerror or err}") from None
    finally:
        if temporary is not None:
            if temporary.is_dir() and not temporary.is_symlink():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    temporary.unlink()
    return destination
