"""The training run: its record, determinism, resumption and failure on a non-finite loss."""

import json

import pytest

from mtlrepro.cli import main
from mtlrepro.data import prepare
from mtlrepro.errors import TrainingError
from mtlrepro.run import CHECKPOINT_FILE, METRICS_FILE, code_files, file_sha256, run_provenance
from mtlrepro.seeding import derive_seed
from mtlrepro.train import train

from conftest import SMALL_DATA, spec_for


def numbers(record: dict) -> dict:
    """The parts of a run record that must be reproducible (no timings, paths or versions)."""
    return {key: record[key] for key in ("epochs", "selection", "final", "spec_hash")} | {
        "epochs": [{k: v for k, v in e.items() if k != "seconds"} for e in record["epochs"]]
    }


def test_run_record_holds_the_contract(small_data, tmp_path):
    spec = spec_for("rlw+rgw")
    result = train(spec, small_data, tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["format"] == "mtlrepro.run/2"
    assert on_disk["spec"] == spec.to_json()
    assert on_disk["run"]["method"] == "rlw+rgw" and on_disk["run"]["noise"] == "clean"
    assert [e["epoch"] for e in on_disk["epochs"]] == [1, 2]
    epoch = on_disk["epochs"][0]
    assert set(epoch["train_loss"]) == {"TL", "BR"}
    assert sum(epoch["loss_weights"].values()) == pytest.approx(1.0)
    assert sum(epoch["grad_weights"].values()) == pytest.approx(1.0)
    assert 0 <= epoch["test"]["TL"]["acc"] <= 100
    assert on_disk["selection"]["rule"] == "best_val"
    chosen = on_disk["epochs"][on_disk["selection"]["epoch"] - 1]
    assert on_disk["final"] == {"val": chosen["val"], "test": chosen["test"]}
    assert on_disk["timing"]["iterations"] == 2 * 4 and on_disk["timing"]["ms_per_iter"] > 0
    assert on_disk["memory"]["peak_rss_mb"] > 0
    assert on_disk["environment"]["packages"]["torch"]
    assert on_disk["dataset"]["stand_in"]


def test_same_seed_gives_identical_numbers_and_another_seed_does_not(small_data, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(spec_for("rlw+rgw", seed=seed), small_data, tmp_path / name, progress=False)
    a, b, c = (json.loads((tmp_path / name / METRICS_FILE).read_text()) for name in "abc")
    assert numbers(a) == numbers(b)
    assert numbers(a)["epochs"] != numbers(c)["epochs"]


def test_killed_run_resumes_to_the_same_numbers(small_data, tmp_path, monkeypatch):
    spec = spec_for("rgw")
    straight = train(spec, small_data, tmp_path / "straight", progress=False)

    def die_after_first_epoch(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, small_data, tmp_path / "resumed", progress=False, on_checkpoint=die_after_first_epoch)
    assert (tmp_path / "resumed" / CHECKPOINT_FILE).is_file()
    assert not (tmp_path / "resumed" / METRICS_FILE).exists()
    seen = []
    resumed = train(spec, small_data, tmp_path / "resumed", progress=False, on_checkpoint=seen.append)
    assert seen == [2]  # epoch 1 came from the checkpoint
    assert resumed["provenance"]["resumed_from_epoch"] == 1
    assert straight["provenance"]["resumed_from_epoch"] == 0
    assert numbers(resumed) == numbers(straight)


def test_checkpoint_of_another_spec_is_ignored(small_data, tmp_path):
    train(spec_for("ew", lr=0.01), small_data, tmp_path / "run", progress=False)
    seen = []
    train(spec_for("ew", lr=0.02), small_data, tmp_path / "run", progress=False, on_checkpoint=seen.append)
    assert seen == [1, 2]


def test_checkpoint_made_from_other_data_is_ignored(small_data, tmp_path):
    # A rerun caused by new data (or new code) must train from scratch, not resume a finished run.
    spec = spec_for("ew")
    train(spec, small_data, tmp_path / "run", progress=False)
    other_data = prepare("multi_digits", {**SMALL_DATA, "generation_seed": 1}, tmp_path / "other.pt")
    seen = []
    again = train(spec, other_data, tmp_path / "run", progress=False, on_checkpoint=seen.append)
    assert seen == [1, 2]
    assert again["provenance"]["resumed_from_epoch"] == 0


def test_provenance_hashes_the_code_the_run_depends_on(small_data, tmp_path):
    spec = spec_for("rlw+rgw")
    files = {p.name for p in code_files(spec)}
    assert {
        "train.py",
        "rlw.py",
        "rgw.py",
        "_random_weights.py",
        "step.py",
        "run.py",
        "hps.py",
        "lenet.py",
        "seeding.py",
    } <= files
    assert "ew.py" not in files
    provenance = run_provenance(spec, small_data)
    assert provenance["code_sha256"]["weighting/rlw.py"] == file_sha256(
        next(p for p in code_files(spec) if p.name == "rlw.py")
    )
    assert provenance["data_sha256"] == file_sha256(small_data)


def test_label_noise_is_recorded_and_changes_training(small_data, tmp_path):
    clean = train(spec_for("ew"), small_data, tmp_path / "clean", progress=False)
    noisy = train(spec_for("ew", noise=[{"BR": 0.5}]), small_data, tmp_path / "noisy", progress=False)
    assert noisy["run"]["noise"] == "BR0.5"
    assert noisy["dataset"]["noise"]["BR"]["selected"] == 256
    assert noisy["epochs"][0]["train_loss"]["BR"] != clean["epochs"][0]["train_loss"]["BR"]


def test_non_finite_loss_stops_with_a_clear_message_and_no_record(small_data, tmp_path, capsys):
    spec = spec_for("ew", lr=1e12)
    with pytest.raises(TrainingError, match=r"non-finite training loss for task\(s\) .* in epoch 1"):
        train(spec, small_data, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / METRICS_FILE).exists()

    code = main(
        ["train", "--spec", json.dumps(spec.to_json()), "--data", str(small_data), "--out", str(tmp_path / "cli")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "\nmtlrepro: error: non-finite training loss" in err and "Traceback" not in err


def test_missing_data_cache_names_the_file(tmp_path, capsys):
    code = main(
        [
            "train",
            "--spec",
            json.dumps(spec_for("ew").to_json()),
            "--data",
            str(tmp_path / "nope.pt"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    assert "nope.pt does not exist" in capsys.readouterr().err


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "init") == derive_seed(0, "init")
    assert derive_seed(0, "split/val", bits=32) < 2**32
    assert len({derive_seed(s, p) for s in range(3) for p in ("init", "loss", "grad")}) == 9
