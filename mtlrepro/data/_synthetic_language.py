"""A small seeded multilingual grammar: the offline stand-in for XTREME's PAWS-X and UD-POS (RW Sec. 5.3).

RW Sec. 5.3 trains one mBERT encoder on four languages at once, each language a task with its own inputs:
paraphrase identification on PAWS-X (en, zh, de, es) and part-of-speech tagging on UD v2.5 (en, zh, te, vi).
This module generates a problem of the same shape without any download:

- **meanings**: an event ``agent VERB patient`` with an optional adverb and an optional prepositional phrase;
  a noun phrase is a proper name, or a determiner, an optional adjective and a noun (concepts drawn
  uniformly from a small inventory, :data:`INVENTORY`);
- **languages** (:data:`LANGUAGES`): disjoint vocabularies of words made of each language's own syllables
  (seeded), and their own word order: subject-verb-object or subject-object-verb, adjective before or after
  its noun, prepositions or postpositions. The stand-ins follow the typology of the languages they stand in
  for (en, zh, vi, es: SVO; de (verb-final clause), te: SOV; es, vi: adjective after the noun; te:
  postpositions); they share nothing else with them;
- **synonyms**: every adjective, noun, verb and adverb concept has two words in each language;
- **tags**: each word's Universal POS tag (:data:`TAGS`) is known from the grammar;
- **paraphrase pairs** follow PAWS's construction (Zhang et al., 2019; PAWS-X, Yang et al., 2019): a
  *positive* pair re-expresses the first sentence's meaning (synonyms redrawn and a legal reordering: the
  adverb or the prepositional phrase moved to the front); a *negative* pair is that same re-expression with
  agent and patient swapped, so its words are exactly those of the positive second sentence while who did
  what to whom differs.

Encoding, as BERT lays it out (Devlin et al., 2019) so the same model code serves both problems: one token
per word (ids 0 ``[PAD]``, 1 ``[CLS]``, 2 ``[SEP]``, 3 ``[UNK]``, then ``.`` and every language's words),
``x`` int32 ``[N x 3 x L]`` = (input_ids, token_type_ids, attention_mask), ``[CLS] s [SEP]`` for a sentence
and ``[CLS] s1 [SEP] s2 [SEP]`` (token type 1 from ``s2`` on) for a pair. Tag targets are int16 ``[N x L]``
with :data:`mtlrepro.tasks.IGNORE` at ``[CLS]``, ``[SEP]`` and padding, as XTREME scores only words.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor

from mtlrepro.data import SPLITS, Split
from mtlrepro.options import require
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import IGNORE, Task, check_target

#: the Universal POS tags (UD v2) the grammar produces, in label order
TAGS = ("ADJ", "ADP", "ADV", "DET", "NOUN", "PROPN", "PUNCT", "VERB")
TAG_ID = {tag: i for i, tag in enumerate(TAGS)}
SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
PAD, CLS, SEP, UNK = range(4)
PERIOD = "."
#: number of concepts per category, and of words per concept (synonyms) in every language
INVENTORY: dict[str, tuple[int, int]] = {
    "DET": (3, 1),
    "ADJ": (12, 2),
    "NOUN": (24, 2),
    "PROPN": (8, 1),
    "VERB": (12, 2),
    "ADV": (6, 2),
    "ADP": (5, 1),
}
#: most words of one sentence: NP (3) + verb + NP (3) + adverb + PP (1 + 3) + period
MAX_WORDS = 13
#: in the tagging stand-in, verb concepts below this index are spelled, in their first wording, as the noun of
#: the same index (English "run", "book"): their tag follows from the word's place in the sentence, not from the
#: word alone, as UD-POS's noun/verb homographs do
HOMOGRAPHS = 6


@dataclass(frozen=True)
class Language:
    """A synthetic language: its code (the language it stands in for), syllables and word order."""

    code: str
    onsets: tuple[str, ...]
    vowels: tuple[str, ...]
    verb_final: bool  # SOV (else SVO)
    adjective_after: bool  # noun adjective (else adjective noun)
    postpositions: bool  # NP ADP (else ADP NP)


LANGUAGES: dict[str, Language] = {
    "en": Language(
        "en", ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t"), ("a", "e", "i", "o"), False, False, False
    ),
    "zh": Language(
        "zh", ("zh", "sh", "ch", "x", "q", "j", "h", "w"), ("ao", "ei", "ou", "ia", "u"), False, False, False
    ),
    "de": Language(
        "de", ("sch", "pf", "kr", "st", "gr", "br", "fl", "z"), ("ä", "ö", "ü", "ie", "au"), True, False, False
    ),
    "es": Language("es", ("ll", "ñ", "rr", "c", "v", "b", "d", "m"), ("ue", "io", "á", "é", "ó"), False, True, False),
    "te": Language(
        "te", ("tt", "dd", "nn", "kk", "v", "y", "r", "ll"), ("aa", "ii", "uu", "ee", "oo"), True, False, True
    ),
    "vi": Language(
        "vi", ("ng", "nh", "th", "tr", "ph", "kh", "gi", "qu"), ("ơ", "ư", "ă", "â", "ê"), False, True, False
    ),
}


# --------------------------------------------------------------------------- lexicon and vocabulary


@cache
def lexicon(code: str, seed: int) -> dict[str, tuple[tuple[str, ...], ...]]:
    """The words of language ``code``: category -> concept -> synonyms; seeded, disjoint across languages.

    Words are 2 or 3 syllables (onset + vowel) of the language's own inventory; a word already used by this
    or an earlier language (in :data:`LANGUAGES` order) is redrawn, so vocabularies are disjoint.
    """
    taken: set[str] = set()
    for other in LANGUAGES:
        if other == code:
            break
        taken |= {w for concepts in lexicon(other, seed).values() for words in concepts for w in words}
    language = LANGUAGES[code]
    rng = np.random.default_rng(derive_seed(seed, f"lexicon/{code}"))
    out: dict[str, tuple[tuple[str, ...], ...]] = {}
    for category, (n_concepts, n_synonyms) in INVENTORY.items():
        concepts = []
        for _ in range(n_concepts):
            words: list[str] = []
            while len(words) < n_synonyms:
                k = int(rng.integers(2, 4))
                word = "".join(
                    language.onsets[int(rng.integers(len(language.onsets)))]
                    + language.vowels[int(rng.integers(len(language.vowels)))]
                    for _ in range(k)
                )
                if word not in taken:
                    taken.add(word)
                    words.append(word)
            concepts.append(tuple(words))
        out[category] = tuple(concepts)
    return out


def vocab_size(codes: Sequence[str]) -> int:
    """Number of token ids for the languages ``codes``: specials, the period and every word."""
    return len(SPECIALS) + 1 + len(codes) * sum(n * s for n, s in INVENTORY.values())


@cache
def vocabulary(codes: tuple[str, ...], seed: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """Token list (index = id) of ``codes``'s languages, and each word's tag (category)."""
    tokens = [*SPECIALS, PERIOD]
    tag_of = {PERIOD: "PUNCT"}
    for code in codes:
        for category, concepts in lexicon(code, seed).items():
            for words in concepts:
                tokens.extend(words)
                tag_of.update(dict.fromkeys(words, category))
    assert len(tokens) == len(set(tokens)) == vocab_size(codes)
    return tuple(tokens), tag_of


# --------------------------------------------------------------------------- meanings and sentences

NounPhrase = tuple[int, int, int] | tuple[int]
"""``(det, adj, noun)`` (``adj`` -1 for none) or ``(name,)``: concept indices."""


@dataclass(frozen=True)
class Meaning:
    """Who did what to whom: agent, verb, patient, optional adverb (-1: none), optional ``(adp, NP)``."""

    agent: NounPhrase
    verb: int
    patient: NounPhrase
    adverb: int = -1
    pp: tuple[int, NounPhrase] | None = None

    def swapped(self) -> Meaning:
        """The same words with agent and patient exchanged (PAWS's word swapping)."""
        return Meaning(self.patient, self.verb, self.agent, self.adverb, self.pp)


@dataclass(frozen=True)
class Style:
    """How a meaning is worded: synonym index per (category, concept), adverb and PP placement."""

    synonyms: Mapping[tuple[str, int], int]
    adverb_front: bool = False
    pp_front: bool = False


def _noun_phrase(rng: np.random.Generator, noun_excluded: int = -1) -> NounPhrase:
    if rng.random() < 0.25:
        return (int(rng.integers(INVENTORY["PROPN"][0])),)
    adj = int(rng.integers(INVENTORY["ADJ"][0])) if rng.random() < 0.5 else -1
    noun = int(rng.integers(INVENTORY["NOUN"][0]))
    while noun == noun_excluded:
        noun = int(rng.integers(INVENTORY["NOUN"][0]))
    return (int(rng.integers(INVENTORY["DET"][0])), adj, noun)


def random_meaning(rng: np.random.Generator) -> Meaning:
    """A meaning with agent and patient of different heads (so swapping them changes the meaning)."""
    agent = _noun_phrase(rng)
    patient = _noun_phrase(rng)
    while patient[-1] == agent[-1] and len(patient) == len(agent):  # same head noun or same name
        patient = _noun_phrase(rng)
    verb = int(rng.integers(INVENTORY["VERB"][0]))
    adverb = int(rng.integers(INVENTORY["ADV"][0])) if rng.random() < 0.5 else -1
    pp = (int(rng.integers(INVENTORY["ADP"][0])), _noun_phrase(rng)) if rng.random() < 0.5 else None
    return Meaning(agent, verb, patient, adverb, pp)


def _concepts(meaning: Meaning) -> list[tuple[str, int]]:
    """Every (category, concept) slot a meaning's wording uses."""
    out: list[tuple[str, int]] = [("VERB", meaning.verb)]
    phrases = [meaning.agent, meaning.patient] + ([meaning.pp[1]] if meaning.pp else [])
    for np_ in phrases:
        if len(np_) == 1:
            out.append(("PROPN", np_[0]))
        else:
            det, adj, noun = np_
            out += [("DET", det), ("NOUN", noun)] + ([("ADJ", adj)] if adj >= 0 else [])
    if meaning.adverb >= 0:
        out.append(("ADV", meaning.adverb))
    if meaning.pp:
        out.append(("ADP", meaning.pp[0]))
    return out


def random_style(meaning: Meaning, rng: np.random.Generator) -> Style:
    """Synonyms drawn uniformly, adverb and PP each at the front with probability 1/2 (when present)."""
    synonyms = {slot: int(rng.integers(INVENTORY[slot[0]][1])) for slot in dict.fromkeys(_concepts(meaning))}
    return Style(synonyms, bool(rng.random() < 0.5), bool(rng.random() < 0.5))


def realize(meaning: Meaning, style: Style, code: str, seed: int, homographs: bool = False) -> list[tuple[str, str]]:
    """The sentence (word, UPOS tag) expressing ``meaning`` in language ``code`` worded by ``style``.

    With ``homographs``, a verb below :data:`HOMOGRAPHS` in its first wording is spelled as the noun of the same
    index (its tag stays VERB).
    """
    language, words = LANGUAGES[code], lexicon(code, seed)

    def word(category: str, concept: int) -> tuple[str, str]:
        synonym = style.synonyms.get((category, concept), 0)
        if homographs and category == "VERB" and concept < HOMOGRAPHS and synonym == 0:
            return words["NOUN"][concept][0], category
        return words[category][concept][synonym], category

    def noun_phrase(np_: NounPhrase) -> list[tuple[str, str]]:
        if len(np_) == 1:
            return [word("PROPN", np_[0])]
        det, adj, noun = np_
        modifier = [word("ADJ", adj)] if adj >= 0 else []
        head = [word("NOUN", noun)]
        return [word("DET", det), *(head + modifier if language.adjective_after else modifier + head)]

    subject, verb, obj = noun_phrase(meaning.agent), [word("VERB", meaning.verb)], noun_phrase(meaning.patient)
    clause = subject + (obj + verb if language.verb_final else verb + obj)
    pp: list[tuple[str, str]] = []
    if meaning.pp is not None:
        adp, inner = [word("ADP", meaning.pp[0])], noun_phrase(meaning.pp[1])
        pp = inner + adp if language.postpositions else adp + inner
    adverb = [word("ADV", meaning.adverb)] if meaning.adverb >= 0 else []
    front = (adverb if style.adverb_front else []) + (pp if style.pp_front else [])
    back = (pp if not style.pp_front else []) + (adverb if not style.adverb_front else [])
    return [*front, *clause, *back, (PERIOD, "PUNCT")]


def paraphrase(meaning: Meaning, style: Style, rng: np.random.Generator) -> Style:
    """A different wording of the same meaning: synonyms redrawn and a legal reordering (PAWS positives).

    The new style differs from ``style`` in placement when the meaning has an adverb or a PP, else in at
    least one synonym (every meaning has a verb with two synonyms), so the two sentences always differ.
    """
    while True:
        new = random_style(meaning, rng)
        moved = (meaning.adverb >= 0 and new.adverb_front != style.adverb_front) or (
            meaning.pp is not None and new.pp_front != style.pp_front
        )
        if moved or (meaning.adverb < 0 and meaning.pp is None and new.synonyms != style.synonyms):
            return new


# --------------------------------------------------------------------------- encoding


def encode(sentences: Sequence[Sequence[str]], ids: Mapping[str, int], length: int) -> tuple[list[int], ...]:
    """BERT's layout of one sentence or a pair: (input_ids, token_type_ids, attention_mask), padded to ``length``."""
    tokens, types = [CLS], [0]
    for k, sentence in enumerate(sentences):
        tokens += [ids.get(w, UNK) for w in sentence] + [SEP]
        types += [k] * (len(sentence) + 1)
    if len(tokens) > length:
        raise ValueError(f"{len(tokens)} tokens do not fit max_length={length}")
    pad = length - len(tokens)
    return tokens + [PAD] * pad, types + [0] * pad, [1] * len(tokens) + [0] * pad


def _distinct_meanings(rng: np.random.Generator, n: int) -> list[Meaning]:
    seen: dict[Meaning, None] = {}
    while len(seen) < n:
        seen.setdefault(random_meaning(rng))
    return list(seen)


@dataclass(frozen=True)
class Sizes:
    """Examples per language and split."""

    n_train: int
    n_val: int
    n_test: int

    def of(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


def check_sizes(options: object, minimum_length: int) -> None:
    """For an options dataclass's ``__post_init__``: positive sizes, ``max_length`` large enough."""
    for name in ("n_train", "n_val", "n_test"):
        value = getattr(options, name)
        require(value > 0, name, value, "must be > 0")
    length = options.max_length  # type: ignore[attr-defined]
    require(length >= minimum_length, "max_length", length, f"must be >= {minimum_length} (the longest input)")


Row = tuple[tuple[list[int], ...], Tensor]
"""One encoded example: (input_ids, token_type_ids, attention_mask) and its target."""


def _split(
    codes: Sequence[str], name: str, sizes: Sizes, seed: int, make: Callable[[Meaning, np.random.Generator, str], Row]
) -> dict[str, tuple[Split, ...]]:
    """Per language: draw distinct meanings, turn each into one example with ``make(meaning, rng, code)``,
    and cut them into train/val/test in order (the meanings are i.i.d., so this is a seeded random split)."""
    per_split: dict[str, list[Split]] = {split: [] for split in SPLITS}
    for code in codes:
        rng = np.random.default_rng(derive_seed(seed, f"{name}/{code}"))
        total = sizes.n_train + sizes.n_val + sizes.n_test
        rows = [make(m, rng, code) for m in _distinct_meanings(rng, total)]
        x = torch.tensor([r[0] for r in rows], dtype=torch.int32)
        y = torch.stack([r[1] for r in rows])
        start = 0
        for split in SPLITS:
            stop = start + sizes.of(split)
            source = torch.arange(start, stop, dtype=torch.int64).unsqueeze(1)
            per_split[split].append(Split(x[start:stop].clone(), (y[start:stop].clone(),), source))
            start = stop
    return {split: tuple(parts) for split, parts in per_split.items()}


def build_tagging(
    codes: tuple[str, ...], name: str, sizes: Sizes, length: int, seed: int
) -> dict[str, tuple[Split, ...]]:
    """Tagging splits: ``[CLS] sentence [SEP]`` and the UPOS tag of every word (int16, -1 elsewhere)."""
    tokens, _ = vocabulary(codes, seed)
    ids = {w: i for i, w in enumerate(tokens)}

    def make(meaning: Meaning, rng: np.random.Generator, code: str) -> Row:
        sentence = realize(meaning, random_style(meaning, rng), code, seed, homographs=True)
        x = encode([[w for w, _ in sentence]], ids, length)
        y = torch.full((length,), IGNORE, dtype=torch.int16)
        y[1 : 1 + len(sentence)] = torch.tensor([TAG_ID[t] for _, t in sentence], dtype=torch.int16)
        return x, y

    splits = _split(codes, name, sizes, seed, make)
    task = tagging_tasks(codes)
    for parts in splits.values():
        for t, part in zip(task, parts, strict=True):
            check_target(t, part.y[0], len(part))
    return splits


def paraphrase_example(
    meaning: Meaning, rng: np.random.Generator, code: str, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """(first sentence, positive second sentence, negative second sentence) for one meaning (PAWS)."""
    style = random_style(meaning, rng)
    other = paraphrase(meaning, style, rng)
    first = [w for w, _ in realize(meaning, style, code, seed)]
    positive = [w for w, _ in realize(meaning, other, code, seed)]
    negative = [w for w, _ in realize(meaning.swapped(), other, code, seed)]
    return first, positive, negative


def build_paraphrase(
    codes: tuple[str, ...], name: str, sizes: Sizes, length: int, seed: int
) -> dict[str, tuple[Split, ...]]:
    """Paraphrase splits: ``[CLS] s1 [SEP] s2 [SEP]``, label 1 for a paraphrase (probability 1/2), 0 else."""
    tokens, _ = vocabulary(codes, seed)
    ids = {w: i for i, w in enumerate(tokens)}

    def make(meaning: Meaning, rng: np.random.Generator, code: str) -> Row:
        first, positive, negative = paraphrase_example(meaning, rng, code, seed)
        label = int(rng.random() < 0.5)
        return encode([first, positive if label else negative], ids, length), torch.tensor(label, dtype=torch.int64)

    splits = _split(codes, name, sizes, seed, make)
    tasks = paraphrase_tasks(codes)
    for parts in splits.values():
        for t, part in zip(tasks, parts, strict=True):
            check_target(t, part.y[0], len(part))
    return splits


def tagging_tasks(codes: Sequence[str]) -> tuple[Task, ...]:
    """One UPOS tagging task per language, named by the language code (RW Table 3)."""
    return tuple(Task(code, "tagging", n_classes=len(TAGS), labels=TAGS) for code in codes)


def paraphrase_tasks(codes: Sequence[str]) -> tuple[Task, ...]:
    """One binary paraphrase classification task (2 classes, as XTREME's PAWS-X) per language."""
    return tuple(Task(code, "classification", n_classes=2, labels=("not_paraphrase", "paraphrase")) for code in codes)


def describe(codes: tuple[str, ...], sizes: Sizes, length: int, seed: int, stand_in: str) -> dict[str, object]:
    """Provenance of generated data: the grammar's inventory, vocabulary size, sizes and versions."""
    return {
        "source": "generated by mtlrepro.data._synthetic_language (no download)",
        "languages": {
            c: {
                "verb_final": LANGUAGES[c].verb_final,
                "adjective_after": LANGUAGES[c].adjective_after,
                "postpositions": LANGUAGES[c].postpositions,
            }
            for c in codes
        },
        "inventory": {k: list(v) for k, v in INVENTORY.items()},
        "tags": list(TAGS),
        "vocab_size": vocab_size(codes),
        "max_length": length,
        "n_per_language": {split: sizes.of(split) for split in SPLITS},
        "generation_seed": seed,
        "versions": {
            "python": platform.python_version(),
            "numpy": str(np.__version__),
            "torch": str(torch.__version__),
        },
        "stand_in": stand_in,
    }
