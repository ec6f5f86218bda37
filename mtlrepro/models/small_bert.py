"""A tiny, randomly initialised BERT encoder (the PAWS-X / UD-POS stand-ins).

The papers use a pre-trained multilingual BERT as the shared encoder (RW Sec. 5.3: "mBERT ... implemented via
the open-source transformers library ... as the shared encoder among languages"). This stand-in is the same
model class, :class:`transformers.BertModel`, at CPU-demo size and without pre-training: hidden size 64, 2
layers, 2 attention heads, intermediate size 128, BERT's initialisation (``initializer_range`` 0.02) drawn
from torch's global generator, so ``torch.manual_seed`` fixes it. No pooler: the heads read
``last_hidden_state`` directly (the first, [CLS], position for sentence-pair classification, every position
for tagging; :mod:`mtlrepro.models.heads`), and a pooler that no loss reaches would leave shared parameters
without gradients.

Input: ``x`` ``[B x 3 x L]`` integer = (input_ids, token_type_ids, attention_mask), the stored text layout;
output: ``last_hidden_state`` ``[B x L x hidden]``. Attention is BERT's plain ("eager") implementation (matrix
products and a softmax) rather than a fused scaled-dot-product kernel, whose backward pass may not be
deterministic on a GPU.

Vocabulary: ``for_input`` cannot see token ids, so it takes ``vocab_size`` as a keyword. The training loop
should pass the dataset's vocabulary size: the largest input id over *all* splits plus one (an id at or above
``vocab_size`` fails in the embedding lookup). Without it the vocabulary defaults to BERT's 30522 ids
(Devlin et al. 2019, uncased English WordPiece), large enough for the stand-ins' 501-id word vocabularies
but with an embedding table of about 2M mostly unused parameters.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import BertConfig, BertModel

#: BERT-base's (uncased) vocabulary size, the default when the loop passes none
DEFAULT_VOCAB_SIZE = 30522


class SmallBertEncoder(nn.Module):
    """``transformers.BertModel`` (tiny, random init): ``[B x 3 x L]`` ids -> ``[B x L x hidden]`` features."""

    def __init__(
        self,
        max_length: int,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        *,
        hidden: int = 64,
        layers: int = 2,
        heads: int = 2,
        intermediate: int = 128,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("max_length", max_length), ("vocab_size", vocab_size), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"small_bert: {name} must be positive, got {value}")
        for name, value in (("hidden_dropout", hidden_dropout), ("attention_dropout", attention_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"small_bert: {name} must be in [0, 1), got {value}")
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            hidden_dropout_prob=hidden_dropout,
            attention_probs_dropout_prob=attention_dropout,
            max_position_embeddings=max_length,
            type_vocab_size=2,
            attn_implementation="eager",
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.vocab_size = vocab_size
        self.rep_shape: tuple[int, ...] = (max_length, hidden)

    @classmethod
    def for_input(
        cls, input_shape: tuple[int, ...], *, vocab_size: int = DEFAULT_VOCAB_SIZE, **options: float
    ) -> SmallBertEncoder:
        """Build the encoder for texts of shape ``(3, L)``; ``vocab_size``: the largest input id + 1 (see module)."""
        if len(input_shape) != 2 or int(input_shape[0]) != 3:
            raise ValueError(f"small_bert expects texts of shape (3, L) = (ids, token types, mask), got {input_shape}")
        return cls(int(input_shape[1]), vocab_size, **options)

    def last_layer(self) -> nn.Module:
        """The last layer with parameters: the last transformer layer's output block (dense + LayerNorm)."""
        return self.bert.encoder.layer[-1].output

    def forward(self, x: Tensor) -> Tensor:
        x = x.long()
        out = self.bert(input_ids=x[:, 0], token_type_ids=x[:, 1], attention_mask=x[:, 2])
        return out.last_hidden_state
