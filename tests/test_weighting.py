"""Weighting semantics checked against torchjd (an independent implementation) and RW Algorithm 1."""

import copy

import pytest
import torch
from torchjd.aggregation import Mean, Random
from torchjd.autojac import jac_to_grad, mtl_backward

from mtlrepro.errors import ConfigError
from mtlrepro.weighting import parse_method, registry
from mtlrepro.weighting.base import GRADIENT, LOSS

from conftest import TASKS, assert_same_grads, grads_of, losses_of, make_stepper

T = len(TASKS)


def stepper_for(model, expression, seeds=(11, 12), entries=None):
    return make_stepper(model, TASKS, expression, entries, seeds)


def reference_mtl(model, x, y, aggregator, loss_weights=None):
    """torchjd: per-task Jacobian of the shared parameters, aggregated; heads get their own gradient."""
    z, losses = losses_of(model, x, y)
    if loss_weights is not None:
        losses = losses * loss_weights
    heads = [list(h.parameters()) for h in model.heads]
    shared = list(model.encoder.parameters())
    mtl_backward(list(losses), z, tasks_params=heads, shared_params=shared, retain_graph=True)
    jac_to_grad(shared, aggregator)
    return grads_of(model)


def test_rgw_matches_torchjd_random_aggregator(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper_for(model, "rgw", seeds=(0, 5)).step(x, y)
    torch.manual_seed(5)  # torchjd's Random draws from the global generator
    assert_same_grads(grads_of(model), reference_mtl(reference, x, y, Random()))


def test_rgw_heads_get_their_own_unweighted_gradient(model_and_batch):
    # RW Algorithm 1, line 10 (RGW): psi_t <- psi_t - eta * grad_psi_t l_t, no weight.
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    weights = stepper_for(model, "rgw").step(x, y).grad_weights
    assert weights is not None and not torch.allclose(weights, torch.full((T,), 1 / T, dtype=weights.dtype))
    _, losses = losses_of(reference, x, y)
    for t in range(T):
        expected = torch.autograd.grad(losses[t], list(reference.heads[t].parameters()), retain_graph=True)
        for p, g in zip(model.heads[t].parameters(), expected, strict=True):
            torch.testing.assert_close(p.grad, g)


def test_ew_shared_gradient_is_torchjd_mean_and_heads_see_one_over_t(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper_for(model, "ew").step(x, y)
    expected = reference_mtl(reference, x, y, Mean())
    for name, g in grads_of(model).items():
        scale = 1.0 if name.startswith("encoder.") else 1.0 / T  # torchjd heads get unweighted grads
        torch.testing.assert_close(g, expected[name] * scale, msg=name)


def test_ew_with_weights_summing_to_t_is_the_plain_loss_sum(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper_for(model, "ew", entries={"ew": {"scale": "tasks"}}).step(x, y)
    _, losses = losses_of(reference, x, y)
    losses.sum().backward()
    assert_same_grads(grads_of(model), grads_of(reference))


def test_rlw_is_gradient_of_randomly_weighted_loss_for_every_parameter(model_and_batch):
    # RW Algorithm 1 (RLW): theta and psi_t both see lambda = softmax(N(0, I)).
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    result = stepper_for(model, "rlw", seeds=(9, 0)).step(x, y)
    lw, gw = result.loss_weights, result.grad_weights
    expected_w = torch.softmax(torch.randn(T, generator=torch.Generator().manual_seed(9), dtype=torch.float64), -1)
    torch.testing.assert_close(lw, expected_w)
    assert gw is None
    _, losses = losses_of(reference, x, y)
    (losses * expected_w).sum().backward()
    assert_same_grads(grads_of(model), grads_of(reference))


def test_rlw_plus_rgw_weights_losses_then_aggregates(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper_for(model, "rlw+rgw", seeds=(3, 4)).step(x, y)
    lw = torch.softmax(torch.randn(T, generator=torch.Generator().manual_seed(3), dtype=torch.float64), -1)
    torch.manual_seed(4)
    assert_same_grads(grads_of(model), reference_mtl(reference, x, y, Random(), loss_weights=lw))


def test_representation_mode_gives_the_same_shared_update_for_a_weighted_sum(model_and_batch):
    # sum_t lambda_t dl_t/dtheta = (dz/dtheta)^T sum_t lambda_t dl_t/dz: RGW is linear in G.
    model, x, y = model_and_batch
    other = copy.deepcopy(model)
    stepper_for(model, "rgw").step(x, y)
    stepper = stepper_for(other, "rgw", entries={"rgw": {"grad_wrt": "representation"}})
    stepper.step(x, y)
    assert stepper._matrix is None  # no parameter Jacobian was built
    assert_same_grads(grads_of(model), grads_of(other))


def test_gradient_matrix_is_allocated_once(model_and_batch):
    model, x, y = model_and_batch
    stepper = stepper_for(model, "rgw")
    stepper.step(x, y)
    first = stepper._matrix.data_ptr()
    model.zero_grad()
    stepper.step(x, y)
    assert stepper._matrix.data_ptr() == first
    assert stepper._matrix.shape == (T, sum(p.numel() for p in model.encoder.parameters()))


def test_registry_holds_one_method_per_module_with_its_kind():
    methods = registry()
    assert {"ew", "rlw", "rgw"} <= set(methods)
    assert methods["ew"].kind == LOSS and methods["rlw"].kind == LOSS and methods["rgw"].kind == GRADIENT
    for name, cls in methods.items():
        assert cls.name == name
        assert cls.__module__ == f"mtlrepro.weighting.{name}"


def test_method_sources_are_the_module_and_its_helpers():
    rlw = parse_method("rlw", {}, "x").loss
    names = sorted(p.name for p in rlw.sources)
    assert names == ["_random_weights.py", "base.py", "rlw.py"]
    ew = parse_method("ew", {}, "x").loss
    assert "rlw.py" not in {p.name for p in ew.sources}


@pytest.mark.parametrize(
    ("expression", "entries", "message"),
    [
        ("pcgradd", {}, "unknown method 'pcgradd'"),
        ("rgw+rlw", {}, "first method must be a loss weighting"),
        ("ew+rlw", {}, "first method must be a loss weighting"),
        ("ew+rlw+rgw", {}, "not a method or a combination"),
        ("rlw", {"rlw": {"distribution": "gaussian"}}, "methods.rlw.distribution: 'gaussian' is not one of"),
        ("rlw", {"rlw": {"distrib": "normal"}}, "methods.rlw.distrib: unknown option"),
        ("mine", {"mine": {"weighting": "nope"}}, "methods.mine: unknown weighting method 'nope'"),
    ],
)
def test_bad_method_expressions_name_the_key(expression, entries, message):
    with pytest.raises(ConfigError, match=message):
        parse_method(expression, entries, "studies.s.methods[0]")


def test_named_entry_selects_a_distribution():
    spec = parse_method("rlw_dir", {"rlw_dir": {"weighting": "rlw", "distribution": "dirichlet"}}, "x")
    assert spec.loss.cls.name == "rlw" and spec.loss.options["distribution"] == "dirichlet"
