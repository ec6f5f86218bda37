"""The pre-trained BERT encoder: loaded from disk only, refused with one message when it is not there."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from mtlrepro.errors import ConfigError
from mtlrepro.models.heads import make_head
from mtlrepro.models.mbert import MBertEncoder, load_bert
from mtlrepro.tasks import Task


@pytest.fixture
def tiny_bert(tmp_path):
    """A tiny BERT built from a config and saved as `save_pretrained` lays it out (no download)."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=24,
    )
    model = BertModel(config)
    path = tmp_path / "tiny-bert"
    model.save_pretrained(path)
    return path, model


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Hugging Face cache and offline mode: nothing may be fetched."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_saved_model_is_loaded_with_its_weights_and_encodes_texts(tiny_bert, offline):
    path, saved = tiny_bert
    encoder = MBertEncoder.for_input((3, 12), model=path).eval()
    assert encoder.rep_shape == (12, 16)
    mine = encoder.bert.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in saved.state_dict().items() if k in mine)
    ids = torch.randint(1, 50, (3, 12))
    x = torch.stack([ids, torch.zeros_like(ids), torch.ones_like(ids)], dim=1).int()
    z = encoder(x)
    assert z.shape == (3, 12, 16)
    head = make_head(Task("en", "tagging", n_classes=3, labels=("A", "B", "C")), encoder.rep_shape, (3, 12))
    head(z).sum().backward()
    assert all(p.grad is not None for p in encoder.last_layer().parameters())


def test_a_model_not_on_disk_is_one_error_and_no_download(offline, tmp_path):
    with pytest.raises(ConfigError) as missing:
        load_bert(tmp_path / "nowhere")
    assert "nowhere" in str(missing.value) and "save_pretrained" in str(missing.value)
    with pytest.raises(ConfigError, match="'bert-base-multilingual-cased' is not on this machine"):
        MBertEncoder.for_input((3, 12))


def test_texts_longer_than_the_model_or_of_another_shape_are_refused(tiny_bert, offline):
    path, _ = tiny_bert
    with pytest.raises(ConfigError, match="texts of 30 tokens exceed the model's 24 positions"):
        MBertEncoder.for_input((3, 30), model=path)
    with pytest.raises(ValueError, match="mbert expects texts of shape"):
        MBertEncoder.for_input((12,), model=path)
