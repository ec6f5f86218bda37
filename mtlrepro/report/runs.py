"""Read and check run files (``metrics.json``) and turn them into long-form frames.

A run file is written by one training run (format ``mtlrepro.run/2``). Every
check here raises :class:`~mtlrepro.errors.DataError` whose message starts with
the offending file, so a broken or stale run is easy to find. A report covers
one dataset: every run must declare the same dataset name and tasks.

Each dict returned by :func:`load_runs` is the file's JSON content plus one
extra key, ``"source"``: the path the run was read from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mtlrepro.errors import DataError
from mtlrepro.metrics import HIGHER, LOWER
from mtlrepro.run import RUN_FORMAT

SPLITS = ("val", "test")
RUN_COLUMNS = ["method", "seed", "noise", "split", "task", "metric", "value"]
CURVE_COLUMNS = ["method", "seed", "noise", "epoch", "split", "task", "metric", "value"]

Directions = dict[str, dict[str, str]]
"""Task -> metric -> direction (``"higher"`` or ``"lower"``), in declaration order."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a report needs to know about the dataset shared by its runs."""

    name: str
    stand_in: str | None
    directions: Directions


def source(run: Mapping[str, Any]) -> str:
    """The file a run was read from (or its run directory for runs built in memory)."""
    return str(run.get("source") or run.get("run", {}).get("dir") or "<run>")


# --------------------------------------------------------------------------- checks


def _require(obj: Any, key: str, where: str, path: str) -> Any:
    if not isinstance(obj, Mapping):
        raise DataError(f"{path}: {where or 'top level'} is not a JSON object")
    if key not in obj:
        raise DataError(f"{path}: missing key {(where + '.' if where else '') + key!r}")
    return obj[key]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_directions(dataset: Any, path: str) -> Directions:
    tasks = _require(dataset, "tasks", "dataset", path)
    if not isinstance(tasks, list) or not tasks:
        raise DataError(f"{path}: 'dataset.tasks' must be a non-empty list")
    directions: Directions = {}
    for i, task in enumerate(tasks):
        name = _require(task, "name", f"dataset.tasks[{i}]", path)
        metrics = _require(task, "metrics", f"dataset.tasks[{i}]", path)
        if not isinstance(name, str) or name in directions:
            raise DataError(f"{path}: 'dataset.tasks[{i}].name' must be a unique string, got {name!r}")
        if not isinstance(metrics, Mapping) or not metrics:
            raise DataError(f"{path}: 'dataset.tasks[{i}].metrics' must be a non-empty object")
        for metric, direction in metrics.items():
            if direction not in (HIGHER, LOWER):
                raise DataError(
                    f"{path}: metric {name}.{metric}: direction must be {HIGHER!r} or {LOWER!r}, got {direction!r}"
                )
        directions[name] = dict(metrics)
    return directions


def _check_values(values: Any, directions: Directions, where: str, path: str) -> None:
    """``values`` must map every declared task -> metric to a number."""
    for task, metrics in directions.items():
        per_task = _require(values, task, where, path)
        for metric in metrics:
            value = _require(per_task, metric, f"{where}.{task}", path)
            if not _is_number(value):
                raise DataError(f"{path}: '{where}.{task}.{metric}' is not a number: {value!r}")


def check_run(data: Any, path: str) -> DatasetInfo:
    """Check one parsed run file; return its dataset info. Raises DataError naming ``path``."""
    if not isinstance(data, Mapping):
        raise DataError(f"{path}: a run file must hold a JSON object")
    fmt = _require(data, "format", "", path)
    if fmt != RUN_FORMAT:
        raise DataError(f"{path}: format is {fmt!r}, expected {RUN_FORMAT!r}")
    run = _require(data, "run", "", path)
    for key in ("dataset", "method", "noise"):
        if not isinstance(_require(run, key, "run", path), str):
            raise DataError(f"{path}: 'run.{key}' must be a string")
    seed = _require(run, "seed", "run", path)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{path}: 'run.seed' must be an integer, got {seed!r}")
    dataset = _require(data, "dataset", "", path)
    name = _require(dataset, "name", "dataset", path)
    stand_in = _require(dataset, "stand_in", "dataset", path)
    if stand_in is not None and not isinstance(stand_in, str):
        raise DataError(f"{path}: 'dataset.stand_in' must be a string or null")
    if name != run["dataset"]:
        raise DataError(f"{path}: 'dataset.name' is {name!r} but 'run.dataset' is {run['dataset']!r}")
    directions = _check_directions(dataset, path)

    selection = _require(data, "selection", "", path)
    _require(selection, "rule", "selection", path)
    _require(selection, "epoch", "selection", path)

    final = _require(data, "final", "", path)
    if not isinstance(final, Mapping):
        raise DataError(f"{path}: 'final' is not a JSON object")
    for split in SPLITS:
        if _require(final, split, "final", path) is not None:
            _check_values(final[split], directions, f"final.{split}", path)

    epochs = _require(data, "epochs", "", path)
    if not isinstance(epochs, list):
        raise DataError(f"{path}: 'epochs' must be a list")
    for i, epoch in enumerate(epochs):
        number = _require(epoch, "epoch", f"epochs[{i}]", path)
        if isinstance(number, bool) or not isinstance(number, int):
            raise DataError(f"{path}: 'epochs[{i}].epoch' must be an integer, got {number!r}")
        for split in SPLITS:
            if epoch.get(split) is not None:
                _check_values(epoch[split], directions, f"epochs[{i}].{split}", path)
    return DatasetInfo(name=name, stand_in=stand_in, directions=directions)


RERUN = "delete it and rerun snakemake, which trains that run again"
"""What to do about a damaged run record (its job reruns when the file is missing)."""


def _read(path: Path) -> Any:
    """The parsed JSON of a run file; :class:`DataError` naming it when it is missing, unreadable or not JSON."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: run file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read run file ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not a UTF-8 text file (byte 0x{data[err.start]:02x} at offset {err.start}); {RERUN}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); {RERUN}") from None
    except RecursionError:
        raise DataError(f"{path}: not a run record (JSON nested too deeply); {RERUN}") from None


def _same_dataset(info: DatasetInfo, first: DatasetInfo, path: str, first_path: str) -> None:
    if info.name != first.name:
        raise DataError(
            f"{path}: dataset {info.name!r} differs from {first.name!r} in {first_path}; "
            "a report covers runs of one dataset"
        )
    if info.directions != first.directions:
        raise DataError(f"{path}: tasks/metrics differ from those in {first_path} (same dataset {info.name!r})")
    if info.stand_in != first.stand_in:
        raise DataError(f"{path}: 'dataset.stand_in' differs from that in {first_path}")


def load_runs(paths: Sequence[str | Path], *, one_dataset: bool = True) -> list[dict[str, Any]]:
    """Read and check run files, in the given order; with ``one_dataset`` (a table or figure of one study) all
    must come from one dataset, without it (the scorecard, over every study) any mix may.

    Returns the parsed files, each with an added ``"source"`` key (the path).
    Raises :class:`DataError` naming the file when one is missing, is not
    UTF-8 or not JSON, has the wrong ``format``, lacks a key (the message of a
    damaged file says to delete it and rerun), or is from another dataset.
    """
    if not paths:
        raise DataError("no run files given")
    runs: list[dict[str, Any]] = []
    first: DatasetInfo | None = None
    for raw in paths:
        path = Path(raw)
        data = _read(path)
        try:
            info = check_run(data, str(path))
        except DataError as err:
            raise DataError(f"{err}; {RERUN}") from None
        if first is None:
            first = info
        elif one_dataset:
            _same_dataset(info, first, str(path), source(runs[0]))
        runs.append({**data, "source": str(path)})
    return runs


def dataset_info(runs: Sequence[Mapping[str, Any]]) -> DatasetInfo:
    """Dataset name, stand-in text and metric directions shared by ``runs`` (checked)."""
    if not runs:
        raise DataError("no runs given")
    infos = [check_run(run, source(run)) for run in runs]
    for run, info in zip(runs[1:], infos[1:], strict=False):
        _same_dataset(info, infos[0], source(run), source(runs[0]))
    return infos[0]


def check_one_run_per_seed(runs: Sequence[Mapping[str, Any]]) -> None:
    """Raise DataError when two runs share a (method, seed), e.g. two noise levels in one study."""
    seen: dict[tuple[str, int], str] = {}
    for run in runs:
        key = (run["run"]["method"], run["run"]["seed"])
        if key in seen:
            raise DataError(
                f"{source(run)}: method {key[0]!r} seed {key[1]} also comes from {seen[key]}; "
                "a study needs one run per method and seed"
            )
        seen[key] = source(run)


def methods_in_order(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Method names in the order they first appear in ``runs``."""
    return list(dict.fromkeys(run["run"]["method"] for run in runs))


# --------------------------------------------------------------------------- frames


def _rows(
    head: tuple[Any, ...], split: str, values: Mapping[str, Mapping[str, float]], directions: Directions
) -> list[tuple[Any, ...]]:
    return [
        (*head, split, task, metric, float(values[task][metric]))
        for task, metrics in directions.items()
        for metric in metrics
    ]


def _frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.astype({"seed": "int64", "value": "float64"})
    if "epoch" in frame:
        frame = frame.astype({"epoch": "int64"})
    return frame


def runs_frame(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Final (selected-epoch) metrics in long form.

    Columns: ``method, seed, noise, split, task, metric, value``; one row per
    run, split (``val``/``test``, where present), task and metric, in run order.
    """
    info = dataset_info(runs)
    rows: list[tuple[Any, ...]] = []
    for run in runs:
        head = (run["run"]["method"], run["run"]["seed"], run["run"]["noise"])
        for split in SPLITS:
            values = run["final"].get(split)
            if values is not None:
                rows += _rows(head, split, values, info.directions)
    return _frame(rows, RUN_COLUMNS)


def curves_frame(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-epoch metrics in long form.

    Columns: ``method, seed, noise, epoch, split, task, metric, value``; epochs
    whose split is null (not evaluated) contribute no rows for that split.
    """
    info = dataset_info(runs)
    rows: list[tuple[Any, ...]] = []
    for run in runs:
        for epoch in run["epochs"]:
            head = (run["run"]["method"], run["run"]["seed"], run["run"]["noise"], epoch["epoch"])
            for split in SPLITS:
                values = epoch.get(split)
                if values is not None:
                    rows += _rows(head, split, values, info.directions)
    return _frame(rows, CURVE_COLUMNS)
