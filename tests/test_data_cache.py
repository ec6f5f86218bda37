"""Data caches: byte-identical rebuilds, a checksum of the tensors, and one clear message for a damaged
cache or one built with other options than the run expects."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from mtlrepro.data import CACHE_FORMAT, load, prepare, resolve_options
from mtlrepro.errors import DataError
from mtlrepro.io import save_torch_atomic
from mtlrepro.run import RunSpec

from conftest import SMALL_DATA, spec_for

TINY = {"n_train": 200, "n_val": 100, "n_test": 100}
REBUILD = "rerun snakemake, or: mtlrepro prepare multi_digits --options"


def test_two_builds_of_the_same_data_are_byte_identical(tmp_path):
    first = prepare("multi_digits", TINY, tmp_path / "a" / "multi_digits.pt")
    second = prepare("multi_digits", TINY, tmp_path / "b" / "other_name.pt")
    assert first.read_bytes() == second.read_bytes()
    # the archive inside is named the same whatever the file is called (torch names it after a path)
    assert {name.split("/")[0] for name in zipfile.ZipFile(first).namelist()} == {"archive"}
    assert load("multi_digits", second, options=resolve_options("multi_digits", TINY)).options["n_train"] == 200


def test_checkpoints_written_twice_are_identical_and_load_as_saved(tmp_path):
    torch.manual_seed(0)
    state = {
        "model": torch.nn.Linear(3, 2).state_dict(),
        "rng": torch.Generator().manual_seed(5).get_state(),
        "epoch": 4,
    }
    save_torch_atomic(tmp_path / "one" / "checkpoint.pt", state)
    save_torch_atomic(tmp_path / "two" / "checkpoint.pt", state)
    assert (tmp_path / "one" / "checkpoint.pt").read_bytes() == (tmp_path / "two" / "checkpoint.pt").read_bytes()
    back = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    assert back["epoch"] == 4 and torch.equal(back["rng"], state["rng"])
    assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())


def test_a_run_spec_s_data_options_match_the_cache_the_workflow_builds(small_data):
    """``spec.data_options`` (from the config, and after the JSON trip to ``mtlrepro train``) equals the cache's."""
    spec = spec_for()
    data = load("multi_digits", small_data, options=spec.data_options)
    assert data.options == dict(spec.data_options)
    again = RunSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert load("multi_digits", small_data, options=again.data_options).options == data.options


def test_a_cache_built_with_other_options_names_only_the_differing_keys(small_data):
    expected = resolve_options("multi_digits", {**SMALL_DATA, "n_train": 600})
    with pytest.raises(DataError) as caught:
        load("multi_digits", small_data, options=expected)
    message = str(caught.value)
    assert message.startswith(
        f"data cache {small_data} was built with options {{n_train: 512}} but the run expects {{n_train: 600}}: "
        f"rebuild it (delete {small_data} and {REBUILD} "
    )
    assert message.endswith(f" --out {small_data})") and "\n" not in message
    command = message[message.index("--options ") + len("--options ") : message.index(" --out")]
    assert json.loads(command.strip("'")) == expected  # the command rebuilds exactly what the run expects


@pytest.fixture
def cache_bytes(small_data) -> bytes:
    return small_data.read_bytes()


def storage_offset(data: bytes, path: Path) -> int:
    """Offset in the file of the middle of its largest stored tensor (zip entries of torch are uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = entry.header_offset
    name_length = int.from_bytes(data[start + 26 : start + 28], "little")
    extra_length = int.from_bytes(data[start + 28 : start + 30], "little")
    return start + 30 + name_length + extra_length + entry.file_size // 2


def flipped(data: bytes, path: Path) -> bytes:
    at = storage_offset(data, path)
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def resaved(payload_edit) -> object:
    def make(data: bytes, path: Path) -> bytes:
        payload = torch.load(path, weights_only=True)
        payload_edit(payload)
        save_torch_atomic(path, payload)
        return path.read_bytes()

    return make


def saved(obj: object, path: Path) -> bytes:
    save_torch_atomic(path, obj)
    return path.read_bytes()


def tampered_tensor(payload: dict) -> None:
    payload["splits"]["test"]["y"][0][0] = (payload["splits"]["test"]["y"][0][0] + 1) % 10


DAMAGE = {
    "truncated": (lambda data, path: data[: len(data) // 2], "is damaged (torch cannot read it"),
    "empty": (lambda data, path: b"", "is damaged (torch cannot read it"),
    "garbage": (lambda data, path: b"\x00garbage\xff" * 1000, "is damaged (torch cannot read it"),
    "plain pickle": (lambda data, path: pickle.dumps({"format": CACHE_FORMAT}), "is damaged (torch cannot read it"),
    "bit rot in a tensor": (flipped, "is damaged (its tensors do not match their sha256)"),
    "tensor edited": (resaved(tampered_tensor), "is damaged (its tensors do not match their sha256)"),
    "a list": (lambda data, path: saved([1, 2], path), "is damaged (it holds a list, not a data cache)"),
    "no checksum": (resaved(lambda p: p.pop("splits_sha256")), "is damaged (no splits_sha256)"),
    "a split missing": (resaved(lambda p: p["splits"].pop("val")), "is damaged (split 'val' is missing or malformed)"),
    "not tensors": (
        resaved(lambda p: p["splits"]["train"].update(x=[1, 2])),
        "is damaged (split 'train' holds something other than tensors)",
    ),
    "foreign torch file": (lambda data, path: saved({"model": torch.ones(2)}, path), "not an mtlrepro data cache"),
    "older format": (
        resaved(lambda p: p.update(format="mtlrepro.data/1")),
        f"has format 'mtlrepro.data/1' of another mtlrepro version (this one reads {CACHE_FORMAT!r})",
    ),
    "another dataset": (resaved(lambda p: p.update(name="multi_fashion")), "holds dataset 'multi_fashion'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_cache_is_one_data_error_naming_the_file_and_the_rebuild(tmp_path, cache_bytes, case):
    damage, message = DAMAGE[case]
    path = tmp_path / "multi_digits.pt"
    path.write_bytes(cache_bytes)
    path.write_bytes(damage(cache_bytes, path))
    for options in (None, resolve_options("multi_digits", SMALL_DATA)):
        with pytest.raises(DataError) as caught:
            load("multi_digits", path, options=options)
        text = str(caught.value)
        assert text.startswith(f"data cache {path} ") and message in text, text
        assert REBUILD in text and text.endswith(f"--out {path})") and "\n" not in text


def test_a_missing_cache_says_how_to_build_it(tmp_path):
    with pytest.raises(DataError, match=r"data cache .*nope\.pt does not exist: build it \(rerun snakemake"):
        load("multi_digits", tmp_path / "nope.pt")


def test_a_cache_depends_on_every_dataset_module_it_uses():
    # office31 -> _office -> _images: a change in the shared image decoding must rebuild the cache
    from mtlrepro.studies import dataset_sources

    names = {path.rsplit("/", 1)[-1] for path in dataset_sources("office31")}
    assert {"office31.py", "_office.py", "_images.py", "download.py", "__init__.py", "tasks.py"} <= names
    assert "_render.py" in {path.rsplit("/", 1)[-1] for path in dataset_sources("street_scenes")}
