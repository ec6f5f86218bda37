"""Tests of two generated stand-ins: ``face_attributes`` (for CelebA) and ``arm_dynamics`` (for SARCOS)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pybullet
import pytest
import torch

from mtlrepro import data
from mtlrepro.data import SPLITS, Split
from mtlrepro.data import arm_dynamics as ad
from mtlrepro.data import face_attributes as fa
from mtlrepro.tasks import check_target

# --------------------------------------------------------------------------- face_attributes

FACES = fa.Options(n_train=60, n_val=20, n_test=20, image_size=32, generation_seed=3)
#: a face on which every attribute's cue can be switched on or off
BASE = {name: 0 for name in fa.ATTRIBUTES} | {"Male": 1, "Young": 1, "No_Beard": 1}


@pytest.fixture(scope="module")
def faces() -> dict[str, Split]:
    return fa.build(FACES)


def _look() -> fa.Look:
    return fa.sample_looks(1, np.random.default_rng(0))[0]


def test_faces_module_contract() -> None:
    assert fa.NAME == "face_attributes" and fa.ENCODER == "small_cnn" and not fa.MULTI_INPUT
    assert "CelebA" in fa.STAND_IN and "\n" not in fa.STAND_IN
    assert len(fa.TASKS) >= 10 and all(t.kind == "binary" for t in fa.TASKS)
    assert [t.name for t in fa.TASKS] == list(fa.ATTRIBUTES) == sorted(fa.ATTRIBUTES)
    assert set(fa.TARGET_RATES) == set(fa.ATTRIBUTES)
    assert fa.SOURCES == () and not hasattr(fa, "fetch")


def test_faces_shapes_dtypes_and_splits(faces: dict[str, Split]) -> None:
    assert set(faces) == set(SPLITS)
    sources = []
    for split, n in zip(SPLITS, (60, 20, 20), strict=True):
        part = faces[split]
        assert part.x.shape == (n, 3, 32, 32) and part.x.dtype == torch.uint8
        assert len(part.y) == len(fa.TASKS)
        for task, y in zip(fa.TASKS, part.y, strict=True):
            check_target(task, y, n)
            assert y.dtype == torch.uint8 and set(y.unique().tolist()) <= {0, 1}
        sources.append(set(part.source[:, 0].tolist()))
        assert len(sources[-1]) == n
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])


def test_faces_deterministic_and_seeded(faces: dict[str, Split]) -> None:
    again = fa.build(FACES)
    for split in SPLITS:
        assert torch.equal(faces[split].x, again[split].x)
        assert all(torch.equal(a, b) for a, b in zip(faces[split].y, again[split].y, strict=True))
    other = fa.build(dataclasses.replace(FACES, generation_seed=4))
    assert not torch.equal(faces["train"].x, other["train"].x)


def test_faces_targets_match_the_rendered_attributes(faces: dict[str, Split]) -> None:
    attributes, looks = fa.sample_split(FACES, "val")
    assert np.array_equal(np.stack([y.numpy() for y in faces["val"].y], axis=1), attributes)
    i = 5
    face = fa.render(dict(zip(fa.ATTRIBUTES, attributes[i].tolist(), strict=True)), looks[i], 32)
    assert np.array_equal(faces["val"].x[i].numpy(), face)


@pytest.mark.parametrize("name", fa.ATTRIBUTES)
def test_every_attribute_is_visible(name: str) -> None:
    """Drawing the same face with the flag on and off changes its pixels (the task is learnable)."""
    look = _look()
    on = fa.render(BASE | {name: 1}, look, 32).astype(int)
    off = fa.render(BASE | {name: 0}, look, 32).astype(int)
    assert np.abs(on - off).sum() > 0, f"{name} leaves the image unchanged"


def test_eyeglasses_change_only_the_eye_band() -> None:
    look = dataclasses.replace(_look(), dx=0.0, dy=0.0, scale=1.0)
    on = fa.render(BASE | {"Eyeglasses": 1}, look, 32).astype(int)
    off = fa.render(BASE | {"Eyeglasses": 0}, look, 32).astype(int)
    rows = np.flatnonzero(np.abs(on - off).sum(axis=(0, 2)))
    # eyes sit at 0.52 - 0.031 of the height; the rims reach about +-0.06 of it
    assert rows.min() >= 10 and rows.max() <= 20, rows


def test_nuisance_varies_but_attributes_do_not_depend_on_it() -> None:
    looks = fa.sample_looks(2, np.random.default_rng(1))
    assert not np.array_equal(fa.render(BASE, looks[0], 32), fa.render(BASE, looks[1], 32))


def test_base_rates_near_celeba_and_correlations() -> None:
    a = fa.sample_attributes(40000, np.random.default_rng(7))
    column = {name: a[:, i].astype(bool) for i, name in enumerate(fa.ATTRIBUTES)}
    for name, target in fa.TARGET_RATES.items():
        assert abs(column[name].mean() - target) < 0.012, (name, column[name].mean(), target)
    male, beard = column["Male"], ~column["No_Beard"]
    assert beard[male].mean() > 0.3 and not beard[~male].any()
    assert not (column["Mustache"] & ~male).any() and not (column["Bald"] & ~male).any()
    assert column["Bald"][~column["Young"]].mean() > 3 * column["Bald"][column["Young"]].mean()
    assert column["Heavy_Makeup"][~male].mean() > 0.5 > column["Heavy_Makeup"][male].mean()
    hair = a[:, [fa.ATTRIBUTES.index(n) for n in ("Black_Hair", "Blond_Hair", "Gray_Hair")]]
    assert hair.sum(axis=1).max() == 1 and not hair[column["Bald"]].any()


def test_faces_options_and_describe() -> None:
    with pytest.raises(ValueError, match="image_size"):
        fa.Options(image_size=8)
    with pytest.raises(ValueError, match="n_val"):
        fa.Options(n_val=0)
    meta = fa.describe(FACES)
    json.dumps(meta)
    assert meta["n_examples"] == {"train": 60, "val": 20, "test": 20} and meta["stand_in"] == fa.STAND_IN


# --------------------------------------------------------------------------- arm_dynamics

ARM = ad.Options(n_train_trajectories=3, n_val_trajectories=1, n_test_trajectories=1, samples_per_trajectory=60)


@pytest.fixture(scope="module")
def arm() -> dict[str, Split]:
    return ad.build(ARM)


@pytest.fixture(scope="module")
def raw() -> dict[str, Split]:
    return ad.build(dataclasses.replace(ARM, standardize=False))


def test_arm_module_contract() -> None:
    assert ad.NAME == "arm_dynamics" and ad.ENCODER == "mlp" and not ad.MULTI_INPUT
    assert [t.name for t in ad.TASKS] == [f"joint{j}" for j in range(1, 8)]
    assert all(t.kind == "regression" for t in ad.TASKS)
    assert "SARCOS" in ad.STAND_IN and "\n" not in ad.STAND_IN
    assert len(ad.INPUTS) == 21 and ad.SOURCES == ()


def test_arm_shapes_dtypes_and_disjoint_trajectories(arm: dict[str, Split]) -> None:
    trajectories = []
    for split, k in zip(SPLITS, (3, 1, 1), strict=True):
        part = arm[split]
        assert part.x.shape == (60 * k, 21) and part.x.dtype == torch.float32
        for task, y in zip(ad.TASKS, part.y, strict=True):
            check_target(task, y, 60 * k)
        assert torch.isfinite(part.x).all() and all(torch.isfinite(y).all() for y in part.y)
        trajectories.append(set(part.source[:, 0].tolist()))
        assert len(trajectories[-1]) == k
    assert sum(map(len, trajectories)) == len(set.union(*trajectories))


def test_arm_deterministic(arm: dict[str, Split]) -> None:
    again = ad.build(ARM)
    for split in SPLITS:
        assert torch.equal(arm[split].x, again[split].x)
        assert all(torch.equal(a, b) for a, b in zip(arm[split].y, again[split].y, strict=True))


def test_trajectories_within_limits_with_consistent_derivatives() -> None:
    options = dataclasses.replace(ARM, samples_per_trajectory=400, sample_rate_hz=1000.0)
    with ad.arm() as model:
        q, qd, qdd = ad.trajectory(model, options, np.random.default_rng(0))
    assert (q > model.lower).all() and (q < model.upper).all()
    dt = 1.0 / options.sample_rate_hz
    np.testing.assert_allclose((q[2:] - q[:-2]) / (2 * dt), qd[1:-1], atol=1e-3 * np.abs(qd).max())
    np.testing.assert_allclose((qd[2:] - qd[:-2]) / (2 * dt), qdd[1:-1], atol=1e-3 * np.abs(qdd).max())


def _potential(model: ad.Arm, q: np.ndarray, gravity: float) -> float:
    """Potential energy sum(m_i g z_i) of the links' centres of mass at configuration q."""
    energy = 0.0
    for j in range(ad.N_JOINTS):
        pybullet.resetJointState(model.body, j, float(q[j]), physicsClientId=model.client)
    for j in range(ad.N_JOINTS):
        mass = pybullet.getDynamicsInfo(model.body, j, physicsClientId=model.client)[0]
        com = pybullet.getLinkState(model.body, j, computeForwardKinematics=True, physicsClientId=model.client)[0]
        energy += mass * gravity * com[2]
    return energy


def test_gravity_torque_at_rest_is_the_gradient_of_potential_energy() -> None:
    """At rest the inverse dynamics reduce to the gravity load g(q) = dV/dq (Featherstone 2008, Sec. 5.1)."""
    rng = np.random.default_rng(11)
    with ad.arm(9.81) as model:
        for _ in range(3):
            q = rng.uniform(model.lower * 0.8, model.upper * 0.8)
            tau = ad.inverse_dynamics(model, q[None], np.zeros((1, 7)), np.zeros((1, 7)))[0]
            eps = 1e-6
            grad = np.array(
                [
                    (_potential(model, q + eps * e, 9.81) - _potential(model, q - eps * e, 9.81)) / (2 * eps)
                    for e in np.eye(7)
                ]
            )
            np.testing.assert_allclose(tau, grad, atol=1e-5 * np.abs(grad).max() + 1e-7)
            assert np.abs(tau[1]) > 1.0  # the shoulder carries the arm's weight


def test_inverse_dynamics_is_a_full_rigid_body_model() -> None:
    """tau = M(q) qdd + c(q, qd) + g(q): linear in qdd with the library's mass matrix, quadratic in qd (no
    friction), and independent of gravity only through g(q)."""
    rng = np.random.default_rng(5)
    q, qd, qdd = (rng.uniform(-1, 1, (1, 7)) for _ in range(3))
    zero = np.zeros((1, 7))
    with ad.arm(9.81) as model:
        mass = np.array(pybullet.calculateMassMatrix(model.body, q[0].tolist(), physicsClientId=model.client))
        full = ad.inverse_dynamics(model, q, qd, qdd)[0]
        rest = ad.inverse_dynamics(model, q, zero, zero)[0]
        inertial = ad.inverse_dynamics(model, q, zero, qdd)[0] - rest
        velocity = ad.inverse_dynamics(model, q, qd, zero)[0] - rest
        doubled = ad.inverse_dynamics(model, q, 2 * qd, zero)[0] - rest
    np.testing.assert_allclose(inertial, mass @ qdd[0], atol=1e-9)
    np.testing.assert_allclose(doubled, 4 * velocity, atol=1e-9)
    np.testing.assert_allclose(full, rest + inertial + velocity, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(mass) > 0)
    with ad.arm(0.0) as model:
        assert np.abs(ad.inverse_dynamics(model, q, zero, zero)).max() < 1e-9


def test_torques_are_nonzero_and_distinct(raw: dict[str, Split]) -> None:
    torques = torch.stack(raw["train"].y, dim=1).double()
    assert (torques.std(dim=0) > 1e-3).all()
    correlation = torch.corrcoef(torques.T)
    off_diagonal = correlation[~torch.eye(7, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.999
    for a in range(7):
        for b in range(a + 1, 7):
            assert not torch.allclose(torques[:, a], torques[:, b])


def test_standardisation_uses_training_statistics(arm: dict[str, Split], raw: dict[str, Split]) -> None:
    x_mean, x_std = ad.statistics(raw["train"].x.double().numpy())
    y_raw = {s: torch.stack(raw[s].y, dim=1).double().numpy() for s in SPLITS}
    y_mean, y_std = ad.statistics(y_raw["train"])
    for split in SPLITS:
        np.testing.assert_allclose(arm[split].x.numpy(), (raw[split].x.double().numpy() - x_mean) / x_std, atol=1e-4)
        y = torch.stack(arm[split].y, dim=1).numpy()
        np.testing.assert_allclose(y, (y_raw[split] - y_mean) / y_std, atol=1e-4)
    train_y = torch.stack(arm["train"].y, dim=1).double()
    np.testing.assert_allclose(train_y.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_y.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)
    # the held-out splits are scaled with the training statistics, not their own
    assert torch.stack(arm["test"].y, dim=1).double().mean(0).abs().max() > 1e-2


def test_arm_options_and_describe() -> None:
    with pytest.raises(ValueError, match="max_frequency_hz"):
        ad.Options(min_frequency_hz=2.0, max_frequency_hz=1.0)
    with pytest.raises(ValueError, match="range_fraction"):
        ad.Options(range_fraction=1.5)
    meta = ad.describe(ARM)
    json.dumps(meta)
    assert meta["n_examples"] == {"train": 180, "val": 60, "test": 60}
    assert len(meta["joints"]) == 7 and all(j["mass"] > 0 for j in meta["joints"])
    assert len(meta["urdf_sha256"]) == 64 and meta["stand_in"] == ad.STAND_IN


# --------------------------------------------------------------------------- both, through the cache


@pytest.mark.parametrize(
    ("module", "options"),
    [(fa, {"n_train": 30, "n_val": 10, "n_test": 10}), (ad, {"n_train_trajectories": 2, "samples_per_trajectory": 20})],
)
def test_prepare_and_load_round_trip(
    module: ModuleType, options: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(data.DATASETS, module.NAME, module.__name__)
    out = data.prepare(module.NAME, options, tmp_path / "cache.pt")
    loaded = data.load(module.NAME, out, data.resolve_options(module.NAME, options))
    assert loaded.tasks == module.TASKS and loaded.stand_in == module.STAND_IN and not loaded.multi_input
    built = module.build(module.Options(**options))
    for split in SPLITS:
        assert torch.equal(loaded.splits[split].x, built[split].x)
        assert all(torch.equal(a, b) for a, b in zip(loaded.splits[split].y, built[split].y, strict=True))
