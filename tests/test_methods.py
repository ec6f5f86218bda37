"""Every registered method against the contract: declarations, finite steps, every combination, exact resume.

These tests are parametrised over the registry, so a new method module is
checked by them without being listed here.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
import yaml

from mtlrepro.cli import main
from mtlrepro.data import Task
from mtlrepro.weighting import registry
from mtlrepro.weighting.base import (
    GRADIENT,
    LOSS,
    Batch,
    GradientAggregator,
    GradientOptions,
    LossOptions,
    LossWeighting,
    Need,
    SetupInfo,
)

from conftest import batch, make_stepper, small_config, spec_for, tiny_model

METHODS = sorted(registry())
LOSS_METHODS = [name for name in METHODS if registry()[name].kind == LOSS]
GRADIENT_METHODS = [name for name in METHODS if registry()[name].kind == GRADIENT]
TASKS = tuple(Task(f"t{i}", n_classes=10) for i in range(3))


def held_out():
    return Batch(*batch(99))


@pytest.mark.parametrize("name", METHODS)
def test_method_declares_the_contract(name):
    cls = registry()[name]
    module = sys.modules[cls.__module__]
    assert cls.__doc__ and module.__doc__, f"{name}: class and module need docstrings"
    assert any(word in module.__doc__ for word in ("Eq.", "Algorithm", "Sec.")), f"{name}: cite the equation"
    assert dataclasses.is_dataclass(cls.Options)
    base = LossOptions if issubclass(cls, LossWeighting) else GradientOptions
    assert issubclass(cls.Options, base), f"{name}: options must derive from {base.__name__}"
    options = cls.Options()
    assert options.heads in ("weighted", "unweighted")
    if issubclass(cls, GradientAggregator):
        assert Need.JACOBIAN in cls.needs
    method = cls(len(TASKS), options, torch.Generator())
    method.setup(
        SetupInfo(
            n_tasks=len(TASKS),
            device=torch.device("cpu"),
            shared_dim=100,
            rep_shape=(50,),
            steps_per_epoch=4,
            epochs=2,
            task_names=tuple(t.name for t in TASKS),
        )
    )
    own = list(method.parameters())
    assert (method.lr is not None) == bool(own), f"{name}: own parameters need an lr option, and only they"
    described = method.describe()
    assert described["options"] == dataclasses.asdict(options) and described["name"] == name


@pytest.mark.parametrize("expression", METHODS)
def test_every_method_takes_a_finite_step_and_sets_every_gradient(expression):
    model = tiny_model()
    stepper = make_stepper(model, TASKS, expression, held_out=held_out)
    x, y = batch()
    for iteration in range(3):
        model.zero_grad(set_to_none=True)
        result = stepper.step(x, y, epoch=1, iteration=iteration)
    assert torch.isfinite(result.losses).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{expression}: no finite gradient for {name}"
    assert any(p.grad.abs().sum() > 0 for p in stepper.shared), f"{expression}: the shared encoder gets no gradient"
    for weights in (result.loss_weights, result.grad_weights):
        if weights is not None:
            assert weights.shape == (len(TASKS),) and torch.isfinite(weights).all()


@pytest.mark.parametrize("loss", LOSS_METHODS)
@pytest.mark.parametrize("gradient", GRADIENT_METHODS)
def test_every_combination_takes_a_finite_step(loss, gradient):
    model = tiny_model()
    stepper = make_stepper(model, TASKS, f"{loss}+{gradient}", held_out=held_out)
    x, y = batch()
    for iteration in range(2):
        model.zero_grad(set_to_none=True)
        result = stepper.step(x, y, epoch=1, iteration=iteration)
    assert result.loss_weights is not None and torch.isfinite(result.loss_weights).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{loss}+{gradient}: {name}"


@pytest.mark.parametrize("loss", LOSS_METHODS)
def test_a_combination_aggregates_the_gradients_of_the_weighted_losses(loss):
    # loss+rgw with RGW's weights replaced by one-hot (c_bernoulli): the shared update is lambda_k * g_k
    entries = {"rgw": {"distribution": "c_bernoulli"}}
    model, reference = tiny_model(), tiny_model()
    stepper = make_stepper(model, TASKS, f"{loss}+rgw", entries=entries, held_out=held_out)
    x, y = batch()
    result = stepper.step(x, y)
    hot = int(result.grad_weights.argmax())
    outputs = reference(x)
    task_loss = torch.nn.functional.cross_entropy(outputs[hot], y[:, hot])
    expected = torch.autograd.grad(task_loss * result.loss_weights[hot], list(reference.encoder.parameters()))
    for p, g in zip(model.encoder.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("method", METHODS)
def test_a_run_stopped_anywhere_resumes_to_exactly_the_same_numbers(method, small_data, tmp_path, monkeypatch):
    # 2 epochs of 4 steps, stopped by SIGTERM after step 2 of epoch 1, by a crash after epoch 1's checkpoint and by
    # SIGTERM after step 2 of epoch 2: every resume continues the same shuffle, sums, states and random streams.
    import signal

    from mtlrepro.interrupt import Interrupted
    from mtlrepro.step import Stepper
    from mtlrepro.train import train

    spec = spec_for(method, epochs=2)
    straight = train(spec, small_data, tmp_path / "straight", progress=False, device="cpu")

    real_step = Stepper.step

    def step_then_sigterm(self, x, y, epoch=1, iteration=0, rows=None):
        result = real_step(self, x, y, epoch=epoch, iteration=iteration, rows=rows)
        if iteration in (1, 5):
            assert callable(signal.getsignal(signal.SIGTERM)), "train() must handle SIGTERM while it runs"
            signal.raise_signal(signal.SIGTERM)
        return result

    def crash_after_first_epoch(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Stepper, "step", step_then_sigterm)
    run = tmp_path / "resumed"
    with pytest.raises(Interrupted, match="in epoch 1 at step 2"):
        train(spec, small_data, run, progress=False, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(spec, small_data, run, progress=False, device="cpu", on_checkpoint=crash_after_first_epoch)
    with pytest.raises(Interrupted, match="in epoch 2 at step 2"):
        train(spec, small_data, run, progress=False, device="cpu")
    resumed = train(spec, small_data, run, progress=False, device="cpu")
    assert (resumed["provenance"]["resumed_from_epoch"], resumed["provenance"]["resumed_from_step"]) == (1, 2)
    strip = lambda r: [{k: v for k, v in e.items() if k != "seconds"} for e in r["epochs"]]  # noqa: E731
    assert strip(resumed) == strip(straight)
    assert resumed["final"] == straight["final"]
    assert resumed["timing"]["iterations"] == straight["timing"]["iterations"] == 8
    assert all(torch.isfinite(torch.tensor(list(e["train_loss"].values()))).all() for e in straight["epochs"])
    described = {m["name"]: m for m in straight["methods"]}
    assert "heads" in described[method]["options"]


def write_config(tmp_path, methods, entries):
    config = small_config(methods=methods)
    config["methods"].update(entries)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("methods", "entries", "message"),
    [
        (["rlw"], {"rlw": {"temperature": 2.0}}, "methods.rlw.temperature: unknown option"),
        (["rlw"], {"rlw": {"scale": 3}}, "methods.rlw.scale: 3 is not one of 'simplex', 'tasks', 'free'"),
        (["rgw"], {"rgw": {"grad_wrt": 1}}, "methods.rgw.grad_wrt: 1 is not one of 'params', 'representation'"),
        (["ew"], {"ew": {"grad_wrt": "representation"}}, "methods.ew.grad_wrt: 'representation' is not possible"),
        (["rgw+rlw"], {}, r"studies.small.methods\[0\]: in the combination 'rgw\+rlw' the first method must be"),
        (["rlw+ew"], {}, r"studies.small.methods\[0\]: in the combination 'rlw\+ew' the first method must be"),
    ],
)
def test_bad_method_config_is_one_message_naming_the_key_and_exit_2(tmp_path, capsys, methods, entries, message):
    path = write_config(tmp_path, methods, entries)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_run_record_states_where_weights_act_and_their_scale(small_data, tmp_path):
    from mtlrepro.train import train

    record = train(spec_for("rlw+rgw", epochs=1), small_data, tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["methods"] == json.loads(json.dumps(record["methods"]))
    rlw, rgw = on_disk["methods"]
    assert rlw["options"]["scale"] == "simplex" and rlw["options"]["heads"] == "weighted"
    assert rgw["options"]["heads"] == "unweighted" and rgw["options"]["grad_wrt"] == "params"


@pytest.mark.parametrize("expression", METHODS)
def test_weights_have_the_declared_scale(expression):
    cls = registry()[expression]
    scale = getattr(cls.Options(), "scale", None)
    model = tiny_model()
    stepper = make_stepper(model, TASKS, expression, held_out=held_out)
    x, y = batch()
    result = stepper.step(x, y)
    weights = result.loss_weights if cls.kind == LOSS else result.grad_weights
    if scale in ("simplex", "tasks") and weights is not None:
        target = 1.0 if scale == "simplex" else float(len(TASKS))
        torch.testing.assert_close(weights.sum(), torch.tensor(target, dtype=weights.dtype))


@pytest.mark.parametrize("scale", ["simplex", "tasks"])
@pytest.mark.parametrize("expression", [m for m in METHODS if "scale" in registry()[m].Options.__dataclass_fields__])
def test_the_scale_option_switches_every_method_that_has_it(expression, scale):
    stepper = make_stepper(tiny_model(), TASKS, expression, entries={expression: {"scale": scale}}, held_out=held_out)
    result = stepper.step(*batch())
    weights = result.loss_weights if registry()[expression].kind == LOSS else result.grad_weights
    target = 1.0 if scale == "simplex" else float(len(TASKS))
    torch.testing.assert_close(weights.sum(), torch.tensor(target, dtype=weights.dtype))


def test_own_parameters_train_in_their_own_group_without_weight_decay(small_data):
    from mtlrepro.train import build_methods, make_optimizer

    spec = spec_for("uw+gradnorm", weight_decay=0.01)
    methods = build_methods(spec, 2, torch.device("cpu"))
    model = tiny_model(2)
    optimizer = make_optimizer(model, methods, spec.training)
    model_group, *own = optimizer.param_groups
    assert model_group["weight_decay"] == 0.01 and model_group["lr"] == spec.training.lr
    assert [group["lr"] for group in own] == [m.lr for m in methods]
    assert all(group["weight_decay"] == 0.0 for group in own)
    assert [list(group["params"]) for group in own] == [list(m.parameters()) for m in methods]


def test_representation_gradients_need_an_architecture_with_one_shared_representation(monkeypatch):
    from mtlrepro import archs
    from mtlrepro.errors import ConfigError
    from mtlrepro.studies import expand

    class Columns(torch.nn.Module):
        """An architecture whose heads read different tensors (as cross-stitch does)."""

    monkeypatch.setitem(archs.ARCHS, "columns", Columns)
    config = small_config(methods=("mgda", "rlw+pcgrad"))
    config["studies"]["small"]["arch"] = "columns"
    with pytest.raises(ConfigError, match=r"studies.small.methods\[0\]: 'mgda' asks for representation gradients"):
        expand(config)
    config["studies"]["small"]["methods"] = ["ew", "rlw+pcgrad"]  # parameter gradients: allowed
    assert len(expand(config)["small"].runs) == 2


def test_planning_and_reporting_never_import_training():
    import subprocess

    code = (
        "import sys, mtlrepro.studies, mtlrepro.config, mtlrepro.run, mtlrepro.report.outputs, "
        "mtlrepro.report.evidence, mtlrepro.analysis.flatness, mtlrepro.weighting; "
        "mtlrepro.weighting.registry(); "
        "bad = [m for m in ('mtlrepro.train', 'mtlrepro.step') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
