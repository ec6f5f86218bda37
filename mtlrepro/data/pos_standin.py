"""``pos_standin``: a synthetic four-language POS-tagging problem standing in for UD-POS (RW Sec. 5.3).

RW Sec. 5.3 uses the Universal Dependencies v2.5 treebanks of XTREME in English, Mandarin, Telugu and
Vietnamese, one task per language, each with its own inputs, and mBERT as the shared encoder. This stand-in
generates sentences with known Universal POS tags from a small seeded grammar in four synthetic languages
with their own words and word orders (:mod:`mtlrepro.data._synthetic_language`). Inputs are BERT-style
``[CLS] s [SEP]`` over a word-level vocabulary of :data:`VOCAB_SIZE` ids; targets are one tag per word
(int16, -1 at ``[CLS]``, ``[SEP]`` and padding).

Splits: ``n_train``/``n_val``/``n_test`` sentences per language (default 600/200/200, a seeded 60/20/20 of
1,000 distinct meanings; no meaning is shared between splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtlrepro.data import Split
from mtlrepro.data import _synthetic_language as language
from mtlrepro.data.download import Source

NAME = "pos_standin"
LANGUAGES = ("en", "zh", "te", "vi")
TASKS = language.tagging_tasks(LANGUAGES)
ENCODER = "small_bert"
STAND_IN = (
    "stand-in for UD-POS en/zh/te/vi (RW Sec. 5.3): synthetic tagged sentences from a seeded four-language "
    "grammar, not the paper's data"
)
MULTI_INPUT = True
SOURCES: tuple[Source, ...] = ()  # generated: nothing to download
MANUAL = None
VOCAB_SIZE = language.vocab_size(LANGUAGES)
ENCODER_OPTIONS = {"vocab_size": VOCAB_SIZE}
"""What the encoder must know of the data: the size of the word-level vocabulary."""
#: the longest sentence: [CLS] s [SEP]
MIN_LENGTH = language.MAX_WORDS + 2


@dataclass(frozen=True)
class Options:
    """Sentences per language and split, the padded input length, and the seed of the grammar and the data."""

    n_train: int = 600
    n_val: int = 200
    n_test: int = 200
    max_length: int = 16
    generation_seed: int = 0

    def __post_init__(self) -> None:
        language.check_sizes(self, MIN_LENGTH)


def _sizes(options: Options) -> language.Sizes:
    return language.Sizes(options.n_train, options.n_val, options.n_test)


def build(options: Options, root: Path | None = None) -> dict[str, tuple[Split, ...]]:
    """Per split, one ``Split`` per language: ``x`` int32 [N x 3 x max_length], ``y`` = (int16 tags
    [N x max_length],), ``source`` int64 [N x 1] (the sentence's index among its language's meanings)."""
    return language.build_tagging(LANGUAGES, NAME, _sizes(options), options.max_length, options.generation_seed)


def describe(options: Options, root: Path | None = None) -> dict[str, object]:
    """Provenance of the generated data (grammar, vocabulary size, sizes, versions)."""
    return language.describe(LANGUAGES, _sizes(options), options.max_length, options.generation_seed, STAND_IN)
