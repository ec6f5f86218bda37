"""The DeepLab-style NYUv2 networks of RW: dilated ResNet-50 (output stride 8) and one ASPP head per task."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet50

from mtlrepro.errors import ConfigError
from mtlrepro.models.deeplab import WEIGHTS, ASPPHead, DilatedResNet50Encoder
from mtlrepro.models.resnet import default_weights_file
from mtlrepro.tasks import Task


def test_encoder_keeps_stride_8_and_aspp_heads_predict_at_input_resolution():
    torch.manual_seed(0)
    encoder = DilatedResNet50Encoder.for_input((3, 32, 48))
    assert encoder.rep_shape == (2048, 4, 6)
    x = torch.rand(2, 3, 32, 48)
    z = encoder(x)
    assert z.shape == (2, 2048, 4, 6)
    tasks = (Task("segmentation", "segmentation", n_classes=13), Task("depth", "depth"), Task("normal", "normals"))
    heads = [ASPPHead(2048, task.out_channels, (4, 6), (32, 48)) for task in tasks]
    outputs = [head(z) for head in heads]
    assert [tuple(o.shape) for o in outputs] == [(2, 13, 32, 48), (2, 1, 32, 48), (2, 3, 32, 48)]
    sum(
        task.loss(o, task.target(t))
        for task, o, t in zip(
            tasks,
            outputs,
            (torch.randint(13, (2, 32, 48)), torch.rand(2, 1, 32, 48), torch.rand(2, 3, 32, 48)),
            strict=True,
        )
    ).backward()
    assert all(p.grad is not None for p in encoder.last_layer().parameters())


def test_pretrained_resnet50_weights_fit_the_dilated_network_and_are_read_from_disk_only(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(ConfigError, match=r"pretrained resnet50 weights .*resnet50-0676ba61\.pth do not exist"):
            DilatedResNet50Encoder.for_input((3, 32, 32), pretrained=True)
        torch.manual_seed(1)
        state = resnet50().state_dict()
        default_weights_file(WEIGHTS).parent.mkdir(parents=True)
        torch.save(state, default_weights_file(WEIGHTS))
        encoder = DilatedResNet50Encoder.for_input((3, 32, 32), pretrained=True)
    finally:
        torch.hub.set_dir(previous)
    assert torch.equal(encoder.stem[0].weight, state["conv1.weight"])
    assert torch.equal(encoder.layers[-1][-1].conv2.weight, state["layer4.2.conv2.weight"])


def test_shapes_it_cannot_take_are_refused():
    with pytest.raises(ValueError, match="divisible by 8"):
        DilatedResNet50Encoder.for_input((3, 30, 48))
    with pytest.raises(ConfigError, match="`weights` is given but `pretrained` is false"):
        DilatedResNet50Encoder(weights="x.pth")
