"""``pawsx``: XTREME's paraphrase identification (PI) problem on PAWS-X, one task per language (RW Sec. 5.3).

RW Sec. 5.3 (Table 2, Table 3) builds a multi-input problem from the four PAWS-X languages with the most data:
English (en), Mandarin (zh), German (de) and Spanish (es); each language is a binary classification task
(1 = the two sentences are paraphrases) with its own sentence pairs, about 49.4K / 2.0K / 2.0K for
training, validation and testing.

Source: the PAWS-X release ``x-final.tar.gz`` (google-research-datasets/paws), one directory per language
with tab-separated files (header ``id, sentence1, sentence2, label``):

- training: ``en/train.tsv`` for English and ``<lang>/translated_train.tsv`` (machine-translated from the
  English training set) for zh, de and es. XTREME's zero-shot setting trains on English only; RW trains
  every language on its own data, which with 49.4K pairs each can only be the translated training sets. The
  RW authors' code reads exactly these files (LibMTL ``examples/xtreme/propocess_data/utils_preprocess.py``,
  ``pawsx_preprocess``: ``translated_train`` for every language but English), as does tensorflow-datasets'
  ``paws_x_wiki``;
- validation: ``<lang>/dev_2k.tsv``; test: ``<lang>/test_2k.tsv`` (human-translated for zh, de, es).

Rows whose label is not 0 or 1, or that do not have four fields, are skipped and counted in
:func:`describe` (some rows of the release are malformed, see tensorflow-datasets ``paws_x_wiki.py``).
Sentence pairs are tokenised with the multilingual BERT tokenizer (:mod:`mtlrepro.data._tokenize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mtlrepro.data import SPLITS, Split
from mtlrepro.data import download as dl
from mtlrepro.data._tokenize import DEFAULT_TOKENIZER, MAX_POSITIONS, describe_tokenizer, encode_pairs, load_tokenizer
from mtlrepro.data.download import Source
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.tasks import Task, check_target

NAME = "pawsx"
ENCODER = "mbert"
LANGUAGES = ("en", "zh", "de", "es")
TASKS = tuple(Task(lang, "classification", n_classes=2) for lang in LANGUAGES)
MULTI_INPUT = True
STAND_IN = None

ARCHIVE = "x-final.tar.gz"
#: URL, size and sha256 from tensorflow-datasets ``tensorflow_datasets/text/paws_x_wiki/checksums.tsv``
SOURCES = (
    Source(
        url="https://storage.googleapis.com/paws/pawsx/x-final.tar.gz",
        sha256="4146db499101d66e68ae4c8ed3cf9dadecd625f44b7d8cf3d4a0fe93afc4fd9f",
        size=30282057,
    ),
)
MANUAL = (
    "PAWS-X: download x-final.tar.gz (linked from https://github.com/google-research-datasets/paws, "
    "directory pawsx) and put it in the download directory, or unpack it and set the dataset's path to the "
    "unpacked x-final directory (holding en/train.tsv, zh/translated_train.tsv, ..., <lang>/dev_2k.tsv, "
    "<lang>/test_2k.tsv)"
)
#: directory (under the download directory) the archive is unpacked into; it holds ``x-final/``
UNPACKED = "pawsx"
HEADER = ("id", "sentence1", "sentence2")
LABELS = ("label", "noisy_label")


def train_file(lang: str) -> str:
    """The training file of ``lang``: English's own, the machine-translated one for the others (see above)."""
    return "train.tsv" if lang == "en" else "translated_train.tsv"


def split_files(lang: str) -> dict[str, str]:
    """File of every split of ``lang``, relative to the ``x-final`` directory."""
    return {"train": f"{lang}/{train_file(lang)}", "val": f"{lang}/dev_2k.tsv", "test": f"{lang}/test_2k.tsv"}


@dataclass(frozen=True)
class Options:
    """Tokenisation options: the tokenizer (hub name or local directory) and the padded length (XTREME: 128)."""

    tokenizer: str = DEFAULT_TOKENIZER
    max_length: int = 128

    def __post_init__(self) -> None:
        require(bool(self.tokenizer.strip()), "tokenizer", self.tokenizer, "must name a tokenizer or a directory")
        require(
            8 <= self.max_length <= MAX_POSITIONS, "max_length", self.max_length, f"must be in [8, {MAX_POSITIONS}]"
        )


def resolve_root(root: Path) -> Path:
    """The ``x-final`` directory: ``root`` itself, or ``root/x-final`` when ``root`` holds it."""
    nested = root / "x-final"
    return nested if nested.is_dir() else root


def check_root(root: Path) -> None:
    """Refuse a PAWS-X tree with a missing file (one :class:`DataError` line naming it and the manual step)."""
    base = resolve_root(Path(root))
    for lang in LANGUAGES:
        for relative in split_files(lang).values():
            if not (base / relative).is_file():
                raise DataError(f"{NAME}: {base / relative} is missing: {MANUAL}")


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download (checksummed) and unpack ``x-final.tar.gz`` into ``directory``; return the ``x-final`` root."""
    directory = Path(directory)
    (source,) = sources
    archive = dl.fetch(source, directory, manual=MANUAL, dataset=NAME, progress=progress)
    unpacked = dl.unpack(archive, directory / UNPACKED)
    root = resolve_root(unpacked)
    check_root(root)
    return root


def read_tsv(path: Path) -> tuple[list[str], list[str], list[int], int]:
    """Read one PAWS-X tsv: ``(sentence1s, sentence2s, labels, skipped rows)``.

    Fields are split on tabs with no quoting (the sentences hold unbalanced quotes), as XTREME's
    ``utils_preprocess.py`` does; rows without four fields or with a label other than 0/1 are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{NAME}: cannot read {path}: {err}") from None
    lines = text.splitlines()
    header = tuple(lines[0].split("\t")) if lines else ()
    if len(header) != 4 or header[:3] != HEADER or header[3] not in LABELS:
        raise DataError(
            f"{NAME}: {path} has header {header!r}, expected id, sentence1, sentence2, label (tab-separated)"
        )
    first: list[str] = []
    second: list[str] = []
    labels: list[int] = []
    skipped = 0
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != 4 or fields[3].strip() not in ("0", "1"):
            skipped += int(bool(line.strip()))
            continue
        first.append(fields[1].strip())
        second.append(fields[2].strip())
        labels.append(int(fields[3]))
    return first, second, labels, skipped


def build(options: Options, root: Path | None) -> dict[str, tuple[Split, ...]]:
    """Build train/val/test (RW Sec. 5.3): one ``Split`` per language, in :data:`TASKS` order.

    Task ``t``'s split holds ``x`` int32 ``[N x 3 x max_length]`` (input ids, token type ids, attention mask
    of ``[CLS] sentence1 [SEP] sentence2 [SEP]``), ``y = (labels int64 [N],)`` and ``source`` int64
    ``[N x 2]``: (file: 0 training, 1 dev_2k, 2 test_2k; index of the pair among the file's kept rows).
    Validation and test are the release's own dev_2k/test_2k files; nothing is carved out.
    """
    if root is None:
        raise DataError(f"{NAME} needs its raw data: {MANUAL}")
    base = resolve_root(Path(root))
    check_root(base)
    tokenizer = load_tokenizer(options.tokenizer, dataset=NAME)
    splits: dict[str, list[Split]] = {split: [] for split in SPLITS}
    for task in TASKS:
        for code, (split, relative) in enumerate(split_files(task.name).items()):
            first, second, labels, _ = read_tsv(base / relative)
            x = encode_pairs(tokenizer, first, second, options.max_length)
            y = torch.tensor(labels, dtype=torch.int64)
            check_target(task, y, len(labels))
            source = torch.stack([torch.full((len(labels),), code, dtype=torch.int64), torch.arange(len(labels))], 1)
            splits[split].append(Split(x=x, y=(y,), source=source))
    return {split: tuple(parts) for split, parts in splits.items()}


def describe(options: Options, root: Path | None) -> dict[str, object]:
    """Provenance: the archive's checksum, the file of every split per language, row counts, the tokenizer."""
    if root is None:
        raise DataError(f"{NAME} needs its raw data: {MANUAL}")
    base = resolve_root(Path(root))
    files: dict[str, dict[str, object]] = {}
    for lang in LANGUAGES:
        files[lang] = {}
        for split, relative in split_files(lang).items():
            path = base / relative
            _, _, labels, skipped = read_tsv(path)
            files[lang][split] = {
                "file": relative,
                "sha256": dl.sha256_file(path),
                "n": len(labels),
                "skipped_rows": skipped,
            }
    return {
        "source": SOURCES[0].url,
        "archive_sha256": SOURCES[0].sha256,
        "files": files,
        "tokenizer": describe_tokenizer(load_tokenizer(options.tokenizer, dataset=NAME)),
        "max_length": options.max_length,
        "stand_in": STAND_IN,
    }
