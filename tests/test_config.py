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


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    studies = check_config(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA)
    assert studies, "a shipped config declares at least one study"
    for study in studies.values():
        assert {r.method for r in study.runs} >= {"ew"}
        assert study.reproduces and study.paper in ("rw", "excess_mtl")


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


def test_a_study_over_two_noise_levels_and_two_architectures_expands_to_exactly_its_runs(monkeypatch):
    from mtlrepro import archs
    from mtlrepro.archs.hps import HPS

    class OtherHPS(HPS):
        """A second architecture for the expansion (the real ones arrive with the models issue)."""

    monkeypatch.setitem(archs.ARCHS, "other", OtherHPS)
    config = small_config(methods=("ew", "rlw"), seeds=(0, 1), noise=[{}, {"BR": 0.4}])
    config["studies"]["small"].update(archs=["hps", "other"], outputs=["architecture_grid", "noise_sweep"])
    study = check_config(config, SCHEMA)["small"]
    expected = {
        f"results/runs/multi_digits/{arch}/{method}/{noise}/seed{seed}"
        for arch in ("hps", "other")
        for noise in ("clean", "BR0.4")
        for method in ("ew", "rlw")
        for seed in (0, 1)
    }
    order = [r.directory.split("/", 3)[3] for r in study.runs[:5]] + [study.runs[8].directory.split("/", 3)[3]]
    assert order == [
        "hps/ew/clean/seed0",
        "hps/ew/clean/seed1",
        "hps/rlw/clean/seed0",
        "hps/rlw/clean/seed1",
        "hps/ew/BR0.4/seed0",
        "other/ew/clean/seed0",
    ]
    assert {r.directory for r in study.runs} == expected and len(study.runs) == 16
    assert study.archs == ("hps", "other") and study.kinds() == ["architecture_grid", "noise_sweep"]


def test_variants_add_one_method_entry_per_value():
    config = small_config(methods=("ew", "rlw"))
    config["studies"]["small"]["variants"] = {"rlw": {"distribution": ["dirichlet", "c_bernoulli"]}}
    study = check_config(config, SCHEMA)["small"]
    assert [r.method for r in study.runs] == ["ew", "rlw", "rlw-dirichlet", "rlw-c_bernoulli"]
    assert study.runs[3].loss.options["distribution"] == "c_bernoulli" and study.runs[3].loss.weighting == "rlw"
    assert study.to_json()["methods"] == ["ew", "rlw", "rlw-dirichlet", "rlw-c_bernoulli"]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"outputs": ["noise_sweep"]}, "noise_sweep needs at least two noise levels"),
        ({"outputs": ["architecture_grid"]}, "architecture_grid needs at least two architectures"),
        ({"outputs": ["method_table", "method_table"]}, "listed twice"),
        ({"outputs": ["pie_chart"]}, "outputs[0]"),
        ({"paper": "other"}, "paper: 'other' is not one of"),
        ({"variants": {"rlw": {"distribution": ["gaussian"]}}}, "methods.rlw-gaussian.distribution: 'gaussian'"),
        ({"outputs": ["combination_grid"], "baseline": "uw"}, "baseline: 'uw' is not one of the study's methods"),
        ({"published": "rw/table4_combinations"}, "has the shape of a combination_grid, which studies.small.outputs"),
    ],
)
def test_bad_study_keys_name_the_key(update, message):
    config = small_config()
    config["studies"]["small"].update(update)
    with pytest.raises(ConfigError) as caught:
        check_config(config, SCHEMA)
    assert message in str(caught.value)
