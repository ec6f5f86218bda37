"""Reports built from finished runs: load ``metrics.json`` files, summary tables, accuracy curves.

* :mod:`mtlrepro.report.runs` reads and checks run files and turns them into long-form frames.
* :mod:`mtlrepro.report.tables` builds the per-study summary table (mean ± std, Δp vs EW).
* :mod:`mtlrepro.report.figures` draws accuracy curves (mean over seeds ± 1 std).
"""
