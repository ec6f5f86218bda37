"""MOML (Ye et al. 2021) as a loss weighting: hypergradient, simplex weights, held-out signal, step path, state.

References used here are independent of the module: finite differences of
the one-step bilevel objective written out directly with
``torch.func.functional_call``, autograd of ``torch.softmax``, and SciPy's
SLSQP for the min-norm (MGDA) problem of the default upper level. torchjd has
no MOML. The min-norm solver itself is the shared Frank-Wolfe solver of
``mgda`` and ``cagrad``, tested in ``test_mgda_pcgrad.py`` (QP reference,
Algorithm 1's two-task closed form, fixed examples); here it is exercised
through MOML. Its tolerance is a certificate: at the relative duality gap
``tol`` the combination ``d`` is within ``sqrt(2 tol) ||d||`` of the min-norm
point ``d*`` and ``||d|| <= ||d*|| / (1 - tol)``.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from mtlrepro.archs import build_model
from mtlrepro.data import Task
from mtlrepro.errors import ConfigError
from mtlrepro.train import held_out_request
from mtlrepro.weighting import parse_method
from mtlrepro.weighting.base import Batch, Need
from mtlrepro.weighting.moml import (
    MGDA_TOL,
    hypergradient_autograd,
    hypergradient_jacobian,
    mgda_combination,
    softmax_vjp,
)

from conftest import digit_tasks, make_stepper

BATCH = 6
INNER_LR = 0.1


def tasks_of(n):
    return [Task(f"t{i}", n_classes=10) for i in range(n)]


def tiny_problem(n_tasks, seed=0):
    """A double-precision HPS LeNet, a training batch and a fixed held-out batch."""
    torch.manual_seed(seed)
    model = build_model("hps", "lenet", (1, 36, 36), digit_tasks(n_tasks)).double()
    x = torch.rand(BATCH, 1, 36, 36, dtype=torch.float64)
    y = torch.randint(10, (BATCH, n_tasks))
    xv = torch.rand(BATCH, 1, 36, 36, dtype=torch.float64)
    yv = torch.randint(10, (BATCH, n_tasks))
    return model, x, y, xv, yv


def ce_losses(outputs, y):
    return torch.stack([F.cross_entropy(o, y[:, t]) for t, o in enumerate(outputs)])


def moml_stepper(model, n_tasks, held, logits=None, expression="moml", **options):
    entries = {"moml": options} if options else None
    stepper = make_stepper(model, tasks_of(n_tasks), expression, entries, held_out=lambda: Batch(*held))
    method = stepper.loss_weighting.double()
    if logits is not None:
        with torch.no_grad():
            method.logits.copy_(logits)
    return stepper, method


def bilevel_objective(model, lam, x, y, xv, yv, task=None):
    """sum_s (or one) L_s^val(theta - inner_lr * grad sum_t lam_t L_t^train(theta)), written out directly."""
    params = dict(model.named_parameters())
    losses = ce_losses(torch.func.functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad((lam * losses).sum(), list(params.values()))
    inner = {n: p.detach() - INNER_LR * g for (n, p), g in zip(params.items(), grads, strict=True)}
    val = ce_losses(torch.func.functional_call(model, inner, (xv,)), yv)
    if task == "all":
        return val
    return val.sum() if task is None else val[task]


def finite_difference(f, point, h=1e-5):
    """Central differences of the scalar function f at ``point`` [T] (error O(h^2) + O(eps/h), about 1e-10 here)."""
    out = torch.zeros_like(point)
    for i in range(point.shape[0]):
        step = torch.zeros_like(point)
        step[i] = h
        out[i] = (f(point + step) - f(point - step)) / (2 * h)
    return out


def qp_min_norm(gram):
    """Reference min-norm weights from SciPy's SLSQP (tight tolerance)."""
    n = gram.shape[0]
    result = minimize(
        lambda g: g @ gram @ g,
        np.full(n, 1.0 / n),
        jac=lambda g: 2 * gram @ g,
        bounds=[(0.0, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda g: g.sum() - 1.0}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return torch.tensor(result.x)


def assert_within_duality_gap(d, exact, tol, slack):
    """``d`` is a min-norm solve stopped at relative duality gap ``tol``; ``exact`` the min-norm point (+- slack)."""
    bound = np.sqrt(2 * tol) * float(d.norm()) + slack
    assert float((d - exact).norm()) <= bound, (float((d - exact).norm()), bound)
    assert float(d.norm()) <= float(exact.norm()) / (1 - tol) + slack


# --------------------------------------------------------------------------- hypergradient


@pytest.mark.parametrize("hypergrad", ["autograd", "jacobian"])
@pytest.mark.parametrize("n_tasks", [2, 3])
def test_hypergradient_matches_finite_differences_of_the_bilevel_objective(hypergrad, n_tasks):
    model, x, y, xv, yv = tiny_problem(n_tasks)
    reference = copy.deepcopy(model)
    alpha = torch.randn(n_tasks, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    stepper, method = moml_stepper(model, n_tasks, (xv, yv), alpha, hypergrad=hypergrad, upper="sum")
    stepper.step(x, y)

    def objective(a):
        return bilevel_objective(reference, torch.softmax(a, 0), x, y, xv, yv).detach()

    expected = finite_difference(objective, alpha)
    # d/dalpha of the sum of held-out losses through the inner step and the softmax (sum upper level)
    torch.testing.assert_close(method.logits.grad, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(method.diagnostics()["hypergrad"], expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("compute", [hypergradient_autograd, hypergradient_jacobian])
def test_per_task_rows_match_finite_differences_in_lambda(compute):
    # the rows dL_s^val/dlambda of the mgda upper level, lambda anywhere (not only on the simplex)
    n_tasks = 3
    model, x, y, xv, yv = tiny_problem(n_tasks, seed=2)
    lam = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    params = dict(model.named_parameters())
    losses = ce_losses(model(x), y)

    def val_losses(replacement):
        return ce_losses(torch.func.functional_call(model, replacement, (xv,)), yv)

    rows, val = compute(losses, params, lam, INNER_LR, val_losses, per_task=True)
    for s in range(n_tasks):
        expected = finite_difference(lambda w, s=s: bilevel_objective(model, w, x, y, xv, yv, s).detach(), lam)
        torch.testing.assert_close(rows[s], expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(val, bilevel_objective(model, lam, x, y, xv, yv, "all").detach())


@pytest.mark.parametrize("upper", ["sum", "mgda"])
def test_autograd_and_explicit_jacobian_hypergradients_agree(upper):
    # two exact routes: create_graph through the inner step vs -inner_lr * V G^T
    n_tasks = 3
    grads = {}
    for mode in ("autograd", "jacobian"):
        model, x, y, xv, yv = tiny_problem(n_tasks, seed=3)
        alpha = torch.tensor([0.3, -0.4, 0.1], dtype=torch.float64)
        stepper, method = moml_stepper(model, n_tasks, (xv, yv), alpha, hypergrad=mode, upper=upper)
        stepper.step(x, y)
        grads[mode] = method.logits.grad.clone()
    torch.testing.assert_close(grads["autograd"], grads["jacobian"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_tasks", [2, 3, 5])
def test_default_mgda_upper_level_is_the_min_norm_point_of_normalised_hypergradients(n_tasks):
    model, x, y, xv, yv = tiny_problem(n_tasks, seed=4)
    reference = copy.deepcopy(model)
    alpha = torch.linspace(-0.3, 0.2, n_tasks, dtype=torch.float64)
    stepper, method = moml_stepper(model, n_tasks, (xv, yv), alpha)  # default upper level: mgda
    assert method.options.upper == "mgda"
    stepper.step(x, y)
    # independent: finite-difference hypergradient of each held-out loss w.r.t. alpha, l2-normalised, SLSQP
    rows = torch.stack(
        [
            finite_difference(
                lambda a, s=s: bilevel_objective(reference, torch.softmax(a, 0), x, y, xv, yv, s).detach(), alpha
            )
            for s in range(n_tasks)
        ]
    )
    unit = rows / rows.norm(dim=1, keepdim=True)
    gamma = qp_min_norm((unit @ unit.T).numpy())
    # the shared solver stops at relative duality gap MGDA_TOL = 1e-5: within sqrt(2e-5) ~ 4.5e-3 of the min-norm
    # point, relative to its norm (the unit rows' finite-difference error, ~1e-7, and SLSQP's, ~1e-8, in the slack)
    d = method.logits.grad
    assert_within_duality_gap(d, gamma @ unit, MGDA_TOL, slack=1e-6)
    # the rows J_softmax^T dL_s/dlambda sum to zero, so T rows span at most T - 1 dimensions: with T = 2 and 3 the
    # hull holds 0 here (Pareto-stationary, alpha stays); with T = 5 the min-norm point is not 0
    assert (float(d.norm()) > 1e-2) == (n_tasks == 5)
    torch.testing.assert_close(method.diagnostics()["hypergrad"], d)


# --------------------------------------------------------------------------- weights and the step


@pytest.mark.parametrize("n_tasks", [2, 5, 10])
def test_weights_are_softmax_of_logits_on_the_simplex_and_the_model_gets_the_weighted_loss_gradient(n_tasks):
    model, x, y, xv, yv = tiny_problem(n_tasks, seed=5)
    reference = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    alpha = 2.0 * torch.randn(n_tasks, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    stepper, method = moml_stepper(model, n_tasks, (xv, yv), alpha)
    result = stepper.step(x, y)
    lam = result.loss_weights
    assert torch.all(lam > 0)
    torch.testing.assert_close(lam.sum(), torch.ones((), dtype=lam.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(lam, torch.softmax(alpha, 0))
    # the inner step and the held-out pass leave the model untouched ...
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # ... and every parameter (shared and heads) gets exactly grad sum_t lambda_t L_t (RW Eq. 1)
    (ce_losses(reference(x), y) * torch.softmax(alpha, 0)).sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert torch.all(torch.isfinite(method.diagnostics()["val_loss"]))


@pytest.mark.parametrize("n_tasks", [2, 3])
def test_weight_grows_for_a_task_whose_training_loss_helps_the_held_out_loss(n_tasks):
    # Held-out inputs = training inputs. Task 0: same labels, so a step on its training loss lowers its
    # held-out loss; the other tasks: held-out labels shifted by one class, so their steps raise theirs.
    model, x, y, _, _ = tiny_problem(n_tasks, seed=7)
    yv = y.clone()
    yv[:, 1:] = (y[:, 1:] + 1) % 10
    stepper, method = moml_stepper(model, n_tasks, (x, yv))
    optimizer = torch.optim.SGD(
        [{"params": model.parameters(), "lr": 0.02}, {"params": method.parameters(), "lr": 5.0}]
    )
    history = [method.weights().clone()]
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        stepper.step(x, y)
        optimizer.step()
        history.append(method.weights().clone())
    helpful = [float(w[0]) for w in history]
    assert all(b > a for a, b in itertools.pairwise(helpful)), history
    assert all(float(history[-1][t]) < 1.0 / n_tasks < helpful[-1] for t in range(1, n_tasks)), history


@pytest.mark.parametrize(
    ("expression", "options"), [("moml+rgw", {}), ("moml", {"heads": "unweighted"})], ids=["with_rgw", "unweighted"]
)
def test_when_heads_read_detached_z_the_training_losses_are_recomputed_with_the_same_hypergradient(expression, options):
    # moml+rgw, or heads: unweighted: the heads read detached copies of z, so ctx.losses does not reach the
    # encoder and the inner step needs a fresh functional forward; the hypergradient must not change
    n_tasks = 3
    grads = {}
    for name, expr, opts in (("plain", "moml", {}), ("other", expression, options)):
        model, x, y, xv, yv = tiny_problem(n_tasks, seed=8)
        alpha = torch.tensor([0.1, 0.5, -0.2], dtype=torch.float64)
        stepper, method = moml_stepper(model, n_tasks, (xv, yv), alpha, expression=expr, **opts)
        assert stepper.plain == (name == "plain")
        result = stepper.step(x, y)
        grads[name] = method.logits.grad.clone()
        torch.testing.assert_close(result.loss_weights, torch.softmax(alpha, 0))
    torch.testing.assert_close(grads["plain"], grads["other"], rtol=1e-10, atol=1e-13)


def test_state_round_trip_gives_identical_subsequent_steps():
    n_tasks = 3
    model, x, y, xv, yv = tiny_problem(n_tasks, seed=9)
    stepper, method = moml_stepper(model, n_tasks, (xv, yv))
    optimizer = torch.optim.SGD(
        [{"params": model.parameters(), "lr": 0.02}, {"params": method.parameters(), "lr": 1.0}]
    )
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        stepper.step(x, y)
        optimizer.step()
    state = copy.deepcopy(method.state_dict())
    twin_model = copy.deepcopy(model)
    twin, twin_method = moml_stepper(twin_model, n_tasks, (xv, yv))
    assert not torch.equal(twin_method.logits, method.logits)  # the restored state is what makes them equal
    twin_method.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    method.zero_grad(set_to_none=True)
    first, second = stepper.step(x, y), twin.step(x, y)
    assert torch.equal(first.loss_weights, second.loss_weights)
    assert torch.equal(method.logits.grad, twin_method.logits.grad)
    for (name, p), (_, q) in zip(model.named_parameters(), twin_model.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


# --------------------------------------------------------------------------- the small pure functions


def test_softmax_vjp_is_the_softmax_jacobian_transpose():
    for n in (2, 3, 5, 10):
        alpha = torch.randn(n, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(4, n, dtype=torch.float64)
        weights = torch.softmax(alpha, 0)
        expected = torch.stack([torch.autograd.grad(weights, alpha, row, retain_graph=True)[0] for row in upstream])
        torch.testing.assert_close(softmax_vjp(weights.detach(), upstream), expected)


def gradient_sets(n_tasks, dim, generator):
    """Random, conflicting and near-parallel rows [T x dim]."""
    random = torch.randn(n_tasks, dim, dtype=torch.float64, generator=generator)
    conflicting = random.clone()
    conflicting[1] = -0.5 * conflicting[0] + 0.01 * torch.randn(dim, dtype=torch.float64, generator=generator)
    parallel = random[0] + 0.05 * random
    return {"random": random, "conflicting": conflicting, "near_parallel": parallel}


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
def test_mgda_combination_is_the_min_norm_point_of_the_normalised_rows(n_tasks):
    # MOML's combination: l2-normalise the rows, then the shared solver on their Gramian. Degenerate sets too:
    # dim 3 < T puts the rows in a low-dimensional space (gamma not unique, the min-norm point still is).
    generator = torch.Generator().manual_seed(n_tasks)
    for dim in (n_tasks, 2 * n_tasks, 3):
        for kind, rows in gradient_sets(n_tasks, dim, generator).items():
            unit = rows / rows.norm(dim=1, keepdim=True)
            expected = qp_min_norm((unit @ unit.T).numpy()) @ unit
            scaled = torch.logspace(-3, 3, n_tasks, dtype=torch.float64)[:, None] * rows  # normalisation: no effect
            for candidate in (rows, scaled):
                # default tolerance: the duality-gap certificate (SLSQP is accurate to ~1e-8)
                assert_within_duality_gap(mgda_combination(candidate), expected, MGDA_TOL, slack=1e-7)
            # a tight tolerance reaches the QP's own accuracy
            tight = mgda_combination(rows, max_iter=5000, tol=1e-13)
            torch.testing.assert_close(tight, expected, rtol=0, atol=1e-6, msg=f"{kind}, dim {dim}")


# --------------------------------------------------------------------------- declarations and options


def test_declares_held_out_forward_and_its_own_learning_rate():
    spec = parse_method("moml", {}, "x").loss
    method = spec.build(3, torch.Generator().manual_seed(0))
    assert method.needs == {Need.HELD_OUT, Need.FORWARD}
    assert method.lr == 1e-3 and [p.shape for p in method.parameters()] == [torch.Size([3])]
    assert held_out_request([method]) == (0.2, "clean")
    noisy = parse_method("m", {"m": {"weighting": "moml", "held_out_labels": "noisy"}}, "x").loss
    assert held_out_request([noisy.build(3, torch.Generator())]) == (0.2, "noisy")
    assert spec.options["scale"] == "simplex" and spec.options["heads"] == "weighted"
    assert spec.options["upper"] == "mgda"  # MOML's multi-objective upper level (LibMTL, ExcessMTL Sec. 4.3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"held_out_fraction": 1.0}, "held_out_fraction"),
        ({"held_out_fraction": 0.0}, "held_out_fraction"),
        ({"inner_lr": 0.0}, "inner_lr"),
        ({"upper": "mean"}, "methods.moml.upper"),
        ({"held_out_labels": "dirty"}, "methods.moml.held_out_labels"),
    ],
)
def test_bad_options_are_refused_with_their_key(options, message):
    with pytest.raises(ConfigError, match=message):
        parse_method("moml", {"moml": options}, "x")
