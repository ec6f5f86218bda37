"""Tokenisation for the XTREME problems (PAWS-X, UD-POS): loading the tokenizer and word-level label alignment.

RW Sec. 5.3 uses multilingual BERT from the ``transformers`` library as the shared encoder, following XTREME
(Hu et al., 2020). Inputs are stored as int32 ``[N x 3 x L]``: input ids, token type ids and attention mask,
padded to ``max_length`` (XTREME's default 128).

- Sentence pairs (PAWS-X) are encoded as ``[CLS] a [SEP] b [SEP]`` with token types 0/1 and the longer
  sentence truncated first (XTREME ``run_classify.py``: ``encode_plus`` with its default ``longest_first``).
- Tagging (UD-POS) follows XTREME ``third_party/run_tag.py``: every word is split into word pieces; the first
  piece carries the word's label, the other pieces, ``[CLS]``, ``[SEP]`` and padding carry
  :data:`~mtlrepro.tasks.IGNORE`. A word that yields no piece at all becomes the tokenizer's unknown token.
  A sentence longer than ``max_length - 2`` pieces is either split into consecutive segments at word
  boundaries (XTREME ``utils_preprocess.py``, ``udpos_tokenize_preprocess``) or truncated, dropping the words
  that do not fit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlrepro.errors import DataError
from mtlrepro.tasks import IGNORE

DEFAULT_TOKENIZER = "bert-base-multilingual-cased"
#: special tokens around one sentence: [CLS] ... [SEP]
SPECIAL = 2
#: longest input mBERT accepts (its position embeddings)
MAX_POSITIONS = 512


def _how_to_provide(name: str, dataset: str) -> str:
    return (
        f"set `datasets.{dataset}.options.tokenizer` to a local directory holding the tokenizer's files "
        f"(tokenizer_config.json with vocab.txt or tokenizer.json), or download {name!r} into the Hugging Face "
        f'cache on a connected machine (python -c "from transformers import AutoTokenizer; '
        f"AutoTokenizer.from_pretrained('{name}')\") and copy the cache (HF_HOME) here"
    )


def _offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``), so only local files can be used."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def load_tokenizer(name_or_path: str, *, dataset: str) -> Any:
    """The fast tokenizer ``name_or_path`` (a hub name, or a local directory) via ``AutoTokenizer``.

    A hub name is looked up in the local Hugging Face cache first and only then downloaded. Raises one
    :class:`DataError` line naming the tokenizer and how to provide it when it cannot be loaded (offline and
    not cached, a missing directory, unreadable files).
    """
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()
    try:
        if looks_local:
            if not path.is_dir():
                raise DataError(
                    f"tokenizer directory {path} does not exist: {_how_to_provide(DEFAULT_TOKENIZER, dataset)}"
                )
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        else:
            try:
                tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
            except OSError:
                if _offline():
                    raise DataError(
                        f"tokenizer {name_or_path!r} is not in the Hugging Face cache and the hub is offline "
                        f"(HF_HUB_OFFLINE): {_how_to_provide(name_or_path, dataset)}"
                    ) from None
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise DataError(
            f"cannot load tokenizer {name_or_path!r} ({type(err).__name__}: {reason}): "
            f"{_how_to_provide(name_or_path if not looks_local else DEFAULT_TOKENIZER, dataset)}"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"tokenizer {name_or_path!r} has no fast (Rust) implementation, needed for word alignment")
    return tokenizer


def describe_tokenizer(tokenizer: Any) -> dict[str, Any]:
    """Provenance of a tokenizer: its name or path, class, vocabulary size and a sha256 of its vocabulary."""
    import tokenizers
    import transformers

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return {
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "vocab_size": len(vocab),
        "vocab_sha256": digest,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
    }


def _stack(encoding: Any) -> Tensor:
    """int32 ``[N x 3 x L]`` (input ids, token type ids, attention mask) from a numpy ``BatchEncoding``."""
    parts = [np.asarray(encoding[key], dtype=np.int32) for key in ("input_ids", "token_type_ids", "attention_mask")]
    return torch.from_numpy(np.ascontiguousarray(np.stack(parts, axis=1)))


def encode_pairs(tokenizer: Any, first: Sequence[str], second: Sequence[str], max_length: int) -> Tensor:
    """Encode sentence pairs as int32 ``[N x 3 x max_length]``, truncating the longer sentence first."""
    if not first:
        return torch.zeros(0, 3, max_length, dtype=torch.int32)
    encoding = tokenizer(
        list(first),
        list(second),
        max_length=max_length,
        truncation="longest_first",
        padding="max_length",
        return_token_type_ids=True,
        return_attention_mask=True,
        return_tensors="np",
    )
    return _stack(encoding)


def piece_counts(tokenizer: Any, words: Sequence[str]) -> dict[str, int]:
    """Number of word pieces of every distinct word (without special tokens)."""
    distinct = sorted(set(words))
    if not distinct:
        return {}
    encoded = tokenizer(distinct, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return {word: len(ids) for word, ids in zip(distinct, encoded, strict=True)}


def segment(
    sentences: Sequence[Sequence[str]], counts: dict[str, int], max_length: int
) -> tuple[list[list[str]], list[tuple[int, int]]]:
    """Split sentences longer than ``max_length - 2`` pieces into consecutive segments at word boundaries.

    XTREME ``utils_preprocess.py`` (``udpos_tokenize_preprocess``): words are added to the current segment
    while its piece count stays within ``max_length - 2``; a word that would overflow it starts a new
    segment. A single word longer than that on its own becomes the unknown token (as in XTREME). Returns the
    segments and, for each, ``(sentence index, index of its first word)``.
    """
    budget = max_length - SPECIAL
    out: list[list[str]] = []
    origin: list[tuple[int, int]] = []
    for s, words in enumerate(sentences):
        start, used = 0, 0
        for w, word in enumerate(words):
            n = max(counts.get(word, 1), 1)
            n = 1 if n > budget else n
            if used + n > budget and w > start:
                out.append(list(words[start:w]))
                origin.append((s, start))
                start, used = w, 0
            used += n
        out.append(list(words[start:]))
        origin.append((s, start))
    return out, origin


def encode_words(
    tokenizer: Any, sentences: Sequence[Sequence[str]], labels: Sequence[Sequence[int]], max_length: int
) -> tuple[Tensor, Tensor, int]:
    """Encode pre-split sentences with one label per word (XTREME ``run_tag.py``'s alignment).

    Returns ``x`` int32 ``[N x 3 x max_length]``, targets int16 ``[N x max_length]`` (the word's label on its
    first piece, :data:`IGNORE` elsewhere) and the number of words dropped because they did not fit in
    ``max_length`` (truncation). Words that yield no piece (e.g. control characters only) or more pieces than
    fit on their own are replaced by the unknown token first, as XTREME does.
    """
    n = len(sentences)
    if n == 0:
        return torch.zeros(0, 3, max_length, dtype=torch.int32), torch.zeros(0, max_length, dtype=torch.int16), 0
    counts = piece_counts(tokenizer, [w for words in sentences for w in words])
    budget = max_length - SPECIAL
    unk = tokenizer.unk_token
    cleaned = [[w if 0 < counts[w] <= budget else unk for w in words] for words in sentences]
    encoding = tokenizer(
        cleaned,
        is_split_into_words=True,
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_token_type_ids=True,
        return_attention_mask=True,
        return_tensors="np",
    )
    x = _stack(encoding)
    y = np.full((n, max_length), IGNORE, dtype=np.int16)
    dropped = 0
    for i, words in enumerate(labels):
        previous = None
        kept = 0
        for position, word in enumerate(encoding.word_ids(i)):
            if word is not None and word != previous:
                y[i, position] = words[word]
                kept += 1
            previous = word
        dropped += len(words) - kept
    return x, torch.from_numpy(y), dropped
