"""``arm_dynamics``: a SARCOS-style inverse-dynamics problem computed on a simulated 7-joint arm.

SARCOS (Vijayakumar and Schaal, 2000; ExcessMTL App. C.2) maps the state of a seven-degree-of-freedom
anthropomorphic arm, 21 inputs (7 joint positions, 7 joint velocities, 7 joint accelerations), to the 7 joint
torques; every torque is one regression task. Its samples were recorded while the arm followed rhythmic
movements. ExcessMTL standardises every dataset to zero mean and unit variance (App. C.1) and injects noise
into the first two joint torques (App. C.2; :mod:`mtlrepro.data.noise`).

This module is a *stand-in* (:data:`STAND_IN`): the torques are those a full rigid-body model of the KUKA LBR
iiwa arm needs to follow seeded rhythmic trajectories. The arm model (``kuka_iiwa/model.urdf``: 7 revolute
joints with limits, link masses, centres of mass and inertia tensors) ships inside the ``pybullet`` wheel
(``pybullet_data``), and the torques come from ``pybullet.calculateInverseDynamics``, which runs Bullet's
``btInverseDynamics::MultiBodyTree`` (the recursive Newton-Euler algorithm; Featherstone, *Rigid Body
Dynamics Algorithms*, 2008, Sec. 5.3) with gravity along -z. Nothing is downloaded.

Construction (:func:`build`), all seeded from ``Options.generation_seed``:

1. every split gets its own trajectories (train, val and test never share one; SARCOS has no validation
   split, so val is a separate, smaller set of trajectories drawn like the training ones);
2. joint ``i`` of a trajectory moves as ``q_i(t) = mid_i + c_i + sum_k a_ik sin(2 pi f_ik t + phi_ik)``
   (:func:`trajectory`), sampled at ``sample_rate_hz``; velocities and accelerations are its exact time
   derivatives, and the amplitudes keep every joint within ``range_fraction`` of its limits;
3. targets are the 7 inverse-dynamics torques at each sample; inputs and targets are standardised with the
   mean and standard deviation of the training split (ExcessMTL App. C.1), applied to all three splits.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pybullet_data
import torch

from mtlrepro.data import SPLITS, Split
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import Task, check_target


def _quiet_import(name: str) -> ModuleType:
    """Import ``name`` with file descriptor 2 silenced: pybullet's C extension prints its build time to stderr,
    which would land in every command that imports the dataset registry (a Snakemake dry run, say)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            return importlib.import_module(name)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


pybullet = _quiet_import("pybullet")

NAME = "arm_dynamics"
ENCODER = "mlp"
N_JOINTS = 7
#: one regression task per joint torque, named as the joints are numbered in SARCOS (ExcessMTL App. C.2)
TASKS = tuple(Task(f"joint{j}", "regression") for j in range(1, N_JOINTS + 1))
MULTI_INPUT = False
STAND_IN = (
    "stand-in for SARCOS (ExcessMTL App. C.2): inverse dynamics of pybullet's simulated 7-joint KUKA iiwa arm "
    "along seeded rhythmic trajectories, not the paper's data"
)
SOURCES: tuple = ()
MANUAL: str | None = None

#: the arm model, relative to ``pybullet_data.getDataPath()``
URDF = "kuka_iiwa/model.urdf"
#: input columns: positions, velocities, accelerations of joints 1..7 (SARCOS's column order)
INPUTS = tuple(f"{quantity}{j}" for quantity in ("q", "qd", "qdd") for j in range(1, N_JOINTS + 1))


@dataclass(frozen=True)
class Options:
    """Generation options.

    Sizes are numbers of trajectories per split times ``samples_per_trajectory`` (2 s at 100 Hz); the defaults
    (4,000 / 400 / 400 samples) keep SARCOS's test-to-train ratio (4,449 / 44,484, about 1:10) at a size a
    2-core machine builds in seconds. ``n_sinusoids`` sinusoids per joint with frequencies in
    [``min_frequency_hz``, ``max_frequency_hz``] make the rhythmic movement; ``range_fraction`` is the fraction
    of each joint's half range a trajectory may use. ``standardize`` scales inputs and targets with training
    statistics (ExcessMTL App. C.1).
    """

    n_train_trajectories: int = 20
    n_val_trajectories: int = 2
    n_test_trajectories: int = 2
    samples_per_trajectory: int = 200
    sample_rate_hz: float = 100.0
    n_sinusoids: int = 3
    min_frequency_hz: float = 0.1
    max_frequency_hz: float = 1.0
    range_fraction: float = 0.8
    gravity: float = 9.81
    standardize: bool = True
    generation_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train_trajectories", "n_val_trajectories", "n_test_trajectories", "n_sinusoids"):
            value = getattr(self, name)
            require(value >= 1, name, value, "must be >= 1")
        require(self.samples_per_trajectory >= 2, "samples_per_trajectory", self.samples_per_trajectory, "must be >= 2")
        require(self.sample_rate_hz > 0, "sample_rate_hz", self.sample_rate_hz, "must be > 0")
        require(self.min_frequency_hz > 0, "min_frequency_hz", self.min_frequency_hz, "must be > 0")
        require(
            self.max_frequency_hz >= self.min_frequency_hz,
            "max_frequency_hz",
            self.max_frequency_hz,
            f"must be >= min_frequency_hz ({self.min_frequency_hz})",
        )
        require(0 < self.range_fraction <= 1, "range_fraction", self.range_fraction, "must be in (0, 1]")
        require(self.gravity >= 0, "gravity", self.gravity, "must be >= 0")


def urdf_path() -> Path:
    """Path of the arm model inside the installed ``pybullet_data`` package."""
    path = Path(pybullet_data.getDataPath()) / URDF
    if not path.is_file():
        raise DataError(f"{NAME}: the arm model {path} is missing from the installed pybullet_data; reinstall pybullet")
    return path


@dataclass(frozen=True)
class Arm:
    """A loaded arm: the pybullet client, the body id and the joint limits ``[7]`` (radians)."""

    client: int
    body: int
    lower: np.ndarray
    upper: np.ndarray


@contextmanager
def arm(gravity: float = 9.81) -> Iterator[Arm]:
    """Load the arm into a private headless pybullet client (``DIRECT``), fixed base, gravity ``-gravity`` along z.

    ``URDF_USE_INERTIA_FROM_FILE`` makes pybullet use the URDF's inertia tensors instead of recomputing them from
    the collision shapes (PyBullet Quickstart Guide, ``loadURDF`` flags). The client is closed on exit.
    """
    client = pybullet.connect(pybullet.DIRECT)
    try:
        body = pybullet.loadURDF(
            str(urdf_path()), useFixedBase=True, flags=pybullet.URDF_USE_INERTIA_FROM_FILE, physicsClientId=client
        )
        pybullet.setGravity(0.0, 0.0, -gravity, physicsClientId=client)
        n = pybullet.getNumJoints(body, physicsClientId=client)
        if n != N_JOINTS:
            raise DataError(f"{NAME}: {URDF} has {n} joints, expected {N_JOINTS}")
        info = [pybullet.getJointInfo(body, j, physicsClientId=client) for j in range(N_JOINTS)]
        lower = np.array([i[8] for i in info], dtype=np.float64)
        upper = np.array([i[9] for i in info], dtype=np.float64)
        yield Arm(client, body, lower, upper)
    finally:
        pybullet.disconnect(physicsClientId=client)


def inverse_dynamics(model: Arm, q: np.ndarray, qd: np.ndarray, qdd: np.ndarray) -> np.ndarray:
    """Joint torques ``[N x 7]`` (float64, N m) that realise accelerations ``qdd`` at state ``(q, qd)``, ``[N x 7]``
    each: ``M(q) qdd + C(q, qd) qd + g(q)`` by recursive Newton-Euler (no friction, no motor inertia)."""
    out = np.empty_like(q, dtype=np.float64)
    for n in range(q.shape[0]):
        out[n] = pybullet.calculateInverseDynamics(
            model.body, q[n].tolist(), qd[n].tolist(), qdd[n].tolist(), physicsClientId=model.client
        )
    return out


def trajectory(model: Arm, options: Options, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One seeded rhythmic trajectory: positions, velocities, accelerations, ``[T x 7]`` float64 each.

    Per joint: a centre offset ``c ~ U(-u/2, u/2)`` with ``u = range_fraction * half_range``, and
    ``n_sinusoids`` sinusoids with frequencies ``U(min_frequency_hz, max_frequency_hz)``, phases ``U(0, 2 pi)``
    and non-negative amplitudes summing to ``s * (u - |c|)``, ``s ~ U(0.5, 1)``, so ``|q - mid| <= u``.
    Velocities and accelerations are the analytic derivatives.
    """
    k = options.n_sinusoids
    mid = (model.lower + model.upper) / 2.0
    usable = options.range_fraction * (model.upper - model.lower) / 2.0
    centre = rng.uniform(-0.5, 0.5, N_JOINTS) * usable
    weights = rng.uniform(0.0, 1.0, (N_JOINTS, k))
    weights /= weights.sum(axis=1, keepdims=True)
    amplitude = weights * (rng.uniform(0.5, 1.0, N_JOINTS) * (usable - np.abs(centre)))[:, None]
    omega = 2.0 * np.pi * rng.uniform(options.min_frequency_hz, options.max_frequency_hz, (N_JOINTS, k))
    phase = rng.uniform(0.0, 2.0 * np.pi, (N_JOINTS, k))
    t = np.arange(options.samples_per_trajectory, dtype=np.float64) / options.sample_rate_hz
    angle = omega[None] * t[:, None, None] + phase[None]  # [T x 7 x k]
    q = mid + centre + (amplitude * np.sin(angle)).sum(axis=2)
    qd = (amplitude * omega * np.cos(angle)).sum(axis=2)
    qdd = -(amplitude * omega**2 * np.sin(angle)).sum(axis=2)
    return q, qd, qdd


def _n_trajectories(options: Options, split: str) -> int:
    return {
        "train": options.n_train_trajectories,
        "val": options.n_val_trajectories,
        "test": options.n_test_trajectories,
    }[split]


def simulate(options: Options) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Unstandardised data per split: inputs ``[N x 21]``, torques ``[N x 7]`` (float64) and ``source [N x 2]``
    (global trajectory number, time step). Trajectory ``i`` of a split is seeded by ``(split, i)`` alone."""
    out = {}
    offset = 0
    with arm(options.gravity) as model:
        for split in SPLITS:
            xs, ys, sources = [], [], []
            for i in range(_n_trajectories(options, split)):
                rng = np.random.default_rng(derive_seed(options.generation_seed, f"{NAME}/trajectory/{split}/{i}"))
                q, qd, qdd = trajectory(model, options, rng)
                xs.append(np.concatenate([q, qd, qdd], axis=1))
                ys.append(inverse_dynamics(model, q, qd, qdd))
                steps = np.arange(len(q), dtype=np.int64)
                sources.append(np.stack([np.full_like(steps, offset + i), steps], axis=1))
            offset += _n_trajectories(options, split)
            out[split] = (np.concatenate(xs), np.concatenate(ys), np.concatenate(sources))
    return out


def statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (population, ``ddof=0``) of ``values [N x D]``; a constant column
    gets a standard deviation of 1 so that standardising leaves it at 0."""
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def build(options: Options, root: None = None) -> dict[str, Split]:
    """Build the train/val/test splits (ExcessMTL App. C.1-C.2); pure and seeded.

    ``root`` is unused: the arm model ships inside pybullet. Returns, for every split, ``Split(x, y, source)``
    with ``x`` float32 ``[N x 21]`` (:data:`INPUTS`), ``y`` the 7 joint torques, float32 ``[N]`` each, and
    ``source`` int64 ``[N x 2]`` (trajectory, time step). With ``standardize`` both are standardised with the
    training split's statistics (:func:`statistics`).
    """
    raw = simulate(options)
    if options.standardize:
        x_mean, x_std = statistics(raw["train"][0])
        y_mean, y_std = statistics(raw["train"][1])
    else:
        x_mean, x_std = np.zeros(len(INPUTS)), np.ones(len(INPUTS))
        y_mean, y_std = np.zeros(N_JOINTS), np.ones(N_JOINTS)
    splits = {}
    for split, (x, y, source) in raw.items():
        xt = torch.from_numpy(((x - x_mean) / x_std).astype(np.float32))
        yt = torch.from_numpy(((y - y_mean) / y_std).astype(np.float32))
        targets = tuple(yt[:, j].contiguous() for j in range(N_JOINTS))
        for task, target in zip(TASKS, targets, strict=True):
            check_target(task, target, len(xt))
        splits[split] = Split(x=xt, y=targets, source=torch.from_numpy(source))
    return splits


def describe(options: Options, root: None = None) -> dict[str, object]:
    """Provenance: pybullet version, the arm model's file and sha256, its joints and inertial parameters, split
    sizes, and the training statistics used for standardisation (to map predictions back to N m)."""
    path = urdf_path()
    raw = simulate(options)
    joints = []
    with arm(options.gravity) as model:
        for j in range(N_JOINTS):
            info = pybullet.getJointInfo(model.body, j, physicsClientId=model.client)
            dyn = pybullet.getDynamicsInfo(model.body, j, physicsClientId=model.client)
            joints.append(
                {
                    "name": info[1].decode(),
                    "lower": info[8],
                    "upper": info[9],
                    "mass": dyn[0],
                    "inertia_diagonal": list(dyn[2]),
                    "com": list(dyn[3]),
                }
            )
    x_mean, x_std = statistics(raw["train"][0])
    y_mean, y_std = statistics(raw["train"][1])
    return {
        "source": f"pybullet_data/{URDF}",
        "urdf_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "pybullet_version": importlib.metadata.version("pybullet"),
        "solver": "pybullet.calculateInverseDynamics (Bullet btInverseDynamics, recursive Newton-Euler)",
        "joints": joints,
        "inputs": list(INPUTS),
        "n_examples": {split: len(raw[split][0]) for split in SPLITS},
        "n_trajectories": {split: _n_trajectories(options, split) for split in SPLITS},
        "standardized": options.standardize,
        "train_statistics": {
            "x_mean": x_mean.tolist(),
            "x_std": x_std.tolist(),
            "y_mean": y_mean.tolist(),
            "y_std": y_std.tolist(),
        },
        "stand_in": STAND_IN,
    }
