"""Tests of the Multi-MNIST family built from MNIST / FashionMNIST IDX files (RW Sec. 5.1; Lin et al. 2019).

Tiny IDX fixtures (:mod:`fixtures.idx`) whose images encode their label and index are served on 127.0.0.1,
fetched with the modules' real ``fetch`` and built into small splits.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST, FashionMNIST

from mtlrepro.data import (
    DATASETS,
    SPLITS,
    Split,
    _overlay,
    load,
    multi_fashion,
    multi_fashion_mnist,
    multi_mnist,
    prepare,
)
from mtlrepro.data.download import Source, sha256_file
from mtlrepro.errors import ConfigError, DataError
from mtlrepro.options import build_options
from mtlrepro.tasks import check_target

from fixtures import idx
from fixtures.server import Server

MODULES = (multi_mnist, multi_fashion, multi_fashion_mnist)
N_TRAIN, N_TEST = 60, 20  # base images per fixture dataset
SMALL = {"n_train": 300, "n_val": 60, "n_test": 100, "val_fraction": 0.2}
#: pixel value of the label/index strips per base dataset, so a test can tell which dataset an image came from
TAG = {"MNIST": 255, "FashionMNIST": 200}
SEED = {"MNIST": 0, "FashionMNIST": 7}


def _files(base: _overlay.Base) -> dict[str, bytes]:
    return idx.gz_files(N_TRAIN, N_TEST, tag=TAG[base.name], seed=SEED[base.name])


def _local_sources(module: ModuleType, server: Server) -> list[Source]:
    """The module's sources with URLs on the local server and the fixture's sha256 and size."""
    out = []
    for base, source in module.FAMILY.located(module.SOURCES):
        data = _files(base)[source.filename]
        url = server.serve(f"/{base.name}/{source.filename}", data)
        out.append(dataclasses.replace(source, url=url, mirrors=(), sha256=_sha256(data), size=len(data)))
    return out


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding both fixture datasets unpacked in torchvision's layout."""
    root = tmp_path_factory.mktemp("idx")
    for base in (_overlay.MNIST, _overlay.FASHION_MNIST):
        idx.write_raw(root / base.raw, N_TRAIN, N_TEST, tag=TAG[base.name], seed=SEED[base.name])
    return root


@pytest.fixture(scope="module")
def built(raw_root: Path) -> dict[str, dict[str, Split]]:
    return {m.NAME: m.build(m.Options(**SMALL), raw_root) for m in MODULES}


def _base_labels(name: str) -> np.ndarray:
    data = idx.dataset(N_TRAIN, N_TEST, tag=TAG[name], seed=SEED[name])
    return np.concatenate([data[idx.FILES[1]][0], data[idx.FILES[3]][0]]).astype(np.int64)


def _base_images(name: str) -> np.ndarray:
    data = idx.dataset(N_TRAIN, N_TEST, tag=TAG[name], seed=SEED[name])
    return np.concatenate([data[idx.FILES[0]][0], data[idx.FILES[2]][0]])


# --------------------------------------------------------------------------- declarations


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_module_contract(module: ModuleType) -> None:
    assert module.ENCODER == "lenet" and module.STAND_IN is None and module.MULTI_INPUT is False
    assert [t.name for t in module.TASKS] == ["TL", "BR"]
    assert all(t.kind == "classification" and t.n_classes == 10 for t in module.TASKS)
    assert module.Options() == module.Options(n_train=108000, n_val=12000, n_test=20000, canvas=36, shift=6)
    assert module.Options().n_train + module.Options().n_val == 120000  # RW Sec. 5.1: 120K training images
    assert "gunzip" in module.MANUAL and "\n" not in module.MANUAL
    for source in module.SOURCES:
        assert source.sha256 is not None and len(source.sha256) == 64 and source.size and source.size > 0


def test_tl_and_br_bases() -> None:
    assert (multi_mnist.FAMILY.top_left, multi_mnist.FAMILY.bottom_right) == (_overlay.MNIST, _overlay.MNIST)
    assert multi_fashion.FAMILY.bases == (_overlay.FASHION_MNIST,)
    assert multi_fashion_mnist.FAMILY.top_left == _overlay.MNIST
    assert multi_fashion_mnist.FAMILY.bottom_right == _overlay.FASHION_MNIST
    assert multi_fashion_mnist.TASKS[1].labels == tuple(FashionMNIST.classes)
    assert len(multi_fashion_mnist.SOURCES) == 8


@pytest.mark.parametrize(("base", "torchvision_cls"), [(_overlay.MNIST, MNIST), (_overlay.FASHION_MNIST, FashionMNIST)])
def test_sources_are_torchvision_mirrors(base: _overlay.Base, torchvision_cls: type) -> None:
    names = [f"{name}.gz" for name in _overlay.FILES]
    assert [r[0] for r in torchvision_cls.resources] == names
    for source, name in zip(base.sources, names, strict=True):
        assert source.filename == name
        assert list(source.urls) == [mirror + name for mirror in torchvision_cls.mirrors]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="shift"):
        multi_mnist.Options(shift=9)
    with pytest.raises(ValueError, match="n_val"):
        multi_mnist.Options(n_val=0)
    with pytest.raises(ValueError, match="val_fraction"):
        multi_mnist.Options(val_fraction=1.0)
    with pytest.raises(ConfigError, match=r"datasets\.multi_mnist\.options\.canvas"):
        build_options(multi_mnist.Options, {"canvas": 20}, "datasets.multi_mnist.options")


# --------------------------------------------------------------------------- fetch


def test_fetch_downloads_unpacks_and_is_idempotent(http_server: Server, tmp_path: Path) -> None:
    sources = _local_sources(multi_fashion_mnist, http_server)
    root = multi_fashion_mnist.fetch(tmp_path / "raw", sources=sources)
    assert root == tmp_path / "raw"
    for base in (_overlay.MNIST, _overlay.FASHION_MNIST):
        for name in _overlay.FILES:
            assert (root / base.raw / f"{name}.gz").is_file() and (root / base.raw / name).is_file()
    mnist = idx.dataset(N_TRAIN, N_TEST, tag=TAG["MNIST"], seed=SEED["MNIST"])
    assert (root / "MNIST/raw" / idx.FILES[1]).read_bytes() == idx.idx_bytes(mnist[idx.FILES[1]][0])
    multi_fashion_mnist.check_root(root)
    seen = len(http_server.requests)
    assert seen == 8
    assert multi_fashion_mnist.fetch(tmp_path / "raw", sources=sources) == root
    assert len(http_server.requests) == seen  # nothing downloaded again
    splits = multi_fashion_mnist.build(multi_fashion_mnist.Options(**SMALL), root)
    assert [len(splits[s]) for s in SPLITS] == [300, 60, 100]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fetch_names_file_url_and_manual_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mtlrepro.data.download.time.sleep", lambda seconds: None)
    url = f"http://127.0.0.1:{_closed_port()}/train-images-idx3-ubyte.gz"
    sources = [
        dataclasses.replace(s, url=url if i == 0 else s.url, mirrors=()) for i, s in enumerate(multi_mnist.SOURCES)
    ]
    with pytest.raises(DataError) as err:
        multi_mnist.fetch(tmp_path, sources=sources)
    message = str(err.value)
    assert "\n" not in message
    assert "train-images-idx3-ubyte.gz" in message and url in message
    assert "gunzip them into <path>/MNIST/raw/" in message and "datasets.multi_mnist.path" in message


def test_checksum_mismatch_leaves_nothing(http_server: Server, tmp_path: Path) -> None:
    sources = _local_sources(multi_mnist, http_server)
    http_server.serve(f"/MNIST/{sources[1].filename}", _files(_overlay.MNIST)[sources[1].filename], corrupt=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*corrupt"):
        multi_mnist.fetch(tmp_path, sources=sources)
    raw = tmp_path / "MNIST/raw"
    assert sorted(p.name for p in raw.iterdir()) == ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]


def test_check_root_names_the_missing_file(raw_root: Path, tmp_path: Path) -> None:
    multi_mnist.check_root(raw_root)
    multi_fashion_mnist.check_root(raw_root)
    idx.write_raw(tmp_path / "MNIST/raw")
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        multi_mnist.check_root(tmp_path)
    assert "MNIST/raw/t10k-labels-idx1-ubyte is missing" in str(err.value) and "gunzip" in str(err.value)
    with pytest.raises(DataError, match="FashionMNIST/raw/train-images-idx3-ubyte is missing"):
        multi_fashion.check_root(tmp_path)


def test_a_damaged_idx_file_is_named(tmp_path: Path) -> None:
    raw = idx.write_raw(tmp_path / "MNIST/raw")
    (raw / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not a valid IDX file"):
        multi_mnist.build(multi_mnist.Options(**SMALL), tmp_path)
    idx.write_raw(raw, n_train=50)  # 50 training images
    (raw / "train-labels-idx1-ubyte").write_bytes(idx.idx_bytes(np.zeros(40, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"50 images but .*train-labels-idx1-ubyte 40 labels"):
        multi_mnist.build(multi_mnist.Options(**SMALL), tmp_path)


# --------------------------------------------------------------------------- build


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_shapes_dtypes_and_tasks(module: ModuleType, built: dict[str, dict[str, Split]]) -> None:
    splits = built[module.NAME]
    assert set(splits) == set(SPLITS)
    for split, n in (("train", 300), ("val", 60), ("test", 100)):
        s = splits[split]
        assert s.x.shape == (n, 1, 36, 36) and s.x.dtype == torch.uint8
        assert len(s.y) == 2 and all(y.shape == (n,) and y.dtype == torch.int64 for y in s.y)
        assert s.source is not None and s.source.shape == (n, 2) and s.source.dtype == torch.int64
        for task, y in zip(module.TASKS, s.y, strict=True):
            check_target(task, y, n)
        # nothing is drawn outside the two 28x28 windows (top-right and bottom-left corners stay empty)
        assert int(s.x[:, 0, 28:, :6].max()) == 0 and int(s.x[:, 0, :6, 28:].max()) == 0


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_labels_and_sources_traced_back_to_the_fixture(module: ModuleType, built: dict[str, dict[str, Split]]) -> None:
    """The label and index strips drawn at each position are the labels and sources the split records."""
    family = module.FAMILY
    tl_name, br_name = family.top_left.name, family.bottom_right.name
    labels = {tl_name: _base_labels(tl_name), br_name: _base_labels(br_name)}
    for split in SPLITS:
        s = built[module.NAME][split]
        x, y, source = s.x.numpy(), [t.numpy() for t in s.y], s.source.numpy()
        for i in range(len(s)):
            tl = idx.decode(x[i, 0, 0:6, 0:], TAG[tl_name])
            br = idx.decode(x[i, 0, 6:12, 6:], TAG[br_name])
            assert tl == (y[0][i], source[i, 0]) and br == (y[1][i], source[i, 1])
        assert np.array_equal(y[0], labels[tl_name][source[:, 0]])
        assert np.array_equal(y[1], labels[br_name][source[:, 1]])
        if family.distinct_classes:
            assert (y[0] != y[1]).all(), f"{split}: a pair with TL == BR class"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_pixels_recomposed_from_sources(module: ModuleType, built: dict[str, dict[str, Split]]) -> None:
    """Sener & Koltun's placement: TL at rows/cols 0:28, BR at 6:34, the overlap the pixel-wise maximum."""
    tl_images = _base_images(module.FAMILY.top_left.name)
    br_images = _base_images(module.FAMILY.bottom_right.name)
    for split in SPLITS:
        s = built[module.NAME][split]
        expected = np.zeros((len(s), 36, 36), dtype=np.uint8)
        expected[:, :28, :28] = tl_images[s.source[:, 0].numpy()]
        expected[:, 6:34, 6:34] = np.maximum(expected[:, 6:34, 6:34], br_images[s.source[:, 1].numpy()])
        assert np.array_equal(s.x[:, 0].numpy(), expected)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_splits_use_disjoint_base_pools(module: ModuleType, built: dict[str, dict[str, Split]]) -> None:
    splits = built[module.NAME]
    for k in range(2):
        used = {split: set(splits[split].source[:, k].tolist()) for split in SPLITS}
        assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
        assert max(used["train"] | used["val"]) < N_TRAIN  # train and val from the training files
        assert min(used["test"]) >= N_TRAIN  # test from the test files only
        assert len(used["val"]) <= round(SMALL["val_fraction"] * N_TRAIN)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_build_is_deterministic_and_seeded(module: ModuleType, raw_root: Path, built: dict) -> None:
    again = module.build(module.Options(**SMALL), raw_root)
    other = module.build(module.Options(**SMALL, generation_seed=1), raw_root)
    for split in SPLITS:
        a, b = built[module.NAME][split], again[split]
        assert torch.equal(a.x, b.x) and torch.equal(a.source, b.source)
        assert all(torch.equal(p, q) for p, q in zip(a.y, b.y, strict=True))
        assert not torch.equal(a.source, other[split].source)


def test_digit_size_and_canvas_options(raw_root: Path) -> None:
    options = multi_mnist.Options(**SMALL, canvas=30, digit_size=20, shift=10)
    splits = multi_mnist.build(options, raw_root)
    x = splits["train"].x
    assert x.shape[1:] == (1, 30, 30)
    assert int(x[:, 0, 20:, :10].max()) == 0 and int(x[:, 0, :10, 20:].max()) == 0
    assert int(x[:, 0, :20, :20].max()) > 0 and int(x[:, 0, 10:, 10:].max()) > 0


def test_needs_a_root_and_enough_images(raw_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs its raw files"):
        multi_mnist.build(multi_mnist.Options(**SMALL), None)
    with pytest.raises(DataError, match="validation pool"):
        multi_mnist.build(multi_mnist.Options(**{**SMALL, "val_fraction": 0.05}), raw_root)


def test_describe_records_files_and_versions(raw_root: Path) -> None:
    meta = multi_fashion_mnist.describe(multi_fashion_mnist.Options(**SMALL), raw_root)
    json.dumps(meta)
    assert meta["files_sha256"]["MNIST/raw/train-images-idx3-ubyte"] == sha256_file(
        raw_root / "MNIST/raw/train-images-idx3-ubyte"
    )
    assert len(meta["files_sha256"]) == 8 and meta["stand_in"] is None
    assert meta["n_base"]["MNIST"] == {"train": 48, "val": 12, "test": 20}
    assert meta["n_pairs"] == {"train": 300, "val": 60, "test": 100} and "torchvision" in meta["versions"]


def test_prepare_and_load_through_the_registry(raw_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASETS, "multi_fashion", "mtlrepro.data.multi_fashion")
    out = prepare("multi_fashion", SMALL, tmp_path / "cache.pt", path=raw_root)
    data = load("multi_fashion", out)
    assert data.stand_in is None and [t.name for t in data.tasks] == ["TL", "BR"]
    assert len(data.splits["train"]) == 300 and data.meta["top_left"] == "FashionMNIST"
