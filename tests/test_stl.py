"""Single-task runs (stl): only the chosen task's loss reaches the model; a task the dataset lacks is refused."""

import pytest
import torch

from mtlrepro.errors import ConfigError
from mtlrepro.studies import expand

from conftest import TASKS, batch, make_stepper, small_config, tiny_model


def test_stl_trains_only_its_task():
    model, reference = tiny_model(), tiny_model()
    stepper = make_stepper(model, TASKS, "stl", entries={"stl": {"task": ""}})
    x, y = batch()
    result = stepper.step(x, y)
    assert result.loss_weights.tolist() == [1.0, 0.0, 0.0]
    task0 = torch.nn.functional.cross_entropy(reference(x)[0], y[:, 0])
    expected = torch.autograd.grad(task0, list(reference.encoder.parameters()))
    for p, g in zip(model.encoder.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)
    for head in model.heads[1:]:
        assert all(torch.count_nonzero(p.grad) == 0 for p in head.parameters())


def test_stl_task_is_checked_against_the_dataset_when_the_config_is_read():
    config = small_config(methods=("stl-BR", "stl-XX"))
    config["methods"]["stl-BR"] = {"weighting": "stl", "task": "BR"}
    config["methods"]["stl-XX"] = {"weighting": "stl", "task": "XX"}
    with pytest.raises(ConfigError, match=r"methods.stl-XX.task: 'XX' is not a task of the dataset \(TL, BR\)"):
        expand(config)
    config["studies"]["small"]["methods"] = ["stl-BR"]
    (run,) = expand(config)["small"].runs
    assert run.loss.options["task"] == "BR"
