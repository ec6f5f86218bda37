"""RW Figure 1's report: flatness per method over seeds, tests against EW, and what the figure plots."""

import json
import statistics

import pytest

from mtlrepro.errors import DataError
from mtlrepro.report import stats
from mtlrepro.report.flatness_report import flatness_figure, flatness_table, load_flatness, write_flatness_table

VALUES = {"ew": [4.0, 5.0, 6.0], "rlw": [2.0, 2.5, 3.5]}
STUDY = {"name": "flat", "title": "Flatness", "baseline": "ew"}


@pytest.fixture
def records(tmp_path):
    paths = []
    for method, values in VALUES.items():
        for seed, value in enumerate(values):
            record = {
                "top_eigenvalue": value,
                "gradient_variance": value / 10,
                "run": {"method": method, "seed": seed},
                "selection": {"rule": "best_val", "epoch": 3},
                "stand_in": "a stand-in",
            }
            path = tmp_path / f"{method}{seed}.json"
            path.write_text(json.dumps(record))
            paths.append(path)
    return load_flatness(paths)


def test_table_numbers_and_tests(records):
    table = flatness_table(records, STUDY)
    row = table[(table.measure == "top_eigenvalue") & (table.method == "rlw")].iloc[0]
    assert row["mean"] == pytest.approx(statistics.mean(VALUES["rlw"]))
    assert row["std"] == pytest.approx(statistics.stdev(VALUES["rlw"]))
    expected = stats.compare(VALUES["rlw"], VALUES["ew"], [0, 1, 2], [0, 1, 2])
    assert row["test"] == "paired t-test" and row["p"] == pytest.approx(expected.p_value)
    assert list(table["p_holm"].isna()) == [True, False, True, False]
    assert table["p_holm"].dropna().tolist() == pytest.approx(list(stats.holm(table["p"].dropna().to_numpy())))


def test_written_table_and_figure_show_what_the_runs_hold(records, tmp_path):
    table = flatness_table(records, STUDY)
    write_flatness_table(table, STUDY, tmp_path / "flat")
    markdown = (tmp_path / "flat.md").read_text()
    assert "Stand-in data: a stand-in" in markdown and "paired t-test" in markdown and "3 seeds" in markdown
    assert "\\begin{tabular}" in (tmp_path / "flat.tex").read_text()
    plotted = flatness_figure(records, STUDY, tmp_path / "f.png", tmp_path / "f.pdf")
    points = plotted[(plotted.measure == "gradient_variance") & (plotted.method == "ew")]
    assert points["value"].tolist() == pytest.approx([v / 10 for v in VALUES["ew"]])
    assert points["mean"].iloc[0] == pytest.approx(0.5)
    assert (tmp_path / "f.png").stat().st_size > 1000 and (tmp_path / "f.pdf").stat().st_size > 1000


def test_missing_analysis_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: flatness analysis does not exist"):
        load_flatness([tmp_path / "nope.json"])
