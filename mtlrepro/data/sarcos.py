"""``sarcos``: the SARCOS inverse-dynamics problem, seven joint-torque regression tasks (ExcessMTL App. C).

ExcessMTL App. C.2: SARCOS (Vijayakumar and Schaal, 2000) maps 21 attributes of a seven-degree-of-freedom
robot arm (7 joint positions, 7 joint velocities, 7 joint accelerations) to its 7 joint torques; every torque
is one regression task (``joint1`` ... ``joint7``; label noise goes into the first two). App. C.1:
"We standardize all datasets to ensure zero mean and unit variance".

Source: the GPML book's copies, ``sarcos_inv.mat`` (variable ``sarcos_inv``, 44,484 rows) and
``sarcos_inv_test.mat`` (``sarcos_inv_test``, 4,449 rows), 28 columns each: the 21 inputs, then the 7
torques. The test file is the test split. The paper names no validation split, so a seeded fraction
``val_fraction`` (default 10%) of the training rows is held out as validation. Inputs and targets are
standardised with the mean and standard deviation (population, ddof 0) of the remaining *training* rows only;
validation and test are transformed with those statistics, recorded by :func:`describe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy
import scipy.io
import torch

from mtlrepro.data import Split
from mtlrepro.data import download as dl
from mtlrepro.data.download import Source
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import Task, check_target

NAME = "sarcos"
ENCODER = "mlp"
N_INPUTS = 21
N_JOINTS = 7
TASKS = tuple(Task(f"joint{j}", "regression") for j in range(1, N_JOINTS + 1))
MULTI_INPUT = False
STAND_IN = None

TRAIN_FILE = "sarcos_inv.mat"
TEST_FILE = "sarcos_inv_test.mat"
#: variable name inside each file
VARIABLES = {TRAIN_FILE: "sarcos_inv", TEST_FILE: "sarcos_inv_test"}
#: the GPML book's data page (the URL every user of SARCOS cites); no published checksum or size for either
#: file: trusted on first use (the downloader records the sha256 it saw)
SOURCES = (
    Source(
        url="http://www.gaussianprocess.org/gpml/data/sarcos_inv.mat",
        sha256=None,
        size=None,
        mirrors=("https://gaussianprocess.org/gpml/data/sarcos_inv.mat",),
    ),
    Source(
        url="http://www.gaussianprocess.org/gpml/data/sarcos_inv_test.mat",
        sha256=None,
        size=None,
        mirrors=("https://gaussianprocess.org/gpml/data/sarcos_inv_test.mat",),
    ),
)
MANUAL = (
    "SARCOS: download sarcos_inv.mat and sarcos_inv_test.mat from http://www.gaussianprocess.org/gpml/data/ "
    "and put both in the download directory (or in the directory the dataset's path names)"
)


@dataclass(frozen=True)
class Options:
    """Validation split: the fraction of training rows held out (the paper gives none) and its seed."""

    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in (0, 1)")


def check_root(root: Path) -> None:
    """Refuse a directory without both .mat files (one :class:`DataError` line naming the first missing)."""
    for name in (TRAIN_FILE, TEST_FILE):
        if not (Path(root) / name).is_file():
            raise DataError(f"{NAME}: {Path(root) / name} is missing: {MANUAL}")


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download both .mat files into ``directory`` (no unpacking) and return it."""
    directory = Path(directory)
    for source in sources:
        dl.fetch(source, directory, manual=MANUAL, dataset=NAME, progress=progress)
    check_root(directory)
    return directory


def read_mat(path: Path) -> np.ndarray:
    """The ``[N x 28]`` float64 matrix of one SARCOS file (:func:`scipy.io.loadmat`)."""
    variable = VARIABLES[path.name]
    try:
        content = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{NAME}: cannot read {path} as a MATLAB file: {err}") from None
    if variable not in content:
        found = ", ".join(k for k in content if not k.startswith("__")) or "none"
        raise DataError(f"{NAME}: {path} has no variable {variable!r} (variables: {found})")
    matrix = np.asarray(content[variable], dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != N_INPUTS + N_JOINTS:
        raise DataError(f"{NAME}: {path}: {variable} has shape {list(matrix.shape)}, expected [N x 28]")
    if not np.isfinite(matrix).all():
        raise DataError(f"{NAME}: {path}: {variable} holds non-finite values")
    return matrix


def split_rows(n: int, options: Options) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) row indices of the training file, each sorted; val has round(fraction * n) rows."""
    n_val = round(options.val_fraction * n)
    if n_val < 1 or n - n_val < 2:
        raise DataError(f"{NAME}: cannot hold out val_fraction={options.val_fraction} of {n} training rows")
    generator = torch.Generator().manual_seed(derive_seed(options.split_seed, "sarcos/val"))
    order = torch.randperm(n, generator=generator).numpy()
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def statistics(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (ddof 0) of the training rows; a constant column gets std 1."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def _load(root: Path, options: Options) -> dict[str, object]:
    train_file, test_file = read_mat(Path(root) / TRAIN_FILE), read_mat(Path(root) / TEST_FILE)
    train_rows, val_rows = split_rows(train_file.shape[0], options)
    mean, std = statistics(train_file[train_rows])
    return {"train": train_file, "test": test_file, "rows": (train_rows, val_rows), "mean": mean, "std": std}


def build(options: Options, root: Path | None) -> dict[str, Split]:
    """Build train/val/test (ExcessMTL App. C): ``x`` float32 ``[N x 21]``, ``y`` = seven float32 ``[N]``.

    Both inputs and targets are standardised with the training rows' statistics. ``source`` int64 ``[N x 1]``
    is the row in ``sarcos_inv`` (train, val) or 44,484 + the row in ``sarcos_inv_test`` (test), i.e. the row
    of the two files stacked.
    """
    if root is None:
        raise DataError(f"{NAME} needs its raw data: {MANUAL}")
    check_root(Path(root))
    data = _load(Path(root), options)
    train_file, test_file = data["train"], data["test"]
    train_rows, val_rows = data["rows"]
    mean, std = data["mean"], data["std"]
    parts = {
        "train": (train_file[train_rows], train_rows),
        "val": (train_file[val_rows], val_rows),
        "test": (test_file, np.arange(test_file.shape[0]) + train_file.shape[0]),
    }
    splits: dict[str, Split] = {}
    for split, (rows, source) in parts.items():
        scaled = ((rows - mean) / std).astype(np.float32)
        x = torch.from_numpy(np.ascontiguousarray(scaled[:, :N_INPUTS]))
        y = tuple(torch.from_numpy(np.ascontiguousarray(scaled[:, N_INPUTS + j])) for j in range(N_JOINTS))
        for task, target in zip(TASKS, y, strict=True):
            check_target(task, target, len(rows))
        splits[split] = Split(x=x, y=y, source=torch.from_numpy(source.astype(np.int64)).reshape(-1, 1))
    return splits


def describe(options: Options, root: Path | None) -> dict[str, object]:
    """Provenance: file checksums, split sizes and the training statistics used for standardisation."""
    if root is None:
        raise DataError(f"{NAME} needs its raw data: {MANUAL}")
    data = _load(Path(root), options)
    train_rows, val_rows = data["rows"]
    mean, std = data["mean"], data["std"]
    return {
        "files": {
            name: {"url": s.url, "sha256": dl.sha256_file(Path(root) / name)}
            for name, s in zip((TRAIN_FILE, TEST_FILE), SOURCES, strict=True)
        },
        "scipy_version": scipy.__version__,
        "sizes": {"train": len(train_rows), "val": len(val_rows), "test": int(data["test"].shape[0])},
        "val_fraction": options.val_fraction,
        "standardisation": "training rows (after holding out val), population std",
        "input_mean": mean[:N_INPUTS].tolist(),
        "input_std": std[:N_INPUTS].tolist(),
        "target_mean": {task.name: float(mean[N_INPUTS + j]) for j, task in enumerate(TASKS)},
        "target_std": {task.name: float(std[N_INPUTS + j]) for j, task in enumerate(TASKS)},
        "stand_in": STAND_IN,
    }
