"""ExcessMTL (He et al. 2024, Algorithm 1, Eqs. 6, 7, 9; App. C.1) checked against torchjd, closed forms and its claim.

torchjd 0.18's ``ExcessMTLWeighting`` is the independent reference. Two intentional differences are normalised
before comparing, each where it arises:

* with ``n_warmup_steps=0`` torchjd takes the first step's risk as baseline *and* already updates with the raw
  first risk ``E_1`` (weights ``∝ exp(eta E_1)`` times the later factors), whereas the public ExcessMTL code, our
  ``warmup: first_step``, does not update at the first step; multiplying torchjd's weights by ``exp(-eta E_1)``
  and renormalising removes exactly that factor;
* torchjd divides by ``E0 + 1e-7``, we by ``max(E0, eps)``: a relative difference below 1e-7 for E0 ~ 1,
  covered by the tolerances (rtol 1e-5).

Both use simplex weights (init 1/m), so no scale normalisation is needed there; the public code's sum-T scale
is checked through the step (``scale: tasks``).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchjd.aggregation import ExcessMTL as TorchJDExcessMTL
from torchjd.aggregation import ExcessMTLWeighting
from torchjd.autojac import jac_to_grad, mtl_backward

from mtlrepro.archs import build_model
from mtlrepro.archs.hps import HPS
from mtlrepro.data import Task
from mtlrepro.errors import ConfigError
from mtlrepro.weighting import parse_method
from mtlrepro.weighting.base import SetupInfo
from mtlrepro.weighting.excess_mtl import ExcessMTL, excess_risk, exponentiated_update

from conftest import TASKS, digit_tasks, make_stepper

RTOL, ATOL = 1e-5, 1e-9
"""Comparisons with torchjd: float64 inputs; the only numerical difference is torchjd's +1e-7 on E0, a relative
change of 1e-7 / E0 in every scaled risk (E0 >= ~0.1 here), accumulated over the steps in the log-weights."""


def build(n_tasks: int, **options) -> ExcessMTL:
    spec = parse_method("excess_mtl", {"excess_mtl": options}, "test")
    return spec.loss.build(n_tasks, torch.Generator().manual_seed(0))


def fake_ctx(jacobian: torch.Tensor, epoch: int = 1) -> SimpleNamespace:
    """The part of a StepContext ExcessMTL reads: the parameter Jacobian and the epoch."""
    return SimpleNamespace(jacobian=lambda wrt="params", reduce="full": jacobian, epoch=epoch)


def jacobian_sequence(kind: str, n_tasks: int, steps: int, dim: int = 12, seed: int = 0) -> list[torch.Tensor]:
    """Per-step Jacobians [T x D] of a named shape: random, conflicting, near-parallel or badly scaled."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        base = torch.randn(n_tasks, dim, generator=g, dtype=torch.float64)
        if kind == "conflicting":  # task t pulls against task t - 1
            base[1:] = -base[:-1] * torch.linspace(0.5, 2.0, n_tasks - 1, dtype=torch.float64)[:, None] + 0.1 * base[1:]
        elif kind == "near_parallel":  # all rows within 1e-3 of one direction, different lengths
            direction = base[0]
            scales = torch.linspace(0.5, 3.0, n_tasks, dtype=torch.float64)[:, None]
            base = scales * direction + 1e-3 * torch.randn(n_tasks, dim, generator=g, dtype=torch.float64)
        elif kind == "scaled":  # task scales over three orders of magnitude
            base = base * torch.logspace(-1, 2, n_tasks, dtype=torch.float64)[:, None]
        out.append(base)
    return out


KINDS = ("random", "conflicting", "near_parallel", "scaled")


# --------------------------------------------------------------------------- against torchjd


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("kind", KINDS)
def test_first_step_mode_matches_torchjd_without_warmup(n_tasks, kind):
    # eta small enough that torchjd's extra first-step factor exp(eta E_1) stays inside float64's range for the
    # "scaled" matrices (E_1 up to ~1e3): otherwise its softmax saturates to exact zeros that cannot be undone.
    eta = 0.3
    ours = build(n_tasks, warmup="first_step", eta=eta)
    reference = ExcessMTLWeighting(robust_step_size=eta, n_warmup_steps=0)
    first_risk = None
    for step, jac in enumerate(jacobian_sequence(kind, n_tasks, steps=6, seed=n_tasks)):
        weights = ours.weigh(fake_ctx(jac)).weights
        expected = reference(jac)
        if first_risk is None:
            first_risk = ours.diagnostics()["excess_risk"].clone()
            torch.testing.assert_close(weights, torch.full_like(weights, 1 / n_tasks))  # no update at step 1
        # remove torchjd's extra first-step factor exp(eta E_1) (see module docstring)
        expected = expected * torch.exp(-eta * first_risk)
        expected = expected / expected.sum()
        torch.testing.assert_close(weights, expected, rtol=RTOL, atol=ATOL, msg=f"step {step}")
    assert not torch.allclose(weights, torch.full_like(weights, 1 / n_tasks))  # the weights did move


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("kind", KINDS)
def test_epoch_warmup_matches_torchjd_with_warmup_steps(n_tasks, kind):
    # Paper App. C.1: no update during the warm-up epochs, E0 = their mean risk = torchjd n_warmup_steps.
    eta, steps_per_epoch, warmup_epochs = 1.0, 3, 2
    ours = build(n_tasks, eta=eta, warmup_epochs=warmup_epochs)  # warmup: epochs is the default
    reference = ExcessMTLWeighting(robust_step_size=eta, n_warmup_steps=steps_per_epoch * warmup_epochs)
    for step, jac in enumerate(jacobian_sequence(kind, n_tasks, steps=10, seed=100 + n_tasks)):
        epoch = 1 + step // steps_per_epoch
        weights = ours.weigh(fake_ctx(jac, epoch)).weights
        torch.testing.assert_close(weights, reference(jac), rtol=RTOL, atol=ATOL, msg=f"step {step}")
        if epoch <= warmup_epochs:
            torch.testing.assert_close(weights, torch.full_like(weights, 1 / n_tasks))
    assert not torch.allclose(weights, torch.full_like(weights, 1 / n_tasks))


# --------------------------------------------------------------------------- closed forms and properties


def test_hand_example_follows_algorithm_1():
    # T = 2, D = 2. Step 1: g_1 = (3, 4), g_2 = (1, 0). Step 2: g_1 = (0, 4), g_2 = (2, 0).
    ours = build(2, warmup="first_step", eta=0.5, eps=1e-12)
    j1 = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    j2 = torch.tensor([[0.0, 4.0], [2.0, 0.0]], dtype=torch.float64)
    w1 = ours.weigh(fake_ctx(j1)).weights
    # Eq. 6-7 at step 1: sum_j g^2 / |g| = ||g||_1 -> E0 = (7, 1); no update (public code's first step)
    torch.testing.assert_close(ours.diagnostics()["excess_risk"], torch.tensor([7.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(w1, torch.tensor([0.5, 0.5], dtype=torch.float64))
    w2 = ours.weigh(fake_ctx(j2)).weights
    # step 2: accumulators (9, 32) and (5, 0): E = (16 / sqrt(32), 4 / sqrt(5))
    risk = torch.tensor([16 / math.sqrt(32), 4 / math.sqrt(5)], dtype=torch.float64)
    torch.testing.assert_close(ours.diagnostics()["excess_risk"], risk)
    relative = risk / torch.tensor([7.0, 1.0], dtype=torch.float64)
    unnormalised = 0.5 * torch.exp(0.5 * relative)  # Eq. 9: alpha exp(eta E / E0), then normalise
    torch.testing.assert_close(w2, unnormalised / unnormalised.sum())


def test_pure_functions_are_the_equations():
    grads = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    acc = torch.tensor([[4.0, 4.0], [1.0, 9.0]], dtype=torch.float64)
    torch.testing.assert_close(excess_risk(grads, acc, 0.0), torch.tensor([1 / 2 + 4 / 2, 0.25], dtype=torch.float64))
    log_w = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))
    risk = torch.tensor([2.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([0.25 * math.e**2, 0.75], dtype=torch.float64)
    torch.testing.assert_close(exponentiated_update(log_w, risk, 1.0).exp(), expected / expected.sum())


@pytest.mark.parametrize("warmup", ["first_step", "epochs"])
@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
def test_weights_stay_on_the_simplex(warmup, n_tasks):
    ours = build(n_tasks, warmup=warmup, warmup_epochs=1, eta=5.0)
    for step, jac in enumerate(jacobian_sequence("scaled", n_tasks, steps=40, seed=7)):
        weights = ours.weigh(fake_ctx(jac, epoch=1 + step // 4)).weights
        assert torch.isfinite(weights).all() and (weights >= 0).all()
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_large_risks_saturate_instead_of_overflowing():
    ours = build(2, warmup="first_step", eta=1e4)
    ours.weigh(fake_ctx(torch.tensor([[1e-6, 0.0], [1.0, 1.0]], dtype=torch.float64)))
    weights = ours.weigh(fake_ctx(torch.tensor([[5.0, 5.0], [1.0, 1.0]], dtype=torch.float64))).weights
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------- options and state


def test_defaults_are_the_papers():
    component = parse_method("excess_mtl", {}, "x").loss
    options = component.options
    assert options["scale"] == "simplex" and options["heads"] == "unweighted"
    assert options["warmup"] == "epochs" and options["warmup_epochs"] == 3 and options["eta"] == 1.0
    assert component.cls.kind == "loss"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"grad_wrt": "representation"}, "loss weighting"),
        ({"eta": 0.0}, "eta must be positive"),
        ({"warmup_epochs": 0}, "warmup_epochs must be at least 1"),
        ({"warmup": "three_epochs"}, "is not one of"),
    ],
)
def test_bad_options_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        parse_method("excess_mtl", {"excess_mtl": values}, "x")


def test_setup_allocates_the_checkpointed_accumulator():
    ours = build(3)
    info = SetupInfo(n_tasks=3, device=torch.device("cpu"), shared_dim=17, rep_shape=None, steps_per_epoch=4, epochs=5)
    ours.setup(info)
    state = ours.state_dict()
    assert state["grad_sq_sum"].shape == (3, 17) and not state["grad_sq_sum"].any()
    assert {"log_weights", "risk_sum", "baseline"} <= set(state)


@pytest.mark.parametrize("warmup", ["first_step", "epochs"])
def test_state_round_trip_continues_identically(warmup):
    n_tasks, dim = 3, 9
    jacs = jacobian_sequence("conflicting", n_tasks, steps=10, dim=dim, seed=3)
    info = SetupInfo(n_tasks, torch.device("cpu"), dim, None, steps_per_epoch=2, epochs=10)
    ours = build(n_tasks, warmup=warmup, warmup_epochs=2)
    ours.setup(info)
    for step in range(5):  # epochs 1, 1, 2, 2, 3: the round trip happens right after the warm-up
        ours.weigh(fake_ctx(jacs[step], 1 + step // 2))
    restored = build(n_tasks, warmup=warmup, warmup_epochs=2)
    restored.setup(info)
    restored.double().load_state_dict(copy.deepcopy(ours.state_dict()))
    for step in range(5, 10):
        a = ours.weigh(fake_ctx(jacs[step], 1 + step // 2)).weights
        b = restored.weigh(fake_ctx(jacs[step], 1 + step // 2)).weights
        assert torch.equal(a, b)
        assert torch.equal(ours.diagnostics()["excess_risk"], restored.diagnostics()["excess_risk"])
    assert not torch.allclose(a, torch.full_like(a, 1 / n_tasks))


# --------------------------------------------------------------------------- through the step


def lenet_and_batches(n_tasks: int = 3, n_batches: int = 4):
    torch.manual_seed(0)
    model = build_model("hps", "lenet", (1, 36, 36), digit_tasks(n_tasks)).double()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.rand(8, 1, 36, 36, generator=g, dtype=torch.float64), torch.randint(10, (8, n_tasks), generator=g))
        for _ in range(n_batches)
    ]
    return model, batches


def torchjd_step(model, x, y, aggregator):
    """torchjd: shared parameters get the aggregated Jacobian, every head its own unweighted gradient."""
    model.zero_grad(set_to_none=True)
    z = model.encode(x)
    losses = [F.cross_entropy(o, y[:, t]) for t, o in enumerate(model.decode(z))]
    mtl_backward(
        losses, z, tasks_params=[list(h.parameters()) for h in model.heads], shared_params=model.shared_parameters()
    )
    weights = jac_to_grad(model.shared_parameters(), aggregator)
    return {n: p.grad.clone() for n, p in model.named_parameters()}, weights


def test_step_matches_torchjd_on_lenet_with_warmup():
    # Paper defaults (heads unweighted, simplex) against torchjd with n_warmup_steps = one epoch of 2 steps.
    model, batches = lenet_and_batches()
    reference = copy.deepcopy(model)
    stepper = make_stepper(model, TASKS, "excess_mtl", {"excess_mtl": {"warmup_epochs": 1}})
    aggregator = TorchJDExcessMTL(robust_step_size=1.0, n_warmup_steps=2)
    for step, (x, y) in enumerate(batches):
        model.zero_grad(set_to_none=True)
        result = stepper.step(x, y, epoch=1 + step // 2, iteration=step)
        expected, expected_weights = torchjd_step(reference, x, y, aggregator)
        torch.testing.assert_close(result.loss_weights, expected_weights, rtol=RTOL, atol=ATOL)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[name], rtol=RTOL, atol=1e-12, msg=name)
        assert set(result.diagnostics) == {"excess_mtl.excess_risk"}
    assert not torch.allclose(result.loss_weights, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_public_code_options_weight_heads_and_sum_to_t():
    # warmup: first_step, scale: tasks, heads: weighted reproduces yifei-he/ExcessMTL's ExcessMTL.py.
    model, batches = lenet_and_batches()
    stepper = make_stepper(
        model, TASKS, "excess_mtl", {"excess_mtl": {"warmup": "first_step", "scale": "tasks", "heads": "weighted"}}
    )
    for step, (x, y) in enumerate(batches[:3]):
        model.zero_grad(set_to_none=True)
        result = stepper.step(x, y, epoch=1, iteration=step)
    weights = result.loss_weights
    torch.testing.assert_close(weights.sum(), torch.tensor(3.0, dtype=torch.float64))
    assert not torch.allclose(weights, torch.ones(3, dtype=torch.float64))
    x, y = batches[2]
    reference = copy.deepcopy(model)  # parameters unchanged: no optimizer step was taken
    z = reference.encode(x)
    losses = torch.stack([F.cross_entropy(o, y[:, t]) for t, o in enumerate(reference.decode(z))])
    (weights * losses).sum().backward()  # the code's loss: sum_t w_t l_t, heads included
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


# --------------------------------------------------------------------------- the paper's claim


class MLPEncoder(nn.Module):
    def __init__(self, d_in: int, hidden: int, rep: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, rep), nn.ReLU())

    def last_layer(self) -> nn.Module:
        return self.net[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_clean_and_noisy(warmup: str, seed: int, steps: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 10-class tasks on one shared MLP: a clean teacher task, and labels independent of the input.

    The noisy task's labels follow a skewed marginal (0.4 on class 0) and carry no information about x, so its
    loss cannot go below the marginal's entropy (~1.99) -- a high Bayes risk, reached early -- while the clean
    task keeps improving. Returns the mean loss weights of the last 20 steps and the last losses.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, d = 2048, 10
    x = torch.randn(n, d, generator=g)
    teacher = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 10))
    with torch.no_grad():
        clean = teacher(x).argmax(1)
    marginal = torch.tensor([0.4] + [0.6 / 9] * 9)
    noisy = torch.multinomial(marginal, n, replacement=True, generator=g)
    y = torch.stack([clean, noisy], 1)
    model = HPS(MLPEncoder(d, 32, 16), [nn.Linear(16, 10), nn.Linear(16, 10)])
    tasks = (Task("clean", n_classes=10), Task("noisy", n_classes=10))
    stepper = make_stepper(model, tasks, "excess_mtl", {"excess_mtl": {"warmup": warmup}})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(steps):
        take = torch.randint(n, (256,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        result = stepper.step(x[take], y[take], epoch=1 + step // 8, iteration=step)  # 8 steps per "epoch"
        optimizer.step()
        history.append(result.loss_weights)
    return torch.stack(history[-20:]).mean(0), result.losses


@pytest.mark.parametrize("warmup", ["first_step", "epochs"])
def test_task_with_pure_noise_labels_gets_less_weight(warmup):
    # EM Sec. 1 / Fig. 1: a noisy task has a high loss but a small excess risk, so ExcessMTL moves weight away
    # from it (a loss-driven weighting would do the opposite: its loss stays the larger one).
    for seed in (0, 1, 2):
        weights, losses = train_clean_and_noisy(warmup, seed)
        assert losses[1] > losses[0] + 1.0, f"seed {seed}: the noisy task's loss should stay the higher one"
        assert weights[1] < weights[0], f"seed {seed}: noisy weight {weights[1]:.3f} >= clean {weights[0]:.3f}"
