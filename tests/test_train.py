"""The training run: its record, determinism, resumption and failure on a non-finite loss."""

import json

import pytest
import torch

from mtlrepro.cli import main
from mtlrepro.data import prepare, splits_sha256
from mtlrepro.errors import TrainingError
from mtlrepro.io import save_torch_atomic
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
    assert (resumed["provenance"]["resumed_from_epoch"], resumed["provenance"]["resumed_from_step"]) == (1, 0)
    assert (straight["provenance"]["resumed_from_epoch"], straight["provenance"]["resumed_from_step"]) == (0, 0)
    assert numbers(resumed) == numbers(straight)


def test_checkpoint_of_another_spec_is_ignored(small_data, tmp_path, capsys):
    train(spec_for("ew", lr=0.01), small_data, tmp_path / "run", progress=False)
    assert capsys.readouterr().err == ""
    seen = []
    train(spec_for("ew", lr=0.02), small_data, tmp_path / "run", progress=False, on_checkpoint=seen.append)
    assert seen == [1, 2]
    assert capsys.readouterr().err == (
        f"mtlrepro: note: checkpoint {tmp_path / 'run' / CHECKPOINT_FILE} was written under another spec, data or "
        "code; training from scratch\n"
    )


def test_checkpoint_made_from_other_data_is_ignored(small_data, tmp_path):
    # A rerun caused by new data (or new code) must train from scratch, not resume a finished run.
    spec = spec_for("ew")
    train(spec, small_data, tmp_path / "run", progress=False)
    # the same options over other source data (say, a new release of the raw files): other bytes
    payload = torch.load(small_data, weights_only=True)
    payload["splits"]["train"]["y"] = [y.flip(0) for y in payload["splits"]["train"]["y"]]
    payload["splits_sha256"] = splits_sha256(payload["splits"])
    other_data = tmp_path / "other.pt"
    save_torch_atomic(other_data, payload)
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


def test_selection_follows_validation_when_test_disagrees(small_data, tmp_path, monkeypatch):
    # Scripted evaluations: validation peaks at epoch 2, test at epoch 3; a rule that looked at test would pick 3.
    import torch

    from mtlrepro import train as train_module

    val = iter([50.0, 70.0, 60.0])
    test = iter([90.0, 40.0, 95.0])

    def scripted(model, data, split, device, batch_size):
        value = next(val) if split == "val" else next(test)
        return {task.name: {"acc": value} for task in data.tasks}

    monkeypatch.setattr(train_module, "evaluate", scripted)
    record = train(spec_for("ew", epochs=3), small_data, tmp_path / "run", progress=False)
    assert record["selection"] == {
        "rule": "best_val",
        "description": "highest Delta_p of the validation metrics against the first epoch's",
        "epoch": 2,
    }
    assert record["final"]["test"]["TL"]["acc"] == 40.0
    selected = torch.load(tmp_path / "run" / "selected.pt", weights_only=False)
    last = torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=False)["model"]
    assert selected["epoch"] == 2
    assert any(not torch.equal(selected["model"][k], last[k]) for k in last)


def test_selected_weights_survive_a_resume(small_data, tmp_path):
    import torch

    spec = spec_for("rlw", epochs=2)
    straight = train(spec, small_data, tmp_path / "straight", progress=False)

    def die_after_first_epoch(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, small_data, tmp_path / "resumed", progress=False, on_checkpoint=die_after_first_epoch)
    train(spec, small_data, tmp_path / "resumed", progress=False)
    a = torch.load(tmp_path / "straight" / "selected.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "selected.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == straight["selection"]["epoch"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_cache_built_with_other_options_is_refused_naming_it(tmp_path, capsys):
    # the spec says SMALL_DATA's n_train; the cache in its place was built from fewer pairs
    other = prepare("multi_digits", {**SMALL_DATA, "n_train": SMALL_DATA["n_train"] // 2}, tmp_path / "md.pt")
    spec = spec_for("ew")
    args = ["train", "--spec", json.dumps(spec.to_json()), "--data", str(other), "--out", str(tmp_path / "run")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mtlrepro: error: data cache {other} was built with options")
    assert f"n_train: {SMALL_DATA['n_train'] // 2}" in err and f"n_train: {SMALL_DATA['n_train']}" in err
    assert "\n" not in err and not (tmp_path / "run").exists()
