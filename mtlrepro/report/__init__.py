"""Reports built from finished runs: the papers' tables and figures, their statistics and the scorecard.

* :mod:`~mtlrepro.report.runs` reads and checks run files and turns them into long-form frames.
* :mod:`~mtlrepro.report.stats`: mean ± std, bootstrap CIs, tests against the baseline, Holm, Δp with its CI.
* :mod:`~mtlrepro.report.paper_tables`: method table, combination grid, architecture grid, published twin.
* :mod:`~mtlrepro.report.paper_figures`: learning curves, weight trajectories, noise sweep, loss profile,
  excess-risk estimate against its proxy; :mod:`~mtlrepro.report.flatness_report`: RW Figure 1.
* :mod:`~mtlrepro.report.outputs`: which module writes each output kind of a study.
* :mod:`~mtlrepro.report.published` and :mod:`~mtlrepro.report.scorecard`: the published numbers and the
  claims' verdicts; :mod:`~mtlrepro.report.evidence` computes each claim's evidence from the studies' runs.
* :mod:`~mtlrepro.report.figures`: how every figure is saved.
"""
