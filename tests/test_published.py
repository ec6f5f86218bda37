"""Published numbers: every reference CSV loads, the paper's names map to ours, every printed number is listed."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from mtlrepro.errors import DataError
from mtlrepro.metrics import HIGHER, LOWER, delta_p
from mtlrepro.report import published
from mtlrepro.report.published import (
    canonical_method,
    combination_method,
    load_published,
    our_arch,
    our_method,
    published_keys,
    published_numbers,
    reference_dir,
)
from mtlrepro.weighting import registry

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
TABLE1_METRICS = {
    "seg": {"seg_miou": HIGHER, "seg_pixacc": HIGHER},
    "depth": {"depth_abs_err": LOWER, "depth_rel_err": LOWER},
    "normal": {
        "normal_mean": LOWER,
        "normal_median": LOWER,
        "normal_11.25": HIGHER,
        "normal_22.5": HIGHER,
        "normal_30": HIGHER,
    },
}


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _count_numbers(root: Path) -> int:
    """Every cell of every table CSV that parses as a number, counted with the csv module."""
    total = 0
    for path in sorted(root.glob("*/table*.csv")):
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        total += sum(_is_number(cell) for row in rows[1:] for cell in row)
    return total


def test_reference_folder_is_the_repositorys_own():
    assert reference_dir() == REFERENCE
    assert (REFERENCE / "rw" / "README.md").is_file()
    assert (REFERENCE / "excess-mtl" / "README.md").is_file()


@pytest.mark.parametrize("path", sorted(REFERENCE.glob("*/*.csv")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_reference_csv_loads(path):
    key = f"{path.parent.name}/{path.stem}"
    frame = load_published(key)
    assert len(frame) == len(pd.read_csv(path))
    assert frame.attrs["key"] == key and frame.attrs["path"] == str(path)
    for name in frame.get("our_method", []):
        assert all(part in registry() for part in name.split("+")), name


def test_every_method_of_the_published_tables_maps_to_a_registered_method():
    # the method names the RW paper prints (Tables 1, 3, 4, 5, ...) come from the reference CSVs, not from our map
    printed = set()
    for path in sorted((REFERENCE / "rw").glob("table*.csv")):
        frame = pd.read_csv(path)
        for column in ("method", "loss_method", "gradient_method"):
            printed |= set(frame.get(column, pd.Series(dtype=str)).dropna())
    printed -= {"Vanilla"}  # Table 4's "no gradient method" row/column
    assert printed, "no method names found in the published tables"
    mapped = {name: our_method(name) for name in printed}
    assert all(part in registry() for name in mapped.values() for part in name.split("+")), mapped
    assert len(set(mapped.values())) == len(mapped), "two printed names map to one method"


def test_table4_cells_map_to_combinations():
    assert combination_method("Vanilla", "EW") == "ew"
    assert combination_method("Vanilla", "RLW") == "rlw"
    assert combination_method("MGDA-UB", "EW") == "mgda"
    assert combination_method("MGDA-UB", "RLW") == "rlw+mgda"
    assert combination_method("PCGrad", "IMTL-L") == "imtl_l+pcgrad"
    table4 = load_published("rw/table4_combinations")
    cells = dict(zip(table4["our_method"], table4["delta_p"], strict=True))
    assert len(cells) == 50  # every (gradient, loss) cell names a distinct method
    assert cells["rlw+cagrad"] == pytest.approx(2.20)
    assert cells["graddrop"] == pytest.approx(0.08)
    # the gradient methods alone (EW column) print the same Δp as in Table 1
    table1 = load_published("rw/table1_nyuv2").set_index("our_method")["delta_p"]
    for method, value in cells.items():
        if "+" not in method and method in table1.index:
            assert value == pytest.approx(table1[method]), method


def test_table5_architectures_and_canonical_names():
    table5 = load_published("rw/table5_architectures")
    assert set(table5["our_arch"]) == {"hps", "cross_stitch", "mtan", "nddr_cnn"}
    assert set(table5["our_method"]) == {"ew", "cagrad", "rlw", "rlw+cagrad"}
    assert our_arch("NDDR-CNN") == "nddr_cnn"
    with pytest.raises(KeyError):
        our_arch("PLE")
    assert canonical_method("ew+mgda") == "mgda"
    assert canonical_method("rlw+mgda") == "rlw+mgda"
    assert canonical_method("ew") == "ew"


def test_published_numbers_lists_every_numeric_cell():
    numbers = published_numbers()
    assert len(numbers) == _count_numbers(REFERENCE)
    # 15 methods x 10 + 8 sizes x 3 + 15 x 10 + 50 + 16 + 15 x 5 + 15 + 15 x 9, by hand from the CSVs
    assert len(numbers) == 615
    assert numbers.groupby("key").size().to_dict() == {
        "rw/table1_nyuv2": 150,
        "rw/table2_xtreme_sizes": 24,
        "rw/table3_xtreme": 150,
        "rw/table4_combinations": 50,
        "rw/table5_architectures": 16,
        "rw/table6_cityscapes": 75,
        "rw/table7_celeba": 15,
        "rw/table8_office": 135,
    }
    assert list(numbers.columns) == published.NUMBER_COLUMNS
    assert set(numbers["paper"]) == {"rw"}  # ExcessMTL publishes figures only
    assert not numbers.duplicated(["key", "row", "column", "metric"]).any()


def test_published_numbers_keep_text_directions_and_identity():
    numbers = published_numbers().set_index(["key", "row", "column"])
    ew = numbers.loc[("rw/table1_nyuv2", "EW", "delta_p")]
    assert ew["text"] == "0.00" and ew["value"] == 0.0 and ew["direction"] == HIGHER
    assert numbers.loc[("rw/table1_nyuv2", "RGW", "depth_abs_err"), "direction"] == LOWER
    assert numbers.loc[("rw/table1_nyuv2", "CAGrad", "normal_mean"), "text"] == "22.5257"
    assert numbers.loc[("rw/table6_cityscapes", "EW", "depth_rel_err"), "direction"] == LOWER
    sizes = numbers.loc[("rw/table2_xtreme_sizes", "PI en", "train")]
    assert sizes["value"] == 49400 and sizes["direction"] == "" and sizes["metric"] == "pi_en_train"
    combo = numbers.loc[("rw/table4_combinations", "CAGrad", "RLW")]
    assert (combo["method"], combo["metric"], combo["arch"], combo["text"]) == ("rlw+cagrad", "delta_p", "hps", "2.20")
    arch = numbers.loc[("rw/table5_architectures", "RLW+CAGrad", "NDDR-CNN")]
    assert (arch["method"], arch["arch"], arch["value"]) == ("rlw+cagrad", "nddr_cnn", 3.53)
    assert numbers.loc[("rw/table8_office", "RGW", "oh_avg"), "value"] == 78.07


def test_table1_delta_p_recomputes_from_its_metrics():
    """Directions as the loader reads them reproduce RW Table 1's printed Δp (rw/README.md: within ±0.02)."""
    numbers = published_numbers()
    table1 = numbers[numbers["key"] == "rw/table1_nyuv2"]
    directions = {
        row: direction for row, direction in zip(table1["column"], table1["direction"], strict=True) if row != "delta_p"
    }
    assert directions == {m: d for metrics in TABLE1_METRICS.values() for m, d in metrics.items()}
    frame = load_published("rw/table1_nyuv2").set_index("method")

    def nested(method: str) -> dict[str, dict[str, float]]:
        return {task: {m: float(frame.loc[method, m]) for m in metrics} for task, metrics in TABLE1_METRICS.items()}

    for method in frame.index:
        assert delta_p(nested(method), nested("EW"), TABLE1_METRICS) == pytest.approx(
            frame.loc[method, "delta_p"], abs=0.02
        ), method


def test_missing_table_is_a_data_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match=r"rw/table9_none\.csv: published table not found"):
        load_published("rw/table9_none")
    with pytest.raises(DataError, match=str(tmp_path / "rw" / "table1_nyuv2.csv")):
        load_published("rw/table1_nyuv2", root=tmp_path)
    with pytest.raises(DataError, match="reference folder not found"):
        published_keys(tmp_path / "absent")


def test_bad_tables_are_data_errors_naming_the_file(tmp_path):
    (tmp_path / "rw").mkdir()
    bad_name = tmp_path / "rw" / "table7_celeba.csv"
    bad_name.write_text("method,group,avg_acc,best_marks\nEW,baseline,90.70,\nSAM,loss,91.00,\n")
    with pytest.raises(DataError, match=f"{bad_name}: unknown method name 'SAM'"):
        published_numbers(tmp_path)
    bad_name.write_text("method,group,avg_acc,best_marks\nEW,baseline,ninety,\n")
    with pytest.raises(DataError, match=f"{bad_name}: row 2, column 'avg_acc'"):
        published_numbers(tmp_path)
    bad_name.write_text("name,avg_acc\nEW,90.70\n")
    with pytest.raises(DataError, match=f"{bad_name}: missing column"):
        load_published("rw/table7_celeba", root=tmp_path)


def test_a_new_table_file_is_listed_too(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "table1_extra.csv").write_text("dataset,score,note\nA,1.5,x\nB,,y\nC,2,z\n")
    (tmp_path / "new" / "settings.csv").write_text("dataset,lr\nA,0.1\n")
    numbers = published_numbers(tmp_path)
    assert len(numbers) == _count_numbers(tmp_path) == 2
    assert numbers["row"].tolist() == ["A", "C"] and numbers["text"].tolist() == ["1.5", "2"]
    assert set(numbers["paper"]) == {"new"}
