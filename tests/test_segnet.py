"""The SegNet encoder-decoder of ExcessMTL's NYUv2 setting: shapes, gradients, unpooling at the pooled maxima."""

from __future__ import annotations

import pytest
import torch

from mtlrepro.models.heads import make_head
from mtlrepro.models.segnet import SegNetEncoder, unpool2x2
from mtlrepro.tasks import Task


def test_representation_is_at_input_resolution_and_feeds_every_dense_head():
    torch.manual_seed(0)
    encoder = SegNetEncoder.for_input((3, 32, 48))
    assert encoder.rep_shape == (64, 32, 48)
    assert len(encoder.down) == len(encoder.up) == 4  # four encoder and four decoder layers (ExcessMTL C.1)
    x = torch.rand(2, 3, 32, 48)
    z = encoder(x)
    assert z.shape == (2, 64, 32, 48)
    tasks = (Task("segmentation", "segmentation", n_classes=13), Task("depth", "depth"), Task("normal", "normals"))
    outputs = [make_head(task, encoder.rep_shape, (3, 32, 48))(z) for task in tasks]
    assert [tuple(o.shape) for o in outputs] == [(2, 13, 32, 48), (2, 1, 32, 48), (2, 3, 32, 48)]
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert any(m is encoder.last_layer() for m in encoder.modules())


def test_the_decoder_unpools_to_the_positions_the_encoder_pooled_from():
    encoder = SegNetEncoder.for_input((1, 16, 16))
    seen = {}
    encoder.up[0].register_forward_pre_hook(lambda module, args: seen.setdefault("unpooled", args[0].detach()))
    encoder(torch.rand(1, 1, 16, 16))
    unpooled = seen["unpooled"]  # the first unpooling of the 1x1 bottleneck back to 2x2
    assert unpooled.shape[-2:] == (2, 2)
    assert bool(((unpooled != 0).sum(dim=(-2, -1)) <= 1).all())  # one nonzero per channel: the pooled maximum


def test_unpooling_matches_pytorchs_max_unpool_and_runs_in_deterministic_mode():
    x = torch.randn(2, 3, 8, 12)
    pooled, index = torch.nn.MaxPool2d(2, stride=2, return_indices=True)(x)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # PyTorch's own unpooling refuses deterministic mode
    try:
        expected = torch.nn.MaxUnpool2d(2, stride=2)(pooled, index, output_size=x.shape[-2:])
        assert torch.equal(unpool2x2(pooled, index, 12), expected)
        torch.use_deterministic_algorithms(True)
        SegNetEncoder.for_input((1, 16, 16))(torch.rand(2, 1, 16, 16)).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("shape", [(3, 30, 48), (3, 32)])
def test_shapes_it_cannot_pool_are_refused(shape):
    with pytest.raises(ValueError, match="segnet expects"):
        SegNetEncoder.for_input(shape)
