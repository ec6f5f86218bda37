"""NYUv2 and CityScapes (MTAN's preprocessed ``.npy`` releases): fetch, build, checks, and the augmentation."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from types import ModuleType

import numpy as np
import pytest
import torch

from mtlrepro import data
from mtlrepro.data import _check_built, _npy_scenes, cityscapes, download, nyuv2
from mtlrepro.data._npy_scenes import Crop, apply_crops, draw_crops
from mtlrepro.errors import ConfigError, DataError
from mtlrepro.options import build_options
from mtlrepro.tasks import check_target

from fixtures.npy_scenes import INVALID, Release, cityscapes_release, example, nyuv2_release

MODULES = {"nyuv2": (nyuv2, nyuv2_release), "cityscapes": (cityscapes, cityscapes_release)}


@pytest.fixture(params=sorted(MODULES))
def dataset(request, tmp_path) -> tuple[ModuleType, Release]:
    """A dataset module with its tiny release written under ``tmp_path/upstream``."""
    module, make = MODULES[request.param]
    return module, make(tmp_path / "upstream")


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_wait(monkeypatch):
    """Retries of the downloader do not wait."""
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)


def local_sources(module: ModuleType, release: Release, url: str) -> tuple[download.Source, ...]:
    """The module's source pointed at ``url``, with the fixture's sha256 and size."""
    return (replace(module.SOURCES[0], url=url, sha256=release.sha256, size=release.size, filename=release.filename),)


def served(module, release, http_server) -> tuple[download.Source, ...]:
    return local_sources(module, release, http_server.serve(f"/{release.filename}", release.data))


def test_declarations_follow_the_papers():
    assert [(t.name, t.kind, t.n_classes) for t in nyuv2.TASKS] == [
        ("segmentation", "segmentation", 13),
        ("depth", "depth", 0),
        ("normal", "normals", 0),
    ]
    assert [(t.name, t.kind, t.n_classes) for t in cityscapes.TASKS] == [
        ("segmentation", "segmentation", 7),
        ("depth", "depth", 0),
    ]
    for module in (nyuv2, cityscapes):
        assert module.ENCODER == "deeplab_resnet50" and module.STAND_IN is None and not module.MULTI_INPUT
        assert (
            module.SOURCES[0].sha256 is None and module.SOURCES[0].size is None
        )  # none published: trusted on first use
        assert module.SOURCES[0].filename in module.MANUAL
    assert nyuv2.FAMILY.resolution == (288, 384) and nyuv2.FAMILY.sizes == (795, 654)
    assert cityscapes.FAMILY.resolution == (128, 256) and cityscapes.FAMILY.sizes == (2975, 500)


def test_fetch_build_traces_every_value_to_the_release(dataset, http_server, tmp_path):
    module, release = dataset
    root = module.fetch(tmp_path / "raw", sources=served(module, release, http_server))
    assert (root / "train" / "image" / "0.npy").is_file()
    options = module.Options(val_fraction=0.34)
    splits = module.build(options, root)
    _check_built(module.NAME, module, splits)
    n_val = round(0.34 * release.n_train)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [release.n_train - n_val, n_val, release.n_test]
    height, width = release_shape(release)
    for split in splits.values():
        assert split.x.dtype == torch.uint8 and tuple(split.x.shape[1:]) == (3, height, width)
        for task, target in zip(module.TASKS, split.y, strict=True):
            check_target(task, target, len(split))
        assert split.y[0].dtype == torch.int16 and tuple(split.y[0].shape[1:]) == (height, width)
        assert split.y[1].dtype == torch.float32 and tuple(split.y[1].shape[1:]) == (1, height, width)
        if release.normals:
            assert split.y[2].dtype == torch.float32 and tuple(split.y[2].shape[1:]) == (3, height, width)
    # train and val partition the training folder; test is the whole val folder
    rows = {s: {tuple(r) for r in splits[s].source.tolist()} for s in splits}
    assert rows["train"] | rows["val"] == {(0, i) for i in range(release.n_train)}
    assert not rows["train"] & rows["val"]
    assert rows["test"] == {(1, i) for i in range(release.n_test)}
    # every example's tensors are the release's files, channel-first, invalid pixels kept
    for split in splits.values():
        for row, (folder, i) in enumerate(split.source.tolist()):
            arrays = example(folder, i, height, width, release.n_classes, release.normals)
            assert int(split.x[row, 0, 0, 0]) == folder * 100 + i
            expected_image = np.round(np.moveaxis(arrays["image"], -1, 0) * 255).astype(np.uint8)
            assert np.array_equal(split.x[row].numpy(), expected_image)
            assert np.array_equal(split.y[0][row].numpy(), arrays["label"].astype(np.int16))
            assert np.array_equal(split.y[1][row].numpy(), np.moveaxis(arrays["depth"], -1, 0))
            assert (split.y[0][row, :INVALID, :INVALID] == -1).all()
            assert (split.y[1][row, :, :INVALID, :INVALID] == 0).all()
            if release.normals:
                assert np.array_equal(split.y[2][row].numpy(), np.moveaxis(arrays["normal"], -1, 0))
                assert (split.y[2][row, :, :INVALID, :INVALID] == 0).all()
    meta = module.describe(options, root)
    json.dumps(meta)
    assert meta["archive"] == {"file": release.filename, "sha256": release.sha256}
    assert meta["n"] == {"train": release.n_train - n_val, "val": n_val, "test": release.n_test}


def release_shape(release: Release) -> tuple[int, int]:
    return tuple(np.load(release.tree / "train" / "image" / "0.npy").shape[:2])


def test_build_is_deterministic_and_seeded(dataset):
    module, release = dataset
    first, second = module.build(module.Options(), release.tree), module.build(module.Options(), release.tree)
    for s in ("train", "val", "test"):
        assert torch.equal(first[s].x, second[s].x) and torch.equal(first[s].source, second[s].source)
        assert all(torch.equal(a, b) for a, b in zip(first[s].y, second[s].y, strict=True))
    held_out = {
        seed: tuple(module.build(module.Options(split_seed=seed, val_fraction=0.5), release.tree)["val"].source[:, 1])
        for seed in range(6)
    }
    assert len(set(held_out.values())) > 1  # the seed picks the held-out examples


def test_fetch_is_idempotent_and_offline_once_in_place(dataset, http_server, tmp_path, closed_port):
    module, release = dataset
    root = module.fetch(tmp_path / "raw", sources=served(module, release, http_server))
    offline = local_sources(module, release, f"http://127.0.0.1:{closed_port}/{release.filename}")
    assert module.fetch(tmp_path / "raw", sources=offline) == root
    assert len(http_server.seen(f"/{release.filename}")) == 1


def test_offline_fetch_names_the_file_the_url_and_the_manual_step(dataset, tmp_path, closed_port, no_wait):
    module, release = dataset
    url = f"http://127.0.0.1:{closed_port}/{release.filename}"
    with pytest.raises(DataError) as caught:
        module.fetch(tmp_path / "raw", sources=local_sources(module, release, url))
    message = str(caught.value)
    assert "\n" not in message
    assert release.filename in message and url in message and "lorenmt/mtan" in message
    assert f"datasets.{module.NAME}.path" in message


def test_a_checksum_mismatch_leaves_nothing_half_written(dataset, http_server, tmp_path):
    module, release = dataset
    url = http_server.serve(f"/{release.filename}", release.data, corrupt=True)
    with pytest.raises(DataError, match="corrupt"):
        module.fetch(tmp_path / "raw", sources=local_sources(module, release, url))
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize("missing", ["train/image/2.npy", "val/depth/3.npy", "train/{label}/0.npy"])
def test_check_root_names_the_first_missing_file(dataset, missing):
    module, release = dataset
    path = release.tree / missing.format(label=release.label_folder)
    path.unlink()
    with pytest.raises(DataError) as caught:
        module.check_root(release.tree)
    assert str(path) in str(caught.value) and "lorenmt/mtan" in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match=str(path)):
        module.build(module.Options(), release.tree)


def test_check_root_accepts_the_enclosing_folder_and_names_a_missing_tree(dataset, tmp_path):
    module, release = dataset
    module.check_root(release.tree.parent)  # the folder the zip was unpacked into
    with pytest.raises(DataError, match=str(tmp_path / "empty" / "train" / "image" / "0.npy")):
        module.check_root(tmp_path / "empty")


def test_libmtl_label_folder_is_accepted_for_cityscapes(tmp_path):
    release = cityscapes_release(tmp_path, label_folder="label")
    splits = cityscapes.build(cityscapes.Options(), release.tree)
    arrays = example(1, 0, 16, 32, 7, False)
    assert np.array_equal(splits["test"].y[0][0].numpy(), arrays["label"].astype(np.int16))


@pytest.mark.parametrize(
    ("folder", "value", "match"),
    [
        ("label", 13.0, "holds label 13"),
        ("label", 2.5, "holds label 2.5"),
        ("image", 255.0, r"expected floats in 0\.\.1"),
        ("depth", -1.0, "negative or non-finite depth"),
        ("depth", np.nan, "negative or non-finite depth"),
    ],
)
def test_bad_values_raise_one_line_naming_the_file(tmp_path, folder, value, match):
    release = nyuv2_release(tmp_path)
    path = release.tree / "val" / folder / "2.npy"
    array = np.load(path)
    array.reshape(-1)[5] = value
    np.save(path, array)
    with pytest.raises(DataError, match=match) as caught:
        nyuv2.build(nyuv2.Options(), release.tree)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_of_the_wrong_shape_is_named(tmp_path):
    release = nyuv2_release(tmp_path)
    path = release.tree / "train" / "normal" / "1.npy"
    np.save(path, np.zeros((16, 24), dtype=np.float32))
    with pytest.raises(DataError, match=rf"{path} has shape \[16, 24\], expected \[16, 24, 3\]"):
        nyuv2.build(nyuv2.Options(), release.tree)
    path.write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match=f"cannot read {path}"):
        nyuv2.build(nyuv2.Options(), release.tree)


def test_size_downscales_keeping_labels_and_invalid_pixels(tmp_path):
    release = nyuv2_release(tmp_path, height=32, width=48)
    splits = nyuv2.build(nyuv2.Options(size=(16, 24)), release.tree)
    full = nyuv2.build(nyuv2.Options(), release.tree)
    for s in ("train", "val", "test"):
        split = splits[s]
        assert tuple(split.x.shape[1:]) == (3, 16, 24) and tuple(split.y[2].shape[1:]) == (3, 16, 24)
        # nearest-exact sampling at 2x: the targets are every other pixel of the full-size ones, from (1, 1)
        for small, big in zip(split.y, full[s].y, strict=True):
            assert torch.equal(small, big[..., 1::2, 1::2])
        assert (split.y[0][:, 0, 0] == -1).all() and (split.y[1][:, :, 0, 0] == 0).all()
    with pytest.raises(DataError, match="only downscales"):
        nyuv2.build(nyuv2.Options(size=(64, 48)), release.tree)


def test_options_are_validated_naming_the_field():
    assert build_options(nyuv2.Options, {"size": [144, 192]}, "datasets.nyuv2.options").size == (144, 192)
    for values, key in (
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"size": [144]}, "size"),
        ({"size": [0, 10]}, "size"),
        ({"split_seed": -1}, "split_seed"),
    ):
        with pytest.raises(ConfigError, match=f"datasets.nyuv2.options.{key}"):
            build_options(nyuv2.Options, values, "datasets.nyuv2.options")


# --------------------------------------------------------------------------- augmentation


def batch(n: int = 4, h: int = 12, w: int = 16, seed: int = 0) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A float image batch and NYUv2-style targets with invalid pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    label = torch.randint(-1, 13, (n, h, w), generator=g).to(torch.int16)
    depth = torch.rand(n, 1, h, w, generator=g) + 0.5
    depth[:, :, :2, :2] = 0
    normal = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    normal[:, :, :2, :2] = 0
    return x, (label, depth, normal)


KINDS = ("segmentation", "depth", "normals")


def test_scale_one_without_flip_is_the_identity():
    x, y = batch(n=1)
    seed = next(
        s
        for s in range(1000)
        if (c := draw_crops(1, 12, 16, torch.Generator().manual_seed(s))[0]).scale == 1.0 and not c.flip
    )
    ax, ay = nyuv2.augment(x, y, torch.Generator().manual_seed(seed))
    assert torch.equal(ax, x) and all(torch.equal(a, b) for a, b in zip(ay, y, strict=True))
    assert ay[0].dtype == torch.int16


def test_a_flip_mirrors_every_map_and_negates_the_normals_x():
    x, y = batch(n=2)
    ax, (label, depth, normal) = apply_crops(x, y, KINDS, [Crop(1.0, 0, 0, 12, 16, True)] * 2)
    assert torch.equal(ax, x.flip(-1)) and torch.equal(label, y[0].flip(-1)) and torch.equal(depth, y[1].flip(-1))
    assert torch.equal(normal[:, 0], -y[2][:, 0].flip(-1)) and torch.equal(normal[:, 1:], y[2][:, 1:].flip(-1))


def test_a_scale_crop_divides_depth_and_keeps_shapes_and_invalid_values():
    x, y = batch(n=1)
    crop = Crop(1.5, 2, 3, int(12 / 1.5), int(16 / 1.5), False)
    ax, (label, depth, normal) = apply_crops(x, y, KINDS, [crop])
    assert ax.shape == x.shape and label.shape == y[0].shape and depth.shape == y[1].shape
    assert normal.shape == y[2].shape
    window = (..., slice(2, 10), slice(3, 13))
    # nearest resize of the window: every output value is a window value, depth divided by the scale
    assert set(label.unique().tolist()) <= set(y[0][window].unique().tolist())
    assert torch.allclose(depth * 1.5, torch.nn.functional.interpolate(y[1][window], size=(12, 16), mode="nearest"))
    # labels as the training loop hands them over (int64) take the same values
    _, (wide, *_) = apply_crops(x, (y[0].long(), *y[1:]), KINDS, [crop])
    assert wide.dtype == torch.int64 and torch.equal(wide, label.long())
    # the image's corners are the window's corners (bilinear, align_corners=True)
    assert torch.allclose(ax[..., 0, 0], x[..., 2, 3]) and torch.allclose(ax[..., -1, -1], x[..., 9, 12])


def test_draws_cover_the_scales_and_windows_stay_inside():
    crops = draw_crops(600, 288, 384, torch.Generator().manual_seed(3))
    assert {c.scale for c in crops} == {1.0, 1.2, 1.5}
    assert {(c.height, c.width) for c in crops} == {(288, 384), (240, 320), (192, 256)}
    assert all(0 <= c.top <= 288 - c.height and 0 <= c.left <= 384 - c.width for c in crops)
    assert 0.4 < np.mean([c.flip for c in crops]) < 0.6


def test_augment_is_deterministic_given_the_generator_state():
    x, y = batch(n=6)
    first = nyuv2.augment(x, y, torch.Generator().manual_seed(11))
    second = nyuv2.augment(x, y, torch.Generator().manual_seed(11))
    other = nyuv2.augment(x, y, torch.Generator().manual_seed(12))
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    assert not torch.equal(first[0], other[0])
    cx, cy = cityscapes.augment(x, y[:2], torch.Generator().manual_seed(11))
    assert torch.equal(cx, first[0]) and torch.equal(cy[1], first[1][1])  # same draws, same crops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_runs_on_the_batch_device():
    x, y = batch(n=4)
    device = torch.device("cuda")
    gx, gy = nyuv2.augment(x.to(device), tuple(t.to(device) for t in y), torch.Generator(device).manual_seed(5))
    assert gx.device.type == "cuda" and all(t.device.type == "cuda" for t in gy)
    crops = draw_crops(4, 12, 16, torch.Generator(device).manual_seed(5))
    cx, cy = apply_crops(x, y, KINDS, crops)
    assert torch.allclose(gx.cpu(), cx, atol=1e-6) and torch.equal(gy[0].cpu(), cy[0])


def test_unpacked_tree_is_reused_without_unpacking_again(dataset, http_server, tmp_path):
    module, release = dataset
    root = module.fetch(tmp_path / "raw", sources=served(module, release, http_server))
    marker = root / "train" / "marker"
    marker.write_text("kept")
    assert module.fetch(tmp_path / "raw", sources=served(module, release, http_server)) == root
    assert marker.read_text() == "kept"
    assert _npy_scenes.resolve_root(tmp_path / "raw" / module.FAMILY.unpack_to) == root


def test_prepare_and_load_round_trip_through_the_cache(dataset, tmp_path, monkeypatch):
    module, release = dataset
    monkeypatch.setitem(data.DATASETS, module.NAME, module.__name__)
    out = data.prepare(module.NAME, {"size": [8, 16]}, tmp_path / "cache.pt", path=release.tree)
    loaded = data.load(module.NAME, out, data.resolve_options(module.NAME, {"size": [8, 16]}))
    built = module.build(module.Options(size=(8, 16)), release.tree)
    assert loaded.tasks == module.TASKS and loaded.stand_in is None
    assert torch.equal(loaded.splits["test"].x, built["test"].x)
    assert loaded.meta["n"]["test"] == release.n_test
