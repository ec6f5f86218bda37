"""PAWS-X, UD-POS (tokenised for multilingual BERT) and SARCOS: fetch -> build from tiny upstream-format fixtures.

Every download goes to the local test server (127.0.0.1); the tokenizer is a tiny WordPiece vocabulary in the
test's directory, loaded by ``transformers.AutoTokenizer`` without network.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from mtlrepro.data import DATASETS, SPLITS, load, pawsx, prepare, sarcos, udpos
from mtlrepro.data import _tokenize as tk
from mtlrepro.data.download import Source
from mtlrepro.errors import ConfigError, DataError
from mtlrepro.options import build_options
from mtlrepro.tasks import IGNORE, check_target

from fixtures.sarcos import write_sarcos
from fixtures.xtreme import (
    PAWSX_SIZES,
    pawsx_archive,
    pawsx_rows,
    token_id,
    ud_archive,
    ud_sentences,
    write_tokenizer,
)

CLS, SEP, PAD, UNK = (token_id(p) for p in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))


# --------------------------------------------------------------------------- shared helpers


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def ids(*pieces: str) -> list[int]:
    return [token_id(p) for p in pieces]


def served(server, name: str, data: bytes, sha256: str | None, size: int | None, **behaviour) -> Source:
    return Source(url=server.serve(f"/{name}", data, **behaviour), sha256=sha256, size=size)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sarcos_sources(server, files: dict, **behaviour) -> list[Source]:
    return [served(server, name, *files[name], **behaviour) for name in (sarcos.TRAIN_FILE, sarcos.TEST_FILE)]


def fetched(name: str, server, tmp_path: Path, **behaviour):
    """(module, root) of dataset ``name`` fetched from the test server into ``tmp_path / 'raw'``."""
    if name == "sarcos":
        files = write_sarcos(tmp_path / "made")
        return sarcos, sarcos.fetch(tmp_path / "raw", sources=sarcos_sources(server, files, **behaviour))
    module, (data, sha, size) = (pawsx, pawsx_archive()) if name == "pawsx" else (udpos, ud_archive())
    source = served(server, module.ARCHIVE, data, sha, size, **behaviour)
    return module, module.fetch(tmp_path / "raw", sources=[source])


def assert_same(a, b) -> None:
    """Two built datasets hold bit-identical tensors."""
    for split in SPLITS:
        parts_a = a[split] if isinstance(a[split], tuple) else (a[split],)
        parts_b = b[split] if isinstance(b[split], tuple) else (b[split],)
        for pa, pb in zip(parts_a, parts_b, strict=True):
            assert torch.equal(pa.x, pb.x) and torch.equal(pa.source, pb.source)
            assert all(torch.equal(ya, yb) for ya, yb in zip(pa.y, pb.y, strict=True))


# --------------------------------------------------------------------------- contract, shared failure modes


@pytest.mark.parametrize("module", [pawsx, udpos, sarcos])
def test_module_contract(module) -> None:
    assert module.NAME in ("pawsx", "udpos", "sarcos") and module.STAND_IN is None
    assert ("mlp" if module is sarcos else "mbert") == module.ENCODER
    assert module.MULTI_INPUT is (module is not sarcos)
    assert module.SOURCES and module.MANUAL
    assert dataclasses.is_dataclass(module.Options) and module.Options() == module.Options()
    names = [task.name for task in module.TASKS]
    expected = {
        pawsx: ["en", "zh", "de", "es"],
        udpos: ["en", "zh", "te", "vi"],
        sarcos: [f"joint{j}" for j in range(1, 8)],
    }[module]
    assert names == expected
    kinds = {task.kind for task in module.TASKS}
    assert kinds == {{pawsx: "classification", udpos: "tagging", sarcos: "regression"}[module]}
    if module is udpos:
        assert all(task.labels == udpos.UPOS and task.n_classes == 17 for task in module.TASKS)


@pytest.mark.parametrize("name", ["pawsx", "udpos", "sarcos"])
def test_offline_fetch_names_file_url_and_manual_step(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("mtlrepro.data.download.time.sleep", lambda seconds: None)  # no backoff waits
    module = {"pawsx": pawsx, "udpos": udpos, "sarcos": sarcos}[name]
    first = module.SOURCES[0]
    url = f"http://127.0.0.1:{closed_port()}/{first.filename}"
    offline = dataclasses.replace(first, url=url, mirrors=())
    sources = [offline, *module.SOURCES[1:]]
    with pytest.raises(DataError) as refused:
        module.fetch(tmp_path, sources=sources)
    message = str(refused.value)
    assert "\n" not in message and first.filename in message and url in message
    assert module.MANUAL.split(":")[0] in message  # the dataset's manual step
    assert not list(tmp_path.iterdir()) or all(not p.is_file() or p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("name", ["pawsx", "udpos", "sarcos"])
def test_checksum_mismatch_leaves_nothing_half_written(name: str, http_server, tmp_path: Path) -> None:
    if name == "sarcos":
        files = write_sarcos(tmp_path / "made")
        sources = sarcos_sources(http_server, files, corrupt=True)
    else:
        data, sha, size = pawsx_archive() if name == "pawsx" else ud_archive()
        module = pawsx if name == "pawsx" else udpos
        sources = [served(http_server, module.ARCHIVE, data, sha, size, corrupt=True)]
    module = {"pawsx": pawsx, "udpos": udpos, "sarcos": sarcos}[name]
    with pytest.raises(DataError, match="corrupt or the source changed"):
        module.fetch(tmp_path / "raw", sources=sources)
    assert list((tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("pawsx", "x-final/de/translated_train.tsv"),
        ("udpos", "ud-treebanks-v2.5/UD_Telugu-MTG/te_mtg-ud-dev.conllu"),
        ("sarcos", "sarcos_inv_test.mat"),
    ],
)
def test_check_root_names_the_missing_file(name: str, missing: str, http_server, tmp_path: Path) -> None:
    module, root = fetched(name, http_server, tmp_path)
    module.check_root(root)  # complete
    path = next(p for p in (tmp_path / "raw").rglob("*") if p.as_posix().endswith(missing))
    path.unlink()
    with pytest.raises(DataError) as refused:
        module.check_root(root)
    assert missing.split("/")[-1] in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("name", ["pawsx", "udpos", "sarcos"])
def test_prepare_load_round_trip(name: str, http_server, tmp_path: Path, tokenizer_dir, monkeypatch) -> None:
    module, root = fetched(name, http_server, tmp_path)
    monkeypatch.setitem(DATASETS, name, f"mtlrepro.data.{name}")
    options = {} if name == "sarcos" else {"tokenizer": str(tokenizer_dir), "max_length": 16}
    out = prepare(name, options, tmp_path / "cache.pt", path=root)
    data = load(name, out)
    assert data.multi_input is module.MULTI_INPUT and data.stand_in is None
    json.dumps(data.meta)  # provenance is JSON-serialisable


# --------------------------------------------------------------------------- tokenizer


def test_missing_tokenizer_offline_is_one_data_error(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as refused:
        tk.load_tokenizer("mtlrepro-test/no-such-tokenizer", dataset="pawsx")
    message = str(refused.value)
    assert "mtlrepro-test/no-such-tokenizer" in message and "datasets.pawsx.options.tokenizer" in message
    assert "Hugging Face cache" in message and "\n" not in message


def test_missing_tokenizer_directory_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tokenizer directory .*absent does not exist.*datasets.udpos.options"):
        tk.load_tokenizer(str(tmp_path / "absent"), dataset="udpos")


def test_word_alignment_by_hand(tokenizer_dir) -> None:
    tokenizer = tk.load_tokenizer(str(tokenizer_dir), dataset="udpos")
    words = [["the", "cats", "playing", "unbelievable", "."]]
    x, y, dropped = tk.encode_words(tokenizer, words, [[5, 7, 15, 0, 12]], max_length=14)
    pieces = ids("[CLS]", "the", "cat", "##s", "play", "##ing", "un", "##believ", "##able", ".", "[SEP]")
    assert x.dtype == torch.int32 and y.dtype == torch.int16 and dropped == 0
    assert x[0, 0].tolist() == pieces + [PAD] * 3
    assert x[0, 1].tolist() == [0] * 14 and x[0, 2].tolist() == [1] * 11 + [0] * 3
    # the first piece of every word carries its tag; other pieces, [CLS], [SEP] and padding are IGNORE
    assert y[0].tolist() == [IGNORE, 5, 7, IGNORE, 15, IGNORE, 0, IGNORE, IGNORE, 12, IGNORE, *[IGNORE] * 3]


def test_truncation_drops_words_and_splitting_keeps_them(tokenizer_dir) -> None:
    tokenizer = tk.load_tokenizer(str(tokenizer_dir), dataset="udpos")
    words = [["the", "cats", "playing", "unbelievable", "."]]
    tags = [[5, 7, 15, 0, 12]]
    x, y, dropped = tk.encode_words(tokenizer, words, tags, max_length=8)  # room for 6 pieces
    assert x[0, 0].tolist() == ids("[CLS]", "the", "cat", "##s", "play", "##ing", "un", "[SEP]")
    assert y[0].tolist() == [IGNORE, 5, 7, IGNORE, 15, IGNORE, 0, IGNORE] and dropped == 1  # "." is cut
    counts = tk.piece_counts(tokenizer, words[0])
    segments, origin = tk.segment(words, counts, max_length=8)
    assert segments == [["the", "cats", "playing"], ["unbelievable", "."]] and origin == [(0, 0), (0, 3)]
    x, y, dropped = tk.encode_words(tokenizer, segments, [[5, 7, 15], [0, 12]], max_length=8)
    assert dropped == 0 and x[1, 0].tolist() == ids("[CLS]", "un", "##believ", "##able", ".", "[SEP]", "[PAD]", "[PAD]")
    assert y[1].tolist() == [IGNORE, 0, IGNORE, IGNORE, 12, IGNORE, IGNORE, IGNORE]


# --------------------------------------------------------------------------- PAWS-X


@pytest.fixture
def pawsx_built(http_server, tmp_path: Path, tokenizer_dir):
    _module, root = fetched("pawsx", http_server, tmp_path)
    options = pawsx.Options(tokenizer=str(tokenizer_dir), max_length=16)
    return root, options, pawsx.build(options, root)


def test_pawsx_build_shapes_values_and_files(pawsx_built, http_server, tmp_path: Path) -> None:
    root, _options, built = pawsx_built
    requests = len(http_server.requests)
    _, sha, size = pawsx_archive()  # the same bytes again: the intact file is used, nothing is downloaded
    again = Source(url=http_server.url(f"/{pawsx.ARCHIVE}"), sha256=sha, size=size)
    assert pawsx.fetch(tmp_path / "raw", sources=[again]) == root
    assert len(http_server.requests) == requests
    for split in SPLITS:
        assert len(built[split]) == 4
        for task, part in zip(pawsx.TASKS, built[split], strict=True):
            rows = pawsx_rows(task.name, split)  # the malformed training row is skipped
            assert len(part) == len(rows) == PAWSX_SIZES[split]
            assert part.x.dtype == torch.int32 and part.x.shape == (len(rows), 3, 16)
            assert part.y[0].dtype == torch.int64 and part.y[0].tolist() == [label for *_, label in rows]
            check_target(task, part.y[0], len(part))
            assert part.source[:, 0].eq(SPLITS.index(split)).all() and part.source[:, 1].tolist() == list(
                range(len(rows))
            )
    # pair 0 of English training: "the cat" / "a" -> [CLS] the cat [SEP] a [SEP]
    en = built["train"][0]
    assert en.x[0, 0].tolist() == ids("[CLS]", "the", "cat", "[SEP]", "a", "[SEP]") + [PAD] * 10
    assert en.x[0, 1].tolist() == [0, 0, 0, 0, 1, 1] + [0] * 10
    assert en.x[0, 2].tolist() == [1] * 6 + [0] * 10
    # Mandarin reads its own (translated) file: its sentences end with the character 猫
    zh = built["train"][1]
    assert token_id("猫") in zh.x[0, 0].tolist() and token_id("猫") not in en.x[:, 0].flatten().tolist()


def test_pawsx_deterministic_and_describe(pawsx_built) -> None:
    root, options, built = pawsx_built
    assert_same(built, pawsx.build(options, root))
    meta = pawsx.describe(options, root)
    json.dumps(meta)
    assert meta["files"]["de"]["train"]["file"] == "de/translated_train.tsv"
    assert meta["files"]["en"]["train"]["file"] == "en/train.tsv"
    assert meta["files"]["es"]["train"]["skipped_rows"] == 1 and meta["files"]["es"]["val"]["n"] == 3
    assert meta["tokenizer"]["vocab_size"] == 25 and meta["archive_sha256"] == pawsx.SOURCES[0].sha256


def test_pawsx_long_pairs_are_truncated(pawsx_built) -> None:
    root, options, _ = pawsx_built
    built = pawsx.build(dataclasses.replace(options, max_length=8), root)
    x = built["train"][0].x
    assert x.shape[-1] == 8
    full = x[:, 2].sum(dim=1) == 8
    assert full.any() and (x[full, 0, -1] == SEP).all()


def test_pawsx_bad_header_and_options(tmp_path: Path) -> None:
    path = tmp_path / "dev_2k.tsv"
    path.write_text("a\tb\tc\n1\tx\ty\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev_2k\.tsv has header"):
        pawsx.read_tsv(path)
    with pytest.raises(ConfigError, match=r"datasets.pawsx.options.max_length"):
        build_options(pawsx.Options, {"max_length": 4}, "datasets.pawsx.options")


# --------------------------------------------------------------------------- UD-POS


@pytest.fixture
def udpos_built(http_server, tmp_path: Path, tokenizer_dir):
    _module, root = fetched("udpos", http_server, tmp_path)
    options = udpos.Options(tokenizer=str(tokenizer_dir), max_length=16)
    return root, options, udpos.build(options, root)


def test_udpos_build_merges_treebanks_and_aligns_tags(udpos_built) -> None:
    _root, _options, built = udpos_built
    index = {tag: i for i, tag in enumerate(udpos.UPOS)}
    for split in SPLITS:
        ud = udpos.UD_SPLIT[split]
        for task, part in zip(udpos.TASKS, built[split], strict=True):
            expected = [s for _, prefix in udpos_treebanks(task.name, ud) for s in ud_sentences(task.name, prefix, ud)]
            assert len(part) == len(expected)  # withheld-text sentences dropped, en test merges EWT and PUD
            assert part.x.dtype == torch.int32 and part.x.shape == (len(expected), 3, 16)
            assert part.y[0].dtype == torch.int16 and part.y[0].shape == (len(expected), 16)
            check_target(task, part.y[0], len(part))
            # the scored tags, in order, are the fixture's UPOS per syntactic word (no range, no empty node)
            for row, words in enumerate(expected):
                scored = [int(t) for t in part.y[0][row] if t != IGNORE]
                assert scored == [index[upos] for _, upos in words]
    en_train = built["train"][0]
    first = ud_sentences("en", "en_ewt", "train")[0]
    assert [w for w, _ in first] == ["the", "cats", "playing", "unbelievable", "."]
    assert en_train.x[0, 0, :11].tolist() == ids(
        "[CLS]", "the", "cat", "##s", "play", "##ing", "un", "##believ", "##able", ".", "[SEP]"
    )
    assert token_id("[UNK]") not in en_train.x[0, 0].tolist()  # neither the fused form nor the empty node
    vi = built["train"][3]  # "Hà Nội" -> one word without its space -> [UNK], tagged PROPN
    assert vi.x[0, 0, 1].item() == UNK and vi.y[0][0, 1].item() == index["PROPN"]
    zh = built["train"][1]  # "猫狗": two pieces, the tag on the first
    assert zh.x[0, 0, 1:3].tolist() == ids("猫", "狗") and zh.y[0][0, 1:3].tolist() == [index["NOUN"], IGNORE]


def udpos_treebanks(lang: str, ud_split: str) -> list[tuple[str, str]]:
    from fixtures.xtreme import UD_TREEBANKS

    banks = [(d, p) for d, p in UD_TREEBANKS[lang] if p != "en_pud" or ud_split == "test"]
    return sorted(banks, key=lambda bank: bank[1])


def test_udpos_deterministic_split_truncate_and_describe(udpos_built) -> None:
    root, options, built = udpos_built
    assert_same(built, udpos.build(options, root))
    short = dataclasses.replace(options, max_length=8)
    split = udpos.build(short, root)["train"][0]
    truncated = udpos.build(dataclasses.replace(short, long_sentences="truncate"), root)["train"][0]
    assert len(truncated) == 4 and len(split) > 4  # the long first sentence becomes two segments
    assert split.source[:2, 1].tolist() == [0, 0]
    meta = udpos.describe(dataclasses.replace(short, long_sentences="truncate"), root)
    json.dumps(meta)
    en = meta["languages"]["en"]
    assert en["train"]["dropped_words"] >= 1 and en["train"]["files"][0]["dropped_sentences"] == 1
    assert [f["file"] for f in en["test"]["files"]] == [
        "UD_English-EWT/en_ewt-ud-test.conllu",
        "UD_English-PUD/en_pud-ud-test.conllu",
    ]


def test_udpos_bad_conllu_lines(tmp_path: Path) -> None:
    path = tmp_path / "en_x-ud-train.conllu"
    path.write_text("1\tthe\tthe\tFOO\t_\t_\t0\troot\t_\t_\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"en_x-ud-train.conllu line 1 has UPOS 'FOO'"):
        udpos.read_conllu(path)
    path.write_text("1\tthe\tthe\tDET\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1 has 4 tab-separated fields"):
        udpos.read_conllu(path)


# --------------------------------------------------------------------------- SARCOS


def test_sarcos_build_standardises_with_training_statistics(http_server, tmp_path: Path) -> None:
    _module, root = fetched("sarcos", http_server, tmp_path)
    raw_train = scipy.io.loadmat(root / "sarcos_inv.mat")["sarcos_inv"]
    raw_test = scipy.io.loadmat(root / "sarcos_inv_test.mat")["sarcos_inv_test"]
    options = sarcos.Options()
    built = sarcos.build(options, root)
    sizes = {split: len(built[split]) for split in SPLITS}
    assert sizes == {"train": 45, "val": 5, "test": 10}
    for split in SPLITS:
        part = built[split]
        assert part.x.dtype == torch.float32 and part.x.shape == (sizes[split], 21) and len(part.y) == 7
        for task, y in zip(sarcos.TASKS, part.y, strict=True):
            check_target(task, y, sizes[split])
    train_rows = built["train"].source[:, 0].numpy()
    val_rows = built["val"].source[:, 0].numpy()
    assert not set(train_rows) & set(val_rows) and sorted([*train_rows, *val_rows]) == list(range(50))
    assert built["test"].source[:, 0].tolist() == list(range(50, 60))
    # statistics of the training rows only (not val, not test)
    mean, std = raw_train[train_rows].mean(0), raw_train[train_rows].std(0)
    for split, raw in (("train", raw_train[train_rows]), ("val", raw_train[val_rows]), ("test", raw_test)):
        expected = ((raw - mean) / std).astype(np.float32)
        assert np.allclose(built[split].x.numpy(), expected[:, :21], atol=1e-5)
        assert np.allclose(built[split].y[2].numpy(), expected[:, 23], atol=1e-5)  # joint3 = column 24
    assert torch.allclose(built["train"].x.mean(0), torch.zeros(21), atol=1e-5)
    assert not torch.allclose(built["test"].x.mean(0), torch.zeros(21), atol=1.0)  # test keeps its shift
    meta = sarcos.describe(options, root)
    json.dumps(meta)
    assert np.allclose(meta["input_mean"], mean[:21]) and np.isclose(meta["target_std"]["joint1"], std[21])
    assert meta["sizes"] == sizes
    assert_same(built, sarcos.build(options, root))
    reseeded = sarcos.build(sarcos.Options(split_seed=1), root)
    assert not torch.equal(reseeded["val"].source, built["val"].source)


def test_sarcos_wrong_variable_or_shape(tmp_path: Path) -> None:
    write_sarcos(tmp_path)
    scipy.io.savemat(tmp_path / "sarcos_inv_test.mat", {"other": np.zeros((3, 28))})
    with pytest.raises(DataError, match=r"sarcos_inv_test.mat has no variable 'sarcos_inv_test' \(variables: other\)"):
        sarcos.build(sarcos.Options(), tmp_path)
    scipy.io.savemat(tmp_path / "sarcos_inv_test.mat", {"sarcos_inv_test": np.zeros((3, 27))})
    with pytest.raises(DataError, match=r"shape \[3, 27\], expected \[N x 28\]"):
        sarcos.build(sarcos.Options(), tmp_path)
    with pytest.raises(ConfigError, match=r"val_fraction"):
        build_options(sarcos.Options, {"val_fraction": 1.5}, "datasets.sarcos.options")
