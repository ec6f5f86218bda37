# Shared definitions: config validation, the study expansion and the command line.

import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# Import the package from this checkout, so the code that runs is the code
# whose files the train jobs declare as inputs. The jobs run `python -m
# mtlrepro` in the working directory (the checkout), which puts it first on
# sys.path in the same way.
sys.path.insert(0, workflow.basedir)

from mtlrepro.config import check_config, load_yaml
from mtlrepro.errors import ConfigError
from mtlrepro.io import canonical_json
from mtlrepro.studies import (
    FIGURE_KINDS,
    TABLE_KINDS,
    data_file,
    dataset_sources,
    run_sources,
    runs_by_directory,
    twin_kind,
)

# A --configfile replaces the embedded default rather than merging into it:
# `snakemake --configfile config/paper.yaml` runs exactly that file's studies.
if workflow.overwrite_configfiles:
    config.clear()
    config.update(workflow.config_settings.overwrite_config)

try:
    # Snakemake's own YAML loader keeps the last of two equal keys, so a study
    # written twice would vanish silently: read the config files strictly too.
    for path in workflow.overwrite_configfiles or workflow.configfiles:
        load_yaml(path)
    STUDIES = check_config(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
except ConfigError as err:
    raise WorkflowError(f"config error: {err}") from None

RUNS = runs_by_directory(STUDIES)
FLATNESS_MODULE = Path(workflow.basedir) / "mtlrepro" / "analysis" / "flatness.py"
REFERENCE_FILES = sorted(
    str(p) for p in Path(workflow.basedir, "reference").rglob("*.csv")
)
DATA_OPTIONS = {run.dataset: run.data_options for run in RUNS.values()}
DEVICE = config.get("device", "auto")


def data_location(dataset):
    """The prepare job's raw-data argument: the user's `datasets.<name>.path`, else a download directory."""
    path = config.get("datasets", {}).get(dataset, {}).get("path")
    if path is not None:
        return f"--path {shlex.quote(str(path))}"
    return f"--raw resources/raw/{dataset}"


TRAIN_RESOURCES = config.get("resources", {})
# The resources of a dataset's jobs: its `resources:` entry over the top-level one.
TRAIN_DEFAULTS = {"threads": 1, "mem_mb": 2000, "runtime": 60, "gpu": 0}
TRAIN_JOB = {
    dataset: {
        **TRAIN_DEFAULTS,
        **TRAIN_RESOURCES,
        **(((config.get("datasets") or {}).get(dataset) or {}).get("resources") or {}),
    }
    for dataset in {run.dataset for run in RUNS.values()}
}
FLATNESS = config.get("analysis", {}).get("flatness", {})


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    arch=r"[a-z0-9_]+",
    method=r"[a-z][A-Za-z0-9_-]*(\+[a-z][A-Za-z0-9_-]*)?",
    noise=r"[A-Za-z0-9_.]+",
    seed=r"\d+",
    study=r"[A-Za-z0-9_-]+",
    paper=r"rw|excess_mtl",
    kind="|".join(dict.fromkeys(TABLE_KINDS + FIGURE_KINDS)),


def requested_gpu_model(wildcards):
    """The GPU type of a dataset's jobs, only for those that take a GPU (None: not requested)."""
    job = TRAIN_JOB[wildcards.dataset]
    return job.get("gpu_model") if job["gpu"] else None


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


def analysis_file(run, name):
    """An analysis of one run: results/analysis/<the run's path>/<name>.json."""
    analysis_dir = run.directory.replace("results/runs/", "results/analysis/", 1)
    return str(Path(analysis_dir, f"{name}.json"))


def study_inputs(wildcards):
    """What a study's output reads: the runs' records, or their flatness analyses."""
    if wildcards.kind == "flatness":
        return [analysis_file(run, "flatness") for run in STUDIES[wildcards.study].runs]
    return study_metrics(wildcards)


def study_json(wildcards):
    """The study's description, for the report commands."""
    return canonical_json(STUDIES[wildcards.study].to_json())


def flatness_sources(wildcards):
    """Code a flatness analysis depends on: the analysis and the run's model code."""
    run = run_of(wildcards)
    return sorted(
        {str(FLATNESS_MODULE), *(s for s in run_sources(run) if "/weighting/" not in s)}
    )


def study_targets(study):
    """The table and figure files a study's outputs produce."""
    targets = []
    for kind in study.kinds():
        if kind in TABLE_KINDS:
            base = f"results/tables/{study.paper}/{study.name}/{kind}"
            targets += [f"{base}.csv", f"{base}.md", f"{base}.tex"]
        if kind in FIGURE_KINDS:
            base = f"results/figures/{study.paper}/{study.name}/{kind}"
            targets += [f"{base}.png", f"{base}.pdf"]
        if study.published and kind == twin_kind(study.published):
            base = f"results/tables/{study.paper}/{study.name}/{kind}_vs_published"
            targets += [f"{base}.csv", f"{base}.md", f"{base}.tex"]
    return targets


def all_analyses(wildcards=None):
    """The flatness analyses of every study that shows flatness."""
    found = {
        analysis_file(run, "flatness")
        for study in STUDIES.values()
        if "flatness" in study.kinds()
        for run in study.runs
    }
    return sorted(found)


def all_targets():
    """Every run record and analysis, the outputs of every study, and the scorecard.

    The run records are targets themselves: Snakemake does not rebuild a missing
    input of an up-to-date output (that is how temp() files work), so a record
    lost to a failed rerun would otherwise stay missing behind the old tables.
    As targets they are rebuilt by a plain rerun, and the tables follow.
    """
    records = sorted(run.metrics_file for run in RUNS.values())
    targets = [target for study in STUDIES.values() for target in study_targets(study)]
    return records + all_analyses() + targets + ["results/scorecard.md"]
