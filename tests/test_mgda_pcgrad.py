"""MGDA-UB and PCGrad against independent references.

MGDA: the exact min-norm point of the convex hull, from a QP solved by scipy
(SLSQP on the simplex) -- not torchjd's MGDA, which stops early
(method-contract.md §7); torchjd is only compared loosely. PCGrad: torchjd's
PCGrad under the same task orders, and the paper's no-conflict property.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torchjd.aggregation import MGDA as TorchjdMGDA
from torchjd.aggregation import PCGrad as TorchjdPCGrad
from torchjd.autojac import jac_to_grad, mtl_backward

from mtlrepro.errors import ConfigError
from mtlrepro.weighting import parse_method
from mtlrepro.weighting.mgda import MGDA, MGDAOptions, gradient_normalizers, mgda_weights, min_norm_weights
from mtlrepro.weighting.pcgrad import PCGrad, PCGradOptions, pcgrad_coefficients, pcgrad_direction, task_orders

from conftest import TASKS, gradient_cases, grads_of, losses_of, make_model_and_batch, make_stepper

DIM = 40


CASES, IDS = gradient_cases(seed_base=1000)  # generator seeds 1000 * n_tasks + seed


def qp_min_norm(grads: torch.Tensor) -> torch.Tensor:
    """The exact min-norm point of conv(rows of grads): SLSQP on the simplex from every vertex and the centre."""
    gram = (grads @ grads.T).numpy()
    n = gram.shape[0]
    best = None
    for start in [np.full(n, 1.0 / n), *np.eye(n)]:
        res = minimize(
            lambda a: a @ gram @ a,
            start,
            jac=lambda a: 2 * gram @ a,
            bounds=[(0.0, 1.0)] * n,
            constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(n)}],
            method="SLSQP",
            options={"ftol": 1e-16, "maxiter": 1000},
        )
        if best is None or res.fun < best.fun:
            best = res
    alpha = torch.tensor(best.x).clamp_min(0.0)
    return (alpha / alpha.sum()) @ grads


# --------------------------------------------------------------------------- MGDA: the min-norm point


@pytest.mark.parametrize(("n_tasks", "kind", "grads"), CASES, ids=IDS)
def test_mgda_direction_is_the_min_norm_point_of_the_hull(n_tasks, kind, grads):
    exact = qp_min_norm(grads)
    # default tolerance: the duality gap bounds the error, ||d - d*|| <= sqrt(2 tol) ||d|| (see _min_norm)
    alpha = min_norm_weights(grads @ grads.T)
    assert alpha.min() >= 0 and math.isclose(float(alpha.sum()), 1.0, abs_tol=1e-12)
    d = alpha @ grads
    assert float((d - exact).norm()) <= math.sqrt(2 * 1e-5) * float(d.norm()) + 1e-12
    # a tight tolerance reaches the QP's own accuracy (~1e-8 relative)
    tight = min_norm_weights(grads @ grads.T, max_iter=2000, tol=1e-13) @ grads
    torch.testing.assert_close(tight, exact, rtol=0, atol=1e-6 * float(grads.norm(dim=1).max()))


def test_mgda_fixed_examples():
    # orthogonal unit gradients: the midpoint
    alpha = min_norm_weights(torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(alpha, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # opposite gradients (1, 0), (-2, 0): 0 is in the hull at alpha = (2/3, 1/3), a Pareto-stationary point
    grads = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    alpha = min_norm_weights(grads @ grads.T)
    torch.testing.assert_close(alpha, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    # a vertex optimum: g1 = (1, 0) is the min-norm point of conv{(1, 0), (3, 1), (3, -1)}
    grads = torch.tensor([[1.0, 0.0], [3.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    for away in (True, False):
        alpha = min_norm_weights(grads @ grads.T, away_steps=away)
        torch.testing.assert_close(alpha, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(("n_tasks", "kind", "grads"), [c for c in CASES if c[0] == 2], ids=IDS[:8])
def test_mgda_two_tasks_is_the_closed_form_of_algorithm_1(n_tasks, kind, grads):
    # Sener & Koltun, Algorithm 1: gamma = clip((g2 - g1).g2 / ||g1 - g2||^2, 0, 1) weighs g1
    g1, g2 = grads
    gamma = float(((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0, 1))
    expected = torch.tensor([gamma, 1 - gamma], dtype=torch.float64)
    for away in (True, False):  # plain Frank-Wolfe (Algorithm 2 as printed) is exact for T = 2 too
        # a tight tol: for near-parallel rows the default stops at the centre, whose direction is already
        # within sqrt(2 tol) ||d|| of the min-norm point while the weights themselves are ill-determined
        alpha = min_norm_weights(grads @ grads.T, tol=1e-14, away_steps=away)
        torch.testing.assert_close(alpha, expected, rtol=1e-9, atol=1e-9)
        d = min_norm_weights(grads @ grads.T, away_steps=away) @ grads
        assert float((d - expected @ grads).norm()) <= math.sqrt(2e-5) * float(d.norm())


def test_mgda_normalizations_and_where_the_weights_act():
    g = torch.Generator().manual_seed(3)
    grads = torch.randn(3, DIM, generator=g, dtype=torch.float64)
    losses = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    norms = grads.norm(dim=1)
    expected = {"none": torch.ones(3, dtype=torch.float64), "l2": norms, "loss": losses, "loss+": losses * norms}
    for kind, divisor in expected.items():
        torch.testing.assert_close(gradient_normalizers(grads @ grads.T, losses, kind), divisor)
    scale = torch.tensor([10.0, 0.1, 3.0], dtype=torch.float64)
    for kind in ("l2", "loss+"):
        options = MGDAOptions(normalization=kind, tol=1e-13)  # tight: compare weights, not only directions
        alpha, weights = mgda_weights(grads, losses, options)
        # l2 / loss+ normalisation: rescaling a task's gradient does not change alpha (raw: weights = alpha)
        alpha_scaled, _ = mgda_weights(scale[:, None] * grads, losses, options)
        torch.testing.assert_close(alpha_scaled, alpha, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(weights, alpha)
        # LibMTL's choice: alpha applied to the normalised gradients, i.e. weights alpha / n on the raw ones
        on_options = MGDAOptions(normalization=kind, apply_to="normalized", tol=1e-13)
        _, on_normalized = mgda_weights(grads, losses, on_options)
        torch.testing.assert_close(on_normalized, alpha / gradient_normalizers(grads @ grads.T, losses, kind))
    # loss normalisation: scaling a loss and its gradient together leaves alpha unchanged
    options = MGDAOptions(normalization="loss", tol=1e-13)
    alpha, _ = mgda_weights(grads, losses, options)
    alpha_scaled, _ = mgda_weights(scale[:, None] * grads, scale * losses, options)
    torch.testing.assert_close(alpha_scaled, alpha, rtol=1e-6, atol=1e-9)


def test_mgda_agrees_loosely_with_torchjd_which_stops_early():
    # torchjd's MGDA stops once a Frank-Wolfe step is below 1e-3 (method-contract.md §7): its direction is
    # a point of the hull no shorter than the min-norm point, and close to it in angle. Scale: both on the simplex.
    # Ours is within the relative duality gap tol = 1e-5 of the minimal norm, hence the factor 1 + 2e-5.
    # Measured here: cosine >= 0.99 except with a strongly conflicting pair, where torchjd stops at a point
    # up to 40% longer than the min-norm point (worst cosine 0.78, T = 10); the QP test above is the reference.
    for n_tasks, kind, grads in CASES:
        ours = min_norm_weights(grads @ grads.T) @ grads
        theirs = TorchjdMGDA()(grads)
        assert float(ours.norm()) <= float(theirs.norm()) * (1 + 2e-5) + 1e-12
        cosine = float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0))
        assert cosine > (0.75 if kind == "conflicting" else 0.99), (n_tasks, kind, cosine)


def test_mgda_options_are_checked():
    with pytest.raises(ConfigError, match=r"methods\.m\.normalization: 'l1' is not one of"):
        parse_method("m", {"m": {"weighting": "mgda", "normalization": "l1"}}, "x")
    with pytest.raises(ConfigError, match="max_iter must be at least 1"):
        parse_method("m", {"m": {"weighting": "mgda", "max_iter": 0}}, "x")
    spec = parse_method("mgda", {}, "x").gradient
    assert spec.options["grad_wrt"] == "representation" and spec.options["normalization"] == "loss+"
    assert spec.options["heads"] == "unweighted" and spec.options["scale"] == "simplex"


# --------------------------------------------------------------------------- the whole step on a tiny HPS


@pytest.fixture
def model_and_batch():
    return make_model_and_batch(batch_seed=1)


@pytest.mark.parametrize("heads", ["unweighted", "weighted"])
def test_mgda_ub_step_uses_the_min_norm_weights_of_the_normalised_representation_gradients(model_and_batch, heads):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    entries = {"mgda": {"tol": 1e-12, "max_iter": 2000, "heads": heads}}
    result = make_stepper(model, TASKS, "mgda", entries).step(x, y)

    # independent reference: dl_t/dz over the full [B x d] tensor, divided by loss * ||.|| ("loss+"), QP
    z, losses = losses_of(reference, x, y)
    rows = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in range(len(TASKS))])
    flat = rows.reshape(len(TASKS), -1)
    normalized = flat / (losses.detach() * flat.norm(dim=1))[:, None]
    exact = qp_min_norm(normalized)
    alpha = result.grad_weights
    assert alpha.min() >= 0 and math.isclose(float(alpha.sum()), 1.0, abs_tol=1e-12)
    torch.testing.assert_close(alpha @ normalized, exact, rtol=0, atol=1e-6 * float(normalized.norm(dim=1).max()))

    # the encoder gets sum_t alpha_t dl_t/dz (raw gradients, as the original code) back-propagated once
    expected = torch.autograd.grad(
        z, list(reference.encoder.parameters()), grad_outputs=torch.tensordot(alpha, rows, 1)
    )
    for p, e in zip(model.encoder.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e)
    for t in range(len(TASKS)):  # heads: their own gradient, times alpha_t with heads: weighted (original code)
        own = torch.autograd.grad(losses[t], list(reference.heads[t].parameters()), retain_graph=True)
        factor = alpha[t] if heads == "weighted" else 1.0
        for p, e in zip(model.heads[t].parameters(), own, strict=True):
            torch.testing.assert_close(p.grad, factor * e)


def test_mgda_in_a_combination_normalises_by_the_weighted_losses(model_and_batch):
    # rlw+mgda on parameters with normalization "loss": the rows are lambda_t g_t and the losses lambda_t l_t,
    # so lambda cancels in the normalised gradients and alpha is MGDA's alone; the raw weights act on lambda_t g_t
    model, x, y = model_and_batch
    alone, combined = copy.deepcopy(model), copy.deepcopy(model)
    entry = {"grad_wrt": "params", "normalization": "loss", "tol": 1e-13, "max_iter": 2000}
    plain = make_stepper(alone, TASKS, "mgda", {"mgda": entry}).step(x, y)
    result = make_stepper(combined, TASKS, "rlw+mgda", {"mgda": entry}, seeds=(5, 6)).step(x, y)
    lam, alpha = result.loss_weights, result.grad_weights
    torch.testing.assert_close(alpha, plain.grad_weights, rtol=1e-6, atol=1e-9)
    _, losses = losses_of(model, x, y)
    shared = list(model.encoder.parameters())
    expected = torch.autograd.grad((alpha * lam * losses).sum(), shared)
    for p, e in zip(combined.encoder.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e)


def test_pcgrad_step_on_parameters_is_torchjds_pcgrad(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper = make_stepper(model, TASKS, "pcgrad", seeds=(11, 12))
    for iteration in range(2):  # the second step uses the generator's advanced state
        model.zero_grad(set_to_none=True)
        result = stepper.step(x, y, iteration=iteration)
    assert result.grad_weights is None and result.diagnostics["pcgrad.conflicts"].shape == (len(TASKS),)

    torch.manual_seed(12)  # torchjd's PCGrad draws its orders from the global generator, ours from seed 12
    for _ in range(2):
        reference.zero_grad(set_to_none=True)
        z, losses = losses_of(reference, x, y)
        heads = [list(h.parameters()) for h in reference.heads]
        shared = list(reference.encoder.parameters())
        mtl_backward(list(losses), z, tasks_params=heads, shared_params=shared, retain_graph=True)
        jac_to_grad(shared, TorchjdPCGrad())
    for name, g in grads_of(model).items():
        torch.testing.assert_close(g, reference.get_parameter(name).grad, msg=name)


@pytest.mark.parametrize("name", ["mgda", "pcgrad"])
def test_state_round_trip_gives_identical_subsequent_outputs(name):
    cls = {"mgda": MGDA, "pcgrad": PCGrad}[name]
    options = cls.Options(grad_wrt="params") if name == "mgda" else cls.Options()
    method = cls(5, options, torch.Generator().manual_seed(4))
    ctx = type("Ctx", (), {"losses": torch.rand(5, dtype=torch.float64) + 0.5, "loss_weights": None})()
    grads = next(m for n, kind, m in CASES if n == 5 and kind == "conflicting")
    method.aggregate(grads, ctx)  # advance the state
    fresh = cls(5, options, torch.Generator().manual_seed(999))
    fresh.load_state_dict(method.state_dict())
    for _ in range(3):
        a, b = method.aggregate(grads, ctx), fresh.aggregate(grads, ctx)
        assert torch.equal(a.direction, b.direction)
        assert (a.weights is None) == (b.weights is None)
        if a.weights is not None:
            assert torch.equal(a.weights, b.weights)


# --------------------------------------------------------------------------- PCGrad


@pytest.mark.parametrize(("n_tasks", "kind", "grads"), CASES, ids=IDS)
def test_pcgrad_matches_torchjd_under_the_same_task_orders(n_tasks, kind, grads):
    # torchjd's PCGrad also sums the projected gradients (same scale); it draws one randperm(T) per task from
    # the global generator, in the same sequence as ours from a generator with the same seed
    orders = task_orders(n_tasks, torch.Generator().manual_seed(7), grads.device)
    ours, _ = pcgrad_direction(grads, orders)
    torch.manual_seed(7)
    torch.testing.assert_close(ours, TorchjdPCGrad()(grads), rtol=1e-10, atol=1e-10 * float(grads.norm()))


@pytest.mark.parametrize(("n_tasks", "kind", "grads"), [c for c in CASES if c[0] == 2], ids=IDS[:8])
def test_pcgrad_two_tasks_any_order_and_no_conflict_left(n_tasks, kind, grads):
    # T = 2: the order does not matter, and after projection neither gradient conflicts with the other's original
    expected = TorchjdPCGrad()(grads)
    for seed in range(3):
        orders = task_orders(2, torch.Generator().manual_seed(seed), grads.device)
        coef, conflicts = pcgrad_coefficients(grads @ grads.T, orders)
        projected = coef @ grads
        scale = float(grads.norm(dim=1).prod())
        assert float(projected[0] @ grads[1]) >= -1e-12 * scale and float(projected[1] @ grads[0]) >= -1e-12 * scale
        conflicting = bool(grads[0] @ grads[1] < 0)
        assert conflicts.tolist() == ([1.0, 1.0] if conflicting else [0.0, 0.0])
        torch.testing.assert_close(projected.sum(0), expected)


def test_pcgrad_fixed_example_and_no_conflict_is_the_plain_sum():
    # g1 = (1, 0), g2 = (-1, 1): g1' = g1 + g2 / 2 = (0.5, 0.5), g2' = g2 + g1 = (0, 1); sum (0.5, 1.5)
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    orders = task_orders(2, torch.Generator().manual_seed(0), grads.device)
    direction, _ = pcgrad_direction(grads, orders)
    torch.testing.assert_close(direction, torch.tensor([0.5, 1.5], dtype=torch.float64))
    # pairwise non-negative inner products: nothing is projected
    g = torch.Generator().manual_seed(5)
    positive = torch.rand(5, DIM, generator=g, dtype=torch.float64)
    orders = task_orders(5, g, positive.device)
    direction, conflicts = pcgrad_direction(positive, orders)
    torch.testing.assert_close(direction, positive.sum(0))
    assert conflicts.sum() == 0


def test_pcgrad_options():
    with pytest.raises(ConfigError, match="heads: 'weighted' is not possible"):
        parse_method("pcgrad", {"pcgrad": {"heads": "weighted"}}, "x")
    with pytest.raises(ConfigError, match="rep_reduce: 'batch_sum' is not possible"):
        parse_method("pcgrad", {"pcgrad": {"grad_wrt": "representation", "rep_reduce": "batch_sum"}}, "x")
    spec = parse_method("pcgrad", {"pcgrad": {"grad_wrt": "representation"}}, "x").gradient
    assert spec.options["grad_wrt"] == "representation"
    assert parse_method("pcgrad", {}, "x").gradient.options["grad_wrt"] == "params"
    assert PCGradOptions().heads == "unweighted"
