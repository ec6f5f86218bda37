"""CelebA, Office-31 and Office-Home: fetch from a local server -> build -> tensors traced back to the fixtures."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlrepro import data
from mtlrepro.data import SPLITS, _office, download
from mtlrepro.data import celeba as celeba_module
from mtlrepro.data import office31 as office31_module
from mtlrepro.data import office_home as office_home_module
from mtlrepro.data.download import Source
from mtlrepro.errors import DataError
from mtlrepro.options import OptionValueError
from mtlrepro.tasks import BINARY, CLASSIFICATION, check_target

from fixtures.celeba import GREEN_STEP, RED_FEMALE, RED_MALE, attr_text, celeba, partition_text
from fixtures.office import COUNTS, OFFICE31_CLASSES, OFFICE_HOME_CLASSES, OfficeFixture, office31, office_home

#: JPEG and resizing move a flat colour by a few levels at most
TOLERANCE = 6


def local_sources(server, module, files: dict[str, bytes], **behaviour) -> tuple[Source, ...]:
    """The module's SOURCES served by the local server, with the fixture's sha256 and size."""
    out = []
    for source in module.SOURCES:
        payload = files[source.filename]
        url = server.serve(f"/{module.NAME}/{source.filename}", payload, **behaviour)
        out.append(Source(url, hashlib.sha256(payload).hexdigest(), len(payload), filename=source.filename))
    return tuple(out)


def assert_same(a: dict, b: dict) -> None:
    """Two builds hold bit-identical tensors."""
    for split in SPLITS:
        parts_a = a[split] if isinstance(a[split], tuple) else (a[split],)
        parts_b = b[split] if isinstance(b[split], tuple) else (b[split],)
        assert len(parts_a) == len(parts_b)
        for p, q in zip(parts_a, parts_b, strict=True):
            assert torch.equal(p.x, q.x) and torch.equal(p.source, q.source)
            assert all(torch.equal(s, t) and s.dtype == t.dtype for s, t in zip(p.y, q.y, strict=True))


def mean_colour(x: torch.Tensor) -> np.ndarray:
    """Mean colour per image, ``[N x 3]``, of uint8 images ``[N x 3 x H x W]``."""
    return x.double().mean(dim=(2, 3)).numpy()


# --------------------------------------------------------------------------- declarations


def test_modules_declare_the_papers_tasks_and_sources():
    assert celeba_module.NAME == "celeba" and not celeba_module.MULTI_INPUT
    assert len(celeba_module.TASKS) == 40 and {t.kind for t in celeba_module.TASKS} == {BINARY}
    assert celeba_module.TASKS[0].name == "5_o_Clock_Shadow" and celeba_module.TASKS[-1].name == "Young"
    assert [s.filename for s in celeba_module.SOURCES] == [
        "img_align_celeba.zip",
        "list_attr_celeba.txt",
        "list_eval_partition.txt",
    ]
    assert all(s.sha256 is not None and s.size for s in celeba_module.SOURCES)
    for module, names, n in ((office31_module, "ADW", 31), (office_home_module, ("Ar", "Cl", "Pr", "Rw"), 65)):
        assert module.MULTI_INPUT and module.STAND_IN is None and module.ENCODER == "resnet18"
        assert tuple(t.name for t in module.TASKS) == tuple(names)
        assert all(t.kind == CLASSIFICATION and t.n_classes == n == len(module.CLASSES) for t in module.TASKS)
        assert list(module.CLASSES) == sorted(module.CLASSES)
        assert module.MANUAL and module.SOURCES[0].sha256 is None  # trusted on first use
    assert celeba_module.ENCODER == "resnet18" and celeba_module.Options().size == 64
    assert office31_module.Options() == _office.Options(size=224, val_fraction=0.2, test_fraction=0.2, split_seed=0)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (lambda: celeba_module.Options(size=0), "size"),
        (lambda: _office.Options(size=-1), "size"),
        (lambda: _office.Options(val_fraction=0.0), "val_fraction"),
        (lambda: _office.Options(test_fraction=1.5), "test_fraction"),
        (lambda: _office.Options(val_fraction=0.5, test_fraction=0.5), "test_fraction"),
    ],
)
def test_options_refuse_bad_values_naming_the_field(options, field):
    with pytest.raises(OptionValueError) as caught:
        options()
    assert caught.value.name == field


# --------------------------------------------------------------------------- CelebA


@pytest.fixture(scope="module")
def celeba_fixture():
    return celeba()


@pytest.fixture
def celeba_root(http_server, tmp_path, celeba_fixture) -> Path:
    sources = local_sources(http_server, celeba_module, celeba_fixture.files)
    return celeba_module.fetch(tmp_path / "raw", sources=sources)


def test_celeba_fetch_build_traces_attributes_images_and_splits(http_server, tmp_path, celeba_fixture):
    fixture = celeba_fixture
    sources = local_sources(http_server, celeba_module, fixture.files)
    root = celeba_module.fetch(tmp_path / "raw", sources=sources)
    assert sorted(p.name for p in root.iterdir()) == sorted(fixture.files)  # the zip is read in place
    requests = len(http_server.requests)
    assert celeba_module.fetch(tmp_path / "raw", sources=sources) == root
    assert len(http_server.requests) == requests  # intact files: offline

    splits = celeba_module.build(celeba_module.Options(), root)
    male = celeba_module.ATTRIBUTES.index("Male")
    seen = []
    for code, split in enumerate(SPLITS):
        part = splits[split]
        rows = np.flatnonzero(fixture.codes == code)
        assert part.x.dtype == torch.uint8 and tuple(part.x.shape) == (len(rows), 3, 64, 64)
        assert part.source.dtype == torch.int64 and part.source[:, 0].tolist() == rows.tolist()
        assert len(part.y) == 40
        for k, (task, target) in enumerate(zip(celeba_module.TASKS, part.y, strict=True)):
            check_target(task, target, len(rows))
            assert target.dtype == torch.uint8
            assert target.tolist() == ((fixture.attributes[rows, k] + 1) // 2).tolist()
        colours = mean_colour(part.x)
        red = np.where(part.y[male].numpy() == 1, RED_MALE, RED_FEMALE)
        assert np.abs(colours[:, 0] - red).max() < TOLERANCE
        assert np.abs(colours[:, 1] - GREEN_STEP * (rows + 1)).max() < TOLERANCE
        seen.append(set(rows.tolist()))
    assert [len(s) for s in seen] == [6, 3, 3]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert set.union(*seen) == set(range(len(fixture.names)))

    assert_same(splits, celeba_module.build(celeba_module.Options(), root))
    meta = json.loads(json.dumps(celeba_module.describe(celeba_module.Options(), root)))
    assert meta["split_sizes"] == {"train": 6, "val": 3, "test": 3}
    assert meta["files_sha256"] == {name: hashlib.sha256(b).hexdigest() for name, b in fixture.files.items()}
    assert meta["stand_in"] is None and meta["versions"]["pillow"]


def test_celeba_reads_an_unzipped_image_folder_and_crlf_files_alike(celeba_root, tmp_path, celeba_fixture):
    other = tmp_path / "unzipped"
    other.mkdir()
    download.unpack(celeba_root / "img_align_celeba.zip", tmp_path / "unpacked")
    shutil.move(tmp_path / "unpacked" / "img_align_celeba", other / "img_align_celeba")
    fixture = celeba_fixture
    (other / "list_attr_celeba.txt").write_bytes(attr_text(fixture.names, fixture.attributes, "\r\n").encode())
    (other / "list_eval_partition.txt").write_bytes(partition_text(fixture.names, fixture.codes, "\r\n").encode())
    celeba_module.check_root(other)
    options = celeba_module.Options(size=16)
    assert_same(celeba_module.build(options, celeba_root), celeba_module.build(options, other))
    assert "img_align_celeba/" in celeba_module.describe(options, other)["files_sha256"]


@pytest.mark.parametrize("missing", ["list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba.zip"])
def test_celeba_check_root_names_the_missing_file(celeba_root, missing):
    (celeba_root / missing).unlink()
    with pytest.raises(DataError) as caught:
        celeba_module.check_root(celeba_root)
    message = str(caught.value)
    assert str(celeba_root / missing) in message and "\n" not in message
    assert "mmlab.ie.cuhk.edu.hk" in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("5_o_Clock_Shadow", "Five_o_Clock"), "line 2: column 1 is 'Five_o_Clock'"),
        (lambda t: t.replace("000004.jpg -1", "000004.jpg  0").replace("000004.jpg  1", "000004.jpg  0"), "line 6"),
        (lambda t: "13" + t[t.index("\n") :], "announces 13 images but 12"),
    ],
)
def test_celeba_refuses_malformed_annotations_naming_file_and_line(celeba_root, edit, expected):
    path = celeba_root / "list_attr_celeba.txt"
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataError, match=expected) as caught:
        celeba_module.build(celeba_module.Options(size=8), celeba_root)
    assert str(path) in str(caught.value)


def test_celeba_refuses_a_partition_without_attributes(celeba_root):
    path = celeba_root / "list_eval_partition.txt"
    path.write_text(path.read_text() + "000099.jpg 0\n")
    with pytest.raises(DataError, match=r"has no line for 000099\.jpg"):
        celeba_module.build(celeba_module.Options(size=8), celeba_root)


def test_celeba_prepares_and_loads_through_the_cache(monkeypatch, celeba_root, tmp_path):
    monkeypatch.setitem(data.DATASETS, "celeba", "mtlrepro.data.celeba")
    out = data.prepare("celeba", {"size": 8}, tmp_path / "celeba.pt", path=celeba_root)
    loaded = data.load("celeba", out, {"size": 8})
    assert not loaded.multi_input and len(loaded.tasks) == 40
    assert tuple(loaded.splits["val"].x.shape) == (3, 3, 8, 8)


# --------------------------------------------------------------------------- Office-31 and Office-Home

OFFICE = [
    pytest.param(office31_module, office31, OFFICE31_CLASSES, id="office31"),
    pytest.param(office_home_module, office_home, OFFICE_HOME_CLASSES, id="office_home"),
]


@functools.cache
def archive(make) -> OfficeFixture:
    return make()


def fetch_office(server, tmp_path: Path, module, fixture: OfficeFixture) -> Path:
    sources = local_sources(server, module, {fixture.filename: fixture.data})
    return module.fetch(tmp_path / "raw", sources=sources)


@pytest.mark.parametrize(("module", "make", "classes"), OFFICE)
def test_office_fetch_build_gives_one_stratified_split_per_domain(http_server, tmp_path, module, make, classes):
    fixture = archive(make)
    root = fetch_office(http_server, tmp_path, module, fixture)
    options = module.Options(size=16)
    splits = module.build(options, root)
    domains = list(fixture.domains.values())
    for split in SPLITS:
        assert isinstance(splits[split], tuple) and len(splits[split]) == len(module.TASKS)
    expected = {"train": [3, 4, 6], "val": [1, 1, 2], "test": [1, 1, 2]}  # per class of 5, 6, 10 images
    for t, (task, images) in enumerate(zip(module.TASKS, domains, strict=True)):
        seen = {}
        for split in SPLITS:
            part = splits[split][t]
            n = len(part)
            assert part.x.dtype == torch.uint8 and tuple(part.x.shape) == (n, 3, 16, 16)
            assert len(part.y) == 1 and part.y[0].dtype == torch.int64
            check_target(task, part.y[0], n)
            assert part.source.dtype == torch.int64 and tuple(part.source.shape) == (n, 1)
            rows = part.source[:, 0].tolist()
            assert rows == sorted(rows)
            # labels: the class's index among all sorted classes, the same in every domain
            assert part.y[0].tolist() == [module.CLASSES.index(images[i].klass) for i in rows]
            # the pixels come from the image named by source: class (red), this domain (green), position (blue)
            colours = mean_colour(part.x)
            assert np.abs(colours - np.array([images[i].colour for i in rows])).max() < TOLERANCE
            per_class = [sum(images[i].klass == c for i in rows) for c in classes]
            assert per_class == expected[split], (task.name, split)
            seen[split] = set(rows)
        assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
        assert set.union(*seen.values()) == set(range(sum(COUNTS)))
    assert_same(splits, module.build(options, root))
    reseeded = module.build(module.Options(size=16, split_seed=1), root)
    assert [len(p) for p in reseeded["test"]] == [len(p) for p in splits["test"]]
    assert any(not torch.equal(p.source, q.source) for p, q in zip(reseeded["test"], splits["test"], strict=True))
    meta = json.loads(json.dumps(module.describe(options, root)))
    assert meta["archives"] == {fixture.filename: hashlib.sha256(fixture.data).hexdigest()}
    assert meta["split_sizes"][module.TASKS[0].name] == {"train": 13, "val": 4, "test": 4}


@pytest.mark.parametrize(("module", "make", "classes"), OFFICE)
def test_office_fetch_is_idempotent_and_offline_once_in_place(http_server, tmp_path, module, make, classes):
    fixture = archive(make)
    root = fetch_office(http_server, tmp_path, module, fixture)
    stamp = root.stat().st_mtime_ns
    requests = len(http_server.requests)
    assert fetch_office(http_server, tmp_path, module, fixture) == root
    assert len(http_server.requests) == requests and root.stat().st_mtime_ns == stamp
    module.check_root(root)


def test_office31_layout_and_check_root_names_the_missing_domain(http_server, tmp_path):
    root = fetch_office(http_server, tmp_path, office31_module, archive(office31))
    assert root.name == "Office31" and sorted(p.name for p in root.iterdir()) == ["amazon", "dslr", "webcam"]
    shutil.rmtree(root / "dslr")
    with pytest.raises(DataError) as caught:
        office31_module.check_root(root)
    message = str(caught.value)
    assert str(root / "dslr" / "images") in message and "domain_adaptation_images.tar.gz" in message
    assert "\n" not in message


def test_office_home_layout_accepts_real_world_renamed_and_names_a_missing_domain(http_server, tmp_path):
    root = fetch_office(http_server, tmp_path, office_home_module, archive(office_home))
    assert root.name == "OfficeHomeDataset_10072016" and (root / "Real World").is_dir()
    options = office_home_module.Options(size=8)
    before = office_home_module.build(options, root)
    (root / "Real World").rename(root / "Real_World")
    assert_same(before, office_home_module.build(options, root.parent))  # the folder above is accepted too
    shutil.rmtree(root / "Clipart")
    with pytest.raises(DataError) as caught:
        office_home_module.check_root(root)
    assert str(root / "Clipart") in str(caught.value) and "license form" in str(caught.value)


def test_office_refuses_domains_with_different_or_unknown_classes(http_server, tmp_path):
    root = fetch_office(http_server, tmp_path, office31_module, archive(office31))
    options = office31_module.Options(size=8)
    shutil.rmtree(root / "webcam" / "images" / "bike")
    with pytest.raises(DataError, match=r"class bike has images in .*amazon/images but no folder in .*webcam/images"):
        office31_module.build(options, root)
    shutil.copytree(root / "amazon" / "images" / "bike", root / "webcam" / "images" / "bike")
    (root / "dslr" / "images" / "scissors").rename(root / "dslr" / "images" / "spoon")
    with pytest.raises(DataError, match=r"dslr/images/spoon is not a class of office31"):
        office31_module.build(options, root)


def test_office_multi_input_prepares_and_loads_through_the_cache(monkeypatch, http_server, tmp_path):
    root = fetch_office(http_server, tmp_path, office_home_module, archive(office_home))
    monkeypatch.setitem(data.DATASETS, "office_home", "mtlrepro.data.office_home")
    out = data.prepare("office_home", {"size": 8, "split_seed": 3}, tmp_path / "oh.pt", path=root)
    loaded = data.load("office_home", out)
    assert loaded.multi_input and len(loaded.splits["train"]) == 4
    x, y = loaded.task_split("test", 3)
    assert tuple(x.shape) == (4, 3, 8, 8) and y.dtype == torch.int64


# --------------------------------------------------------------------------- downloads that fail


@pytest.mark.parametrize("module", [celeba_module, office31_module, office_home_module], ids=lambda m: m.NAME)
def test_offline_fetch_raises_one_line_naming_file_url_and_manual_step(monkeypatch, tmp_path, module, closed_port):
    monkeypatch.setattr(download, "fetch", functools.partial(download.fetch, backoff=0, timeout=5, retries=0))
    first = module.SOURCES[0]
    url = f"http://127.0.0.1:{closed_port}/{first.filename}"
    sources = (Source(url, first.sha256, first.size, filename=first.filename),)
    with pytest.raises(DataError) as caught:
        module.fetch(tmp_path / "raw", sources=sources)
    message = str(caught.value)
    assert "\n" not in message and first.filename in message and url in message
    assert message.endswith(" ".join(module.MANUAL.split()))
    assert f"`datasets.{module.NAME}.path`" in message


@pytest.mark.parametrize(
    ("module", "files"),
    [
        (celeba_module, lambda: celeba().files),
        (office31_module, lambda: {archive(office31).filename: archive(office31).data}),
        (office_home_module, lambda: {archive(office_home).filename: archive(office_home).data}),
    ],
    ids=["celeba", "office31", "office_home"],
)
def test_checksum_mismatch_leaves_nothing_half_written(monkeypatch, http_server, tmp_path, module, files):
    monkeypatch.setattr(download, "fetch", functools.partial(download.fetch, backoff=0, timeout=5, retries=0))
    sources = local_sources(http_server, module, files(), corrupt=True)
    directory = tmp_path / "raw"
    with pytest.raises(DataError, match="corrupt or the source changed"):
        module.fetch(directory, sources=sources)
    assert list(directory.iterdir()) == []  # no file under its name, no .part, nothing unpacked


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("module", "make"), [(office31_module, office31), (office_home_module, office_home)])
def test_office_refuses_a_web_page_saved_as_the_archive_with_the_manual_step(http_server, tmp_path, module, make):
    page = b"<html><body>Google Drive can't scan this file for viruses.</body></html>"
    filename = archive(make).filename
    url = http_server.serve(f"/{filename}", page)
    with pytest.raises(DataError) as caught:
        module.fetch(tmp_path / "raw", sources=(Source(url, None, None, filename=filename),))  # trusted on first use
    message = str(caught.value)
    assert str(tmp_path / "raw" / filename) in message and "is not a" in message
    assert message.endswith(module.MANUAL) and "\n" not in message
    assert not (tmp_path / "raw" / module.FAMILY.unpack_to).exists()
