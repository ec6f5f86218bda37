"""``paraphrase_standin``: a synthetic four-language paraphrase problem standing in for PAWS-X (RW Sec. 5.3).

RW Sec. 5.3 uses PAWS-X in English, Mandarin, German and Spanish, one task per language, each with its own
inputs, and mBERT as the shared encoder. This stand-in generates sentence pairs from a small seeded grammar
in four synthetic languages (:mod:`mtlrepro.data._synthetic_language`) following PAWS's construction: a
positive pair re-expresses a meaning (synonyms, legal reordering); a negative pair swaps agent and patient,
keeping the words. Inputs are BERT-style ``[CLS] s1 [SEP] s2 [SEP]`` over a word-level vocabulary of
:data:`VOCAB_SIZE` ids; targets are 0/1 labels (1: paraphrase).

Splits: ``n_train``/``n_val``/``n_test`` examples per language (default 600/200/200, a seeded 60/20/20 of
1,000 distinct meanings; no meaning is shared between splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtlrepro.data import Split
from mtlrepro.data import _synthetic_language as language
from mtlrepro.data.download import Source

NAME = "paraphrase_standin"
LANGUAGES = ("en", "zh", "de", "es")
TASKS = language.paraphrase_tasks(LANGUAGES)
ENCODER = "small_bert"
STAND_IN = (
    "stand-in for PAWS-X en/zh/de/es (RW Sec. 5.3): synthetic paraphrase pairs from a seeded four-language "
    "grammar, not the paper's data"
)
MULTI_INPUT = True
SOURCES: tuple[Source, ...] = ()  # generated: nothing to download
MANUAL = None
VOCAB_SIZE = language.vocab_size(LANGUAGES)
ENCODER_OPTIONS = {"vocab_size": VOCAB_SIZE}
"""What the encoder must know of the data: the size of the word-level vocabulary."""
#: the longest pair: [CLS] s1 [SEP] s2 [SEP]
MIN_LENGTH = 2 * language.MAX_WORDS + 3


@dataclass(frozen=True)
class Options:
    """Examples per language and split, the padded input length, and the seed of the grammar and the data."""

    n_train: int = 600
    n_val: int = 200
    n_test: int = 200
    max_length: int = 32
    generation_seed: int = 0

    def __post_init__(self) -> None:
        language.check_sizes(self, MIN_LENGTH)


def _sizes(options: Options) -> language.Sizes:
    return language.Sizes(options.n_train, options.n_val, options.n_test)


def build(options: Options, root: Path | None = None) -> dict[str, tuple[Split, ...]]:
    """Per split, one ``Split`` per language: ``x`` int32 [N x 3 x max_length], ``y`` = (int64 0/1 [N],),
    ``source`` int64 [N x 1] (the example's index among its language's generated meanings). Pure and seeded."""
    return language.build_paraphrase(LANGUAGES, NAME, _sizes(options), options.max_length, options.generation_seed)


def describe(options: Options, root: Path | None = None) -> dict[str, object]:
    """Provenance of the generated data (grammar, vocabulary size, sizes, versions)."""
    return language.describe(LANGUAGES, _sizes(options), options.max_length, options.generation_seed, STAND_IN)
