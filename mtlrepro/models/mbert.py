"""Pre-trained multilingual BERT as the shared encoder of PAWS-X and UD-POS (RW Sec. 5.3).

RW: "the multilingual BERT (mBERT) model ... implemented via the open-source transformers library ... as the
shared encoder among languages". The encoder is :class:`transformers.BertModel` loaded with
``from_pretrained(name_or_path, local_files_only=True)``: from a local directory (``save_pretrained``'s
layout), or from the Hugging Face cache by model name (default ``bert-base-multilingual-cased``, the model the
datasets' tokenizer belongs to). It never downloads: offline, with the model neither at the path nor in the
cache, one :class:`~mtlrepro.errors.ConfigError` names it and says how to provide it. There is no silent
fallback to random weights.

The pooler is dropped (the heads read ``last_hidden_state``: the [CLS] position for sentence pairs, every
position for tagging; :mod:`mtlrepro.models.heads`), and attention is BERT's plain ("eager") implementation,
whose backward pass is deterministic. Input: ``x`` ``[B x 3 x L]`` = (input_ids, token_type_ids,
attention_mask); output ``[B x L x hidden]``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn
from transformers import BertModel

from mtlrepro.errors import ConfigError

DEFAULT_MODEL = "bert-base-multilingual-cased"


def load_bert(name_or_path: str | Path = DEFAULT_MODEL) -> BertModel:
    """The pre-trained BERT ``name_or_path`` from disk only (a directory, or the Hugging Face cache by name).

    :class:`ConfigError` naming the model and how to provide it when it is not on disk or cannot be read.
    """
    source = str(name_or_path)
    try:
        return BertModel.from_pretrained(
            source, local_files_only=True, add_pooling_layer=False, attn_implementation="eager"
        )
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(
            f"pre-trained BERT {source!r} is not on this machine ({reason}): on a connected machine run "
            f"`python -c \"from transformers import BertModel; BertModel.from_pretrained('{DEFAULT_MODEL}')"
            ".save_pretrained('DIR')\"` and give DIR as the encoder's `model`, or pre-fill the Hugging Face "
            "cache (HF_HOME) there"
        ) from None


class MBertEncoder(nn.Module):
    """A pre-trained ``transformers.BertModel``: ``[B x 3 x L]`` ids -> ``[B x L x hidden]`` features."""

    def __init__(self, max_length: int, model: str | Path = DEFAULT_MODEL) -> None:
        super().__init__()
        self.bert = load_bert(model)
        positions = int(self.bert.config.max_position_embeddings)
        if max_length > positions:
            raise ConfigError(f"mbert: texts of {max_length} tokens exceed the model's {positions} positions")
        self.rep_shape: tuple[int, ...] = (max_length, int(self.bert.config.hidden_size))

    @classmethod
    def for_input(cls, input_shape: tuple[int, ...], *, model: str | Path = DEFAULT_MODEL) -> MBertEncoder:
        """The encoder for texts of shape ``(3, L)`` = (ids, token types, attention mask)."""
        if len(input_shape) != 2 or int(input_shape[0]) != 3:
            raise ValueError(f"mbert expects texts of shape (3, L) = (ids, token types, mask), got {input_shape}")
        return cls(int(input_shape[1]), model)

    def last_layer(self) -> nn.Module:
        """The last transformer layer's output block (dense + LayerNorm): GradNorm's W."""
        return self.bert.encoder.layer[-1].output

    def forward(self, x: Tensor) -> Tensor:
        x = x.long()
        return self.bert(input_ids=x[:, 0], token_type_ids=x[:, 1], attention_mask=x[:, 2]).last_hidden_state
