"""IMTL-G, IMTL-L and the IMTL hybrid against the paper's properties and torchjd (IMTLG, IMTLL).

Tolerances: float64 throughout. The equal-projection property is checked to
1e-9 relative to the largest projection (the closed form is exact up to the
conditioning of ``D U^T``); torchjd's IMTLG (pseudo-inverse of the Gramian, a
different formula for the same weights) to 1e-8; gradients through the step
to ``torch.testing.assert_close``'s float64 defaults (rtol 1e-7, atol 1e-7).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torchjd.aggregation import IMTLG as TorchjdIMTLG
from torchjd.autojac import jac_to_grad, mtl_backward
from torchjd.scalarization import IMTLL as TorchjdIMTLL

from mtlrepro.errors import ConfigError
from mtlrepro.weighting import parse_method
from mtlrepro.weighting._imtl import _least_squares, imtl_g_weights, imtl_l_terms

from conftest import TASKS, assert_same_grads, grads_of, losses_of, make_model_and_batch, make_stepper

DIM = 20


def gradient_matrix(kind: str, n_tasks: int, seed: int) -> torch.Tensor:
    """A [T x DIM] float64 matrix: random, a conflicting pair, nearly parallel rows, or rows of very different norms."""
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(n_tasks, DIM, generator=gen, dtype=torch.float64)
    if kind == "conflicting":
        grads[1] = -0.8 * grads[0] + 0.2 * torch.randn(DIM, generator=gen, dtype=torch.float64)
    elif kind == "near_parallel":
        base = torch.randn(DIM, generator=gen, dtype=torch.float64)
        grads = base + 0.05 * torch.randn(n_tasks, DIM, generator=gen, dtype=torch.float64)
    elif kind == "scaled":
        grads = grads * torch.logspace(-2, 2, n_tasks, dtype=torch.float64)[:, None]
    return grads


KINDS = ("random", "conflicting", "near_parallel", "scaled")


# --------------------------------------------------------------------------- IMTL-G: the pure function


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("kind", KINDS)
def test_imtl_g_aggregate_projects_equally_on_every_unit_gradient(n_tasks, kind):
    # IMTL Sec. 3.1: d = sum_t alpha_t g_t with d . u_1 = d . u_t for every t, sum_t alpha_t = 1.
    for seed in range(3):
        grads = gradient_matrix(kind, n_tasks, seed)
        alpha = imtl_g_weights(grads @ grads.T)
        units = grads / grads.norm(dim=1, keepdim=True)
        projections = units @ (alpha @ grads)
        assert torch.isclose(alpha.sum(), torch.ones((), dtype=torch.float64), atol=1e-12)
        spread = (projections - projections[0]).abs().max() / projections.abs().max()
        assert spread < 1e-9, (kind, n_tasks, seed, projections)
        assert (projections > 0).all()  # equal projections of a non-zero aggregate, all positive here


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("kind", KINDS)
def test_imtl_g_weights_and_direction_match_torchjd(n_tasks, kind):
    # torchjd normalises pinv(K) ||g|| to sum 1; ours sums to 1 by construction: same scale, no rescaling needed.
    for seed in range(3):
        grads = gradient_matrix(kind, n_tasks, seed)
        gramian = grads @ grads.T
        alpha = imtl_g_weights(gramian)
        expected = TorchjdIMTLG().gramian_weighting(gramian)
        torch.testing.assert_close(alpha, expected, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(alpha @ grads, TorchjdIMTLG()(grads), rtol=1e-8, atol=1e-8)


def test_imtl_g_weights_may_be_negative():
    # Two nearly opposite gradients of very different norms: the closed form gives a negative weight.
    grads = torch.tensor([[1.0, 0.0], [-1.0, 0.3]], dtype=torch.float64) * torch.tensor([[1.0], [10.0]])
    alpha = imtl_g_weights(grads @ grads.T)
    t2 = grads[1] / grads[1].norm()
    direction = alpha @ grads
    torch.testing.assert_close(direction @ grads[0] / grads[0].norm(), direction @ t2)
    assert torch.isclose(alpha.sum(), torch.ones((), dtype=torch.float64))
    assert (alpha > 0).all()  # for T = 2 both weights stay positive; a T = 3 case below goes negative
    grads3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    grads3 = torch.cat([grads3, torch.zeros(3, 1, dtype=torch.float64)], dim=1)
    grads3[2, 2] = 0.1
    alpha3 = imtl_g_weights(grads3 @ grads3.T)
    assert (alpha3 < 0).any() and torch.isclose(alpha3.sum(), torch.ones((), dtype=torch.float64))


def test_imtl_g_singular_system_falls_back_to_the_pseudo_inverse():
    g = torch.randn(2, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # identical task gradients: D U^T = 0; every alpha summing to 1 gives the same d = g_1
    same = torch.stack([g[0], g[0]])
    alpha = imtl_g_weights(same @ same.T)
    assert torch.isfinite(alpha).all()
    torch.testing.assert_close(alpha @ same, g[0])
    # more tasks than dimensions: the system is singular; weights stay finite and sum to 1
    wide = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha = imtl_g_weights(wide @ wide.T)
    assert torch.isfinite(alpha).all() and torch.isclose(alpha.sum(), torch.ones((), dtype=torch.float64))
    # a task without gradient: no NaN
    zero = torch.cat([g, torch.zeros(1, DIM, dtype=torch.float64)])
    assert torch.isfinite(imtl_g_weights(zero @ zero.T)).all()
    assert torch.equal(imtl_g_weights(torch.ones(1, 1, dtype=torch.float64)), torch.ones(1, dtype=torch.float64))


def test_least_squares_fallback_is_the_pseudo_inverse_solution():
    gen = torch.Generator().manual_seed(4)
    rank_two = torch.randn(4, 2, generator=gen, dtype=torch.float64) @ torch.randn(
        2, 4, generator=gen, dtype=torch.float64
    )
    rhs = torch.randn(4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_least_squares(rank_two, rhs), torch.linalg.pinv(rank_two) @ rhs, rtol=1e-6, atol=1e-6)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    assert torch.equal(_least_squares(zero, torch.ones(3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))


def test_imtl_g_is_float32_friendly():
    grads = gradient_matrix("random", 5, 3)
    alpha32 = imtl_g_weights((grads @ grads.T).float())
    assert alpha32.dtype == torch.float32
    torch.testing.assert_close(alpha32.double(), imtl_g_weights(grads @ grads.T), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- IMTL-L: the pure function


def test_imtl_l_terms_match_torchjd_scalarizer():
    losses = torch.tensor([0.3, 2.0, 5.0], dtype=torch.float64)
    ours = torch.tensor([0.1, -0.4, 0.7], dtype=torch.float64, requires_grad=True)
    reference = TorchjdIMTLL(3).double()
    with torch.no_grad():
        reference.log_scale.copy_(ours)
    weights, method_loss = imtl_l_terms(ours, losses)
    expected_loss = reference(losses)
    torch.testing.assert_close(method_loss, expected_loss)
    torch.testing.assert_close(weights, torch.exp(ours.detach()))
    method_loss.backward()
    expected_loss.backward()
    torch.testing.assert_close(ours.grad, reference.log_scale.grad)  # e^s L - 1
    torch.testing.assert_close(ours.grad, torch.exp(ours.detach()) * losses - 1)


# --------------------------------------------------------------------------- through the step

T = len(TASKS)


@pytest.fixture
def model_and_batch():
    return make_model_and_batch(batch_size=6)


def stepper_for(model, expression, entries=None):
    stepper = make_stepper(model, TASKS, expression, entries)
    for method in stepper.methods:
        method.double()
    return stepper


def set_log_scale(method, values):
    with torch.no_grad():
        method.log_scale.copy_(torch.as_tensor(values, dtype=method.log_scale.dtype))


def test_imtl_g_params_mode_step_matches_torchjd_mtl_backward(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    result = stepper_for(model, "imtl_g", {"imtl_g": {"grad_wrt": "params"}}).step(x, y)
    z, losses = losses_of(reference, x, y)
    heads = [list(h.parameters()) for h in reference.heads]
    mtl_backward(
        list(losses), z, tasks_params=heads, shared_params=list(reference.encoder.parameters()), retain_graph=True
    )
    jac_to_grad(list(reference.encoder.parameters()), TorchjdIMTLG())
    assert_same_grads(grads_of(model), grads_of(reference))  # heads: their own unweighted gradients
    assert torch.isclose(result.grad_weights.sum(), torch.ones((), dtype=torch.float64))


def test_imtl_g_default_is_representation_mode_and_matches_torchjd_on_z_gradients(model_and_batch):
    # IMTL Algorithm 1: alpha from the gradients of the shared feature z [B x d], applied through the encoder.
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper = stepper_for(model, "imtl_g")
    assert stepper.aggregator.options.grad_wrt == "representation"
    stepper.step(x, y)
    assert stepper._matrix is None  # no parameter Jacobian was built
    z, losses = losses_of(reference, x, y)
    rows = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].reshape(-1) for t in range(T)])
    direction = TorchjdIMTLG()(rows)
    z.backward(direction.view_as(z), inputs=list(reference.encoder.parameters()), retain_graph=True)
    for t in range(T):
        losses[t].backward(inputs=list(reference.heads[t].parameters()), retain_graph=True)
    assert_same_grads(grads_of(model), grads_of(reference))


def test_imtl_l_step_matches_torchjd_scalarizer_for_every_parameter(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper = stepper_for(model, "imtl_l")
    method = stepper.loss_weighting
    assert method.lr == 1e-3 and method.options.scale == "free" and method.options.heads == "weighted"
    set_log_scale(method, [0.2, -0.5, 0.9])
    result = stepper.step(x, y)
    scalarizer = TorchjdIMTLL(T).double()
    set_log_scale(scalarizer, [0.2, -0.5, 0.9])
    _, losses = losses_of(reference, x, y)
    scalarizer(losses).backward()
    assert_same_grads(grads_of(model), grads_of(reference))
    torch.testing.assert_close(method.log_scale.grad, scalarizer.log_scale.grad)
    torch.testing.assert_close(result.loss_weights, torch.exp(torch.tensor([0.2, -0.5, 0.9], dtype=torch.float64)))


def test_imtl_hybrid_is_imtl_l_then_imtl_g(model_and_batch):
    # LibMTL's IMTL: IMTL-G on the gradients of e^s L - s; heads see e^s only; s trained by e^s L - 1.
    model, x, y = model_and_batch
    other = copy.deepcopy(model)
    scales = [0.3, -0.2, 0.6]
    hybrid = stepper_for(model, "imtl")
    set_log_scale(hybrid.aggregator, scales)
    result = hybrid.step(x, y)
    combination = stepper_for(other, "imtl_l+imtl_g")
    set_log_scale(combination.loss_weighting, scales)
    combined = combination.step(x, y)
    assert_same_grads(grads_of(model), grads_of(other))
    torch.testing.assert_close(hybrid.aggregator.log_scale.grad, combination.loss_weighting.log_scale.grad)
    torch.testing.assert_close(result.diagnostics["imtl.alpha"], combined.grad_weights)
    # the direction's weights alpha * e^s; the heads see e^s alone (checked by the equal head gradients above)
    torch.testing.assert_close(result.grad_weights, combined.grad_weights * combined.loss_weights)


def test_imtl_hybrid_params_mode_matches_a_torchjd_reference(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    scales = torch.tensor([0.3, -0.2, 0.6], dtype=torch.float64)
    stepper = stepper_for(model, "imtl", {"imtl": {"grad_wrt": "params"}})
    set_log_scale(stepper.aggregator, scales)
    stepper.step(x, y)
    s = scales.clone().requires_grad_(True)
    z, losses = losses_of(reference, x, y)
    scaled = torch.exp(s) * losses - s
    heads = [list(h.parameters()) for h in reference.heads]
    mtl_backward(
        list(scaled), z, tasks_params=heads, shared_params=list(reference.encoder.parameters()), retain_graph=True
    )
    jac_to_grad(list(reference.encoder.parameters()), TorchjdIMTLG())
    (s_grad,) = torch.autograd.grad(scaled.sum(), s)
    assert_same_grads(grads_of(model), grads_of(reference))
    torch.testing.assert_close(stepper.aggregator.log_scale.grad, s_grad)


def test_imtl_hybrid_in_a_combination_scales_the_weighted_losses(model_and_batch):
    model, x, y = model_and_batch
    stepper = stepper_for(model, "ew+imtl")
    set_log_scale(stepper.aggregator, [0.1, 0.2, 0.3])
    result = stepper.step(x, y)
    _, losses = losses_of(copy.deepcopy(model), x, y)
    s = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    torch.testing.assert_close(stepper.aggregator.log_scale.grad, torch.exp(s) * losses.detach() / T - 1)
    assert torch.isclose(result.diagnostics["imtl.alpha"].sum(), torch.ones((), dtype=torch.float64))


@pytest.mark.parametrize("expression", ["imtl_l", "imtl"])
def test_learned_scales_survive_a_state_round_trip(model_and_batch, expression):
    model, x, y = model_and_batch
    stepper = stepper_for(model, expression)
    method = stepper.methods[0]
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    for _ in range(2):
        model.zero_grad()
        optimizer.zero_grad()
        stepper.step(x, y)
        optimizer.step()
    assert not torch.equal(method.log_scale.detach(), torch.zeros(T, dtype=torch.float64))
    state = copy.deepcopy(method.state_dict())
    fresh_model = copy.deepcopy(model)
    fresh = stepper_for(fresh_model, expression)
    fresh.methods[0].load_state_dict(state)
    model.zero_grad()
    fresh_model.zero_grad()
    method.zero_grad()
    a, b = stepper.step(x, y), fresh.step(x, y)
    assert_same_grads(grads_of(model), grads_of(fresh_model))
    torch.testing.assert_close(method.log_scale.grad, fresh.methods[0].log_scale.grad, rtol=0, atol=0)
    assert torch.equal(
        a.loss_weights if a.loss_weights is not None else a.grad_weights,
        b.loss_weights if b.loss_weights is not None else b.grad_weights,
    )


@pytest.mark.parametrize(
    ("expression", "entries", "message"),
    [
        ("imtl_g", {"imtl_g": {"rep_reduce": "sum"}}, "rep_reduce"),
        ("imtl_l", {"imtl_l": {"lr": 0.0}}, "lr must be positive"),
        ("imtl_l", {"imtl_l": {"grad_wrt": "representation"}}, "loss weighting"),
    ],
)
def test_bad_imtl_options_are_refused(expression, entries, message):
    with pytest.raises(ConfigError, match=message):
        parse_method(expression, entries, "x")
