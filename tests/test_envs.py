"""The conda environment of the rules agrees with the package's own requirements.

`snakemake --use-conda` runs every rule in ``envs/mtlrepro.yaml``; ``pip install``
takes ``pyproject.toml``. If the two drift apart, the same workflow computes
with different libraries on a cluster than on a laptop. A dry run with
``--use-conda`` needs a conda executable (Snakemake asks it for the platform);
where none is installed that one test is skipped, the others always run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import REPO

ENV_FILE = REPO / "envs" / "mtlrepro.yaml"

#: conda-forge name of a PyPI distribution, where they differ
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}

#: requirements of the package that the rules' environment need not hold, and why
NOT_IN_ENV = {"snakemake": "the rules run inside Snakemake's jobs; the environment never imports it"}


def conda_spec(entry: str) -> tuple[str, SpecifierSet]:
    """``"pytorch>=2.2"`` -> (``"pytorch"``, ``>=2.2``); a bare name has an empty specifier."""
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", entry.strip())
    assert match, f"cannot read the conda dependency {entry!r}"
    name, version = match.groups()
    version = version.replace(" ", "")
    if re.fullmatch(r"=[^=].*", version):  # conda's fuzzy "=3.11" means "3.11.*"
        version = f"=={version[1:]}.*"
    return name.lower(), SpecifierSet(version)


def environment_requirements() -> dict[str, SpecifierSet]:
    """Every package of the environment file (conda and pip parts), by its conda/PyPI name."""
    env = yaml.safe_load(ENV_FILE.read_text())
    found: dict[str, SpecifierSet] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for pip_entry in entry["pip"]:
                requirement = Requirement(pip_entry)
                found[requirement.name.lower()] = requirement.specifier
        else:
            name, spec = conda_spec(entry)
            found[name] = spec
    return found


def package_requirements() -> dict[str, SpecifierSet]:
    """The runtime requirements of ``pyproject.toml``, by their conda name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = requirement.name.lower()
        if name not in NOT_IN_ENV:
            found[CONDA_NAMES.get(name, name)] = requirement.specifier
    return found


def test_every_requirement_of_the_package_is_in_the_environment_with_the_same_pin():
    env, package = environment_requirements(), package_requirements()
    missing = sorted(set(package) - set(env))
    assert not missing, f"{ENV_FILE.name} lacks {missing}"
    differ = {name: (str(package[name]), str(env[name])) for name in package if package[name] != env[name]}
    assert not differ, f"pins differ (pyproject, environment): {differ}"


def test_the_environment_holds_nothing_the_package_does_not_declare():
    env = environment_requirements()
    del env["python"], env["pip"]  # the interpreter and the installer of the pip part
    extra = sorted(set(env) - set(package_requirements()))
    assert not extra, f"{ENV_FILE.name} installs {extra}, which pyproject.toml does not require"


def test_the_environment_python_satisfies_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    python = environment_requirements()["python"]
    (pin,) = python
    assert SpecifierSet(project["requires-python"]).contains(pin.version.rstrip(".*"))


def rule_blocks() -> dict[str, str]:
    """Rule name -> the text of its block, for every rule of every rule file and the Snakefile."""
    blocks = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            blocks[name] = body.split("\n\n\n")[0]
    return blocks


def test_every_rule_that_runs_a_command_declares_the_environment():
    blocks = rule_blocks()
    assert len(blocks) >= 8
    for name, body in blocks.items():
        if "shell:" not in body and "script:" not in body:
            continue  # a target-only rule (all) runs nothing
        match = re.search(r"conda:\n\s+\"([^\"]+)\"", body)
        assert match, f"rule {name} has no conda: directive"
        assert (REPO / "workflow" / "rules" / match.group(1)).resolve() == ENV_FILE.resolve(), name


def test_a_dry_run_with_use_conda_builds_the_dag(tmp_path):
    if shutil.which("conda") is None and shutil.which("mamba") is None:
        pytest.skip("no conda executable here (no conda channel is reachable); the pins are checked above")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--use-conda", "--cores", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
