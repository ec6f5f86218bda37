"""Bad configs stop with one message naming the key and the value."""

import copy
import subprocess
import sys

import pytest
import yaml

from mtlrepro.cli import main
from mtlrepro.config import check_config, load_yaml, parse_yaml
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
    # numbers the schema lets through (every comparison with NaN is false) but torch cannot train with
    "lr NaN": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(lr=float("nan")),
        "datasets.multi_digits.training.lr: nan is not a finite number",
    ),
    "lr infinite": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(lr=float("inf")),
        "datasets.multi_digits.training.lr: inf is not a finite number",
    ),
    "lr an integer too large for a float": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(lr=10**400),
        "datasets.multi_digits.training.lr: 1000",
    ),
    "lr zero": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(lr=0),
        "datasets.multi_digits.training.lr: 0.0 must be a positive finite number",
    ),
    "negative momentum": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(momentum=-0.5),
        "datasets.multi_digits.training.momentum: -0.5 must be in [0, 1)",
    ),
    "momentum of one": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(momentum=1),
        "datasets.multi_digits.training.momentum: 1.0 must be in [0, 1)",
    ),
    "NaN momentum": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(momentum=float("nan")),
        "datasets.multi_digits.training.momentum: nan is not a finite number",
    ),
    "negative weight decay": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(weight_decay=-1e-4),
        "datasets.multi_digits.training.weight_decay: -0.0001 must be a finite number >= 0",
    ),
    "zero epochs": (
        lambda c: c["datasets"]["multi_digits"]["training"].update(epochs=0),
        "datasets.multi_digits.training.epochs: 0 must be a positive integer",
    ),
    "NaN in a method option": (
        lambda c: (c["methods"].update(cagrad={"c": float("nan")}), c["studies"]["small"]["methods"].append("cagrad")),
        "methods.cagrad.c: nan is not a finite number",
    ),
    "infinity in a dataset option": (
        lambda c: c["datasets"]["multi_digits"]["options"].update(val_fraction=float("-inf")),
        "datasets.multi_digits.options.val_fraction: -inf is not a finite number",
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
    studies = check_config(load_yaml(REPO / "config" / name), SCHEMA)
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


# --------------------------------------------------------------------------- reading the config file

DUPLICATE_STUDY = """\
datasets:
  multi_digits:
    options: {n_train: 512, n_val: 256, n_test: 256}
studies:
  rw_table1:
    dataset: multi_digits
    methods: [ew, rlw]
    seeds: [0]
  rw_table1:
    dataset: multi_digits
    methods: [ew]
    seeds: [0, 1]
"""


def check_config_cli(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr of ``mtlrepro check-config`` (the error, if any, must be one line)."""
    status = main(["check-config", *args])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return status, err


def test_a_study_written_twice_is_refused_naming_file_key_and_line(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(DUPLICATE_STUDY)
    status, err = check_config_cli(capsys, str(path))
    assert status == 2
    assert err == (
        f"mtlrepro: error: config file {path}: duplicate key 'rw_table1' at line 9 "
        "(the first, at line 5, would be silently dropped)"
    )


def test_duplicate_keys_are_refused_at_any_depth_but_merge_keys_may_override():
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' at line 4 \(the first, at line 3,"):
        parse_yaml("datasets:\n  multi_digits:\n    training: {lr: 0.1,\n      lr: 0.2}\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"duplicate key 0 at line 1"):
        parse_yaml("seeds: {0: a, 0: b}\n", "c.yaml")
    merged = parse_yaml("base: &b {lr: 0.1, epochs: 2}\ntraining:\n  <<: *b\n  lr: 0.2\n", "c.yaml")
    assert merged["training"] == {"lr": 0.2, "epochs": 2}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"# only a comment\n\n   # and another\n", "is empty"),
        (b"---\n...\n", "is empty"),
        (b"- ew\n- rlw\n", ": the top level is a list, not a mapping of config keys"),
        (b"just text\n", ": the top level is a string, not a mapping of config keys"),
        (b"studies: [ew\n", "is not valid YAML: "),
        (b"studies: {}\n---\nstudies: {}\n", "is not valid YAML: "),
        (b"studies:\n  caf\xe9: {}\n", "is not UTF-8 text (byte 0xe9 at offset 14)"),
    ],
    ids=["empty", "comments only", "empty document", "list", "scalar", "bad syntax", "two documents", "latin-1"],
)
def test_unusable_config_files_are_named_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    status, err = check_config_cli(capsys, str(path))
    assert status == 2
    assert err.startswith(f"mtlrepro: error: config file {path}") and message in err


def test_missing_config_file_and_directory_are_named(tmp_path, capsys):
    status, err = check_config_cli(capsys, str(tmp_path / "nope.yaml"))
    assert status == 2 and err == f"mtlrepro: error: config file {tmp_path / 'nope.yaml'} does not exist"
    status, err = check_config_cli(capsys, str(tmp_path))
    assert status == 2 and f"config file {tmp_path} is a directory" in err


def test_nan_written_in_yaml_is_refused_by_check_config(tmp_path, capsys):
    config = small_config()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config).replace("lr: 0.05", "lr: .nan"))
    status, err = check_config_cli(capsys, str(path), "--schema", str(SCHEMA))
    assert status == 2
    assert err == "mtlrepro: error: datasets.multi_digits.training.lr: nan is not a finite number"


def check_config_process(args: list[str], cwd, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """``python -m mtlrepro check-config ARGS`` as a user runs it, from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "mtlrepro", "check-config", *args],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        timeout=120,
    )


def test_config_read_from_standard_input_as_dash(tmp_path):
    bad = check_config_process(["-"], tmp_path, stdin=DUPLICATE_STUDY.encode())
    assert bad.returncode == 2 and not bad.stdout
    assert bad.stderr.decode() == (
        "mtlrepro: error: config file <stdin>: duplicate key 'rw_table1' at line 9 "
        "(the first, at line 5, would be silently dropped)\n"
    )


def test_config_read_from_a_pipe_path(tmp_path):
    shipped = (REPO / "config" / "config.yaml").read_bytes()
    done = check_config_process(["/dev/stdin"], tmp_path, stdin=shipped)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip().endswith("config OK")


def test_check_config_from_another_working_directory(tmp_path):
    done = check_config_process([str(REPO / "config" / "config.yaml")], tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip().endswith("config OK") and not done.stderr
