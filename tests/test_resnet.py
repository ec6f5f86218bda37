"""The ResNet-18 encoder: shapes, gradients, and pretrained weights read from disk only, never downloaded."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from mtlrepro.errors import ConfigError
from mtlrepro.models.heads import make_head
from mtlrepro.models.resnet import REP_DIM, ResNet18Encoder, default_weights_file, load_pretrained
from mtlrepro.tasks import Task


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch's hub directory in a temporary folder: the default weights file starts out absent."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def saved_weights(path, seed: int = 3):
    torch.manual_seed(seed)
    state = resnet18().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_encoder_maps_images_to_512_features_and_trains():
    torch.manual_seed(0)
    encoder = ResNet18Encoder.for_input((3, 32, 32))
    torch.manual_seed(0)
    again = ResNet18Encoder.for_input((3, 32, 32))
    pairs = zip(encoder.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)  # seeded initialisation
    x = torch.rand(4, 3, 32, 32)
    z = encoder(x)
    assert z.shape == (4, REP_DIM) and encoder.rep_shape == (REP_DIM,)
    head = make_head(Task("Smiling", "binary"), encoder.rep_shape, (3, 32, 32))
    head(z).sum().backward()
    last = list(encoder.last_layer().parameters())
    assert last and all(p.grad is not None and p.grad.abs().sum() > 0 for p in last)
    assert any(m is encoder.last_layer() for m in encoder.modules())


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 16, 16), (3, 32)])
def test_other_inputs_are_refused(shape):
    with pytest.raises(ValueError, match="resnet18 expects"):
        ResNet18Encoder.for_input(shape)


def test_pretrained_weights_come_from_the_default_cache_file_without_a_download(hub):
    with pytest.raises(ConfigError) as missing:
        ResNet18Encoder.for_input((3, 32, 32), pretrained=True)
    message = str(missing.value)
    assert str(default_weights_file()) in message and "pretrained: false" in message
    assert str(hub) in str(default_weights_file())
    state = saved_weights(default_weights_file())
    encoder = ResNet18Encoder.for_input((3, 32, 32), pretrained=True)
    own = encoder.trunk.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k in own)


def test_pretrained_inputs_are_normalised_as_the_imagenet_weights_expect(tmp_path):
    path = tmp_path / "weights" / "r18.pth"
    saved_weights(path)
    encoder = ResNet18Encoder.for_input((3, 32, 32), pretrained=True, weights=path).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(encoder(x), encoder.trunk((x - mean) / std))
    scratch = ResNet18Encoder.for_input((3, 32, 32)).eval()
    torch.testing.assert_close(scratch(x), scratch.trunk(x))  # from scratch: the inputs as they come


def test_bad_weight_files_are_one_error_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(ConfigError, match=f"{garbage} cannot be read"):
        load_pretrained(garbage)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.ones(2)}, foreign)
    with pytest.raises(ConfigError, match=f"{foreign} is not a state dict of torchvision's resnet18"):
        load_pretrained(foreign)
    with pytest.raises(ConfigError, match="`weights` is given but `pretrained` is false"):
        ResNet18Encoder.for_input((3, 32, 32), weights=foreign)
