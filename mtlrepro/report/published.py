"""The papers' published numbers, read from the repository's ``reference/`` folder.

``reference/`` holds the RW paper's Tables 1-8 as CSV files (``reference/rw/``)
and both papers' training settings; the ExcessMTL paper reports its results only
as figures, so it contributes no numbers. A table is addressed by its *key*, the
file's path under ``reference/`` without ``.csv`` (``"rw/table1_nyuv2"``).

* :func:`load_published` reads one file and adds our names for the paper's
  methods (``our_method``) and architectures (``our_arch``).
* :func:`published_numbers` lists every number of every ``table*.csv`` in long
  form, one row per printed cell, with the printed text kept (``"0.00"`` stays
  ``"0.00"``) so the scorecard shows the numbers exactly as published.

Method names: the paper's names map to our registered method names
(:data:`METHOD_NAMES`); a combination ``RLW+CAGrad`` maps part by part to
``rlw+cagrad`` (our ``<loss>+<gradient>`` form). In RW Table 4 the row
``Vanilla`` means no gradient method (the loss weighting alone), and the column
``EW`` under a gradient method is that gradient method alone, as in Table 1
(the two tables print the same Δp for it, e.g. MGDA-UB 0.38), so
``(MGDA-UB, EW)`` -> ``mgda`` and ``(MGDA-UB, RLW)`` -> ``rlw+mgda``.
:func:`canonical_method` applies the same rule to our names (``ew+mgda`` ->
``mgda``) so reproduced values match either spelling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import mtlrepro
from mtlrepro.errors import DataError
from mtlrepro.metrics import HIGHER, LOWER

METHOD_NAMES: dict[str, str] = {
    "EW": "ew",
    "UW": "uw",
    "DWA": "dwa",
    "IMTL-L": "imtl_l",
    "MOML": "moml",
    "MGDA-UB": "mgda",
    "GradNorm": "gradnorm",
    "PCGrad": "pcgrad",
    "GradDrop": "graddrop",
    "IMTL-G": "imtl_g",
    "GradVac": "gradvac",
    "CAGrad": "cagrad",
    "RotoGrad": "rotograd",
    "RLW": "rlw",
    "RGW": "rgw",
}
"""The RW paper's method names -> our registered method names."""

ARCH_NAMES: dict[str, str] = {"HPS": "hps", "Cross-stitch": "cross_stitch", "MTAN": "mtan", "NDDR-CNN": "nddr_cnn"}
"""The RW paper's architecture names (Table 5) -> our architecture names."""

VANILLA = "Vanilla"
"""RW Table 4's row without a gradient method."""
BASELINE_LOSS = "ew"
"""The loss weighting implied when a gradient method runs alone (RW Tables 1 and 4)."""
DEFAULT_ARCH = "hps"
"""The architecture of every RW table except Table 5 (rw/README.md: "the HPS architecture (except in Table 5)")."""

METHODS, COMBINATIONS, ARCHITECTURES, SIZES, SETTINGS, GENERIC = (
    "methods",
    "combinations",
    "architectures",
    "sizes",
    "settings",
    "generic",
)

NUMBER_COLUMNS = [
    "key",
    "paper",
    "table",
    "dataset",
    "row",
    "column",
    "metric",
    "method",
    "arch",
    "value",
    "text",
    "direction",
]
"""Columns of :func:`published_numbers`; ``method``/``arch``/``direction`` are ``""`` where they do not apply."""

PAPERS: dict[str, str] = {"rw": "rw", "excess-mtl": "excess_mtl"}
"""Folder under ``reference/`` -> the paper identifier used by studies (``"rw"``, ``"excess_mtl"``)."""


@dataclass(frozen=True)
class TableSpec:
    """How to read one published file: which paper table it is and how its cells are laid out."""

    label: str
    dataset: str
    layout: str
    lower: frozenset[str] = field(default_factory=frozenset)

    def direction(self, column: str) -> str:
        """``"higher"`` / ``"lower"`` for result columns (rw/README.md), ``""`` for counts and settings."""
        if self.layout in (SIZES, SETTINGS, GENERIC):
            return ""
        return LOWER if column in self.lower else HIGHER


TABLES: dict[str, TableSpec] = {
    "rw/table1_nyuv2": TableSpec(
        "RW Table 1",
        "NYUv2",
        METHODS,
        frozenset({"depth_abs_err", "depth_rel_err", "normal_mean", "normal_median"}),
    ),
    "rw/table2_xtreme_sizes": TableSpec("RW Table 2", "XTREME (PAWS-X, UD v2.5)", SIZES),
    "rw/table3_xtreme": TableSpec("RW Table 3", "XTREME (PI, POS)", METHODS),
    "rw/table4_combinations": TableSpec("RW Table 4", "NYUv2", COMBINATIONS),
    "rw/table5_architectures": TableSpec("RW Table 5", "NYUv2", ARCHITECTURES),
    "rw/table6_cityscapes": TableSpec(
        "RW Table 6", "CityScapes", METHODS, frozenset({"depth_abs_err", "depth_rel_err"})
    ),
    "rw/table7_celeba": TableSpec("RW Table 7", "CelebA", METHODS),
    "rw/table8_office": TableSpec("RW Table 8", "Office-31 and Office-Home", METHODS),
    "rw/settings": TableSpec("RW training settings", "all", SETTINGS),
    "excess-mtl/settings": TableSpec("ExcessMTL training settings", "all", SETTINGS),
}
"""Every file the reference folder ships; a ``table*.csv`` not listed here is read as a generic table."""

_LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    METHODS: ("method", "group", "best_marks"),
    COMBINATIONS: ("gradient_method", "loss_method"),
    ARCHITECTURES: ("method", "architecture"),
    SIZES: ("problem", "language"),
}
"""Columns that label a row rather than hold a published number, per layout."""


def reference_dir() -> Path:
    """The repository's ``reference/`` folder (beside the ``mtlrepro`` package)."""
    return Path(mtlrepro.__file__).resolve().parents[1] / "reference"


def _root(root: str | Path | None) -> Path:
    return reference_dir() if root is None else Path(root)


def table_spec(key: str) -> TableSpec:
    """The :class:`TableSpec` of ``key``; a generic one (label from the file name) for unknown keys."""
    if key in TABLES:
        return TABLES[key]
    folder, _, name = key.partition("/")
    return TableSpec(f"{folder} {name}", "", GENERIC)


def published_keys(root: str | Path | None = None) -> list[str]:
    """Keys of every published *table* (``<folder>/table*.csv``) in the reference folder, sorted."""
    base = _root(root)
    if not base.is_dir():
        raise DataError(f"{base}: reference folder not found")
    return sorted(path.relative_to(base).with_suffix("").as_posix() for path in base.glob("*/table*.csv"))


# --------------------------------------------------------------------------- names


def our_method(name: str) -> str:
    """Our name for a paper method name (``"MGDA-UB"`` -> ``"mgda"``, ``"RLW+CAGrad"`` -> ``"rlw+cagrad"``).

    Raises ``KeyError`` naming the method when a part is not in :data:`METHOD_NAMES`.
    """
    parts = [part.strip() for part in name.split("+")]
    unknown = [part for part in parts if part not in METHOD_NAMES]
    if unknown:
        raise KeyError(f"unknown method name {unknown[0]!r} in {name!r} (known: {', '.join(METHOD_NAMES)})")
    return "+".join(METHOD_NAMES[part] for part in parts)


def combination_method(gradient: str, loss: str) -> str:
    """Our method for a cell of RW Table 4: row ``gradient`` (or ``Vanilla``) x column ``loss``.

    ``Vanilla`` -> the loss weighting alone; loss ``EW`` -> the gradient method
    alone; otherwise ``<loss>+<gradient>``.
    """
    loss_name = our_method(loss)
    if gradient == VANILLA:
        return loss_name
    gradient_name = our_method(gradient)
    return gradient_name if loss_name == BASELINE_LOSS else f"{loss_name}+{gradient_name}"


def canonical_method(name: str) -> str:
    """Our method name with an explicit ``ew+`` loss stage dropped (``"ew+mgda"`` -> ``"mgda"``)."""
    loss, plus, gradient = name.partition("+")
    return gradient if plus and loss == BASELINE_LOSS else name


def our_arch(name: str) -> str:
    """Our name for a paper architecture name (``"Cross-stitch"`` -> ``"cross_stitch"``); ``KeyError`` if unknown."""
    if name not in ARCH_NAMES:
        raise KeyError(f"unknown architecture name {name!r} (known: {', '.join(ARCH_NAMES)})")
    return ARCH_NAMES[name]


# --------------------------------------------------------------------------- loading


def _read_csv(path: Path, text: bool) -> pd.DataFrame:
    try:
        if text:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: published table not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read published table ({err})") from None


def _check_columns(frame: pd.DataFrame, needed: tuple[str, ...], path: Path) -> None:
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")


def _mapped(values: Iterable[Any], mapper: Callable[..., str], path: Path) -> list[str]:
    """``mapper(*value)`` for tuples, ``mapper(value)`` otherwise; an unknown name is a DataError naming ``path``."""
    try:
        return [mapper(*value) if isinstance(value, tuple) else mapper(value) for value in values]
    except KeyError as err:
        raise DataError(f"{path}: {err.args[0]}") from None


def _path(key: str, root: str | Path | None) -> Path:
    return _root(root) / f"{key}.csv"


def load_published(key: str, root: str | Path | None = None) -> pd.DataFrame:
    """Read the published file ``key`` (e.g. ``"rw/table1_nyuv2"``) as printed, numbers as floats.

    Method tables (RW Tables 1, 3, 6-8) and Table 5 gain a column
    ``our_method``; Table 4 gains ``our_method`` for each (gradient, loss) cell;
    Table 5 also gains ``our_arch``. ``attrs`` holds ``key``, ``label``,
    ``dataset`` and ``path``. Raises :class:`DataError` naming the file when it
    is missing, unreadable, lacks a column of its layout or names an unknown
    method or architecture.
    """
    path = _path(key, root)
    spec = table_spec(key)
    frame = _read_csv(path, text=False)
    if spec.layout in _LABEL_COLUMNS:
        _check_columns(frame, tuple(c for c in _LABEL_COLUMNS[spec.layout] if c != "best_marks"), path)
    if spec.layout == METHODS:
        frame["our_method"] = _mapped(frame["method"], our_method, path)
    elif spec.layout == COMBINATIONS:
        _check_columns(frame, ("delta_p",), path)
        pairs = zip(frame["gradient_method"], frame["loss_method"], strict=True)
        frame["our_method"] = _mapped(pairs, combination_method, path)
    elif spec.layout == ARCHITECTURES:
        _check_columns(frame, ("delta_p",), path)
        frame["our_method"] = _mapped(frame["method"], our_method, path)
        frame["our_arch"] = _mapped(frame["architecture"], our_arch, path)
    frame.attrs.update(key=key, label=spec.label, dataset=spec.dataset, path=str(path))
    return frame


def _parses(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _number_columns(text: pd.DataFrame, spec: TableSpec) -> list[str]:
    """Columns holding published numbers: all but the layout's labels; for a generic table, those that parse."""
    if spec.layout in _LABEL_COLUMNS:
        return [column for column in text.columns if column not in _LABEL_COLUMNS[spec.layout]]
    return [
        column
        for column in text.columns[1:]
        if any(cell.strip() for cell in text[column]) and all(_parses(c) for c in text[column] if c.strip())
    ]


def _cell_identity(spec: TableSpec, row: Mapping[str, str], column: str) -> tuple[str, str, str, str, str]:
    """(row label, column label, metric, our method, our arch) of one printed cell."""
    if spec.layout == METHODS:
        return row["method"], column, column, our_method(row["method"]), DEFAULT_ARCH
    if spec.layout == COMBINATIONS:
        method = combination_method(row["gradient_method"], row["loss_method"])
        return row["gradient_method"], row["loss_method"], column, method, DEFAULT_ARCH
    if spec.layout == ARCHITECTURES:
        return row["method"], row["architecture"], column, our_method(row["method"]), our_arch(row["architecture"])
    if spec.layout == SIZES:
        label = f"{row['problem']} {row['language']}"
        return label, column, f"{row['problem'].lower()}_{row['language']}_{column}", "", ""
    first = next(iter(row.values()))
    return first, column, column, "", ""


def _numbers_of(key: str, root: str | Path | None) -> list[dict[str, object]]:
    path = _path(key, root)
    spec = table_spec(key)
    load_published(key, root)  # checks the layout's columns and the names
    text = _read_csv(path, text=True)
    paper = PAPERS.get(key.partition("/")[0], key.partition("/")[0])
    rows: list[dict[str, object]] = []
    records: list[dict[str, str]] = text.to_dict("records")  # type: ignore[assignment]
    for i, record in enumerate(records):
        for column in _number_columns(text, spec):
            cell = record[column].strip()
            if not cell:
                continue
            try:
                value = float(cell)
            except ValueError:
                raise DataError(f"{path}: row {i + 2}, column {column!r}: {cell!r} is not a number") from None
            label, col_label, metric, method, arch = _cell_identity(spec, record, column)
            rows.append(
                {
                    "key": key,
                    "paper": paper,
                    "table": spec.label,
                    "dataset": spec.dataset,
                    "row": label,
                    "column": col_label,
                    "metric": metric,
                    "method": method,
                    "arch": arch,
                    "value": value,
                    "text": cell,
                    "direction": spec.direction(column),
                }
            )
    return rows


def published_numbers(root: str | Path | None = None) -> pd.DataFrame:
    """Every published number of the reference folder in long form, one row per printed cell.

    Covers every ``<folder>/table*.csv`` (:func:`published_keys`), in key order
    then file order; the settings files are not results and are left out.
    Columns (:data:`NUMBER_COLUMNS`): ``key``, ``paper`` (``"rw"`` /
    ``"excess_mtl"``), ``table`` (``"RW Table 1"``), ``dataset``, ``row`` and
    ``column`` (the paper's labels: for Table 4 the gradient method and the loss
    weighting, for Table 5 the method and the architecture), ``metric`` (the CSV
    column; ``delta_p`` in Tables 4 and 5), ``method`` / ``arch`` (our names,
    ``""`` for Table 2's dataset sizes), ``value`` (float), ``text`` (as printed)
    and ``direction`` (``"higher"`` / ``"lower"``; ``""`` for sizes). Empty
    cells (Table 2's languages outside a problem) are not numbers and are skipped.
    A ``table*.csv`` not in :data:`TABLES` is still listed: its first column
    labels the rows and every column whose cells all parse holds numbers.
    """
    rows = [row for key in published_keys(root) for row in _numbers_of(key, root)]
    frame = pd.DataFrame(rows, columns=NUMBER_COLUMNS)
    return frame.astype({"value": "float64"})
