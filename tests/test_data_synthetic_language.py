"""Tests of the generated multilingual stand-ins for PAWS-X and UD-POS (RW Sec. 5.3)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from mtlrepro.data import DATASETS, SPLITS, Split, load, paraphrase_standin, pos_standin, prepare
from mtlrepro.data import _synthetic_language as language
from mtlrepro.errors import ConfigError
from mtlrepro.options import build_options
from mtlrepro.tasks import IGNORE, check_target

MODULES = (paraphrase_standin, pos_standin)
SMALL = {"n_train": 120, "n_val": 40, "n_test": 40}


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, tuple[Split, ...]]]:
    return {m.NAME: m.build(m.Options(**SMALL)) for m in MODULES}


def _words(module: ModuleType) -> tuple[tuple[str, ...], dict[str, str]]:
    return language.vocabulary(module.LANGUAGES, 0)


def _concept_of(code: str) -> dict[str, tuple[str, int]]:
    """word -> (category, concept) in language ``code``."""
    out = {language.PERIOD: ("PUNCT", 0)}
    for category, concepts in language.lexicon(code, 0).items():
        for concept, words in enumerate(concepts):
            out.update(dict.fromkeys(words, (category, concept)))
    return out


# --------------------------------------------------------------------------- declarations


def test_module_contract() -> None:
    assert paraphrase_standin.LANGUAGES == ("en", "zh", "de", "es")  # RW Sec. 5.3, PI
    assert pos_standin.LANGUAGES == ("en", "zh", "te", "vi")  # RW Sec. 5.3, POS
    for module in MODULES:
        assert module.ENCODER == "small_bert" and module.MULTI_INPUT is True
        assert module.SOURCES == () and module.MANUAL is None
        assert "stand-in" in module.STAND_IN and "\n" not in module.STAND_IN
        assert [t.name for t in module.TASKS] == list(module.LANGUAGES)
    assert all(t.kind == "classification" and t.n_classes == 2 for t in paraphrase_standin.TASKS)
    assert all(t.kind == "tagging" and t.labels == language.TAGS for t in pos_standin.TASKS)
    assert "PAWS-X" in paraphrase_standin.STAND_IN and "UD-POS" in pos_standin.STAND_IN


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_length"):
        paraphrase_standin.Options(max_length=28)
    with pytest.raises(ValueError, match="n_val"):
        pos_standin.Options(n_val=0)
    with pytest.raises(ConfigError, match=r"datasets\.pos_standin\.options\.max_length"):
        build_options(pos_standin.Options, {"max_length": 10}, "datasets.pos_standin.options")


def test_vocabularies_are_disjoint_and_fixed_in_size() -> None:
    lexicons = {code: language.lexicon(code, 0) for code in language.LANGUAGES}
    words = {code: {w for c in lex.values() for ws in c for w in ws} for code, lex in lexicons.items()}
    codes = list(words)
    for i, a in enumerate(codes):
        assert len(words[a]) == sum(n * s for n, s in language.INVENTORY.values())
        for b in codes[i + 1 :]:
            assert not words[a] & words[b], (a, b)
    for module in MODULES:
        tokens, _ = _words(module)
        assert tokens[:4] == ("[PAD]", "[CLS]", "[SEP]", "[UNK]") and len(tokens) == module.VOCAB_SIZE
        assert len(language.vocabulary(module.LANGUAGES, 5)[0]) == module.VOCAB_SIZE  # any seed
        assert language.vocabulary(module.LANGUAGES, 5)[0] != tokens


# --------------------------------------------------------------------------- hand-checked sentences


def test_hand_checked_sentences_and_tags() -> None:
    """``the old dog sees Ana in the house`` in four word orders, with known synonyms and tags."""
    meaning = language.Meaning(agent=(0, 1, 2), verb=3, patient=(4,), adverb=-1, pp=(0, (1, -1, 5)))
    style = language.Style({("NOUN", 2): 1, ("VERB", 3): 1})
    expected = {
        "en": ["DET", "ADJ", "NOUN", "VERB", "PROPN", "ADP", "DET", "NOUN", "PUNCT"],  # SVO, ADJ N, prepositions
        "de": ["DET", "ADJ", "NOUN", "PROPN", "VERB", "ADP", "DET", "NOUN", "PUNCT"],  # verb-final
        "es": ["DET", "NOUN", "ADJ", "VERB", "PROPN", "ADP", "DET", "NOUN", "PUNCT"],  # N ADJ
        "te": ["DET", "ADJ", "NOUN", "PROPN", "VERB", "DET", "NOUN", "ADP", "PUNCT"],  # SOV, postpositions
    }
    for code, tags in expected.items():
        sentence = language.realize(meaning, style, code, 0)
        assert [t for _, t in sentence] == tags, code
        lex = language.lexicon(code, 0)
        words = [w for w, _ in sentence]
        assert lex["NOUN"][2][1] in words and lex["NOUN"][2][0] not in words  # the chosen synonym
        assert lex["VERB"][3][1] in words and lex["PROPN"][4][0] in words and lex["NOUN"][5][0] in words
        assert words[-1] == language.PERIOD
    en = language.lexicon("en", 0)
    fronted = language.realize(meaning, language.Style({}, pp_front=True), "en", 0)
    assert [w for w, _ in fronted][:3] == [en["ADP"][0][0], en["DET"][1][0], en["NOUN"][5][0]]
    assert [t for _, t in fronted] == ["ADP", "DET", "NOUN", "DET", "ADJ", "NOUN", "VERB", "PROPN", "PUNCT"]


def test_encode_lays_out_pairs_like_bert() -> None:
    ids = {"a": 7, "b": 8, "c": 9}
    tokens, types, mask = language.encode([["a", "b"], ["c"]], ids, 8)
    assert tokens == [1, 7, 8, 2, 9, 2, 0, 0]
    assert types == [0, 0, 0, 0, 1, 1, 0, 0] and mask == [1, 1, 1, 1, 1, 1, 0, 0]
    assert language.encode([["zz"]], ids, 4)[0] == [1, 3, 2, 0]  # unknown word -> [UNK]
    with pytest.raises(ValueError, match="max_length=3"):
        language.encode([["a", "b"]], ids, 3)


def test_paws_pairs_share_the_word_bag() -> None:
    """PAWS: the negative is the positive's wording with agent and patient swapped, the same words."""
    rng = np.random.default_rng(0)
    concepts = _concept_of("de")
    for _ in range(300):
        meaning = language.random_meaning(rng)
        first, positive, negative = language.paraphrase_example(meaning, rng, "de", 0)
        assert Counter(negative) == Counter(positive) and negative != positive
        assert positive != first
        assert Counter(concepts[w] for w in first) == Counter(concepts[w] for w in positive)


# --------------------------------------------------------------------------- built splits


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_shapes_dtypes_and_tasks(module: ModuleType, built: dict) -> None:
    splits = built[module.NAME]
    length = module.Options().max_length
    for split, n in (("train", 120), ("val", 40), ("test", 40)):
        parts = splits[split]
        assert isinstance(parts, tuple) and len(parts) == 4
        for task, part in zip(module.TASKS, parts, strict=True):
            assert part.x.shape == (n, 3, length) and part.x.dtype == torch.int32
            assert len(part.y) == 1 and part.source.shape == (n, 1) and part.source.dtype == torch.int64
            check_target(task, part.y[0], n)
            if task.kind == "tagging":
                assert part.y[0].dtype == torch.int16 and part.y[0].shape == (n, length)
            else:
                assert part.y[0].dtype == torch.int64 and set(part.y[0].tolist()) == {0, 1}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_ids_in_range_and_no_padding_scored(module: ModuleType, built: dict) -> None:
    tokens, _ = _words(module)
    for split in SPLITS:
        for code, part in zip(module.LANGUAGES, built[module.NAME][split], strict=True):
            ids, types, mask = part.x[:, 0], part.x[:, 1], part.x[:, 2]
            assert int(ids.min()) >= 0 and int(ids.max()) < module.VOCAB_SIZE
            assert not bool((ids == language.UNK).any())
            assert torch.equal(mask == 0, ids == language.PAD) and bool((ids[:, 0] == language.CLS).all())
            own = {w for c in language.lexicon(code, 0).values() for ws in c for w in ws} | {language.PERIOD}
            used = {tokens[i] for i in ids.unique().tolist() if i > language.UNK}
            assert used <= own, f"{code} uses another language's words"
            if module is pos_standin:
                y = part.y[0]
                assert bool((y[mask == 0] == IGNORE).all()) and bool((types == 0).all())
                assert bool((y[(ids == language.CLS) | (ids == language.SEP)] == IGNORE).all())
            else:
                seps = (ids == language.SEP).int().cumsum(dim=1)
                word = (mask == 1) & (ids != language.SEP) & (ids != language.CLS)
                assert torch.equal(types[word] == 1, seps[word] == 1)  # s2's words have token type 1
                assert bool(((ids == language.SEP).sum(dim=1) == 2).all())


def test_tags_match_the_words(built: dict) -> None:
    """Every scored position holds its word's tag; the noun/verb homographs are tagged by their place in the
    sentence, so one word id carries both tags across the data (tagging needs the context)."""
    tokens, tag_of = _words(pos_standin)
    for split in SPLITS:
        for code, part in zip(pos_standin.LANGUAGES, built[pos_standin.NAME][split], strict=True):
            homographs = {language.lexicon(code, 0)["NOUN"][c][0] for c in range(language.HOMOGRAPHS)}
            ids, y = part.x[:, 0], part.y[0]
            scored = y != IGNORE
            assert torch.equal(scored, ids > language.UNK)
            got = [language.TAGS[t] for t in y[scored].tolist()]
            words = [tokens[i] for i in ids[scored].tolist()]
            for word, tag in zip(words, got, strict=True):
                assert tag == tag_of[word] or (word in homographs and tag == "VERB"), (word, tag)
            assert set(got) == set(language.TAGS)
            if split == "train":
                both = {w for w, t in zip(words, got, strict=True) if t == "VERB"} & {
                    w for w, t in zip(words, got, strict=True) if t == "NOUN"
                }
                assert both and both <= homographs, "some word must be tagged NOUN in one place and VERB in another"


def test_homographs_are_spelled_as_nouns_and_tagged_as_verbs() -> None:
    meaning = language.Meaning(agent=(7,), verb=0, patient=(0, -1, 0))
    style = language.Style({}, adverb_front=False, pp_front=False)
    plain = language.realize(meaning, style, "en", 0)
    tagged = language.realize(meaning, style, "en", 0, homographs=True)
    noun = language.lexicon("en", 0)["NOUN"][0][0]
    assert ("VERB" in dict(plain).values()) and dict(plain) != dict(tagged)
    assert (noun, "VERB") in tagged and (noun, "NOUN") in tagged  # "the run runs": one spelling, two tags
    other = language.Style({("VERB", 0): 1}, adverb_front=False, pp_front=False)  # the second wording stays apart
    assert (noun, "VERB") not in language.realize(meaning, other, "en", 0, homographs=True)


def test_paraphrase_pairs_in_the_data(built: dict) -> None:
    """Both sentences of every pair use the same concepts; negatives keep s2 a reordering of a paraphrase."""
    tokens, _ = _words(paraphrase_standin)
    for code, part in zip(paraphrase_standin.LANGUAGES, built[paraphrase_standin.NAME]["train"], strict=True):
        concepts = _concept_of(code)
        for row, label in zip(part.x[:, 0].tolist(), part.y[0].tolist(), strict=True):
            first_sep = row.index(language.SEP)
            second_sep = row.index(language.SEP, first_sep + 1)
            s1 = [tokens[i] for i in row[1:first_sep]]
            s2 = [tokens[i] for i in row[first_sep + 1 : second_sep]]
            assert Counter(concepts[w] for w in s1) == Counter(concepts[w] for w in s2)
            assert s1 != s2 and label in (0, 1)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_splits_are_disjoint(module: ModuleType, built: dict) -> None:
    for t in range(len(module.LANGUAGES)):
        parts = {split: built[module.NAME][split][t] for split in SPLITS}
        sources = {split: set(parts[split].source[:, 0].tolist()) for split in SPLITS}
        texts = {split: {tuple(row) for row in parts[split].x[:, 0].tolist()} for split in SPLITS}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not sources[a] & sources[b] and not texts[a] & texts[b]
        assert len(texts["train"]) == 120  # distinct meanings


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_deterministic_and_seeded(module: ModuleType, built: dict) -> None:
    again = module.build(module.Options(**SMALL))
    other = module.build(module.Options(**SMALL, generation_seed=1))
    for split in SPLITS:
        for a, b, c in zip(built[module.NAME][split], again[split], other[split], strict=True):
            assert torch.equal(a.x, b.x) and torch.equal(a.y[0], b.y[0]) and torch.equal(a.source, b.source)
            assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_prepare_load_and_describe(module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASETS, module.NAME, module.__name__)
    out = prepare(module.NAME, {**SMALL, "max_length": 40}, tmp_path / "cache.pt")
    data = load(module.NAME, out)
    assert data.multi_input and data.stand_in == module.STAND_IN
    assert data.meta["vocab_size"] == module.VOCAB_SIZE and data.meta["max_length"] == 40
    assert data.task_split("val", 2)[0].shape == (40, 3, 40)
