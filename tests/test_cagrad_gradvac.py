"""CAGrad and GradVac against independent references.

CAGrad: the primal problem of Liu et al. (2021) solved by scipy (max-min
improvement in the ball), the ball itself, and torchjd's CAGrad (scale
normalised). GradVac: torchjd's GradVac under the same partner orders, on the
first step and over several steps (EMA state), and the paper's property that a
corrected pair meets its target cosine.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torchjd.aggregation import GradVac as TorchjdGradVac
from torchjd.autojac import jac_to_grad, mtl_backward

from mtlrepro.errors import ConfigError
from mtlrepro.weighting import parse_method
from mtlrepro.weighting.cagrad import CAGrad, cagrad_weights, rescale_factor
from mtlrepro.weighting.gradvac import (
    gradvac_coefficients,
    gradvac_direction,
    group_sizes,
    partner_orders,
)

from conftest import TASKS, batch, gradient_cases, losses_of, make_stepper, tiny_model

DIM = 40


CASES, IDS = gradient_cases(seed_base=2000)  # generator seeds 2000 * n_tasks + seed
C = 0.4


def primal_optimum(grads: torch.Tensor, c: float) -> float:
    """max_d min_i g_i . d  s.t. ||d - g_0|| <= c ||g_0|| (Liu et al. 2021, Sec. 3.1), by scipy SLSQP.

    The primal is solved in the span of the gradients, d = G^T beta (projecting any d onto that span keeps
    every g_i . d and does not increase ||d - g_0||, so the optimum is the same), over (beta, t) in R^(T+1).
    """
    gram = (grads @ grads.T).numpy()
    n = gram.shape[0]
    mean = np.full(n, 1.0 / n)
    radius2 = c * c * (mean @ gram @ mean)
    start = np.concatenate([mean, [(gram @ mean).min()]])
    constraints = [
        {"type": "ineq", "fun": lambda v: gram @ v[:-1] - v[-1], "jac": lambda v: np.hstack([gram, -np.ones((n, 1))])},
        {
            "type": "ineq",
            "fun": lambda v: radius2 - (v[:-1] - mean) @ gram @ (v[:-1] - mean),
            "jac": lambda v: np.concatenate([-2 * gram @ (v[:-1] - mean), [0.0]]),
        },
    ]
    res = minimize(
        lambda v: -v[-1],
        start,
        jac=lambda v: np.concatenate([np.zeros(n), [-1.0]]),
        constraints=constraints,
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 5000},
    )
    return -float(res.fun)


# --------------------------------------------------------------------------- CAGrad


@pytest.mark.parametrize(("n_tasks", "kind", "grads"), CASES, ids=IDS)
def test_cagrad_direction_solves_the_conflict_averse_primal(n_tasks, kind, grads):
    d = cagrad_weights(grads @ grads.T, C) @ grads  # rescale 0: the d of Algorithm 1
    g0 = grads.mean(0)
    # in the ball, on its boundary (the dual optimum has g_w != 0 here)
    assert math.isclose(float((d - g0).norm()), C * float(g0.norm()), rel_tol=1e-9)
    # and it maximises the worst improvement over that ball
    best = primal_optimum(grads, C)
    scale = float(grads.norm(dim=1).max() * g0.norm())
    assert abs(float((grads @ d).min()) - best) <= 1e-7 * scale


def test_cagrad_fixed_examples_and_rescaling():
    grads = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=torch.float64)
    g0 = grads.mean(0)
    # c = 0: plain gradient descent on the average loss
    torch.testing.assert_close(cagrad_weights(grads @ grads.T, 0.0) @ grads, g0)
    # rescale 1 / 2 divide the direction (and the weights) by 1 + c^2 / 1 + c (original code, LibMTL)
    method = CAGrad(2, CAGrad.Options(c=C, rescale=1), torch.Generator())
    plain = CAGrad(2, CAGrad.Options(c=C, rescale=0), torch.Generator())
    a, b = method.aggregate(grads, None), plain.aggregate(grads, None)
    torch.testing.assert_close(a.direction * (1 + C * C), b.direction)
    torch.testing.assert_close(a.weights * (1 + C * C), b.weights)
    assert rescale_factor(C, 2) == 1 + C and rescale_factor(C, 0) == 1.0
    # weights: 1/T + c ||g0|| / ||g_w|| w, w on the simplex, so they sum to 1 + c ||g0|| / ||g_w||
    assert float(b.weights.min()) >= 0.5 - 1e-12


def test_cagrad_matches_torchjd_up_to_its_solver_tolerance():
    pytest.importorskip("cvxpy")
    pytest.importorskip("clarabel")
    from torchjd.aggregation import CAGrad as TorchjdCAGrad

    # torchjd's CAGrad is Algorithm 1 without rescaling: compare with rescale 0. Its cvxpy solve is accurate to
    # about 1e-4 relative (measured; ours matches the scipy primal to 1e-12), hence rtol 1e-3.
    for _, _, grads in CASES:
        ours = CAGrad(grads.shape[0], CAGrad.Options(c=C, rescale=0), torch.Generator()).aggregate(grads, None)
        theirs = TorchjdCAGrad(c=C)(grads)
        assert float((ours.direction - theirs).norm()) <= 1e-3 * float(theirs.norm())


def test_cagrad_options():
    spec = parse_method("cagrad", {}, "x").gradient
    assert spec.options["c"] == 0.4 and spec.options["rescale"] == 1 and spec.options["grad_wrt"] == "params"
    with pytest.raises(ConfigError, match=r"methods\.cagrad\.rescale: 3 is not one of 0, 1, 2"):
        parse_method("cagrad", {"cagrad": {"rescale": 3}}, "x")
    with pytest.raises(ConfigError, match="c must be non-negative"):
        parse_method("cagrad", {"cagrad": {"c": -0.1}}, "x")
    with pytest.raises(ConfigError, match="rep_reduce: 'batch_sum' is not possible"):
        parse_method("cagrad", {"cagrad": {"grad_wrt": "representation", "rep_reduce": "batch_sum"}}, "x")


# --------------------------------------------------------------------------- GradVac


@pytest.mark.parametrize("beta", [0.5, 1e-2])
@pytest.mark.parametrize(("n_tasks", "kind", "grads"), CASES[::2], ids=IDS[::2])
def test_gradvac_matches_torchjd_over_several_steps(n_tasks, kind, grads, beta):
    # torchjd's GradVac also sums the corrected gradients (same scale) and draws one randperm(T - 1) per task from
    # the global generator, in the same sequence as ours from a generator with the same seed; 1e-8 in the same
    # denominators. Five steps on perturbed copies of the matrix exercise the EMA state.
    generator = torch.Generator().manual_seed(21)
    theirs = TorchjdGradVac(beta=beta)
    noise = torch.Generator().manual_seed(5)
    targets = torch.zeros(1, n_tasks, n_tasks, dtype=torch.float64)
    torch.manual_seed(21)
    for _ in range(5):
        step = grads + 0.3 * grads.norm(dim=1, keepdim=True) / DIM**0.5 * torch.randn(
            grads.shape, generator=noise, dtype=torch.float64
        )
        orders = partner_orders(n_tasks, generator, step.device)
        ours, targets, _ = gradvac_direction(step, [DIM], targets, orders, beta)
        torch.testing.assert_close(ours, theirs(step), rtol=1e-9, atol=1e-9 * float(step.norm()))
    torch.testing.assert_close(targets[0], theirs.gramian_weighting._phi_t, rtol=1e-9, atol=1e-12)


def test_gradvac_corrected_pair_meets_its_target_cosine():
    g = torch.Generator().manual_seed(8)
    grads = torch.randn(2, DIM, generator=g, dtype=torch.float64)
    grads[1] = -0.5 * grads[0] + torch.randn(DIM, generator=g, dtype=torch.float64)
    gram = grads @ grads.T
    orders = partner_orders(2, g, grads.device)
    cosine = float(gram[0, 1] / (gram[0, 0] * gram[1, 1]).sqrt())
    for target in (0.0, 0.3, 0.7):
        assert cosine < target
        targets = torch.full((1, 2, 2), target, dtype=torch.float64)
        coef, new_targets, corrections = gradvac_coefficients(gram[None], targets, orders, beta=0.25)
        corrected = coef[0] @ grads
        for i, j in ((0, 1), (1, 0)):
            reached = torch.nn.functional.cosine_similarity(corrected[i], grads[j], dim=0)
            assert math.isclose(float(reached), target, abs_tol=1e-7)
        # the EMA moves the target towards the observed (pre-correction) cosine
        torch.testing.assert_close(new_targets[0, 0, 1], torch.tensor(0.75 * target + 0.25 * cosine).double())
        assert corrections.tolist() == [1.0, 1.0]
    # target 0 is PCGrad's projection: the corrected gradient is orthogonal to the other one (up to the 1e-8
    # that GradVac adds to its denominators, a relative 1e-8 / ||g_j||)
    coef, _, _ = gradvac_coefficients(gram[None], torch.zeros(1, 2, 2, dtype=torch.float64), orders, beta=0.5)
    assert abs(float((coef[0] @ grads)[0] @ grads[1])) < 1e-8 * float(gram.diagonal().max())


def test_gradvac_ema_update_always_or_only_on_conflict():
    # an aligned pair (cosine above the target 0): no correction; "always" still moves the target, "on_conflict" not
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    gram = (grads @ grads.T)[None]
    orders = partner_orders(2, torch.Generator().manual_seed(0), grads.device)
    zero = torch.zeros(1, 2, 2, dtype=torch.float64)
    coef, always, corrections = gradvac_coefficients(gram, zero, orders, beta=0.1, ema_update="always")
    torch.testing.assert_close(coef[0], torch.eye(2, dtype=torch.float64))
    assert corrections.sum() == 0
    torch.testing.assert_close(always[0, 0, 1], torch.tensor(0.1 / math.sqrt(2), dtype=torch.float64))
    _, on_conflict, _ = gradvac_coefficients(gram, zero, orders, beta=0.1, ema_update="on_conflict")
    torch.testing.assert_close(on_conflict, zero)


def test_gradvac_groups_apply_it_block_by_block():
    # group "all_matrix" = GradVac on each parameter block separately, with the same partner orders
    g = torch.Generator().manual_seed(9)
    grads = torch.randn(4, 30, generator=g, dtype=torch.float64)
    grads[1, :10] = -grads[0, :10]
    sizes = [10, 5, 15]
    targets = 0.2 * torch.rand(3, 4, 4, generator=g, dtype=torch.float64)
    orders = partner_orders(4, g, grads.device)
    direction, new_targets, _ = gradvac_direction(grads, sizes, targets, orders, 0.3)
    blocks = torch.split(grads, sizes, dim=1)
    for k, block in enumerate(blocks):
        alone, alone_targets, _ = gradvac_direction(block, [block.shape[1]], targets[k : k + 1], orders, 0.3)
        torch.testing.assert_close(direction[sum(sizes[:k]) : sum(sizes[: k + 1])], alone)
        torch.testing.assert_close(new_targets[k], alone_targets[0])


def test_gradvac_options():
    spec = parse_method("gradvac", {}, "x").gradient
    assert spec.options["beta"] == 1e-2 and spec.options["ema_update"] == "always"
    assert spec.options["group"] == "whole_model" and spec.options["grad_wrt"] == "params"
    with pytest.raises(ConfigError, match="needs grad_wrt: params"):
        parse_method("gradvac", {"gradvac": {"grad_wrt": "representation", "group": "all_layer"}}, "x")
    with pytest.raises(ConfigError, match="heads: 'weighted' is not possible"):
        parse_method("gradvac", {"gradvac": {"heads": "weighted"}}, "x")
    with pytest.raises(ConfigError, match="beta must be in"):
        parse_method("gradvac", {"gradvac": {"beta": 1.5}}, "x")


# --------------------------------------------------------------------------- the whole step on a tiny HPS


def test_cagrad_step_sets_the_weighted_sum_of_the_parameter_gradients():
    model = tiny_model()
    reference = copy.deepcopy(model)
    x, y = batch(1)
    result = make_stepper(model, TASKS, "cagrad").step(x, y)
    # independent reference: the per-task Jacobian of the shared parameters, the primal optimum, the rescaling
    _, losses = losses_of(reference, x, y)
    shared = list(reference.encoder.parameters())
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)]) for t in range(3)
    ]
    jacobian = torch.stack(rows)
    weights = result.grad_weights
    direction = weights @ jacobian
    undone = direction * (1 + C * C)  # the default rescale 1: d / (1 + c^2)
    g0 = jacobian.mean(0)
    assert math.isclose(float((undone - g0).norm()), C * float(g0.norm()), rel_tol=1e-8)
    best = primal_optimum(jacobian, C)
    assert abs(float((jacobian @ undone).min()) - best) <= 1e-6 * float(jacobian.norm(dim=1).max() * g0.norm())
    flat = torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters()])
    torch.testing.assert_close(flat, direction)
    for t in range(3):  # heads: their own unweighted gradient
        own = torch.autograd.grad(losses[t], list(reference.heads[t].parameters()), retain_graph=True)
        for p, e in zip(model.heads[t].parameters(), own, strict=True):
            torch.testing.assert_close(p.grad, e)


def test_gradvac_steps_match_torchjd_through_the_whole_step():
    model = tiny_model()
    reference = copy.deepcopy(model)
    stepper = make_stepper(model, TASKS, "gradvac", seeds=(11, 12))
    theirs = TorchjdGradVac(beta=1e-2)
    torch.manual_seed(12)  # torchjd draws its orders from the global generator, ours from seed 12
    for step in range(3):
        x, y = batch(step)
        model.zero_grad(set_to_none=True)
        result = stepper.step(x, y, iteration=step)
        reference.zero_grad(set_to_none=True)
        z, losses = losses_of(reference, x, y)
        heads = [list(h.parameters()) for h in reference.heads]
        shared = list(reference.encoder.parameters())
        mtl_backward(list(losses), z, tasks_params=heads, shared_params=shared, retain_graph=True)
        jac_to_grad(shared, theirs)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, reference.get_parameter(name).grad, msg=name)
    assert result.grad_weights is None and result.diagnostics["gradvac.corrections"].shape == (3,)
    torch.testing.assert_close(stepper.aggregator.rho_hat[0], theirs.gramian_weighting._phi_t)


def test_gradvac_groups_follow_the_model_modules():
    model = tiny_model()
    shared = list(model.shared_parameters())
    assert group_sizes(model, "all_matrix") == [p.numel() for p in shared]
    assert group_sizes(model, "whole_model") == [sum(p.numel() for p in shared)]
    # LeNet: two convolutions and one linear layer own the shared parameters (weight + bias each)
    assert group_sizes(model, "all_layer") == [shared[0].numel() + shared[1].numel(), 20 * 10 * 25 + 20, 720 * 50 + 50]


@pytest.mark.parametrize(
    ("name", "options"),
    [("cagrad", {}), ("gradvac", {"group": "all_layer", "beta": 0.5}), ("gradvac", {})],
)
def test_state_round_trip_through_a_step_gives_identical_subsequent_steps(name, options):
    x0, y0 = batch(0)
    steppers = []
    for seeds in ((11, 12), (11, 99)):  # the fresh copy starts from another seed: only the state makes them agree
        model = tiny_model()
        steppers.append((model, make_stepper(model, TASKS, name, {name: options}, seeds=seeds)))
    (model_a, a), (model_b, b) = steppers
    a.step(x0, y0)  # advance a's state (EMA targets, sized lazily for all_layer; the generator)
    b.aggregator.load_state_dict(a.aggregator.state_dict())
    if name == "gradvac":
        assert torch.equal(a.aggregator.rho_hat, b.aggregator.rho_hat)
        assert a.aggregator.rho_hat.shape[0] == (3 if options.get("group") == "all_layer" else 1)
    for step in range(1, 3):
        x, y = batch(step)
        model_a.zero_grad(set_to_none=True)
        model_b.zero_grad(set_to_none=True)
        a.step(x, y)
        b.step(x, y)
        for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
            assert torch.equal(pa.grad, pb.grad)
