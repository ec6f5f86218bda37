"""UW, DWA, GroupDRO and FAMO checked against torchjd's scalarizers (UW, DWA, FAMO) and closed forms (all four).

References are independent of the code under test: torchjd 0.18 (its scalarizer's loss weights are read off as
the gradient of its scalar with respect to the loss vector), plain-Python recursions written from the papers,
and properties. Tolerances: float64 everywhere, ``torch.testing.assert_close`` defaults for float64 (rtol 1e-7,
atol 1e-7) unless stated.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchjd.scalarization as tjd

from mtlrepro.errors import ConfigError
from mtlrepro.weighting import parse_method
from mtlrepro.weighting.base import Batch, apply_scale

from conftest import TASKS, assert_same_grads, grads_of, make_stepper, tiny_model

DOUBLE = torch.float64
TASK_COUNTS = (2, 3, 5, 10)


# ----------------------------------------------------------------------------- helpers


def build(name: str, n_tasks: int, **options):
    """A fresh method ``name`` with ``options`` for ``n_tasks`` tasks."""
    spec = parse_method(name, {name: options}, "test")
    return spec.loss.build(n_tasks, torch.Generator().manual_seed(0))


def ctx_of(losses, **extra) -> SimpleNamespace:
    """A stand-in for the step context: the loss vector (and whatever else a test gives)."""
    return SimpleNamespace(losses=losses, **extra)


def loss_cases(n_tasks: int, seed: int) -> list[torch.Tensor]:
    """Loss vectors: fixed, random, nearly equal, and of very different magnitudes (one task dominates)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.linspace(0.5, 2.0, n_tasks, dtype=DOUBLE),
        torch.rand(n_tasks, generator=g, dtype=DOUBLE) * 3 + 0.05,
        1.0 + 1e-6 * torch.randn(n_tasks, generator=g, dtype=DOUBLE),
        torch.logspace(-3, 2, n_tasks, dtype=DOUBLE)[torch.randperm(n_tasks, generator=g)],
    ]


def loss_sequence(n_tasks: int, steps: int, seed: int) -> list[torch.Tensor]:
    """A decreasing, noisy loss history with tasks on different scales."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1, n_tasks, dtype=DOUBLE)
    return [
        scale * (0.3 + torch.rand(n_tasks, generator=g, dtype=DOUBLE)) * (1.0 - 0.5 * k / steps) for k in range(steps)
    ]


def scalarizer_weights(scalarizer, losses: torch.Tensor) -> torch.Tensor:
    """The loss weights a torchjd scalarizer applies: d scalar / d losses."""
    values = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(scalarizer(values), values)
    return grad


T = len(TASKS)


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(8, 1, 36, 36, generator=g, dtype=DOUBLE), torch.randint(10, (8, T), generator=g)) for _ in range(n)
    ]


def task_losses(model, x, y) -> torch.Tensor:
    outputs = model.decode(model.encode(x))
    return torch.stack([F.cross_entropy(o, y[:, t]) for t, o in enumerate(outputs)])


def sgd(params, lr: float) -> None:
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None


def assert_same_params(model, reference) -> None:
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=f"parameter {name} differs")


def weighted_loss_grads(model, x, y, weights) -> dict[str, torch.Tensor]:
    """Gradients of ``sum_t weights_t l_t`` for every parameter (what a loss weighting with weighted heads gives)."""
    reference = copy.deepcopy(model)
    reference.zero_grad(set_to_none=True)
    (weights * task_losses(reference, x, y)).sum().backward()
    return grads_of(reference)


def round_trip(method, name: str, n_tasks: int, **options):
    """A fresh instance loaded with ``method``'s state_dict."""
    fresh = build(name, n_tasks, **options)
    fresh.load_state_dict(copy.deepcopy(method.state_dict()))
    return fresh


# ----------------------------------------------------------------------------- UW


@pytest.mark.parametrize("n_tasks", TASK_COUNTS)
def test_uw_weights_and_log_variance_gradient_match_torchjd_uw(n_tasks):
    # torchjd UW: sum_i 1/2 e^{-s_i} L_i + 1/2 s_i with s initialised to 0; ours starts at -0.5 (LibMTL), so
    # both get the same s before comparing. Loss weights: d/dL of torchjd's scalar; s's gradient: of the same.
    g = torch.Generator().manual_seed(n_tasks)
    for losses in loss_cases(n_tasks, seed=n_tasks):
        log_var = torch.randn(n_tasks, generator=g, dtype=DOUBLE)
        method = build("uw", n_tasks).double()
        reference = tjd.UW(n_tasks).double()
        with torch.no_grad():
            method.log_var.copy_(log_var)
            reference.log_var.copy_(log_var)
        answer = method.weigh(ctx_of(losses))
        torch.testing.assert_close(answer.weights, scalarizer_weights(reference, losses))
        (mine,) = torch.autograd.grad(answer.method_loss, method.log_var)
        (theirs,) = torch.autograd.grad(reference(losses), reference.log_var)
        torch.testing.assert_close(mine, theirs)


def test_uw_defaults_and_classification_form_closed_form():
    method = build("uw", 3)
    assert method.options.scale == "free" and method.options.heads == "weighted"
    assert method.lr == 0.025 and method.options.form == "generic"
    torch.testing.assert_close(method.log_var.detach(), torch.full((3,), -0.5))
    # Kendall Eq. 10, classification term: e^{-s} L + 1/2 s, weights e^{-s}, d/ds = -e^{-s} L + 1/2
    method = build("uw", 3, form="classification", init=0.3).double()
    losses = torch.tensor([0.2, 1.0, 4.0], dtype=DOUBLE)
    answer = method.weigh(ctx_of(losses))
    torch.testing.assert_close(answer.weights, torch.full((3,), math.exp(-0.3), dtype=DOUBLE))
    (grad,) = torch.autograd.grad(answer.method_loss, method.log_var)
    torch.testing.assert_close(grad, -math.exp(-0.3) * losses + 0.5)


@pytest.mark.parametrize("form", ["generic", "classification"])
def test_uw_stationary_weight_is_one_over_twice_the_loss(form):
    # at the minimiser in s of either form the loss weight is 1 / (2 L): generic s* = log L, classification log 2L
    losses = torch.tensor([0.01, 0.7, 3.0, 50.0], dtype=DOUBLE)
    method = build("uw", 4, form=form).double()
    with torch.no_grad():
        method.log_var.copy_(torch.log(losses * (1.0 if form == "generic" else 2.0)))
    answer = method.weigh(ctx_of(losses))
    (grad,) = torch.autograd.grad(answer.method_loss, method.log_var)
    torch.testing.assert_close(grad, torch.zeros(4, dtype=DOUBLE), atol=1e-12, rtol=0)
    torch.testing.assert_close(answer.weights, 1 / (2 * losses))


def test_uw_training_steps_match_torchjd_uw_with_sgd():
    # Three SGD steps on the tiny HPS model: model lr 0.05, s with UW's own lr 0.025, against torchjd's UW
    # scalar back-propagated through model and s alike (its s set to our init -0.5).
    model = tiny_model()
    reference = copy.deepcopy(model)
    stepper = make_stepper(model, TASKS, "uw")
    method = stepper.loss_weighting.double()
    uw = tjd.UW(T).double()
    with torch.no_grad():
        uw.log_var.fill_(-0.5)
    for x, y in batches(3):
        result = stepper.step(x, y)
        uw(task_losses(reference, x, y)).backward()
        assert_same_grads(grads_of(model), grads_of(reference))
        torch.testing.assert_close(method.log_var.grad, uw.log_var.grad)
        torch.testing.assert_close(result.loss_weights, 0.5 * torch.exp(-uw.log_var.detach()))
        sgd(model.parameters(), 0.05)
        sgd(reference.parameters(), 0.05)
        sgd(method.parameters(), method.lr)
        sgd(uw.parameters(), 0.025)
    assert_same_params(model, reference)
    assert not torch.allclose(method.log_var.detach(), torch.full((T,), -0.5, dtype=DOUBLE))


def test_uw_state_round_trip():
    method = build("uw", 3, init=0.0)
    with torch.no_grad():
        method.log_var.copy_(torch.tensor([0.1, -0.4, 1.3]))
    fresh = round_trip(method, "uw", 3, init=0.0)
    losses = torch.tensor([0.3, 2.0, 0.9])
    a, b = method.weigh(ctx_of(losses)), fresh.weigh(ctx_of(losses))
    assert torch.equal(a.weights, b.weights)
    assert torch.equal(
        torch.autograd.grad(a.method_loss, method.log_var)[0], torch.autograd.grad(b.method_loss, fresh.log_var)[0]
    )


# ----------------------------------------------------------------------------- DWA


def dwa_closed_form(newer: list[float], older: list[float], temp: float = 2.0) -> torch.Tensor:
    """Liu et al. 2019, Eq. 7, written out in plain Python."""
    exps = [math.exp(n / o / temp) for n, o in zip(newer, older, strict=True)]
    return torch.tensor([len(exps) * e / sum(exps) for e in exps], dtype=DOUBLE)


def test_dwa_equals_its_closed_form_on_a_given_history():
    method = build("dwa", 2)
    assert method.options.scale == "tasks" and method.options.temp == 2.0
    history = [[1.0, 1.0], [0.5, 1.0], [0.25, 0.9]]
    losses = torch.tensor([3.0, 4.0], dtype=DOUBLE)
    expected = [torch.ones(2, dtype=DOUBLE), torch.ones(2, dtype=DOUBLE), dwa_closed_form(history[1], history[0])]
    expected.append(dwa_closed_form(history[2], history[1]))
    for epoch, want in enumerate(expected, start=1):
        torch.testing.assert_close(method.weigh(ctx_of(losses)).weights, want)
        if epoch <= len(history):
            method.on_epoch_end(epoch, torch.tensor(history[epoch - 1], dtype=DOUBLE))
    # the task whose loss fell fastest (0.5 -> 0.25) gets the smaller weight, and the weights sum to T
    weights = method.weigh(ctx_of(losses)).weights
    assert weights[0] < 1 < weights[1] and math.isclose(float(weights.sum()), 2.0)


@pytest.mark.parametrize("n_tasks", TASK_COUNTS)
def test_dwa_matches_torchjd_dwa_over_epochs(n_tasks):
    # torchjd accumulates the batch losses itself and rolls its history at step(); we get the same epoch means
    # through on_epoch_end. Both sum to T.
    method = build("dwa", n_tasks)
    reference = tjd.DWA(temperature=2.0)
    steps = loss_sequence(n_tasks, steps=20, seed=n_tasks)
    for epoch in range(1, 6):
        epoch_losses = steps[4 * (epoch - 1) : 4 * epoch]
        for losses in epoch_losses:
            torch.testing.assert_close(method.weigh(ctx_of(losses)).weights, scalarizer_weights(reference, losses))
        reference.step()
        method.on_epoch_end(epoch, torch.stack(epoch_losses).mean(dim=0))
    assert not torch.allclose(method.weights, torch.ones(n_tasks, dtype=DOUBLE))


@pytest.mark.parametrize("n_tasks", [2, 5])
def test_dwa_iteration_window_is_nash_mtl_fifo(n_tasks):
    # Nash-MTL's variant: FIFO of the last 2W loss vectors initialised to ones (current step included); weights
    # 1 for the first W + 1 steps, then T softmax(mean(newest W) / mean(oldest W) / temp).
    window, temp = 3, 2.0
    method = build("dwa", n_tasks, history="iterations", window=window)
    fifo = [[1.0] * n_tasks for _ in range(2 * window)]
    for k, losses in enumerate(loss_sequence(n_tasks, steps=12, seed=3)):
        fifo = [*fifo[1:], losses.tolist()]
        if k > window:
            newer = [sum(row[t] for row in fifo[window:]) / window for t in range(n_tasks)]
            older = [sum(row[t] for row in fifo[:window]) / window for t in range(n_tasks)]
            expected = dwa_closed_form(newer, older, temp)
        else:
            expected = torch.ones(n_tasks, dtype=DOUBLE)
        torch.testing.assert_close(method.weigh(ctx_of(losses)).weights, expected)
    method.on_epoch_end(1, torch.ones(n_tasks, dtype=DOUBLE))  # no effect in this mode
    assert method.seen == 12


def test_dwa_step_weights_losses_and_heads():
    model = tiny_model()
    stepper = make_stepper(model, TASKS, "dwa")
    method = stepper.loss_weighting
    (x, y), (x2, y2) = batches(2)
    result = stepper.step(x, y, epoch=1)
    assert_same_grads(grads_of(model), weighted_loss_grads(model, x, y, torch.ones(T, dtype=DOUBLE)))
    assert torch.equal(result.loss_weights, torch.ones(T, dtype=DOUBLE))
    method.on_epoch_end(1, torch.tensor([2.0, 2.0, 2.0], dtype=DOUBLE))
    method.on_epoch_end(2, torch.tensor([1.0, 1.8, 2.2], dtype=DOUBLE))
    model.zero_grad(set_to_none=True)
    result = stepper.step(x2, y2, epoch=3)
    expected = dwa_closed_form([1.0, 1.8, 2.2], [2.0, 2.0, 2.0])
    torch.testing.assert_close(result.loss_weights, expected)
    assert_same_grads(grads_of(model), weighted_loss_grads(model, x2, y2, expected))


@pytest.mark.parametrize("history", ["epochs", "iterations"])
def test_dwa_state_round_trip(history):
    method = build("dwa", 3, history=history, window=2)
    for epoch, losses in enumerate(loss_sequence(3, steps=7, seed=5), start=1):
        method.weigh(ctx_of(losses))
        method.on_epoch_end(epoch, losses)
    fresh = round_trip(method, "dwa", 3, history=history, window=2)
    for epoch, losses in enumerate(loss_sequence(3, steps=4, seed=6), start=8):
        assert torch.equal(method.weigh(ctx_of(losses)).weights, fresh.weigh(ctx_of(losses)).weights)
        method.on_epoch_end(epoch, losses)
        fresh.on_epoch_end(epoch, losses)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("dwa", {"temp": 0.0}, "temp must be positive"),
        ("dwa", {"window": 0}, "window must be at least 1"),
        ("dwa", {"history": "steps"}, "'steps' is not one of"),
        ("uw", {"lr": -1.0}, "lr must be non-negative"),
        ("uw", {"form": "kendall"}, "'kendall' is not one of"),
        ("groupdro", {"robust_step_size": -0.1}, "robust_step_size must be non-negative"),
        ("famo", {"gamma": -1e-3}, "gamma must be non-negative"),
        ("famo", {"delta": "later"}, "'later' is not one of"),
    ],
)
def test_bad_options_name_the_key(name, options, message):
    with pytest.raises(ConfigError, match=message):
        parse_method(name, {name: options}, "x")


# ----------------------------------------------------------------------------- GroupDRO


def excess_mtl_groupdro(steps: list[torch.Tensor], eta: float) -> list[torch.Tensor]:
    """ExcessMTL's GroupDRO recursion in plain multiplicative form: q = 1, q <- q e^{eta L}, q <- T q / sum q."""
    q = [1.0] * len(steps[0])
    out = []
    for losses in steps:
        q = [qi * math.exp(eta * li) for qi, li in zip(q, losses.tolist(), strict=True)]
        q = [len(q) * qi / sum(q) for qi in q]
        out.append(torch.tensor(q, dtype=DOUBLE))
    return out


@pytest.mark.parametrize("n_tasks", TASK_COUNTS)
@pytest.mark.parametrize("eta", [1e-2, 1.0])
def test_groupdro_is_excess_mtl_recursion_and_softmax_of_cumulative_losses(n_tasks, eta):
    method = build("groupdro", n_tasks, robust_step_size=eta)
    steps = loss_sequence(n_tasks, steps=8, seed=n_tasks)
    cumulative = torch.zeros(n_tasks, dtype=DOUBLE)
    for losses, expected in zip(steps, excess_mtl_groupdro(steps, eta), strict=True):
        weights = method.weigh(ctx_of(losses)).weights
        # the step scales the weights to sum T (scale: tasks); the method's own answer is on the simplex
        torch.testing.assert_close(apply_scale(weights, method.options.scale), expected)
        cumulative += losses
        torch.testing.assert_close(weights, torch.softmax(eta * cumulative, dim=0))


def test_groupdro_up_weights_the_task_with_the_larger_loss():
    method = build("groupdro", 3, robust_step_size=0.1)
    losses = torch.tensor([2.0, 1.0, 1.0], dtype=DOUBLE)
    previous = 1 / 3
    for _ in range(5):
        weights = method.weigh(ctx_of(losses)).weights
        assert weights[0] > previous and weights[0] > weights[1]
        torch.testing.assert_close(weights[1], weights[2])
        previous = float(weights[0])
    # simplex scale: the paper's q (sum 1) is the method's own answer; 'tasks' multiplies it by T
    simplex = build("groupdro", 3, scale="simplex", robust_step_size=0.1)
    assert simplex.options.scale == "simplex"


def test_groupdro_step_weights_losses_and_heads():
    model = tiny_model()
    stepper = make_stepper(model, TASKS, "groupdro", entries={"groupdro": {"robust_step_size": 0.5}})
    (x, y), (x2, y2) = batches(2)
    first = stepper.step(x, y)
    losses1 = first.losses
    expected = T * torch.softmax(0.5 * losses1, dim=0)
    torch.testing.assert_close(first.loss_weights, expected)
    assert_same_grads(grads_of(model), weighted_loss_grads(model, x, y, expected))
    model.zero_grad(set_to_none=True)
    second = stepper.step(x2, y2)
    torch.testing.assert_close(second.loss_weights, T * torch.softmax(0.5 * (losses1 + second.losses), dim=0))


def test_groupdro_state_round_trip():
    method = build("groupdro", 5)
    for losses in loss_sequence(5, steps=6, seed=2):
        method.weigh(ctx_of(losses))
    fresh = round_trip(method, "groupdro", 5)
    for losses in loss_sequence(5, steps=3, seed=3):
        assert torch.equal(method.weigh(ctx_of(losses)).weights, fresh.weigh(ctx_of(losses)).weights)


# ----------------------------------------------------------------------------- FAMO


def torchjd_famo_weights(
    steps: list[torch.Tensor], afters: list[torch.Tensor] | None, n_tasks: int, **kwargs
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """torchjd FAMO, scalarizing L_k at step k; before that, update with step k - 1's losses after its update:
    ``afters[k - 1]`` (the ``same_batch`` losses), or L_k itself when ``afters`` is None (``next_batch``)."""
    famo = tjd.FAMO(n_tasks, **kwargs).double()
    weights = []
    for k, losses in enumerate(steps):
        if k > 0:
            famo.update(losses if afters is None else afters[k - 1])
        weights.append(scalarizer_weights(famo, losses))
    return weights, famo._w.detach()


def famo_ctx(losses: torch.Tensor, k: int, afters: list[torch.Tensor]) -> SimpleNamespace:
    """Step k's context for ``same_batch``: batch (k, k); the forward on batch j after its update gives afters[j]."""

    def forward_losses(batch):
        assert not torch.is_grad_enabled() and batch.x == batch.y == k - 1  # the previous step's batch, no_grad
        return afters[batch.x]

    return ctx_of(losses, batch=Batch(k, k), forward_losses=forward_losses)


@pytest.mark.parametrize("delta", ["same_batch", "next_batch"])
@pytest.mark.parametrize("n_tasks", TASK_COUNTS)
def test_famo_matches_torchjd_famo(n_tasks, delta):
    # FAMO's weights z/L normalised sum to 1 (our scale: simplex), torchjd's d scalar / d L likewise.
    # same_batch (default): delta of step k from L_k and the losses on step k's batch after the update (afters[k]);
    # next_batch: from L_k and L_{k+1}.
    steps = loss_sequence(n_tasks, steps=15, seed=n_tasks)
    afters = [0.9 * losses for losses in loss_sequence(n_tasks, steps=15, seed=100 + n_tasks)]
    same = delta == "same_batch"
    expected, logits = torchjd_famo_weights(steps, afters if same else None, n_tasks, lr=0.025, weight_decay=1e-3)
    method = build("famo", n_tasks) if same else build("famo", n_tasks, delta=delta)
    assert method.options.delta == delta  # same_batch is the default
    for k, (losses, want) in enumerate(zip(steps, expected, strict=True)):
        ctx = famo_ctx(losses, k, afters) if same else ctx_of(losses)
        torch.testing.assert_close(method.weigh(ctx).weights, want)
    torch.testing.assert_close(method.xi, logits)
    assert not torch.allclose(method.xi, torch.zeros(n_tasks, dtype=DOUBLE))


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
def test_famo_sgd_logits_follow_algorithm_1(n_tasks):
    # Algorithm 1: xi <- xi - beta (J_softmax(xi)^T delta + gamma xi), with J from autograd (not our closed form);
    # next_batch so that the loss sequence alone gives delta (same_batch's delta: test_famo_matches_torchjd_famo)
    beta, gamma = 0.3, 0.01
    method = build("famo", n_tasks, xi_optimizer="sgd", lr=beta, gamma=gamma, delta="next_batch")
    xi = torch.zeros(n_tasks, dtype=DOUBLE)
    previous = None
    for losses in loss_cases(n_tasks, seed=1) + loss_sequence(n_tasks, steps=5, seed=2):
        if previous is not None:
            delta = torch.log(previous + 1e-8) - torch.log(losses + 1e-8)
            jac = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, 0), xi)
            xi = xi - beta * (jac.T @ delta + gamma * xi)
        z = torch.softmax(xi, 0)
        expected = (z / (losses + 1e-8)) / (z / (losses + 1e-8)).sum()
        torch.testing.assert_close(method.weigh(ctx_of(losses)).weights, expected)
        previous = losses
    torch.testing.assert_close(method.xi, xi)


def test_famo_weights_are_inverse_losses_at_start_and_favour_the_slower_task():
    method = build("famo", 3, xi_optimizer="sgd", lr=1.0, gamma=0.0, delta="next_batch")
    first = torch.tensor([1.0, 2.0, 4.0], dtype=DOUBLE)
    # xi = 0: z uniform, weights proportional to 1/L (the gradient of mean log L), summing to 1
    torch.testing.assert_close(method.weigh(ctx_of(first)).weights, torch.tensor([4.0, 2.0, 1.0], dtype=DOUBLE) / 7)
    # task 0's loss fell 10x, task 1's 2x, task 2's not at all: z moves towards the task that improved least
    method.weigh(ctx_of(torch.tensor([0.1, 1.0, 4.0], dtype=DOUBLE)))
    z = method.diagnostics()["z"]
    assert z[0] < z[1] < z[2]
    # a lower bound b: weights proportional to z / (L - b)
    bounded = build("famo", 2, min_loss=0.5, delta="next_batch")
    torch.testing.assert_close(
        bounded.weigh(ctx_of(torch.tensor([1.0, 2.5], dtype=DOUBLE))).weights,
        torch.tensor([0.8, 0.2], dtype=DOUBLE),
    )


def famo_reference_training(model, data, same_batch: bool, lr: float = 0.05) -> None:
    """FAMO's official loop with torchjd's FAMO: scalarize, backward, SGD step, then update the logits with the
    losses on the same batch after the step (``same_batch``) or with the next batch's losses (``next_batch``)."""
    famo = tjd.FAMO(T, lr=0.025, weight_decay=1e-3).double()
    for k, (x, y) in enumerate(data):
        losses = task_losses(model, x, y)
        if k > 0 and not same_batch:
            famo.update(losses.detach())
        famo(losses).backward()
        sgd(model.parameters(), lr)
        if same_batch:
            with torch.no_grad():
                famo.update(task_losses(model, x, y))


@pytest.mark.parametrize("delta", ["same_batch", "next_batch"])
def test_famo_training_matches_the_official_loop(delta):
    data = batches(5, seed=4)
    model = tiny_model()
    reference = copy.deepcopy(model)
    # same_batch, the paper's and the official code's delta, is the default: no entry needed
    entries = None if delta == "same_batch" else {"famo": {"delta": delta}}
    stepper = make_stepper(model, TASKS, "famo", entries=entries)
    assert stepper.loss_weighting.options.delta == delta
    assert stepper.plain  # a loss-only method: one backward pass of the weighted sum
    assert ("forward" in stepper.loss_weighting.describe()["needs"]) == (delta == "same_batch")
    for x, y in data:
        result = stepper.step(x, y)
        torch.testing.assert_close(float(result.loss_weights.sum()), 1.0)
        sgd(model.parameters(), 0.05)
    famo_reference_training(reference, data, same_batch=delta == "same_batch")
    assert_same_params(model, reference)
    # the two modes really differ (so the comparison above can fail)
    other = copy.deepcopy(tiny_model())
    famo_reference_training(other, data, same_batch=delta != "same_batch")
    assert not all(torch.allclose(p, q) for p, q in zip(model.parameters(), other.parameters(), strict=True))


@pytest.mark.parametrize("delta", ["next_batch", "same_batch"])
def test_famo_state_round_trip(delta):
    model = tiny_model()
    data = batches(6, seed=7)
    stepper = make_stepper(model, TASKS, "famo", entries={"famo": {"delta": delta}})
    for x, y in data[:3]:
        stepper.step(x, y)
        sgd(model.parameters(), 0.05)
    method = stepper.loss_weighting
    fresh = round_trip(method, "famo", T, delta=delta)
    assert fresh.steps == method.steps == 2
    twin = copy.deepcopy(model)
    twin_stepper = make_stepper(twin, TASKS, "famo", entries={"famo": {"delta": delta}})
    twin_stepper.loss_weighting = fresh
    for x, y in data[3:]:
        a, b = stepper.step(x, y), twin_stepper.step(x, y)
        assert torch.equal(a.loss_weights, b.loss_weights)
        sgd(model.parameters(), 0.05)
        sgd(twin.parameters(), 0.05)
    assert torch.equal(method.xi, fresh.xi)
