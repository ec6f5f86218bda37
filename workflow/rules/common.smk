# Shared definitions: config validation, the study expansion and the command line.

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# Import the package from this checkout, so the code that runs is the code
# whose files the train jobs declare as inputs. The jobs run `python -m
# mtlrepro` in the working directory (the checkout), which puts it first on
# sys.path in the same way.
sys.path.insert(0, workflow.basedir)

from mtlrepro.config import check_config
from mtlrepro.errors import ConfigError
from mtlrepro.io import canonical_json
from mtlrepro.studies import data_file, dataset_sources, run_sources, runs_by_directory

# A --configfile replaces the embedded default rather than merging into it:
# `snakemake --configfile config/paper.yaml` runs exactly that file's studies.
if workflow.overwrite_configfiles:
    config.clear()
    config.update(workflow.config_settings.overwrite_config)

try:
    STUDIES = check_config(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(f"config error: {err}") from None

RUNS = runs_by_directory(STUDIES)
DATA_OPTIONS = {run.dataset: run.data_options for run in RUNS.values()}
DEVICE = config.get("device", "auto")
TRAIN_RESOURCES = config.get("resources", {})


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    arch=r"[a-z0-9_]+",
    method=r"[a-z0-9_-]+(\+[a-z0-9_-]+)?",
    noise=r"[A-Za-z0-9_.]+",
    seed=r"\d+",
    study=r"[A-Za-z0-9_-]+",


def run_of(wildcards):
    """The run whose directory the wildcards name."""
    directory = (
        "results/runs/{w.dataset}/{w.arch}/{w.method}/{w.noise}/seed{w.seed}".format(
            w=wildcards
        )
    )
    if directory not in RUNS:
        raise WorkflowError(f"no study of the config defines the run {directory}")
    return RUNS[directory]


def study_metrics(wildcards):
    """metrics.json of every run of a study, in the study's order."""
    return [run.metrics_file for run in STUDIES[wildcards.study].runs]


def all_targets():
    """The table and figure files of every study."""
    targets = []
    for name in STUDIES:
        targets += [
            f"results/tables/{name}/summary.csv",
            f"results/tables/{name}/summary.md",
            f"results/figures/{name}/test_accuracy.png",
            f"results/figures/{name}/test_accuracy.pdf",
        ]
    return targets
