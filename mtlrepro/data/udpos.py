"""``udpos``: XTREME's part-of-speech tagging problem on Universal Dependencies v2.5, one task per language.

RW Sec. 5.3 (Table 2, Table 3) builds a multi-input problem from four UD v2.5 languages: English (en),
Mandarin (zh), Telugu (te) and Vietnamese (vi); each language tags every word with one of the 17 universal
POS tags (UPOS), scored by F1 as XTREME does.

Source: the UD v2.5 release ``ud-treebanks-v2.5.tgz`` (LINDAT handle 11234/1-3105), one directory per
treebank (``UD_English-EWT/en_ewt-ud-train.conllu``, ...). XTREME's ``download_data.sh`` and
``utils_preprocess.py`` (``udpos_preprocess``) merge, per language, *every* treebank whose files start with
the language code, split by the ``train``/``dev``/``test`` in the file name, in sorted file-name order; this
module does the same (:func:`treebank_files`). In v2.5 that is, to our knowledge: en = EWT, GUM, LinES,
ParTUT (train/dev/test) plus PUD and Pronouns (test only) and ESL (its text is withheld, so its sentences are
dropped, see below); zh = GSD (train/dev/test) plus CFL, HK and PUD (test only); te = MTG; vi = VTB.
RW's Table 2 sizes for zh (4.0K/0.5K/2.9K), te and vi match this merge; for en it prints 6.9K/1.8K/3.2K,
fewer than EWT alone holds (12.5K training sentences), so RW's English data lost treebanks somewhere in
their preprocessing; this module keeps XTREME's rule and records the sizes it finds in :func:`describe`.

Reading (XTREME ``udpos_preprocess``; CoNLL-U format of universaldependencies.org):

- multiword token ranges (``1-2``) and empty nodes (``1.1``) are skipped: the words are the syntactic words
  with their UPOS. (XTREME converts the files with ud-conversion-tools' ``--replace_subtokens_with_fused_forms``,
  which instead keeps the fused form with the UPOS of the span's head; the four languages' v2.5 treebanks
  have few or no multiword tokens.)
- spaces and zero-width non-joiners inside a word are removed (Vietnamese words hold spaces);
- a sentence is dropped when at least ``len - 1`` of its words are ``_`` (treebanks whose text is withheld);
- a UPOS of ``_`` is not scored (:data:`~mtlrepro.tasks.IGNORE`); any other tag outside the 17 is an error.

Sentences are tokenised with the multilingual BERT tokenizer, the word's tag on its first piece
(:mod:`mtlrepro.data._tokenize`). Sentences longer than ``max_length - 2`` pieces are split into segments
(XTREME, the default) or truncated, the words that do not fit being dropped (``long_sentences``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from mtlrepro.data import SPLITS, Split
from mtlrepro.data import download as dl
from mtlrepro.data._tokenize import (
    DEFAULT_TOKENIZER,
    MAX_POSITIONS,
    describe_tokenizer,
    encode_words,
    load_tokenizer,
    piece_counts,
    segment,
)
from mtlrepro.data.download import Source
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.tasks import IGNORE, Task, check_target

NAME = "udpos"
ENCODER = "mbert"
LANGUAGES = ("en", "zh", "te", "vi")
#: the 17 universal POS tags (universaldependencies.org/u/pos), in XTREME's order (``utils_tag.py``)
UPOS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)
TASKS = tuple(Task(lang, "tagging", n_classes=len(UPOS), labels=UPOS) for lang in LANGUAGES)
MULTI_INPUT = True
STAND_IN = None

ARCHIVE = "ud-treebanks-v2.5.tgz"
#: no publisher checksum; sha256 as registered for this release by pyconll's test corpora
#: (``tests/int/corpora.py``, "zip_hash" of ud-treebanks-v2.5.tgz); size unknown
SOURCES = (
    Source(
        url="https://lindat.mff.cuni.cz/repository/xmlui/bitstream/handle/11234/1-3105/ud-treebanks-v2.5.tgz",
        sha256="5ff973e44345a5f69b94cc1427158e14e851c967d58773cc2ac5a1d3adaca409",
        size=None,
    ),
)
MANUAL = (
    "UD v2.5: download ud-treebanks-v2.5.tgz from https://lindat.mff.cuni.cz/repository/xmlui/handle/11234/1-3105 "
    "and put it in the download directory, or unpack it and set the dataset's path to the unpacked "
    "ud-treebanks-v2.5 directory (holding UD_English-EWT/, UD_Chinese-GSD/, UD_Telugu-MTG/, UD_Vietnamese-VTB/, ...)"
)
UNPACKED = "ud-v2.5"
#: the main treebank of every language, whose three files must be present (check_root)
MAIN_TREEBANK = {
    "en": ("UD_English-EWT", "en_ewt"),
    "zh": ("UD_Chinese-GSD", "zh_gsd"),
    "te": ("UD_Telugu-MTG", "te_mtg"),
    "vi": ("UD_Vietnamese-VTB", "vi_vtb"),
}
#: split name of this package -> the word in UD's file names
UD_SPLIT = {"train": "train", "val": "dev", "test": "test"}


@dataclass(frozen=True)
class Options:
    """Tokenisation options: tokenizer (hub name or local directory), padded length (XTREME: 128) and what to
    do with sentences longer than ``max_length - 2`` pieces: ``split`` them into segments (XTREME) or
    ``truncate`` them (the words that do not fit are dropped and counted in :func:`describe`)."""

    tokenizer: str = DEFAULT_TOKENIZER
    max_length: int = 128
    long_sentences: Literal["split", "truncate"] = "split"

    def __post_init__(self) -> None:
        require(bool(self.tokenizer.strip()), "tokenizer", self.tokenizer, "must name a tokenizer or a directory")
        require(
            8 <= self.max_length <= MAX_POSITIONS, "max_length", self.max_length, f"must be in [8, {MAX_POSITIONS}]"
        )
        require(
            self.long_sentences in ("split", "truncate"),
            "long_sentences",
            self.long_sentences,
            "must be split or truncate",
        )


def resolve_root(root: Path) -> Path:
    """The ``ud-treebanks-v2.5`` directory: ``root`` itself, or ``root/ud-treebanks-v2.5`` when it holds it."""
    nested = root / "ud-treebanks-v2.5"
    return nested if nested.is_dir() else root


def main_files(lang: str) -> list[str]:
    """The main treebank's train/dev/test files of ``lang``, relative to the release directory."""
    directory, prefix = MAIN_TREEBANK[lang]
    return [f"{directory}/{prefix}-ud-{UD_SPLIT[split]}.conllu" for split in SPLITS]


def check_root(root: Path) -> None:
    """Refuse a UD tree whose main treebank files are missing (one :class:`DataError` line naming the first)."""
    base = resolve_root(Path(root))
    for lang in LANGUAGES:
        for relative in main_files(lang):
            if not (base / relative).is_file():
                raise DataError(f"{NAME}: {base / relative} is missing: {MANUAL}")


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download (checksummed) and unpack ``ud-treebanks-v2.5.tgz`` into ``directory``; return the release root."""
    directory = Path(directory)
    (source,) = sources
    archive = dl.fetch(source, directory, manual=MANUAL, dataset=NAME, progress=progress)
    root = resolve_root(dl.unpack(archive, directory / UNPACKED))
    check_root(root)
    return root


def treebank_files(base: Path, lang: str, split: str) -> list[Path]:
    """Every ``<lang>_<treebank>-ud-<split>.conllu`` of the release, sorted by file name (XTREME's merge)."""
    word = UD_SPLIT[split]
    found = [
        path
        for path in base.glob(f"*/{lang}_*-ud-{word}.conllu")
        if path.is_file() and path.name.split("_", 1)[0] == lang
    ]
    return sorted(found, key=lambda path: (path.name, str(path)))


def _normalise(form: str) -> str:
    """A word form without spaces and zero-width non-joiners (XTREME ``remove_empty_space``)."""
    return "".join(form.replace("\u200c", "").split(" "))


def read_conllu(path: Path) -> tuple[list[list[str]], list[list[int]], int]:
    """Read one CoNLL-U file: ``(sentences as word lists, UPOS indices, dropped sentences)``.

    Multiword token ranges and empty nodes are skipped; a ``_`` UPOS becomes :data:`IGNORE`; sentences whose
    text is withheld (all or all but one word ``_``) are dropped, as in XTREME.
    """
    index = {tag: i for i, tag in enumerate(UPOS)}
    sentences: list[list[str]] = []
    tags: list[list[int]] = []
    dropped = 0
    words: list[str] = []
    labels: list[int] = []

    def close() -> None:
        nonlocal dropped, words, labels
        if words:
            empty = sum(word == "_" for word in words)
            if empty == 0 or empty < len(words) - 1:
                sentences.append([_normalise(word) for word in words])
                tags.append(labels)
            else:
                dropped += 1
        words, labels = [], []

    try:
        with open(path, encoding="utf-8") as lines:
            for number, raw in enumerate(lines, start=1):
                line = raw.rstrip("\n").rstrip("\r")
                if not line.strip():
                    close()
                    continue
                if line.startswith("#"):
                    continue
                fields = line.split("\t")
                if len(fields) != 10:
                    raise DataError(f"{NAME}: {path} line {number} has {len(fields)} tab-separated fields, not 10")
                ident, form, upos = fields[0], fields[1], fields[3]
                if "-" in ident or "." in ident:
                    continue
                if upos == "_":
                    labels.append(IGNORE)
                elif upos in index:
                    labels.append(index[upos])
                else:
                    raise DataError(f"{NAME}: {path} line {number} has UPOS {upos!r}, not one of the 17 UD tags")
                words.append(form)
            close()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{NAME}: cannot read {path}: {err}") from None
    return sentences, tags, dropped


def read_split(base: Path, lang: str, split: str) -> tuple[list[list[str]], list[list[int]], list[dict[str, object]]]:
    """The merged sentences and tags of one language and split, with per-file provenance."""
    sentences: list[list[str]] = []
    tags: list[list[int]] = []
    files: list[dict[str, object]] = []
    for path in treebank_files(base, lang, split):
        words, labels, dropped = read_conllu(path)
        sentences += words
        tags += labels
        files.append(
            {
                "file": path.relative_to(base).as_posix(),
                "sha256": dl.sha256_file(path),
                "sentences": len(words),
                "dropped_sentences": dropped,
            }
        )
    if not sentences:
        raise DataError(f"{NAME}: no {UD_SPLIT[split]} sentence of language {lang} under {base}: {MANUAL}")
    return sentences, tags, files


def _encode(
    tokenizer: object, sentences: list[list[str]], tags: list[list[int]], options: Options
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Tokenise one language's split: ``(x, y, source sentence index, dropped words)``."""
    if options.long_sentences == "split":
        counts = piece_counts(tokenizer, [w for words in sentences for w in words])
        segments, origin = segment(sentences, counts, options.max_length)
        seg_tags = [tags[s][start : start + len(words)] for words, (s, start) in zip(segments, origin, strict=True)]
        x, y, dropped = encode_words(tokenizer, segments, seg_tags, options.max_length)
        index = torch.tensor([s for s, _ in origin], dtype=torch.int64)
    else:
        x, y, dropped = encode_words(tokenizer, sentences, tags, options.max_length)
        index = torch.arange(len(sentences), dtype=torch.int64)
    return x, y, index, dropped


def build(options: Options, root: Path | None) -> dict[str, tuple[Split, ...]]:
    """Build train/val/test (RW Sec. 5.3): one ``Split`` per language, in :data:`TASKS` order.

    Task ``t``'s split holds ``x`` int32 ``[N x 3 x max_length]``, ``y = (tags int16 [N x max_length],)``
    with a word's UPOS index on its first piece and :data:`IGNORE` elsewhere, and ``source`` int64
    ``[N x 2]``: (0 train / 1 dev / 2 test, index of the sentence in the merged split); segments of one long
    sentence share it. Validation and test are UD's own dev and test files; nothing is carved out.
    """
    if root is None:
        raise DataError(f"{NAME} needs its raw data: {MANUAL}")
    base = resolve_root(Path(root))
    check_root(base)
    tokenizer = load_tokenizer(options.tokenizer, dataset=NAME)
    splits: dict[str, list[Split]] = {split: [] for split in SPLITS}
    for task in TASKS:
        for code, split in enumerate(SPLITS):
            sentences, tags, _ = read_split(base, task.name, split)
            x, y, index, _ = _encode(tokenizer, sentences, tags, options)
            check_target(task, y, len(index))
            source = torch.stack([torch.full_like(index, code), index], dim=1)
            splits[split].append(Split(x=x, y=(y,), source=source))
    return {split: tuple(parts) for split, parts in splits.items()}


def describe(options: Options, root: Path | None) -> dict[str, object]:
    """Provenance: the merged files per language and split (sha256, sentences), example and dropped-word counts,
    the tokenizer."""
    if root is None:
        raise DataError(f"{NAME} needs its raw data: {MANUAL}")
    base = resolve_root(Path(root))
    tokenizer = load_tokenizer(options.tokenizer, dataset=NAME)
    languages: dict[str, dict[str, object]] = {}
    for lang in LANGUAGES:
        languages[lang] = {}
        for split in SPLITS:
            sentences, tags, files = read_split(base, lang, split)
            x, _, _, dropped = _encode(tokenizer, sentences, tags, options)
            languages[lang][split] = {
                "files": files,
                "sentences": len(sentences),
                "examples": int(x.shape[0]),
                "words": sum(len(words) for words in sentences),
                "dropped_words": dropped,
            }
    return {
        "source": SOURCES[0].url,
        "archive_sha256": SOURCES[0].sha256,
        "languages": languages,
        "tokenizer": describe_tokenizer(tokenizer),
        "max_length": options.max_length,
        "long_sentences": options.long_sentences,
        "tags": list(UPOS),
        "stand_in": STAND_IN,
    }
