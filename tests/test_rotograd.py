"""RotoGrad (Javaloy & Valera 2022): rotations, magnitude homogenisation, rotation loss, step path, state.

torchjd has no RotoGrad; the references here are the paper's formulas written
out independently (loops over tasks, einsum), and properties: orthogonality,
equal per-task contributions, equivalence of the paper's and the reference
code's rotation losses on SO(d), and alignment that improves under training.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mtlrepro.archs import build_model
from mtlrepro.data import Task
from mtlrepro.errors import ConfigError
from mtlrepro.weighting import parse_method
from mtlrepro.weighting.base import Need, SetupInfo
from mtlrepro.weighting.rotograd import magnitude_weights, rotation_loss, skew_to_rotation

from conftest import digit_tasks, make_stepper

REP = 50  # LeNet representation size


def build(n_tasks, dim, seed=0, **options):
    component = parse_method("rotograd", {"rotograd": options}, "x").gradient
    method = component.build(n_tasks, torch.Generator().manual_seed(seed))
    method.setup(
        SetupInfo(
            n_tasks=n_tasks, device=torch.device("cpu"), shared_dim=1, rep_shape=(dim,), steps_per_epoch=1, epochs=1
        )
    )
    return method.double()


def no_ctx():
    return SimpleNamespace(losses=None, loss_weights=None)


def reference_direction(grads, initial_norms):
    """Paper Sec. 3, task by task: C sum_k G_k / ||G_k||, alpha_k from the relative norms."""
    norms = [float(g.norm()) for g in grads]
    ratios = [n / n0 for n, n0 in zip(norms, initial_norms, strict=True)]
    total = sum(ratios)
    common = sum(r / total * n for r, n in zip(ratios, norms, strict=True))
    return sum(g / n * common for g, n in zip(grads, norms, strict=True)), common


def gradient_sets(n_tasks, width, generator):
    """Random, conflicting (one task opposes another) and near-parallel per-task gradients [T x width]."""
    random = torch.randn(n_tasks, width, dtype=torch.float64, generator=generator)
    random = random * torch.linspace(0.1, 3.0, n_tasks, dtype=torch.float64)[:, None]  # unequal magnitudes
    conflicting = random.clone()
    conflicting[1] = -2.0 * conflicting[0] + 0.01 * torch.randn(width, dtype=torch.float64, generator=generator)
    parallel = random[0] + 0.05 * random
    return {"random": random, "conflicting": conflicting, "near_parallel": parallel}


# --------------------------------------------------------------------------- rotations


@pytest.mark.parametrize("parametrization", ["expm", "cayley"])
@pytest.mark.parametrize("init", ["random", "identity"])
def test_rotations_stay_orthogonal_with_det_one_after_many_updates(parametrization, init):
    n_tasks, dim, batch = 3, 12, 5
    method = build(n_tasks, dim, parametrization=parametrization, init=init)
    optimizer = torch.optim.Adam(method.parameters(), lr=0.3)  # large steps: S moves far from 0
    generator = torch.Generator().manual_seed(1)
    for _ in range(100):
        grads = torch.randn(n_tasks, batch * dim, dtype=torch.float64, generator=generator)
        method.head_inputs([torch.zeros(batch, dim, dtype=torch.float64)] * n_tasks)
        optimizer.zero_grad()
        method.aggregate(grads, no_ctx()).method_loss.backward()
        optimizer.step()
    assert float(method.skew.detach().abs().max()) > 1.0
    rotations = method.rotations().detach()
    eye = torch.eye(dim, dtype=torch.float64).expand(n_tasks, dim, dim)
    torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), eye, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(n_tasks, dtype=torch.float64))


def test_initial_rotations_are_the_identity_or_random_from_the_generator():
    identity = build(2, 6, init="identity").rotations().detach()
    torch.testing.assert_close(identity, torch.eye(6, dtype=torch.float64).expand(2, 6, 6))
    first, again, other = (build(2, 6, seed=s).rotations().detach() for s in (4, 4, 5))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])


def test_skew_parametrisations_agree_with_their_definitions():
    s = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = s - s.transpose(-1, -2)
    eye = torch.eye(4, dtype=torch.float64)
    cayley = torch.stack([torch.linalg.inv(eye - a[k]) @ (eye + a[k]) for k in range(2)])
    torch.testing.assert_close(skew_to_rotation(s, "cayley"), cayley)
    series = sum(torch.linalg.matrix_power(a[0], i) / float(math.factorial(i)) for i in range(40))
    torch.testing.assert_close(skew_to_rotation(s, "expm")[0], series)


# --------------------------------------------------------------------------- magnitude


@pytest.mark.parametrize("n_tasks", [2, 3, 5, 10])
def test_magnitude_homogenisation_matches_the_paper_and_equalises_contributions(n_tasks):
    generator = torch.Generator().manual_seed(n_tasks)
    for kind, grads in gradient_sets(n_tasks, 40, generator).items():
        initial = 0.5 + torch.rand(n_tasks, dtype=torch.float64, generator=generator)
        norms = grads.norm(dim=1)
        weights, shares = magnitude_weights(norms, initial)
        expected, common = reference_direction(list(grads), initial.tolist())
        torch.testing.assert_close(weights @ grads, expected, msg=kind)
        # every task contributes the same magnitude C (paper Sec. 3); the shares are a convex combination
        torch.testing.assert_close(weights * norms, torch.full((n_tasks,), common, dtype=torch.float64))
        assert torch.all(shares > 0) and abs(float(shares.sum()) - 1.0) < 1e-12
        # the least-converged task (largest ||G_k|| / ||G_k^0||) has the largest share
        assert int(shares.argmax()) == int((norms / initial).argmax())


def test_initial_norms_are_taken_at_the_first_step_and_again_after_burn_in():
    n_tasks, dim, batch = 3, 4, 2
    method = build(n_tasks, dim, burn_in=2)
    generator = torch.Generator().manual_seed(3)
    shares = []
    for _ in range(4):
        grads = torch.randn(n_tasks, batch * dim, dtype=torch.float64, generator=generator)
        method.head_inputs([torch.zeros(batch, dim, dtype=torch.float64)] * n_tasks)
        method.aggregate(grads, no_ctx())
        shares.append(method.diagnostics()["alpha"])
    uniform = torch.full((n_tasks,), 1.0 / n_tasks, dtype=torch.float64)
    torch.testing.assert_close(shares[0], uniform)  # step 0: reference norms = current norms
    assert not torch.allclose(shares[1], uniform)
    torch.testing.assert_close(shares[2], uniform)  # step == burn_in: reference norms reset
    assert not torch.allclose(shares[3], uniform)


def test_normalised_losses_divide_the_representation_gradients_by_the_initial_losses():
    n_tasks, dim, batch = 2, 3, 2
    plain, scaled = build(n_tasks, dim, init="identity"), build(n_tasks, dim, init="identity", normalize_losses=True)
    generator = torch.Generator().manual_seed(4)
    first_losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    for step in range(2):
        grads = torch.randn(n_tasks, batch * dim, dtype=torch.float64, generator=generator)
        ctx = SimpleNamespace(losses=first_losses * (1 + step), loss_weights=None)
        for method in (plain, scaled):
            method.head_inputs([torch.zeros(batch, dim, dtype=torch.float64)] * n_tasks)
        a, b = plain.aggregate(grads / first_losses[:, None], no_ctx()), scaled.aggregate(grads, ctx)
        torch.testing.assert_close(b.direction, a.direction)
        torch.testing.assert_close(b.method_loss, a.method_loss)
        torch.testing.assert_close(b.weights, a.weights / first_losses)  # weights refer to the raw rows


# --------------------------------------------------------------------------- rotation loss


def test_paper_and_code_rotation_losses_have_proportional_gradients_on_so_d():
    # ||R m||^2 is constant on SO(d), so grad_S L_code = (2 ||mean_k G_k|| / B) grad_S L_paper
    n_tasks, dim, batch = 3, 5, 4
    generator = torch.Generator().manual_seed(5)
    skew = torch.randn(n_tasks, dim, dim, dtype=torch.float64, generator=generator).requires_grad_(True)
    grads = torch.randn(n_tasks, batch, dim, dtype=torch.float64, generator=generator)
    paper = torch.autograd.grad(rotation_loss(grads, skew_to_rotation(skew), "paper"), skew)[0]
    code = torch.autograd.grad(rotation_loss(grads, skew_to_rotation(skew), "code"), skew)[0]
    factor = 2.0 * float(grads.mean(dim=0).norm()) / batch
    torch.testing.assert_close(code, factor * paper, rtol=1e-8, atol=1e-12)


def test_paper_rotation_loss_is_minus_the_inner_products_with_the_norm_equalised_mean():
    n_tasks, dim, batch = 3, 4, 5
    generator = torch.Generator().manual_seed(6)
    rotations = skew_to_rotation(torch.randn(n_tasks, dim, dim, dtype=torch.float64, generator=generator))
    grads = torch.randn(n_tasks, batch, dim, dtype=torch.float64, generator=generator)
    target = sum(grads[k] / grads[k].norm() for k in range(n_tasks)) / n_tasks
    expected = 0.0
    for k in range(n_tasks):
        for n in range(batch):
            rotated = rotations[k] @ grads[k, n]  # g~ = R g (the gradient w.r.t. the rotated feature)
            expected -= float((rotations[k].T @ rotated) @ target[n])
    assert abs(float(rotation_loss(grads, rotations, "paper")) - expected) < 1e-12


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_training_the_rotations_aligns_the_task_gradients_on_a_fixed_problem(mode):
    # Each task's loss is linear in its rotated feature, <c_k, R_k z>: its gradient w.r.t. z is c_k R_k.
    n_tasks, dim, batch = 3, 4, 6
    method = build(n_tasks, dim, rotation_loss=mode, init="identity")
    generator = torch.Generator().manual_seed(1)
    c = torch.randn(n_tasks, batch, dim, dtype=torch.float64, generator=generator)
    z = torch.randn(batch, dim, dtype=torch.float64, generator=generator)
    optimizer = torch.optim.Adam(method.parameters(), lr=0.05)
    alignments, losses = [], []
    for _ in range(60):
        zs = [z.clone().requires_grad_(True) for _ in range(n_tasks)]
        inputs = method.head_inputs(zs)
        grads = torch.autograd.grad(sum((inputs[k] * c[k]).sum() for k in range(n_tasks)), zs)
        answer = method.aggregate(torch.stack([g.reshape(-1) for g in grads]), no_ctx())
        alignments.append(float(method.diagnostics()["alignment"].mean()))
        losses.append(float(answer.method_loss.detach()))
        optimizer.zero_grad()
        answer.method_loss.backward()
        optimizer.step()
    assert alignments[-1] > alignments[0] + 0.15, alignments
    assert losses[-1] < losses[0], losses


# --------------------------------------------------------------------------- the whole step


@pytest.fixture
def hps():
    n_tasks = 3
    torch.manual_seed(0)
    model = build_model("hps", "lenet", (1, 36, 36), digit_tasks(n_tasks)).double()
    x = torch.rand(8, 1, 36, 36, dtype=torch.float64)
    y = torch.randint(10, (8, n_tasks))
    return model, x, y, [Task(f"t{i}", n_classes=10) for i in range(n_tasks)]


def rotograd_stepper(model, tasks, seed=12, **options):
    stepper = make_stepper(model, tasks, "rotograd", {"rotograd": options} if options else None, seeds=(0, seed))
    method = stepper.aggregator
    method.setup(
        SetupInfo(
            n_tasks=len(tasks), device=torch.device("cpu"), shared_dim=1, rep_shape=(REP,), steps_per_epoch=1, epochs=1
        )
    )
    return stepper, method.double()


def test_full_step_on_hps_heads_read_rotated_z_and_every_gradient_is_the_papers(hps):
    model, x, y, tasks = hps
    n_tasks = len(tasks)
    reference = copy.deepcopy(model)
    stepper, method = rotograd_stepper(model, tasks)
    with torch.no_grad():  # move away from the initial rotations so that the test sees them
        method.skew.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(3))
    rotations = method.rotations().detach()
    seen = {}
    hooks = [
        head.register_forward_pre_hook(lambda _m, args, t=t: seen.__setitem__(t, args[0].detach().clone()))
        for t, head in enumerate(model.heads)
    ]
    result = stepper.step(x, y)
    for hook in hooks:
        hook.remove()

    # independent computation of the same step
    z = reference.encode(x)
    leaves = [z.detach().clone().requires_grad_(True) for _ in range(n_tasks)]
    losses = [F.cross_entropy(reference.heads[t](leaves[t] @ rotations[t].T), y[:, t]) for t in range(n_tasks)]
    for t in range(n_tasks):  # heads read R_t z
        torch.testing.assert_close(seen[t], z.detach() @ rotations[t].T)
    per_task = [torch.autograd.grad(losses[t], leaves[t], retain_graph=True)[0] for t in range(n_tasks)]
    direction, common = reference_direction([g.reshape(-1) for g in per_task], [float(g.norm()) for g in per_task])
    z.backward(direction.view_as(z))
    for name, p in model.encoder.named_parameters():  # backbone: C sum_k U_k (first step: alpha_k = 1/T)
        torch.testing.assert_close(p.grad, dict(reference.encoder.named_parameters())[name].grad, msg=name)
    for t in range(n_tasks):  # heads: their own unweighted gradient
        expected = torch.autograd.grad(losses[t], list(reference.heads[t].parameters()), retain_graph=True)
        for p, g in zip(model.heads[t].parameters(), expected, strict=True):
            torch.testing.assert_close(p.grad, g)
    norms = torch.stack([g.norm() for g in per_task])
    torch.testing.assert_close(result.grad_weights, common / norms)
    # rotations: gradient of -sum_k sum_n <R_k^T g~_{n,k}, v_n>, g~ fixed, through the parametrisation
    skew = method.skew.detach().clone().requires_grad_(True)
    r = method.base @ torch.linalg.matrix_exp(skew - skew.transpose(-1, -2))
    target = sum(g / g.norm() for g in per_task) / n_tasks
    loss = -sum(torch.einsum("ni,ij,nj->", per_task[k] @ rotations[k].T, r[k], target) for k in range(n_tasks))
    torch.testing.assert_close(method.skew.grad, torch.autograd.grad(loss, skew)[0])


def test_state_round_trip_gives_identical_subsequent_steps(hps):
    model, _, y, tasks = hps
    stepper, method = rotograd_stepper(model, tasks, burn_in=2)
    optimizer = torch.optim.SGD(
        [{"params": model.parameters(), "lr": 0.05}, {"params": method.parameters(), "lr": 0.5}]
    )
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(8, 1, 36, 36, dtype=torch.float64, generator=generator), y) for _ in range(4)]
    for bx, by in batches[:3]:  # crosses the burn-in reset of the reference norms
        optimizer.zero_grad(set_to_none=True)
        stepper.step(bx, by)
        optimizer.step()
    state = copy.deepcopy(method.state_dict())
    twin_model = copy.deepcopy(model)
    twin, twin_method = rotograd_stepper(twin_model, tasks, seed=99, burn_in=2)  # another base rotation
    assert not torch.equal(twin_method.base, method.base)
    twin_method.load_state_dict(state)
    assert twin_method._step == 3
    for model_, method_ in ((model, method), (twin_model, twin_method)):
        model_.zero_grad(set_to_none=True)
        method_.zero_grad(set_to_none=True)
    bx, by = batches[3]
    first, second = stepper.step(bx, by), twin.step(bx, by)
    assert torch.equal(first.grad_weights, second.grad_weights)
    assert torch.equal(method.skew.grad, twin_method.skew.grad)
    for key, value in method.diagnostics().items():
        assert torch.equal(value, twin_method.diagnostics()[key]), key
    for (name, p), (_, q) in zip(model.named_parameters(), twin_model.named_parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


# --------------------------------------------------------------------------- declarations


def test_declarations_and_refusals():
    component = parse_method("rotograd", {}, "x").gradient
    assert component.options["grad_wrt"] == "representation" and component.options["burn_in"] == 20
    assert component.options["normalize_losses"] is False and component.options["heads"] == "unweighted"
    method = component.build(2, torch.Generator())
    assert method.needs == {Need.JACOBIAN, Need.REPRESENTATION} and method.lr == 1e-3
    with pytest.raises(ConfigError, match="grad_wrt: 'params' is not possible"):
        parse_method("rotograd", {"rotograd": {"grad_wrt": "params"}}, "x")
    with pytest.raises(ConfigError, match="rep_reduce: 'batch_sum' is not possible"):
        parse_method("rotograd", {"rotograd": {"rep_reduce": "batch_sum"}}, "x")
    with pytest.raises(ConfigError, match="burn_in"):
        parse_method("rotograd", {"rotograd": {"burn_in": -1}}, "x")
    info = SetupInfo(
        n_tasks=2, device=torch.device("cpu"), shared_dim=1, rep_shape=(3, 4, 4), steps_per_epoch=1, epochs=1
    )
    with pytest.raises(ConfigError, match="flat vector"):
        method.setup(info)
