"""Nash-MTL and GradDrop against independent references (scipy, torchjd) and the papers' properties.

Tolerances (float64): the on-device Nash solver is compared with scipy's root
finder on the same condition to rtol 1e-8 (both converge to ~1e-12); torchjd's
NashMTL (cvxpy, stops at a residual of 1e-3) to rtol 1e-2; GradDrop is
compared with torchjd exactly (same random draws, same arithmetic).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import root
from torchjd.aggregation import GradDrop as TorchjdGradDrop

from mtlrepro.errors import ConfigError
from mtlrepro.weighting import parse_method
from mtlrepro.weighting.graddrop import graddrop_direction, graddrop_masks, sign_purity
from mtlrepro.weighting.nash_mtl import clip_norm, nash_weights

from conftest import TASKS, assert_same_grads, grads_of, losses_of, make_model_and_batch, make_stepper

DIM = 30
KINDS = ("random", "conflicting", "near_parallel", "scaled")


def gradient_matrix(kind: str, n_tasks: int, seed: int, dim: int = DIM) -> torch.Tensor:
    """A [T x dim] float64 matrix: random, a conflicting pair, nearly parallel rows, or norms over 4 decades."""
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(n_tasks, dim, generator=gen, dtype=torch.float64)
    if kind == "conflicting":
        grads[1] = -0.9 * grads[0] + 0.3 * torch.randn(dim, generator=gen, dtype=torch.float64)
    elif kind == "near_parallel":
        base = torch.randn(dim, generator=gen, dtype=torch.float64)
        grads = base + 0.05 * torch.randn(n_tasks, dim, generator=gen, dtype=torch.float64)
    elif kind == "scaled":
        grads = grads * torch.logspace(-2, 2, n_tasks, dtype=torch.float64)[:, None]
    return grads


def scipy_nash(gramian: torch.Tensor) -> np.ndarray:
    """alpha > 0 with K alpha = 1 / alpha, by scipy's root finder in log coordinates (alpha = e^x)."""
    k = gramian.numpy()

    def condition(x: np.ndarray) -> np.ndarray:
        return k @ np.exp(x) - np.exp(-x)

    start = -0.5 * np.log(np.diag(k))
    solution = root(condition, start, method="hybr", options={"xtol": 1e-13})
    alpha = np.exp(solution.x)
    assert np.abs(alpha * (k @ alpha) - 1).max() < 1e-10, solution.message
    return alpha


# --------------------------------------------------------------------------- Nash-MTL: the solver


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("kind", KINDS)
def test_nash_weights_solve_the_bargaining_condition_like_scipy(n_tasks, kind):
    # Nash-MTL Eq. 2: G G^T alpha = 1 / alpha, alpha > 0 (20 damped Newton steps, the default optim_niter).
    for seed in range(3):
        grads = gradient_matrix(kind, n_tasks, seed)
        gramian = grads @ grads.T
        alpha = nash_weights(gramian, n_iter=20)
        assert (alpha > 0).all()
        torch.testing.assert_close(
            alpha * (gramian @ alpha), torch.ones(n_tasks, dtype=torch.float64), rtol=0, atol=1e-9
        )
        np.testing.assert_allclose(alpha.numpy(), scipy_nash(gramian), rtol=1e-8)


def test_nash_weights_scale_inversely_with_the_gradients_and_give_a_norm_sqrt_t_direction():
    grads = gradient_matrix("random", 4, 7)
    alpha = nash_weights(grads @ grads.T)
    scaled = nash_weights((100.0 * grads) @ (100.0 * grads).T)
    torch.testing.assert_close(scaled, alpha / 100.0)
    torch.testing.assert_close((alpha @ grads).norm(), torch.tensor(2.0, dtype=torch.float64))  # sqrt(T)


def test_nash_weights_work_in_float32():
    grads = gradient_matrix("scaled", 5, 1)
    alpha32 = nash_weights((grads @ grads.T).float())
    assert alpha32.dtype == torch.float32
    np.testing.assert_allclose(alpha32.double().numpy(), scipy_nash(grads @ grads.T), rtol=1e-4)


def test_opposite_gradients_fall_back_to_the_previous_weights_unless_ridged():
    g = torch.randn(DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = torch.stack([g, -g])  # no alpha > 0 solves Eq. 2: the objective is unbounded along (1, 1)
    method = build("nash_mtl", 2)
    assert torch.equal(method.aggregate(grads, None).weights, torch.ones(2, dtype=torch.float64))
    ridged = nash_weights(grads @ grads.T, ridge=1e-4)
    assert torch.isfinite(ridged).all()
    cosines = torch.tensor([[1.0 + 1e-4, -1.0], [-1.0, 1.0 + 1e-4]], dtype=torch.float64)
    beta = ridged * g.norm()
    torch.testing.assert_close(beta * (cosines @ beta), torch.ones(2, dtype=torch.float64))


def test_clip_norm_is_clip_grad_norm():
    direction = torch.randn(DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5
    params = [torch.nn.Parameter(torch.zeros(10, dtype=torch.float64)), torch.nn.Parameter(torch.zeros(20))]
    params[1].data = params[1].data.double()
    params[0].grad, params[1].grad = direction[:10].clone(), direction[10:].clone()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    torch.testing.assert_close(clip_norm(direction, 1.0), torch.cat([params[0].grad, params[1].grad]))
    small = direction / direction.norm() * 0.5
    assert torch.equal(clip_norm(small, 1.0), small)  # shorter than max_norm: untouched
    assert torch.equal(clip_norm(direction, 0.0), direction)  # 0 disables clipping


def build(expression: str, n_tasks: int, entries=None, seed: int = 12):
    spec = parse_method(expression, entries or {}, "test")
    component = spec.gradient if spec.gradient is not None else spec.loss
    return component.build(n_tasks, torch.Generator().manual_seed(seed))


def test_nash_update_every_keeps_the_weights_between_updates():
    method = build("nash_mtl", 3, {"nash_mtl": {"update_every": 3, "max_norm": 0.0}})
    mats = [gradient_matrix("random", 3, seed) for seed in range(4)]
    weights = [method.aggregate(m, None).weights for m in mats]
    expected_first = nash_weights(mats[0] @ mats[0].T)
    for w in weights[:3]:
        torch.testing.assert_close(w, expected_first)
    torch.testing.assert_close(weights[3], nash_weights(mats[3] @ mats[3].T))
    out = method.aggregate(mats[1], None)  # step 4: weights of step 3 on a new matrix
    torch.testing.assert_close(out.direction, weights[3] @ mats[1])


def test_nash_keeps_the_previous_weights_when_a_task_has_no_gradient():
    method = build("nash_mtl", 3)
    grads = gradient_matrix("random", 3, 0)
    grads[2] = 0.0
    assert torch.equal(method.aggregate(grads, None).weights, torch.ones(3, dtype=torch.float64))  # initial alpha
    good = gradient_matrix("random", 3, 1)
    first = method.aggregate(good, None).weights
    assert torch.equal(method.aggregate(grads, None).weights, first)


def test_nash_state_round_trip_continues_identically():
    method = build("nash_mtl", 3, {"nash_mtl": {"update_every": 2}})
    method.aggregate(gradient_matrix("random", 3, 0), None)
    fresh = build("nash_mtl", 3, {"nash_mtl": {"update_every": 2}})
    fresh.load_state_dict(copy.deepcopy(method.state_dict()))
    for seed in (1, 2, 3):  # step 1 reuses the saved alpha, step 2 solves anew, step 3 reuses it
        grads = gradient_matrix("conflicting", 3, seed)
        a, b = method.aggregate(grads, None), fresh.aggregate(grads, None)
        assert torch.equal(a.direction, b.direction) and torch.equal(a.weights, b.weights)


def test_nash_matches_torchjd_when_cvxpy_is_installed():
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    from torchjd.aggregation import NashMTL as TorchjdNashMTL

    # Only where torchjd's CCCP/ECOS solve converges: on near-parallel or badly scaled matrices it fails silently
    # and returns its previous (initial: all-ones) weights, residual up to 1e2, where ours still matches scipy.
    for n_tasks in (2, 3, 5):
        for kind in ("random", "conflicting"):
            grads = gradient_matrix(kind, n_tasks, 4)
            # torchjd's weights are the unnormalised Nash alpha (clipping disabled): same scale as ours
            expected = torch.as_tensor(np.asarray(TorchjdNashMTL(n_tasks, max_norm=0.0).weighting(grads)))
            assert (expected * (grads @ grads.T @ expected) - 1).abs().max() < 1e-2  # torchjd converged here
            np.testing.assert_allclose(nash_weights(grads @ grads.T).numpy(), np.asarray(expected), rtol=1e-2)
            ours = build("nash_mtl", n_tasks).aggregate(grads, None).direction  # clipped at 1
            torch.testing.assert_close(ours, TorchjdNashMTL(n_tasks)(grads), rtol=1e-2, atol=1e-3)


# --------------------------------------------------------------------------- through the step

T = len(TASKS)


@pytest.fixture
def model_and_batch():
    return make_model_and_batch(batch_size=6)


def test_nash_step_is_weighted_loss_backward_then_clip_grad_norm_on_shared(model_and_batch):
    # Navon et al.'s training step: (sum_t alpha_t L_t).backward(); clip_grad_norm_(shared, max_norm).
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    result = make_stepper(model, TASKS, "nash_mtl").step(x, y)
    alpha = result.grad_weights
    _, losses = losses_of(reference, x, y)
    shared = list(reference.encoder.parameters())
    rows = [torch.autograd.grad(losses[t], shared, retain_graph=True) for t in range(T)]
    jacobian = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
    np.testing.assert_allclose(alpha.numpy(), scipy_nash(jacobian @ jacobian.T), rtol=1e-8)
    (alpha * losses).sum().backward()
    norm_before = torch.cat([p.grad.reshape(-1) for p in shared]).norm()
    assert norm_before > 1.0  # sqrt(T): the clip is active
    torch.nn.utils.clip_grad_norm_(shared, 1.0)
    assert_same_grads(grads_of(model), grads_of(reference))


def test_nash_refuses_representation_gradients_and_bad_options():
    with pytest.raises(ConfigError, match="parameter gradients only"):
        parse_method("nash_mtl", {"nash_mtl": {"grad_wrt": "representation"}}, "x")
    with pytest.raises(ConfigError, match="update_every must be at least 1"):
        parse_method("nash_mtl", {"nash_mtl": {"update_every": 0}}, "x")


# --------------------------------------------------------------------------- GradDrop: the pure functions


def test_purity_is_one_for_positive_zero_for_negative_and_half_without_gradient():
    signed = torch.tensor([[1.0, -2.0, 0.0, 1.0], [3.0, -1.0, 0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(sign_purity(signed), torch.tensor([1.0, 0.0, 0.5, 0.5], dtype=torch.float64))


def test_masks_keep_exactly_the_gradients_of_the_picked_sign():
    gen = torch.Generator().manual_seed(0)
    signed = torch.randn(5, 400, generator=gen, dtype=torch.float64)
    purity = sign_purity(signed)
    uniform = torch.rand(400, generator=gen, dtype=torch.float64)
    masks = graddrop_masks(signed, purity, uniform).bool()
    positive_picked = purity > uniform
    for f in range(400):
        expected = signed[:, f] > 0 if positive_picked[f] else signed[:, f] < 0
        assert torch.equal(masks[:, f], expected)
    assert positive_picked.any() and (~positive_picked).any()


def test_nothing_is_dropped_when_all_tasks_agree_in_sign():
    gen = torch.Generator().manual_seed(1)
    rep = torch.randn(4, 12, generator=gen, dtype=torch.float64)  # z [B x F] of any sign
    signs = torch.where(torch.rand(12, generator=gen) < 0.5, -1.0, 1.0).double()  # per element: + or -
    magnitudes = torch.rand(3, 4, 12, generator=gen, dtype=torch.float64) + 0.1
    rep_grads = magnitudes * signs * torch.sign(rep)[None]  # every example agrees: signed sum has sign `signs`
    direction, masks = graddrop_direction(rep_grads, rep, torch.Generator().manual_seed(5))
    assert torch.equal(masks, torch.ones_like(masks))
    torch.testing.assert_close(direction, rep_grads.sum(dim=0))


def test_the_sign_of_the_input_enters_the_purity():
    # Eq. 1-2: grad_i = sign(A) * dL_i/dA. Negating A and the gradients leaves every mask as it was.
    gen = torch.Generator().manual_seed(2)
    rep = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    rep_grads = torch.randn(3, 4, 50, generator=gen, dtype=torch.float64)
    d1, m1 = graddrop_direction(rep_grads, rep, torch.Generator().manual_seed(9))
    d2, m2 = graddrop_direction(-rep_grads, -rep, torch.Generator().manual_seed(9))
    assert torch.equal(m1, m2)
    torch.testing.assert_close(d2, -d1)
    _, m3 = graddrop_direction(rep_grads, -rep, torch.Generator().manual_seed(9))
    assert not torch.equal(m1, m3)


def test_graddrop_is_deterministic_given_the_generator():
    gen = torch.Generator().manual_seed(3)
    rep = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    rep_grads = torch.randn(3, 4, 50, generator=gen, dtype=torch.float64)
    a, _ = graddrop_direction(rep_grads, rep, torch.Generator().manual_seed(7))
    b, _ = graddrop_direction(rep_grads, rep, torch.Generator().manual_seed(7))
    c, _ = graddrop_direction(rep_grads, rep, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_equals_torchjd_for_one_positive_example(leak):
    # torchjd has no sign(A) step and no batch: with B = 1 and z > 0 its matrix is exactly our signed gradient.
    # Same random draws: torchjd uses the global generator, we a private one with the same seed.
    for n_tasks in (2, 3, 5, 10):
        gen = torch.Generator().manual_seed(n_tasks)
        rep = torch.rand(1, 64, generator=gen, dtype=torch.float64) + 0.1
        rep_grads = torch.randn(n_tasks, 1, 64, generator=gen, dtype=torch.float64)
        ours, _ = graddrop_direction(rep_grads, rep, torch.Generator().manual_seed(123), leak=leak)
        torch.manual_seed(123)
        leaks = torch.full((n_tasks,), leak, dtype=torch.float64)
        expected = TorchjdGradDrop(leak=leaks)(rep_grads[:, 0])
        torch.testing.assert_close(ours[0], expected, rtol=0, atol=1e-15)


def test_graddrop_batch_sum_equals_torchjd_on_the_batch_summed_matrix():
    # Masks depend only on the batch-summed signed gradient and broadcast over the batch.
    gen = torch.Generator().manual_seed(11)
    rep = torch.rand(5, 40, generator=gen, dtype=torch.float64) + 0.1
    rep_grads = torch.randn(3, 5, 40, generator=gen, dtype=torch.float64)
    ours, _ = graddrop_direction(rep_grads, rep, torch.Generator().manual_seed(4))
    torch.manual_seed(4)
    torch.testing.assert_close(ours.sum(dim=0), TorchjdGradDrop()(rep_grads.sum(dim=1)))


def test_graddrop_keeps_the_positive_sign_with_probability_purity():
    # Two tasks on one element with signed gradients +3 and -1: P = 1/2 (1 + 2/4) = 0.75.
    rep = torch.ones(1, 20000, dtype=torch.float64)
    rep_grads = torch.stack([torch.full((1, 20000), 3.0), torch.full((1, 20000), -1.0)]).double()
    _, masks = graddrop_direction(rep_grads, rep, torch.Generator().manual_seed(0))
    frequency = masks[0].mean().item()
    assert abs(frequency - 0.75) < 4 * (0.75 * 0.25 / 20000) ** 0.5
    assert torch.equal(masks[0] + masks[1], torch.ones(20000, dtype=torch.float64))  # exactly one sign survives


# --------------------------------------------------------------------------- GradDrop through the step


def test_graddrop_step_backpropagates_the_masked_representation_gradient(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper = make_stepper(model, TASKS, "graddrop", seeds=(11, 12))
    result = stepper.step(x, y)
    assert result.grad_weights is None and stepper._matrix is None
    z, losses = losses_of(reference, x, y)
    rows = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in range(T)])
    # the paper's quantities written out element by element
    flat = rows.reshape(T, z.shape[0], -1)
    signed = (flat * torch.sign(z.detach()).reshape(1, z.shape[0], -1)).sum(dim=1)
    uniform = torch.rand(signed.shape[1], generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    direction = torch.zeros_like(flat[0])
    for f in range(signed.shape[1]):
        column = signed[:, f]
        total = column.abs().sum()
        purity = 0.5 * (1 + column.sum() / total) if total > 0 else 0.5
        for t in range(T):
            keep = (purity > uniform[f] and column[t] > 0) or (purity < uniform[f] and column[t] < 0)
            if keep:
                direction[:, f] += flat[t, :, f]
    z.backward(direction.view_as(z), inputs=list(reference.encoder.parameters()), retain_graph=True)
    for t in range(T):
        losses[t].backward(inputs=list(reference.heads[t].parameters()), retain_graph=True)
    assert_same_grads(grads_of(model), grads_of(reference))


def test_graddrop_state_round_trip_continues_identically(model_and_batch):
    model, x, y = model_and_batch
    first = make_stepper(model, TASKS, "graddrop")
    first.step(x, y)
    other_model = copy.deepcopy(model)
    second = make_stepper(other_model, TASKS, "graddrop", seeds=(0, 99))  # a different seed, then loaded
    second.aggregator.load_state_dict(copy.deepcopy(first.aggregator.state_dict()))
    model.zero_grad()
    other_model.zero_grad()
    first.step(x, y)
    second.step(x, y)
    assert_same_grads(grads_of(model), grads_of(other_model))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"grad_wrt": "params"}, "representation only"),
        ({"rep_reduce": "batch_sum"}, "rep_reduce"),
        ({"leak": 1.5}, "leak must be in"),
    ],
)
def test_graddrop_refuses_what_it_cannot_do(entries, message):
    with pytest.raises(ConfigError, match=message):
        parse_method("graddrop", {"graddrop": entries}, "x")
