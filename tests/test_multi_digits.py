"""Tests of the ``multi_digits`` Multi-MNIST stand-in (RW paper Sec. 5.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from mtlrepro.data import SPLITS, Split, dataset_module, load, prepare, resolve_options
from mtlrepro.data import multi_digits as md
from mtlrepro.errors import ConfigError, DataError

SMALL = {"n_train": 500, "n_val": 300, "n_test": 300}


@pytest.fixture(scope="module")
def small() -> dict[str, Split]:
    return md.build(md.Options(**SMALL))


def _reference_digit(raw: np.ndarray, size: int) -> np.ndarray:
    """Upscale one raw 8x8 digit independently of the module's batched code path."""
    x = torch.from_numpy(raw.astype(np.float64))[None, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return torch.round(x * 255.0 / 16.0).clamp(0, 255)[0, 0].numpy().astype(np.uint8)


def test_module_contract() -> None:
    assert dataset_module("multi_digits") is md
    assert md.NAME == "multi_digits"
    assert md.ENCODER == "lenet"
    assert [t.name for t in md.TASKS] == ["TL", "BR"]
    assert all(t.n_classes == 10 and dict(t.metrics) == {"acc": "higher"} for t in md.TASKS)
    assert "Multi-MNIST" in md.STAND_IN and "\n" not in md.STAND_IN


def test_shapes_and_dtypes(small: dict[str, Split]) -> None:
    assert set(small) == set(SPLITS)
    for split, n in (("train", 500), ("val", 300), ("test", 300)):
        s = small[split]
        assert s.x.shape == (n, 1, 36, 36) and s.x.dtype == torch.uint8
        assert len(s.y) == 2 and all(y.shape == (n,) and y.dtype == torch.int64 for y in s.y)
        assert s.source is not None and s.source.shape == (n, 2) and s.source.dtype == torch.int64
        assert int(s.x.max()) == 255  # digits are scaled to 0..255
        # both corners carry ink, the centre-far corners (top-right, bottom-left) stay empty
        assert int(s.x[:, 0, 28:, :8].max()) == 0 and int(s.x[:, 0, :8, 28:].max()) == 0


def test_no_base_image_shared_between_splits(small: dict[str, Split]) -> None:
    used = {split: set(small[split].source.flatten().tolist()) for split in SPLITS}
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    pools = md.split_base(load_digits().target, md.Options(**SMALL))
    for split in SPLITS:
        assert used[split] <= set(pools[split].tolist())


def test_labels_match_sources_and_classes_differ(small: dict[str, Split]) -> None:
    targets = torch.from_numpy(load_digits().target.astype(np.int64))
    for split in SPLITS:
        s = small[split]
        assert torch.equal(torch.stack(s.y, dim=1), targets[s.source])
        assert bool((s.y[0] != s.y[1]).all()), f"{split}: a pair has TL == BR class"


def test_every_split_covers_all_classes_for_both_tasks(small: dict[str, Split]) -> None:
    for split in SPLITS:
        for t in range(2):
            assert torch.unique(small[split].y[t]).tolist() == list(range(10)), (split, t)


def test_recompose_from_source_reproduces_pixels() -> None:
    options = md.Options(n_train=200, n_val=100, n_test=100, canvas=30, digit_size=20, shift=6)
    splits = md.build(options)
    images = load_digits().images
    for split in SPLITS:
        s = splits[split]
        for row in range(0, len(s), 17):
            tl, br = s.source[row].tolist()
            expected = np.zeros((30, 30), dtype=np.uint8)
            expected[:20, :20] = _reference_digit(images[tl], 20)
            expected[6:26, 6:26] = np.maximum(expected[6:26, 6:26], _reference_digit(images[br], 20))
            assert np.array_equal(s.x[row, 0].numpy(), expected), (split, row)


def test_deterministic(small: dict[str, Split]) -> None:
    again = md.build(md.Options(**SMALL))
    for split in SPLITS:
        assert torch.equal(small[split].x, again[split].x)
        assert all(torch.equal(a, b) for a, b in zip(small[split].y, again[split].y, strict=True))
        assert torch.equal(small[split].source, again[split].source)


def test_generation_seed_changes_data(small: dict[str, Split]) -> None:
    other = md.build(md.Options(**SMALL, generation_seed=1))
    for split in SPLITS:
        assert not torch.equal(small[split].source, other[split].source)
        assert not torch.equal(small[split].x, other[split].x)
    base0 = md.split_base(load_digits().target, md.Options(**SMALL))
    base1 = md.split_base(load_digits().target, md.Options(**SMALL, generation_seed=1))
    assert not np.array_equal(base0["test"], base1["test"])


def test_pair_draw_is_roughly_uniform_over_classes() -> None:
    splits = md.build(md.Options(n_train=6000, n_val=100, n_test=100))
    counts = torch.bincount(torch.cat(splits["train"].y), minlength=10).float()
    assert float(counts.min()) > 0.8 * float(counts.mean())
    assert float(counts.max()) < 1.2 * float(counts.mean())


def test_describe_provenance() -> None:
    meta = md.describe(md.Options(**SMALL))
    assert len(meta["images_sha256"]) == 64 and len(meta["targets_sha256"]) == 64
    assert meta["n_base_images"] == 1797
    assert sum(meta["n_base"].values()) == 1797
    assert meta["n_base"]["test"] == pytest.approx(0.2 * 1797, abs=2)
    assert meta["n_base"]["val"] == pytest.approx(0.2 * 1797, abs=2)
    assert isinstance(meta["sklearn_version"], str)


def test_prepare_load_round_trip(tmp_path, small: dict[str, Split]) -> None:
    path = prepare("multi_digits", SMALL, tmp_path / "cache" / "multi_digits.pt")
    data = load("multi_digits", path)
    assert data.name == "multi_digits"
    assert data.stand_in == md.STAND_IN
    assert [t.name for t in data.tasks] == ["TL", "BR"]
    assert data.options == resolve_options("multi_digits", SMALL)
    assert data.meta["n_pairs"] == {"train": 500, "val": 300, "test": 300}
    for split in SPLITS:
        assert torch.equal(data.splits[split].x, small[split].x)
        assert all(torch.equal(a, b) for a, b in zip(data.splits[split].y, small[split].y, strict=True))
        assert torch.equal(data.splits[split].source, small[split].source)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"n_trian": 5}, "datasets.multi_digits.options.n_trian"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": -3}, "n_val"),
        ({"n_train": 2.5}, "datasets.multi_digits.options.n_train"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction"),
        ({"digit_size": 30, "shift": 8}, "digit_size + shift"),
        ({"canvas": 20}, "digit_size + shift"),
        ({"generation_seed": "a"}, "datasets.multi_digits.options.generation_seed"),
    ],
)
def test_bad_options_raise_config_error(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_options("multi_digits", values)
    assert key in str(info.value)
    assert str(info.value).startswith("datasets.multi_digits.options")


def test_too_few_pairs_for_coverage_raises_data_error() -> None:
    with pytest.raises(DataError, match=r"val split has no (TL|BR) example"):
        md.build(md.Options(n_train=500, n_val=3, n_test=300))


def test_too_small_pool_raises_data_error() -> None:
    with pytest.raises(DataError, match="every split holds every class"):
        md.build(md.Options(n_train=100, n_val=100, n_test=100, test_fraction=0.001))
