"""Downloads of dataset sources against a local HTTP server that misbehaves on request, and archive unpacking.

The server listens on 127.0.0.1 only and serves files from memory; per path it
can fail the first requests with 503, drop the connection after some bytes,
ignore ``Range``, serve other bytes than declared, or answer 404. No test
contacts any other address.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import tarfile
import zipfile
from collections.abc import Iterator

import pytest

from mtlrepro.data.download import Source, fetch, sha256_file, unpack
from mtlrepro.errors import DataError

from fixtures.server import Server, local_server, no_proxy

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes, several read chunks of the handler
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    no_proxy(monkeypatch)


@pytest.fixture
def server() -> Iterator[Server]:
    with local_server() as state:
        yield state


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quick(source: Source, directory, **kwargs):
    """``fetch`` without waiting between retries."""
    return fetch(source, directory, backoff=0, timeout=5, **kwargs)


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_source_defaults_its_filename_to_the_urls_last_segment():
    source = Source("https://example.org/a/b/data%20set.tar.gz?x=1", SHA.upper(), 10)
    assert source.filename == "data set.tar.gz"
    assert source.sha256 == SHA
    assert Source("https://example.org/x", SHA, None, filename="y.bin").filename == "y.bin"
    with pytest.raises(ValueError, match="64 hex"):
        Source("https://example.org/x", "abc", None)
    with pytest.raises(ValueError, match="plain file name"):
        Source("https://example.org/", SHA, None)
    with pytest.raises(ValueError, match="http"):
        Source("file:///etc/passwd", SHA, None)


def test_fresh_download_is_verified_and_moved_into_place(server, tmp_path):
    url = server.serve("/data/file.bin", PAYLOAD)
    path = quick(Source(url, SHA, len(PAYLOAD)), tmp_path / "raw")
    assert path == tmp_path / "raw" / "file.bin"
    assert path.read_bytes() == PAYLOAD
    assert sha256_file(path) == SHA
    assert leftovers(tmp_path / "raw") == ["file.bin"]
    assert server.seen("/data/file.bin") == [None]


def test_file_already_present_makes_no_request(server, tmp_path):
    url = server.serve("/file.bin", PAYLOAD)
    (tmp_path / "file.bin").write_bytes(PAYLOAD)
    assert quick(Source(url, SHA, len(PAYLOAD)), tmp_path) == tmp_path / "file.bin"
    assert quick(Source(url, SHA, None), tmp_path) == tmp_path / "file.bin"
    assert server.requests == []


def test_a_wrong_file_in_place_is_downloaded_again(server, tmp_path):
    url = server.serve("/file.bin", PAYLOAD)
    (tmp_path / "file.bin").write_bytes(PAYLOAD[:-1] + b"x")
    assert quick(Source(url, SHA, len(PAYLOAD)), tmp_path).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_dropped_connection_is_resumed_with_a_range_request(server, tmp_path):
    url = server.serve("/file.bin", PAYLOAD, drop_after=30_000)
    path = quick(Source(url, SHA, len(PAYLOAD)), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.seen("/file.bin") == [None, "bytes=30000-"]
    assert leftovers(tmp_path) == ["file.bin"]


def test_interrupted_download_is_resumed_by_the_next_call(server, tmp_path):
    url = server.serve("/file.bin", PAYLOAD, drop_after=40_000)
    source = Source(url, SHA, len(PAYLOAD))
    with pytest.raises(DataError, match="connection closed after 40000 of 102400 bytes"):
        quick(source, tmp_path, retries=0)
    assert (tmp_path / ".file.bin.part").read_bytes() == PAYLOAD[:40_000]
    assert quick(source, tmp_path, retries=0).read_bytes() == PAYLOAD
    assert server.seen("/file.bin") == [None, "bytes=40000-"]
    assert leftovers(tmp_path) == ["file.bin"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.serve("/file.bin", PAYLOAD, ignore_range=True)
    (tmp_path / ".file.bin.part").write_bytes(PAYLOAD[:5000])
    path = quick(Source(url, SHA, len(PAYLOAD)), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert server.seen("/file.bin") == ["bytes=5000-"]


def test_complete_part_file_answered_416_is_verified(server, tmp_path):
    url = server.serve("/file.bin", PAYLOAD)
    (tmp_path / ".file.bin.part").write_bytes(PAYLOAD)
    assert quick(Source(url, SHA, None), tmp_path).read_bytes() == PAYLOAD
    assert server.seen("/file.bin") == [f"bytes={len(PAYLOAD)}-"]


def test_503_then_success_within_retries(server, tmp_path):
    url = server.serve("/file.bin", PAYLOAD, fail_first=2)
    assert quick(Source(url, SHA, len(PAYLOAD)), tmp_path, retries=2).read_bytes() == PAYLOAD
    assert len(server.seen("/file.bin")) == 3


def test_retries_exhausted_then_a_mirror_succeeds(server, tmp_path):
    primary = server.serve("/primary/file.bin", PAYLOAD, fail_first=10)
    mirror = server.serve("/mirror/file.bin", PAYLOAD)
    path = quick(Source(primary, SHA, len(PAYLOAD), mirrors=(mirror,)), tmp_path, retries=2)
    assert path.read_bytes() == PAYLOAD
    assert len(server.seen("/primary/file.bin")) == 3
    assert server.seen("/mirror/file.bin") == [None]


def test_404_is_not_retried_and_the_mirror_is_tried(server, tmp_path):
    primary = server.serve("/gone/file.bin", PAYLOAD, missing=True)
    mirror = server.serve("/mirror/file.bin", PAYLOAD)
    assert quick(Source(primary, SHA, None, mirrors=(mirror,)), tmp_path, retries=3).read_bytes() == PAYLOAD
    assert len(server.seen("/gone/file.bin")) == 1


def test_corrupt_bytes_raise_naming_file_url_and_sha_and_leave_nothing(server, tmp_path):
    url = server.serve("/file.bin", PAYLOAD, corrupt=True)
    actual = hashlib.sha256(bytes(255 - b for b in PAYLOAD)).hexdigest()
    with pytest.raises(DataError) as caught:
        quick(Source(url, SHA, len(PAYLOAD)), tmp_path)
    message = str(caught.value)
    assert "file.bin" in message and url in message
    assert SHA[:12] in message and actual[:12] in message
    assert "corrupt or the source changed" in message
    assert leftovers(tmp_path) == []


def test_wrong_size_raises_and_leaves_nothing(server, tmp_path):
    url = server.serve("/file.bin", data=PAYLOAD[:-10])
    with pytest.raises(DataError, match=f"{len(PAYLOAD) - 10} bytes instead of {len(PAYLOAD)}"):
        quick(Source(url, SHA, len(PAYLOAD)), tmp_path)
    assert leftovers(tmp_path) == []


def test_everything_unreachable_raises_one_line_with_urls_and_the_manual_step(server, tmp_path, closed_port):
    refused = f"http://127.0.0.1:{closed_port}/file.bin"
    missing = server.serve("/file.bin", PAYLOAD, missing=True)
    source = Source(refused, SHA, len(PAYLOAD), mirrors=(missing,))
    with pytest.raises(DataError) as caught:
        quick(source, tmp_path, retries=1, dataset="celeba", manual="CelebA is on Google Drive: fetch it there")
    message = str(caught.value)
    assert "\n" not in message
    assert "file.bin" in message
    assert f"{refused} (" in message and "refused" in message.lower()
    assert f"{missing} (HTTP 404" in message
    assert f"put it at {tmp_path / 'file.bin'} (sha256 {SHA})" in message
    assert "`datasets.celeba.path`" in message
    assert message.endswith("CelebA is on Google Drive: fetch it there")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_downloaded_file_gets_the_umask(server, tmp_path, umask, mode):
    url = server.serve("/file.bin", PAYLOAD)
    previous = os.umask(umask)
    try:
        path = quick(Source(url, SHA, len(PAYLOAD)), tmp_path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_progress_bar_goes_to_stderr(server, tmp_path, capsys):
    url = server.serve("/file.bin", PAYLOAD)
    quick(Source(url, SHA, len(PAYLOAD)), tmp_path, progress=True)
    captured = capsys.readouterr()
    assert "file.bin" in captured.err and captured.out == ""


def make_tree() -> dict[str, bytes]:
    return {"top.txt": b"top\n", "sub/inner.bin": bytes(range(50))}


def check_tree(directory) -> None:
    for name, data in make_tree().items():
        assert (directory / name).read_bytes() == data


def test_unpack_zip(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in make_tree().items():
            zipped.writestr(name, data)
    assert unpack(archive, tmp_path / "out") == tmp_path / "out"
    check_tree(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]


def write_tar(archive, members: dict[str, bytes], mode: str = "w:gz") -> None:
    with tarfile.open(archive, mode) as tarred:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tarred.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(("name", "mode"), [("a.tar.gz", "w:gz"), ("a.tgz", "w:gz"), ("a.tar", "w")])
def test_unpack_tar(tmp_path, name, mode):
    write_tar(tmp_path / name, make_tree(), mode)
    unpack(tmp_path / name, tmp_path / "out")
    check_tree(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out"])


def test_unpack_gz_single_file(tmp_path):
    (tmp_path / "x.npy.gz").write_bytes(gzip.compress(PAYLOAD))
    assert unpack(tmp_path / "x.npy.gz", tmp_path / "x.npy").read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.npy.gz"]


def test_unpack_keeps_a_complete_earlier_unpack(tmp_path):
    write_tar(tmp_path / "a.tgz", make_tree())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine").write_text("kept")
    unpack(tmp_path / "a.tgz", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine"]


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "sub/../../evil.txt"])
def test_unpack_refuses_path_traversal(tmp_path, member):
    write_tar(tmp_path / "bad.tar.gz", {"ok.txt": b"ok", member: b"evil"})
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zipped:
        zipped.writestr("ok.txt", b"ok")
        zipped.writestr(member, b"evil")
    for archive in ("bad.tar.gz", "bad.zip"):
        with pytest.raises(DataError) as caught:
            unpack(tmp_path / archive, tmp_path / "out")
        assert str(tmp_path / archive) in str(caught.value) and member in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "bad.zip"]
    assert not (tmp_path.parent / "evil.txt").exists()


def test_unpack_refuses_a_link_out_of_the_destination(tmp_path):
    with tarfile.open(tmp_path / "link.tar", "w") as tarred:
        info = tarfile.TarInfo("escape")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tarred.addfile(info)
    with pytest.raises(DataError, match="escape"):
        unpack(tmp_path / "link.tar", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.tar"]


def test_unpack_refuses_a_damaged_archive(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="damaged"):
        unpack(tmp_path / "broken.zip", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.zip"]


def test_unpublished_checksum_is_trusted_on_first_use_and_kept(server, tmp_path):
    """A source without a published sha256 is downloaded, size-checked, and not downloaded again."""
    url = server.serve("/raw.bin", PAYLOAD)
    source = Source(url, None, len(PAYLOAD))
    path = fetch(source, tmp_path, backoff=0)
    assert path.read_bytes() == PAYLOAD
    assert fetch(source, tmp_path, backoff=0) == path
    assert len(server.seen("/raw.bin")) == 1


def test_unpublished_checksum_still_refuses_a_short_file(server, tmp_path):
    url = server.serve("/short.bin", PAYLOAD[:1000])
    with pytest.raises(DataError, match=r"short\.bin .*truncated.*1000 bytes instead of 102400"):
        fetch(Source(url, None, len(PAYLOAD)), tmp_path, retries=0, backoff=0)
    assert list(tmp_path.iterdir()) == []
