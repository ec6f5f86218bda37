"""GradNorm (Chen et al. 2018, Sec. 3, Eqs. 1-2, Algorithm 1) checked against closed forms and through the step.

torchjd has no GradNorm, so the references are the paper's formulas, evaluated independently in the tests:
``G_i = w_i ||grad_W L_i||``, ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))``, target ``mean(G) r_i^alpha``
(constant), ``L_grad = sum_i |G_i - target_i|`` whose gradient w.r.t. ``w_i`` is ``sign(G_i - target_i)
||grad_W L_i||``; one SGD step on ``w`` then renormalisation to sum T (Algorithm 1). Per-task gradients in the
step tests come from plain autograd on a copy of the model.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mtlrepro.archs import build_model
from mtlrepro.errors import ConfigError
from mtlrepro.train import make_optimizer
from mtlrepro.weighting import parse_method
from mtlrepro.weighting.gradnorm import GradNorm

from conftest import TASKS, digit_tasks, make_model_and_batch, make_stepper

ALPHA = 1.5


def build(n_tasks: int, **options) -> GradNorm:
    spec = parse_method("gradnorm", {"gradnorm": options}, "test")
    return spec.gradient.build(n_tasks, torch.Generator().manual_seed(0))


def fake_ctx(last_rows: torch.Tensor, losses: torch.Tensor, epoch: int = 1, loss_weights=None) -> SimpleNamespace:
    """The part of a StepContext GradNorm reads."""
    return SimpleNamespace(
        last_shared_jacobian=lambda: last_rows, losses=losses, loss_weights=loss_weights, epoch=epoch, iteration=0
    )


def problem(n_tasks: int, seed: int, dim: int = 6, last: int = 4):
    """A fixed problem: gradients [T x dim], last-layer gradients [T x last], losses at t = 0 and t = 1."""
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(n_tasks, dim, generator=g, dtype=torch.float64)
    rows = torch.randn(n_tasks, last, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, n_tasks)[:, None]
    loss0 = 1.0 + torch.rand(n_tasks, generator=g, dtype=torch.float64)
    loss1 = loss0 * (0.3 + 0.7 * torch.rand(n_tasks, generator=g, dtype=torch.float64))
    return grads, rows, loss0, loss1


def reference_gradient(weights, norms, losses, initial, alpha=ALPHA):
    """d L_grad / d w from the paper's definitions (Sec. 3.1-3.2), the target held constant."""
    ratios = losses / initial
    rates = ratios / ratios.mean()
    weighted = weights * norms
    target = weighted.mean() * rates**alpha
    return torch.sign(weighted - target) * norms, (weighted - target).abs().sum()


def sgd_update(method: GradNorm, lr: float) -> None:
    with torch.no_grad():
        method.weight -= lr * method.weight.grad
    method.weight.grad = None


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
def test_one_update_of_the_weights_is_algorithm_1(n_tasks):
    grads, rows, loss0, loss1 = problem(n_tasks, seed=n_tasks)
    method = build(n_tasks).double()
    norms = rows.norm(dim=1)
    lr = 0.05

    # t = 0: L(0) is this step's loss, so r_i = 1 and the target is mean(G); w = 1
    first = method.aggregate(grads, fake_ctx(rows, loss0))
    ones = torch.ones(n_tasks, dtype=torch.float64)
    torch.testing.assert_close(first.weights, ones)
    torch.testing.assert_close(first.direction, grads.sum(0))
    first.method_loss.backward()
    expected_grad, expected_loss = reference_gradient(ones, norms, loss0, loss0)
    torch.testing.assert_close(first.method_loss, expected_loss)
    torch.testing.assert_close(method.weight.grad, expected_grad)
    sgd_update(method, lr)

    # t = 1: the updated weights, renormalised to sum T, are used; new gradient from the new rates
    second = method.aggregate(grads, fake_ctx(rows, loss1))
    raw = ones - lr * expected_grad
    w1 = n_tasks * raw / raw.sum()
    torch.testing.assert_close(second.weights, w1)
    torch.testing.assert_close(second.direction, w1 @ grads)
    torch.testing.assert_close(second.weights.sum(), torch.tensor(float(n_tasks), dtype=torch.float64))
    second.method_loss.backward()
    expected_grad, expected_loss = reference_gradient(w1, norms, loss1, loss0)
    torch.testing.assert_close(second.method_loss, expected_loss)
    torch.testing.assert_close(method.weight.grad, expected_grad)


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
def test_softmax_parametrisation_gradient(n_tasks):
    # LibMTL: w = T softmax(s). d/ds_j sum_i a_i w_i = T p_j (a_j - sum_i a_i p_i), a_i = sign(G_i - target_i) n_i.
    grads, rows, loss0, loss1 = problem(n_tasks, seed=20 + n_tasks)
    method = build(n_tasks, parametrisation="softmax").double()
    with torch.no_grad():
        method.weight.copy_(torch.linspace(-1.0, 1.0, n_tasks))
    method.aggregate(grads, fake_ctx(rows, loss0))  # sets L(0)
    method.weight.grad = None
    answer = method.aggregate(grads, fake_ctx(rows, loss1))
    p = torch.softmax(torch.linspace(-1.0, 1.0, n_tasks, dtype=torch.float64), 0)
    w = n_tasks * p
    torch.testing.assert_close(answer.weights, w)
    answer.method_loss.backward()
    a, _ = reference_gradient(w, rows.norm(dim=1), loss1, loss0)
    torch.testing.assert_close(method.weight.grad, n_tasks * p * (a - (a * p).sum()))


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("parametrisation", ["direct", "softmax"])
def test_update_moves_weight_from_tasks_above_their_target_to_tasks_below(n_tasks, parametrisation):
    grads, rows, loss0, loss1 = problem(n_tasks, seed=40 + n_tasks)
    method = build(n_tasks, parametrisation=parametrisation).double()
    method.aggregate(grads, fake_ctx(rows, loss0))
    method.weight.grad = None
    answer = method.aggregate(grads, fake_ctx(rows, loss1))
    before = answer.weights
    weighted = before * rows.norm(dim=1)
    ratios = loss1 / loss0
    above = weighted > weighted.mean() * (ratios / ratios.mean()) ** ALPHA
    assert above.any() and (~above).any()
    answer.method_loss.backward()
    sgd_update(method, 0.01)
    after = method.current_weights().detach()
    change = after / before
    assert change[above].max() < change[~above].min()
    torch.testing.assert_close(after.sum(), torch.tensor(float(n_tasks), dtype=torch.float64))


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
def test_repeated_updates_balance_the_gradient_norms(n_tasks):
    # Equal training rates (r_i = 1): GradNorm drives w_i ||grad_W L_i|| towards their common mean, i.e.
    # w_i -> T (1 / n_i) / sum_j (1 / n_j), up to the L1 loss's oscillation of order lr * n_i (here < 5%).
    norms = torch.linspace(0.5, 2.0, n_tasks, dtype=torch.float64)
    rows = torch.zeros(n_tasks, 3, dtype=torch.float64)
    rows[:, 0] = norms
    grads = torch.randn(n_tasks, 4, generator=torch.Generator().manual_seed(n_tasks), dtype=torch.float64)
    loss0 = torch.ones(n_tasks, dtype=torch.float64)
    method = build(n_tasks).double()
    for _ in range(1500):
        answer = method.aggregate(grads, fake_ctx(rows, loss0))
        answer.method_loss.backward()
        sgd_update(method, 0.01)
    weights = method.current_weights().detach()
    weighted = weights * norms
    assert weighted.max() / weighted.min() < 1.06  # from 4.0 at w = 1
    ideal = n_tasks / norms / (1 / norms).sum()
    torch.testing.assert_close(weights, ideal, rtol=0.05, atol=0.0)


def test_weights_stay_positive_and_sum_to_t_under_large_steps():
    n_tasks = 5
    method = build(n_tasks).double()
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        rows = torch.randn(n_tasks, 4, generator=g, dtype=torch.float64) * 10
        losses = torch.rand(n_tasks, generator=g, dtype=torch.float64) + 0.1
        answer = method.aggregate(torch.randn(n_tasks, 3, dtype=torch.float64), fake_ctx(rows, losses))
        assert (answer.weights > 0).all() and torch.isfinite(answer.weights).all()
        torch.testing.assert_close(answer.weights.sum(), torch.tensor(5.0, dtype=torch.float64))
        answer.method_loss.backward()
        sgd_update(method, 1.0)


def test_first_epoch_option_warms_up_with_ew_and_uses_the_epoch_mean_loss():
    n_tasks = 3
    grads, rows, loss0, loss1 = problem(n_tasks, seed=5)
    method = build(n_tasks, initial_loss="first_epoch").double()
    epoch1 = [loss0, 0.5 * loss0 + 0.2]
    for losses in epoch1:  # LibMTL: epoch 1 is EW (w = 1), no GradNorm update
        answer = method.aggregate(grads, fake_ctx(rows, losses, epoch=1))
        assert answer.method_loss is None
        torch.testing.assert_close(answer.weights, torch.ones(n_tasks, dtype=torch.float64))
        torch.testing.assert_close(answer.direction, grads.sum(0))
    answer = method.aggregate(grads, fake_ctx(rows, loss1, epoch=2))
    answer.method_loss.backward()
    initial = (epoch1[0] + epoch1[1]) / 2
    expected, _ = reference_gradient(torch.ones(n_tasks, dtype=torch.float64), rows.norm(dim=1), loss1, initial)
    torch.testing.assert_close(method.weight.grad, expected)
    torch.testing.assert_close(method.initial_losses, initial)


def test_layer_all_uses_the_rows_of_the_gradient_matrix():
    grads, rows, loss0, loss1 = problem(3, seed=8)
    method = build(3, layer="all").double()
    method.aggregate(grads, fake_ctx(rows * float("nan"), loss0))  # the last layer must not be read
    method.weight.grad = None
    answer = method.aggregate(grads, fake_ctx(rows * float("nan"), loss1))
    answer.method_loss.backward()
    expected, _ = reference_gradient(answer.weights, grads.norm(dim=1), loss1, loss0)
    torch.testing.assert_close(method.weight.grad, expected)


# --------------------------------------------------------------------------- options and state


def test_defaults_and_own_learning_rate():
    component = parse_method("gradnorm", {}, "x").gradient
    options = component.options
    assert options["alpha"] == 1.5 and options["layer"] == "last" and options["initial_loss"] == "first_step"
    assert options["scale"] == "tasks" and options["heads"] == "weighted" and options["parametrisation"] == "direct"
    method = build(3, lr=0.1)
    assert method.lr == 0.1
    model = build_model("hps", "lenet", (1, 36, 36), digit_tasks(3))
    from mtlrepro.train import TrainingOptions

    optimizer = make_optimizer(model, [method], TrainingOptions())
    group = optimizer.param_groups[1]
    assert group["params"] == [method.weight] and group["lr"] == 0.1 and group["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"alpha": -1.0}, "alpha must be non-negative"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"layer": "first"}, "is not one of"),
    ],
)
def test_bad_options_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        parse_method("gradnorm", {"gradnorm": values}, "x")


@pytest.mark.parametrize("parametrisation", ["direct", "softmax"])
@pytest.mark.parametrize("initial_loss", ["first_step", "first_epoch"])
def test_state_round_trip_continues_identically(parametrisation, initial_loss):
    n_tasks = 4
    g = torch.Generator().manual_seed(9)
    steps = [
        (
            torch.randn(n_tasks, 5, generator=g, dtype=torch.float64),
            torch.randn(n_tasks, 3, generator=g, dtype=torch.float64),
            1 + torch.rand(n_tasks, generator=g, dtype=torch.float64),
            1 + i // 3,
        )
        for i in range(8)
    ]
    options = {"parametrisation": parametrisation, "initial_loss": initial_loss}
    method = build(n_tasks, **options).double()
    optimizer = torch.optim.Adam(method.parameters(), lr=0.05)

    def run(m, opt, step):
        grads, rows, losses, epoch = step
        opt.zero_grad()
        answer = m.aggregate(grads, fake_ctx(rows, losses, epoch))
        if answer.method_loss is not None:
            answer.method_loss.backward()
            opt.step()
        return answer

    for step in steps[:4]:
        run(method, optimizer, step)
    restored = build(n_tasks, **options).double()
    restored.load_state_dict(copy.deepcopy(method.state_dict()))
    restored_optimizer = torch.optim.Adam(restored.parameters(), lr=0.05)
    restored_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for step in steps[4:]:
        a, b = run(method, optimizer, step), run(restored, restored_optimizer, step)
        assert torch.equal(a.weights, b.weights) and torch.equal(a.direction, b.direction)
        assert torch.equal(a.method_loss, b.method_loss)
    assert not torch.allclose(a.weights, torch.ones(n_tasks, dtype=torch.float64))


# --------------------------------------------------------------------------- through the step


@pytest.fixture
def model_and_batch():
    return make_model_and_batch(batch_seed=1)


def per_task_gradients(model, x, y):
    """Losses, per-task gradients of the shared parameters [T x D], of the last shared layer, and of each head."""
    z = model.encode(x)
    losses = torch.stack([F.cross_entropy(o, y[:, t]) for t, o in enumerate(model.decode(z))])
    shared = model.shared_parameters()
    last = model.last_shared_parameters()
    rows, last_rows, heads = [], [], []
    for t in range(len(losses)):
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], shared, retain_graph=True)]))
        last_rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], last, retain_graph=True)]))
        heads.append(torch.autograd.grad(losses[t], list(model.heads[t].parameters()), retain_graph=True))
    return losses.detach(), torch.stack(rows), torch.stack(last_rows), heads


def shared_grad(model):
    return torch.cat([p.grad.flatten() for p in model.shared_parameters()])


@pytest.mark.parametrize("expression", ["gradnorm", "rlw+gradnorm"])
def test_step_applies_direction_heads_and_method_gradient(model_and_batch, expression):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper = make_stepper(model, TASKS, expression, seeds=(4, 5))
    method = stepper.aggregator
    losses, jac, last_rows, heads = per_task_gradients(reference, x, y)
    lam = torch.ones(3, dtype=torch.float64)
    # two steps on the same batch: the first sets L(0); take one SGD step on w in between
    for step in range(2):
        model.zero_grad(set_to_none=True)
        result = stepper.step(x, y, epoch=1, iteration=step)
        if result.loss_weights is not None:
            lam = result.loss_weights
            torch.testing.assert_close(lam.sum(), torch.tensor(1.0, dtype=torch.float64))
        w = result.grad_weights
        torch.testing.assert_close(w.sum(), torch.tensor(3.0, dtype=torch.float64))
        torch.testing.assert_close(shared_grad(model), (w * lam) @ jac)  # direction w^T diag(lambda) J
        for t in range(3):  # heads: weighted by lambda_t (RLW) and w_t (GradNorm default)
            for p, g in zip(model.heads[t].parameters(), heads[t], strict=True):
                torch.testing.assert_close(p.grad, lam[t] * w[t] * g)
        norms = lam * last_rows.norm(dim=1)  # ||grad_W lambda_t L_t|| on the last shared layer
        torch.testing.assert_close(result.diagnostics["gradnorm.grad_norm"], w * norms)
        expected, _ = reference_gradient(w, norms, losses, losses)  # same batch: L(t) = L(0), r = 1
        torch.testing.assert_close(method.weight.grad.double(), expected, rtol=1e-5, atol=1e-7)
        sgd_update(method, 0.05)
    assert not torch.allclose(w, torch.ones(3, dtype=torch.float64))


def test_unweighted_heads_option_leaves_head_gradients_alone(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper = make_stepper(model, TASKS, "gradnorm", {"gradnorm": {"heads": "unweighted", "layer": "all"}})
    with torch.no_grad():
        stepper.aggregator.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
    result = stepper.step(x, y)
    _, jac, _, heads = per_task_gradients(reference, x, y)
    torch.testing.assert_close(result.grad_weights, torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    torch.testing.assert_close(shared_grad(model), result.grad_weights @ jac)
    for t in range(3):
        for p, g in zip(model.heads[t].parameters(), heads[t], strict=True):
            torch.testing.assert_close(p.grad, g)


def test_representation_mode_runs_with_last_layer_norms(model_and_batch):
    model, x, y = model_and_batch
    reference = copy.deepcopy(model)
    stepper = make_stepper(model, TASKS, "gradnorm", {"gradnorm": {"grad_wrt": "representation"}})
    stepper.step(x, y)
    _, jac, _, _ = per_task_gradients(reference, x, y)
    assert stepper._matrix is None  # no parameter Jacobian was built
    torch.testing.assert_close(shared_grad(model), torch.ones(3, dtype=torch.float64) @ jac)
    assert stepper.aggregator.weight.grad is not None
