"""Tests of the shared encoders (:mod:`mtlrepro.models`) and the task heads (:mod:`mtlrepro.models.heads`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlrepro.errors import ConfigError
from mtlrepro.models import ENCODERS, build_encoder, encoder_class
from mtlrepro.models.heads import BilinearUpsample, make_head
from mtlrepro.models.small_bert import DEFAULT_VOCAB_SIZE
from mtlrepro.tasks import IGNORE, Task

BATCH = 4
VOCAB = 50

#: encoder name -> one example's input shape as the training loop feeds it
INPUTS: dict[str, tuple[int, ...]] = {
    "lenet": (1, 36, 36),
    "mlp": (21,),
    "small_cnn": (3, 32, 32),
    "small_dense": (3, 32, 48),
    "small_bert": (3, 12),
}
OPTIONS: dict[str, dict] = {"small_bert": {"vocab_size": VOCAB}}
EXPECTED_REP: dict[str, tuple[int, ...]] = {
    "lenet": (50,),
    "mlp": (128,),
    "small_cnn": (64,),
    "small_dense": (64, 8, 12),
    "small_bert": (12, 64),
}


def _input(name: str, seed: int = 0) -> Tensor:
    """A batch of inputs for encoder ``name``, laid out as the loop feeds them."""
    gen = torch.Generator().manual_seed(seed)
    shape = INPUTS[name]
    if name == "small_bert":
        length = shape[1]
        ids = torch.randint(4, VOCAB, (BATCH, length), generator=gen)
        ids[:, 0] = 1  # [CLS]
        mask = torch.ones(BATCH, length, dtype=torch.int64)
        mask[:, length - 3 :] = 0  # padding
        ids[mask == 0] = 0
        types = torch.zeros(BATCH, length, dtype=torch.int64)
        types[:, length // 2 :] = 1
        return torch.stack([ids, types, mask], dim=1)
    return torch.rand((BATCH, *shape), generator=gen)


def _build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    return build_encoder(name, INPUTS[name], **OPTIONS.get(name, {}))


# --------------------------------------------------------------------------- encoders


def test_registry_knows_every_encoder() -> None:
    assert set(ENCODERS) == set(INPUTS)
    with pytest.raises(ConfigError, match="resnet1000"):
        encoder_class("resnet1000")


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_encoder_output_backward_and_last_layer(name: str) -> None:
    encoder, rep_shape = _build(name)
    assert rep_shape == EXPECTED_REP[name] == tuple(encoder.rep_shape)
    encoder.train()
    z = encoder(_input(name))
    assert tuple(z.shape) == (BATCH, *rep_shape)
    assert torch.isfinite(z).all()
    z.square().mean().backward()
    last = encoder.last_layer()
    assert any(last is module for module in encoder.modules())
    last_params = list(last.parameters())
    assert last_params
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in last_params)
    # every shared parameter is reached by the representation (no dead branch such as an unused pooler)
    assert all(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_encoder_init_and_forward_are_deterministic(name: str) -> None:
    a, _ = _build(name, seed=3)
    b, _ = _build(name, seed=3)
    c, _ = _build(name, seed=4)
    pa, pb, pc = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)
    x = _input(name)
    a.eval()
    b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", ["small_cnn", "small_dense"])
def test_image_encoders_refuse_text_shapes(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build_encoder(name, (3, 12))


def test_small_dense_feature_map_at_quarter_resolution_for_odd_sizes() -> None:
    encoder, rep_shape = build_encoder("small_dense", (3, 30, 45))
    assert rep_shape == (64, 8, 12)
    assert tuple(encoder(torch.rand(2, 3, 30, 45)).shape) == (2, *rep_shape)


def test_small_bert_options_and_padding() -> None:
    encoder, _ = build_encoder("small_bert", (3, 12))
    assert encoder.vocab_size == DEFAULT_VOCAB_SIZE
    torch.manual_seed(0)
    encoder, _ = build_encoder("small_bert", (3, 12), vocab_size=VOCAB, hidden_dropout=0.0, attention_dropout=0.0)
    assert encoder.bert.embeddings.word_embeddings.num_embeddings == VOCAB
    encoder.train()  # no dropout: train and eval agree
    x = _input("small_bert")
    z = encoder(x)
    encoder.eval()
    assert torch.equal(z, encoder(x))
    # padded positions do not influence the unpadded ones
    changed = x.clone()
    changed[:, 0, -3:] = 7
    assert torch.allclose(encoder(changed)[:, :-3], z[:, :-3], atol=1e-6)
    # int32 storage is accepted
    assert torch.equal(encoder(x.to(torch.int32)), z)
    with pytest.raises(ValueError, match="attention_dropout"):
        build_encoder("small_bert", (3, 12), attention_dropout=1.5)
    with pytest.raises(ValueError, match="small_bert"):
        build_encoder("small_bert", (1, 28, 28))


def test_mlp_is_three_hidden_layers_of_128() -> None:
    encoder, _ = build_encoder("mlp", (21,))
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(21, 128), (128, 128), (128, 128)]
    assert encoder.last_layer() is linears[-1]


# --------------------------------------------------------------------------- heads

TAGS = ("NOUN", "VERB", "DET", "PUNCT")
TASKS: dict[str, Task] = {
    "classification": Task("digit", "classification", n_classes=10),
    "binary": Task("Smiling", "binary"),
    "regression": Task("joint1", "regression"),
    "tagging": Task("en", "tagging", n_classes=len(TAGS), labels=TAGS),
    "segmentation": Task("segmentation", "segmentation", n_classes=13),
    "depth": Task("depth", "depth"),
    "normals": Task("normal", "normals"),
}
#: representation kind -> an encoder producing it
REPS = {"vector": "small_cnn", "tokens": "small_bert", "map": "small_dense"}
ALLOWED = {
    "vector": {"classification", "binary", "regression"},
    "tokens": {"classification", "binary", "regression", "tagging"},
    "map": {"classification", "binary", "regression", "segmentation", "depth", "normals"},
}
PAIRS = [(rep, kind) for rep in REPS for kind in TASKS]


def _target(task: Task, x: Tensor, rep_shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """A stored-layout target batch for ``task`` (with unscored entries where the kind has them)."""
    if task.kind == "classification":
        return torch.randint(0, task.n_classes, (BATCH,), generator=gen)
    if task.kind == "binary":
        return torch.randint(0, 2, (BATCH,), generator=gen).to(torch.uint8)
    if task.kind == "regression":
        return torch.randn(BATCH, generator=gen)
    if task.kind == "tagging":
        labels = torch.randint(0, task.n_classes, (BATCH, rep_shape[0]), generator=gen).to(torch.int16)
        labels[:, 0] = IGNORE
        return labels
    height, width = x.shape[-2:]
    if task.kind == "segmentation":
        labels = torch.randint(0, task.n_classes, (BATCH, height, width), generator=gen).to(torch.int16)
        labels[:, :2] = IGNORE
        return labels
    if task.kind == "depth":
        depth = torch.rand(BATCH, 1, height, width, generator=gen) + 0.5
        depth[..., :3] = 0.0
        return depth
    normals = F.normalize(torch.randn(BATCH, 3, height, width, generator=gen), dim=1)
    normals[..., :3] = 0.0
    return normals


def _expected_output(task: Task, x: Tensor, rep_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The head's output shape per :mod:`mtlrepro.tasks`'s table."""
    if task.kind == "tagging":
        return (BATCH, rep_shape[0], task.out_channels)
    if task.dense:
        return (BATCH, task.out_channels, *x.shape[-2:])
    return (BATCH, task.out_channels)


@pytest.mark.parametrize(("rep", "kind"), [p for p in PAIRS if p[1] in ALLOWED[p[0]]])
def test_head_output_shape_and_loss(rep: str, kind: str) -> None:
    name, task = REPS[rep], TASKS[kind]
    encoder, rep_shape = _build(name)
    torch.manual_seed(1)
    head = make_head(task, rep_shape, INPUTS[name])
    x = _input(name)
    output = head(encoder(x))
    assert tuple(output.shape) == _expected_output(task, x, rep_shape)
    target = task.target(_target(task, x, rep_shape, torch.Generator().manual_seed(2)))
    loss = task.loss(output, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    assert all(p.grad is not None for p in encoder.last_layer().parameters())


@pytest.mark.parametrize(("rep", "kind"), [p for p in PAIRS if p[1] not in ALLOWED[p[0]]])
def test_head_refuses_pairs_that_make_no_sense(rep: str, kind: str) -> None:
    name, task = REPS[rep], TASKS[kind]
    _, rep_shape = _build(name)
    with pytest.raises(ValueError, match=rf"task {task.name} \({kind}\).*{list(rep_shape)}".replace("[", r"\[")):
        make_head(task, rep_shape, INPUTS[name])


def test_dense_head_needs_image_inputs_and_known_rep_shapes() -> None:
    with pytest.raises(ValueError, match="depth"):
        make_head(TASKS["depth"], (64, 8, 12), (21,))
    with pytest.raises(ValueError, match="digit"):
        make_head(TASKS["classification"], (2, 3, 4, 5), (3, 8, 8))


def test_heads_are_deterministic_under_manual_seed() -> None:
    heads = []
    for _ in range(2):
        torch.manual_seed(5)
        heads.append(make_head(TASKS["segmentation"], (64, 8, 12), (3, 32, 48)))
    for p, q in zip(heads[0].parameters(), heads[1].parameters(), strict=True):
        assert torch.equal(p, q)


def test_bilinear_upsample_matches_interpolate() -> None:
    z = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    up = BilinearUpsample((7, 9), (29, 35)).double()
    reference = F.interpolate(z, size=(29, 35), mode="bilinear", align_corners=True)
    assert torch.allclose(up(z), reference, atol=1e-6)
    z32 = z.float().requires_grad_()
    out = BilinearUpsample((7, 9), (29, 35))(z32)
    assert out.dtype == torch.float32
    out.sum().backward()
    # every output pixel's weights sum to one, so the gradient of the sum is the count of each input's uses
    assert torch.isclose(z32.grad.sum(), torch.tensor(2.0 * 5 * 29 * 35))
    with pytest.raises(ValueError, match="upsampling"):
        up(torch.randn(1, 5, 8, 9, dtype=torch.float64))


def test_same_size_upsampling_is_identity() -> None:
    z = torch.randn(1, 2, 6, 4)
    assert torch.allclose(BilinearUpsample((6, 4), (6, 4))(z), z)
