"""Bad configs stop with one message naming the key and the value."""

import copy

import pytest
import yaml

from mtlrepro.cli import main
from mtlrepro.config import check_config
from mtlrepro.errors import ConfigError

from conftest import REPO, small_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def broken(edit) -> dict:
    config = copy.deepcopy(small_config())
    edit(config)
    return config


BAD_CONFIGS = {
    "unknown method": (
        lambda c: c["studies"]["small"]["methods"].append("pcgradd"),
        "studies.small.methods[4]: unknown method 'pcgradd'",
    ),
    "unknown dataset": (
        lambda c: c["studies"]["small"].update(dataset="multi_mnistt"),
        "studies.small.dataset: dataset 'multi_mnistt' is unknown",
    ),
    "seed not an integer": (
        lambda c: c["studies"]["small"].update(seeds=[0, "one"]),
        "studies.small.seeds[1]: 'one' is not of type 'integer'",
    ),
    "missing key": (
        lambda c: c["studies"]["small"].pop("seeds"),
        "studies.small: 'seeds' is a required property",
    ),
    "unknown top-level key": (
        lambda c: c.update(studdies={}),
        "'studdies' was unexpected",
    ),
    "noise outside [0, 1]": (
        lambda c: c["studies"]["small"].update(noise=[{"TL": 1.5}]),
        r"studies.small.noise[0].TL: 1.5 is outside [0, 1]",
    ),
    "noise on an unknown task": (
        lambda c: c["studies"]["small"].update(noise=[{"XX": 0.2}]),
        "studies.small.noise[0].XX: unknown task",
    ),
    "bad training option": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(lr="fast"),
        "datasets.multi_digits.training.lr: 'fast' is not a number",
    ),
    "unknown training option": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(epohcs=3),
        "datasets.multi_digits.training.epohcs: unknown option",
    ),
    "bad method option": (
        lambda c: c["methods"]["rlw"].update(distribution="gaussian"),
        "methods.rlw.distribution: 'gaussian' is not one of",
    ),
    "bad dataset option": (
        lambda c: c["datasets"]["multi_digits"]["options"].update(n_train=-3),
        "datasets.multi_digits.options",
    ),
    "unknown dataset section": (
        lambda c: c["datasets"].update(cityscapess={}),
        "dataset 'cityscapess' is unknown",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_names_key_and_value(case):
    edit, message = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as caught:
        check_config(broken(edit), SCHEMA)
    assert message in str(caught.value)


def test_default_configs_are_valid():
    studies = check_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), SCHEMA)
    assert studies, "the embedded default declares at least one study"
    for study in studies.values():
        assert {r.method for r in study.runs} >= {"ew"}


def test_run_directory_is_a_pure_function_of_the_run():
    clean = check_config(small_config(seeds=(0, 1)), SCHEMA)["small"].runs
    noisy = check_config(small_config(seeds=(0, 1), noise=[{"TL": 0.4}]), SCHEMA)["small"].runs
    dirs = [r.directory for r in clean + noisy]
    assert len(dirs) == len(set(dirs)) == 4 * 2 * 2
    assert "results/runs/multi_digits/hps/rlw+rgw/TL0.4/seed1" in dirs
    assert "results/runs/multi_digits/hps/ew/clean/seed0" in dirs
    # the spec, not the directory, carries the hyperparameters
    assert clean[0].training.epochs == 2


def test_cli_check_config_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(broken(BAD_CONFIGS["unknown method"][0])))
    assert main(["check-config", str(path), "--schema", str(SCHEMA)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pcgradd" in err and err.startswith("mtlrepro: error:")
