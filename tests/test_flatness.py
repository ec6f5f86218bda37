"""Tests of mtlrepro.analysis.flatness: top Hessian eigenvalue, gradient variance and the per-run analysis."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mtlrepro.analysis.flatness import (
    LOSS_DESCRIPTION,
    _trained_labels,
    analyse_run,
    gradient_variance,
    task_losses,
    top_hessian_eigenvalue,
    training_batches,
)
from mtlrepro.archs import build_model
from mtlrepro.data import Split, Task, dataset_module, load
from mtlrepro.data.noise import corrupt_targets
from mtlrepro.errors import ConfigError, DataError
from mtlrepro.run import CHECKPOINT_FILE, METRICS_FILE, SELECTED_FILE
from mtlrepro.train import train

from conftest import spec_for

# power iteration run to convergence in the closed-form tests; the tolerance of each comparison is stated there
TIGHT = {"max_iter": 5000, "tol": 1e-12}


class TwoHeads(nn.Module):
    """A multi-head model: an optional shared layer, then one linear head per task (list of outputs)."""

    def __init__(self, d_in: int, out_dims: Sequence[int], hidden: int | None = None) -> None:
        super().__init__()
        self.shared = nn.Identity() if hidden is None else nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh())
        width = d_in if hidden is None else hidden
        self.heads = nn.ModuleList(nn.Linear(width, out) for out in out_dims)

    def forward(self, x: Tensor) -> list[Tensor]:
        z = self.shared(x)
        return [head(z) for head in self.heads]


def mse_losses(outputs: Sequence[Tensor], y: Tensor) -> Tensor:
    """Per-task mean squared error of head t (one output) against column t of ``y``."""
    return torch.stack([F.mse_loss(out[:, 0], y[:, t]) for t, out in enumerate(outputs)])


def ce_losses(outputs: Sequence[Tensor], y: Tensor) -> Tensor:
    return torch.stack([F.cross_entropy(out, y[:, t]) for t, out in enumerate(outputs)])


def regression_batches(n_batches: int = 3, size: int = 10, d: int = 3, n_tasks: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)[:d]  # separate the eigenvalues
    return [
        (torch.randn(size, d, generator=g, dtype=torch.float64) * scale, torch.randn(size, n_tasks, generator=g))
        for _ in range(n_batches)
    ]


def classification_batches(n_batches: int = 4, size: int = 6, d: int = 3, n_classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, d, generator=g, dtype=torch.float64), torch.randint(n_classes, (size, 2), generator=g))
        for _ in range(n_batches)
    ]


def exact_hessian_eigenvalues(model: nn.Module, loss_fn, batches) -> Tensor:
    """Eigenvalues of the Hessian of the mean task loss over all examples (equal batches), by autograd."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(flat: Tensor) -> Tensor:
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = math.prod(shape)
            params[name] = flat[start : start + size].reshape(shape)
            start += size
        total = [loss_fn(functional_call(model, params, (x,)), y).mean() for x, y in batches]
        return torch.stack(total).mean()

    hessian = torch.autograd.functional.hessian(loss, flat0)
    return torch.linalg.eigvalsh(hessian)


# --------------------------------------------------------------------------- top eigenvalue


def test_top_eigenvalue_of_linear_heads_with_mse_matches_the_closed_form():
    # L = (1/T) sum_t mean_i (w_t.x_i + b_t - y_it)^2: the Hessian is block-diagonal with T equal blocks
    # (2/T) * Xa^T Xa / n (Xa = [X, 1], n = all examples of all batches), so lambda_max = (2/T) lambda_max(Xa^T Xa/n)
    torch.manual_seed(0)
    model = TwoHeads(3, [1, 1]).double()
    batches = regression_batches()
    x = torch.cat([b[0] for b in batches])
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    expected = float(torch.linalg.eigvalsh(2.0 / 2 * xa.T @ xa / len(x)).max())
    batches = [(bx, by.double()) for bx, by in batches]
    got = top_hessian_eigenvalue(model, mse_losses, batches, seed=0, **TIGHT)
    # 1e-5 relative: PyHessian's normalisation v / (||v|| + 1e-6) biases the Rayleigh quotient by about -2e-6
    assert got == pytest.approx(expected, rel=1e-5)


def test_top_eigenvalue_of_a_small_mlp_matches_autograd_hessian():
    # a shared tanh layer and two 3-class heads (46 parameters), cross-entropy: compare with the eigenvalue of
    # largest magnitude of the exact Hessian (what power iteration converges to), to 1e-5 relative
    torch.manual_seed(3)
    model = TwoHeads(3, [3, 3], hidden=4).double()
    batches = classification_batches()
    eigenvalues = exact_hessian_eigenvalues(model, ce_losses, batches)
    expected = float(eigenvalues[eigenvalues.abs().argmax()])
    got = top_hessian_eigenvalue(model, ce_losses, batches, seed=0, **TIGHT)
    assert got == pytest.approx(expected, rel=1e-5)
    # the default stopping rule (relative change < 1e-3) still lands within 1%
    assert top_hessian_eigenvalue(model, ce_losses, batches, seed=0) == pytest.approx(expected, rel=1e-2)


def test_top_eigenvalue_is_seeded_and_leaves_rng_mode_and_grads_untouched():
    torch.manual_seed(3)
    model = TwoHeads(3, [3, 3], hidden=4).double().train()
    grads = [torch.full_like(p, 0.5) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    batches = classification_batches()

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = top_hessian_eigenvalue(model, ce_losses, batches, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert top_hessian_eigenvalue(model, ce_losses, batches, seed=7) == first  # bit-identical
    assert model.training
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    # the start vector really comes from the seed: another seed stops at a (slightly) different iterate
    assert top_hessian_eigenvalue(model, ce_losses, batches, seed=8, max_iter=2) != first


# --------------------------------------------------------------------------- gradient variance


def test_gradient_variance_matches_a_direct_computation():
    torch.manual_seed(3)
    model = TwoHeads(3, [3, 3], hidden=4).double()
    batches = classification_batches(n_batches=5)
    rows = []
    for x, y in batches:
        model.zero_grad()
        ce_losses(model(x), y).mean().backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]).numpy().copy())
    g = np.stack(rows)  # [B x D]
    expected = np.var(g, axis=0, ddof=1).mean()
    model.zero_grad(set_to_none=True)
    assert gradient_variance(model, ce_losses, batches) == pytest.approx(expected, rel=1e-10)
    # the same as tr(Cov) / D, the definition in the docstring
    assert np.trace(np.cov(g, rowvar=False)) / g.shape[1] == pytest.approx(expected, rel=1e-10)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_variance_is_zero_for_identical_batches_and_needs_two():
    torch.manual_seed(3)
    model = TwoHeads(3, [3, 3], hidden=4).double()
    (batch,) = classification_batches(n_batches=1)
    assert gradient_variance(model, ce_losses, [batch, batch, batch]) == pytest.approx(0.0, abs=1e-30)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_variance(model, ce_losses, [batch])


# --------------------------------------------------------------------------- data and loss


def test_training_batches_are_a_seeded_disjoint_subset_scaled_to_float():
    x = torch.arange(40, dtype=torch.uint8).reshape(40, 1).expand(40, 4).contiguous()
    split = Split(x=x, y=(torch.arange(40),))
    batches = training_batches(split, n_batches=3, batch_size=5, seed=1)
    assert [len(b[0]) for b in batches] == [5, 5, 5]
    ids = torch.cat([b[1][0] for b in batches])
    assert len(set(ids.tolist())) == 15  # without replacement
    for bx, by in batches:
        assert bx.dtype == torch.float32
        torch.testing.assert_close(bx[:, 0], by[0].float() / 255.0)  # inputs stay with their labels
    again = training_batches(split, n_batches=3, batch_size=5, seed=1)
    assert all(torch.equal(a[1][0], b[1][0]) for a, b in zip(batches, again, strict=True))
    other = training_batches(split, n_batches=3, batch_size=5, seed=2)
    assert not torch.equal(torch.cat([b[1][0] for b in other]), ids)
    with pytest.raises(ConfigError, match="need 45 training examples, the training split has 40"):
        training_batches(split, n_batches=9, batch_size=5, seed=1)
    with pytest.raises(ConfigError, match="n_batches >= 2"):
        training_batches(split, n_batches=1, batch_size=5, seed=1)


def test_task_losses_are_each_tasks_own_loss_on_its_targets():
    loss_fn = task_losses([Task("A", n_classes=3), Task("depth", "depth")])
    outputs = [torch.randn(4, 3), torch.rand(4, 1, 2, 2)]
    y = (torch.tensor([0, 2, 1, 0], dtype=torch.int16), torch.rand(4, 1, 2, 2))
    expected = torch.stack([F.cross_entropy(outputs[0], y[0].long()), (outputs[1] - y[1]).abs().mean()])
    torch.testing.assert_close(loss_fn(outputs, y), expected)
    with pytest.raises(ValueError, match="expected 2 head outputs, got 1"):
        loss_fn(outputs[:1], y)


# --------------------------------------------------------------------------- one run, end to end


@pytest.fixture(scope="module")
def trained_run(small_data, tmp_path_factory) -> Path:
    """A one-epoch RLW run on the small multi_digits cache, with ``selected.pt`` written from its checkpoint."""
    run_dir = tmp_path_factory.mktemp("flatness") / "run"
    record = train(spec_for("rlw", epochs=1), small_data, run_dir, device="cpu", progress=False)
    model = torch.load(run_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=False)["model"]
    torch.save({"epoch": record["selection"]["epoch"], "model": model}, run_dir / SELECTED_FILE)
    return run_dir


def rebuilt_model(run_dir: Path, data_path: Path) -> tuple[nn.Module, Split]:
    record = json.loads((run_dir / METRICS_FILE).read_text())
    data = load("multi_digits", data_path)
    model = build_model(
        record["spec"]["arch"],
        dataset_module("multi_digits").ENCODER,
        tuple(data.splits["train"].x.shape[1:]),
        data.tasks,
    )
    model.load_state_dict(torch.load(run_dir / SELECTED_FILE, weights_only=True)["model"])
    return model, data.splits["train"]


def test_analyse_run_writes_both_measures_of_the_selected_epoch(trained_run, small_data, tmp_path):
    out = tmp_path / "flatness.json"
    torch.manual_seed(5)
    state = torch.get_rng_state()
    result = analyse_run(trained_run, small_data, out, n_batches=3, batch_size=32, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    assert {k: written[k] for k in ("epoch", "n_batches", "batch_size", "seed", "loss")} == {
        "epoch": 1,
        "n_batches": 3,
        "batch_size": 32,
        "seed": 0,
        "loss": LOSS_DESCRIPTION,
    }
    assert written["labels"] == "clean"
    assert written["stand_in"] and written["run"]["method"] == "rlw"
    assert written["selection"]["rule"] == "best_val"

    # the numbers are those of the selected weights on the seeded subset, mean of the task losses
    model, train_split = rebuilt_model(trained_run, small_data)
    batches = training_batches(train_split, 3, 32, seed=0)
    loss_fn = task_losses(load("multi_digits", small_data).tasks)
    assert written["top_eigenvalue"] == top_hessian_eigenvalue(model, loss_fn, batches, seed=0)
    assert written["gradient_variance"] == gradient_variance(model, loss_fn, batches)
    assert written["top_eigenvalue"] > 0 and written["gradient_variance"] > 0
    assert written["n_parameters"] == sum(p.numel() for p in model.parameters())

    # deterministic: a second analysis writes the same file
    again = analyse_run(trained_run, small_data, tmp_path / "again.json", n_batches=3, batch_size=32, seed=0)
    assert again == result


def test_analyse_run_rejects_stale_or_missing_inputs(trained_run, small_data, tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / METRICS_FILE).write_text((trained_run / METRICS_FILE).read_text())
    selected = torch.load(trained_run / SELECTED_FILE, weights_only=True)
    torch.save({"epoch": 7, "model": selected["model"]}, stale / SELECTED_FILE)
    with pytest.raises(DataError, match=r"selected\.pt: holds epoch 7, but the run record selected epoch 1"):
        analyse_run(stale, small_data, tmp_path / "out.json", n_batches=2, batch_size=8, seed=0)
    (stale / SELECTED_FILE).unlink()
    with pytest.raises(DataError, match=r"selected\.pt: the selected epoch's weights do not exist"):
        analyse_run(stale, small_data, tmp_path / "out.json", n_batches=2, batch_size=8, seed=0)
    with pytest.raises(DataError, match=r"metrics\.json: run record does not exist"):
        analyse_run(tmp_path / "nowhere", small_data, tmp_path / "out.json", n_batches=2, batch_size=8, seed=0)
    assert not (tmp_path / "out.json").exists()


def test_noisy_runs_are_measured_on_the_labels_they_trained_on(small_data):
    data = load("multi_digits", small_data)
    spec = dataclasses.replace(spec_for("ew"), noise={"BR": 0.5})
    split, labels = _trained_labels(data.splits["train"], data.tasks, spec)
    expected, _ = corrupt_targets(data.splits["train"].y, data.tasks, {"BR": 0.5}, seed=spec.training.noise_seed)
    assert all(torch.equal(a, b) for a, b in zip(split.y, expected, strict=True))
    assert labels == "noisy as trained (BR0.5)"
    clean, labels = _trained_labels(data.splits["train"], data.tasks, spec_for("ew"))
    assert clean is data.splits["train"] and labels == "clean"
