"""Multi-input training: one batch per task per step, an epoch as long as the longest task, seeded cycling.

The batches of an epoch are a pure function of (seed, epoch, step), so a run
resumed at any step draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import signal
from collections import Counter

import pytest
import torch

from mtlrepro.data import Split, load, prepare, resolve_options
from mtlrepro.interrupt import Interrupted
from mtlrepro.step import Stepper
from mtlrepro.studies import expand
from mtlrepro.tasks import Task
from mtlrepro.train import EpochBatches, Part, evaluate, prepare_run_data, stack_tasks, train
from mtlrepro.weighting import registry

TASKS = (Task("long", n_classes=3), Task("short", n_classes=3))


def part(n: int, offset: int) -> Part:
    """A part whose inputs are their own ids (offset + position), so a batch tells which examples it holds."""
    ids = torch.arange(offset, offset + n)
    split = Split(x=ids.reshape(n, 1).float(), y=(ids % 3,))
    return Part(split, split.y, torch.arange(n))


def ids_of(batch, t: int) -> list[int]:
    rows = batch.rows[t]
    return batch.x[rows, 0].long().tolist()


def test_an_epoch_is_the_longest_task_and_shorter_tasks_cycle():
    parts = (part(10, 0), part(4, 100))
    epoch = EpochBatches(parts, TASKS, batch_size=3, seed=0, epoch=1)
    assert len(epoch) == 4  # ceil(10 / 3) batches of the long task; the short one has 2 per pass
    long_seen, short_seen = [], []
    for k in range(len(epoch)):
        batch = epoch[k]
        assert batch.rows == (slice(0, len(ids_of(batch, 0))), slice(len(ids_of(batch, 0)), len(batch.x)))
        long_seen += ids_of(batch, 0)
        short_seen += ids_of(batch, 1)
        # each task's targets stay with its inputs
        assert batch.y[0].tolist() == [i % 3 for i in ids_of(batch, 0)]
        assert batch.y[1].tolist() == [i % 3 for i in ids_of(batch, 1)]
    assert sorted(long_seen) == list(range(10))  # one pass over the long task
    assert Counter(short_seen) == {i: 2 for i in range(100, 104)}  # two full passes over the short one
    first_pass, second_pass = short_seen[:4], short_seen[4:]
    assert sorted(first_pass) == sorted(second_pass) == list(range(100, 104))


def test_batches_are_a_pure_function_of_seed_epoch_and_step():
    parts = (part(10, 0), part(4, 100))
    one = EpochBatches(parts, TASKS, batch_size=3, seed=5, epoch=2)
    again = EpochBatches(parts, TASKS, batch_size=3, seed=5, epoch=2)
    # a resumed run asks for step 3 first: it gets what an uninterrupted run gets at step 3
    assert torch.equal(again[3].x, one[3].x)
    for k in range(len(one)):
        assert torch.equal(one[k].x, again[k].x) and one[k].rows == again[k].rows
    order = [ids_of(one[k], 0) for k in range(len(one))]
    for other in (EpochBatches(parts, TASKS, 3, seed=5, epoch=3), EpochBatches(parts, TASKS, 3, seed=6, epoch=2)):
        assert [ids_of(other[k], 0) for k in range(len(other))] != order


def test_single_input_is_one_seeded_pass_without_rows():
    single = part(7, 0)
    epoch = EpochBatches((single,), TASKS[:1], batch_size=3, seed=0, epoch=1)
    assert len(epoch) == 3
    seen = [int(i) for k in range(3) for i in epoch[k].x[:, 0].tolist()]
    assert sorted(seen) == list(range(7)) and all(epoch[k].rows is None for k in range(3))


def test_parts_read_their_rows_of_the_split_without_copying():
    ids = torch.arange(20)
    split = Split(x=ids.reshape(20, 1), y=(ids * 10,))
    p = Part(split, split.y, torch.tensor([3, 5, 7]))
    x, (y,) = p.take(torch.tensor([2, 0]))
    assert x[:, 0].tolist() == [7, 3] and y.tolist() == [70, 30]
    assert len(p) == 3


def test_stack_tasks_marks_each_tasks_rows():
    batch = stack_tasks([torch.zeros(2, 1), torch.ones(3, 1)], [torch.zeros(2), torch.ones(3)])
    assert batch.rows == (slice(0, 2), slice(2, 5)) and batch.x.shape == (5, 1)
    alone = stack_tasks([torch.zeros(2, 1)], [torch.zeros(2), torch.ones(2)])
    assert alone.rows is None and len(alone.y) == 2


@pytest.mark.parametrize("sizes", [(5, 5), (9, 2), (2, 9)])
def test_every_task_gets_a_batch_at_every_step(sizes):
    parts = (part(sizes[0], 0), part(sizes[1], 100))
    epoch = EpochBatches(parts, TASKS, batch_size=4, seed=1, epoch=1)
    assert len(epoch) == max(-(-n // 4) for n in sizes)
    for k in range(len(epoch)):
        assert ids_of(epoch[k], 0) and ids_of(epoch[k], 1)


# --------------------------------------------------------------------------- whole runs on a multi-input dataset

DOMAINS = {"size": 16}
"""digit_domains at 16x16: 360, 359 and 357 training images; batches of 119 give 4, 4 and 3 steps per pass, so
the third task starts its second seeded cycle at the last step of every epoch."""


@pytest.fixture(scope="module")
def domain_data(tmp_path_factory):
    return prepare("digit_domains", DOMAINS, tmp_path_factory.mktemp("domains") / "digit_domains.pt")


def domain_spec(method: str, seed: int = 0, noise: dict | None = None, **training):
    study = {"dataset": "digit_domains", "methods": [method], "seeds": [seed], "noise": [noise or {}]}
    settings = {"epochs": 2, "batch_size": 119, "lr": 0.05, **training}
    config = {
        "datasets": {"digit_domains": {"options": DOMAINS, "training": settings}},
        "methods": {"ew": {}},
        "studies": {"s": study},
    }
    (run,) = expand(config)["s"].runs
    return run


@pytest.mark.parametrize("method", sorted(registry()))
def test_every_method_trains_on_a_multi_input_problem_and_resumes_exactly(method, domain_data, tmp_path, monkeypatch):
    # SIGTERM after step 2 of each epoch (the third task has not cycled yet) and a rerun to the end: the resumed
    # run draws every batch, cycle included, and ends with the numbers of an uninterrupted one
    spec = domain_spec(method)
    straight = train(spec, domain_data, tmp_path / "straight", progress=False, device="cpu")
    held_out = "held_out" in straight["dataset"]["sizes"]  # MOML trains on 80% of each task: 3 steps per epoch
    steps = 3 if held_out else 4
    assert straight["timing"]["iterations"] == 2 * steps
    assert straight["dataset"]["sizes"]["train"] == {"clean": 360, "textured": 359, "distorted": 357}
    real_step = Stepper.step

    def step_then_sigterm(self, x, y, epoch=1, iteration=0, rows=None):
        assert rows is not None and len(rows) == 3  # one batch per task, every step
        result = real_step(self, x, y, epoch=epoch, iteration=iteration, rows=rows)
        if iteration in (1, steps + 1):
            signal.raise_signal(signal.SIGTERM)
        return result

    monkeypatch.setattr(Stepper, "step", step_then_sigterm)
    run = tmp_path / "resumed"
    for where in ("in epoch 1 at step 2", "in epoch 2 at step 2"):
        with pytest.raises(Interrupted, match=where):
            train(spec, domain_data, run, progress=False, device="cpu")
    resumed = train(spec, domain_data, run, progress=False, device="cpu")
    strip = lambda r: [{k: v for k, v in e.items() if k != "seconds"} for e in r["epochs"]]  # noqa: E731
    assert strip(resumed) == strip(straight) and resumed["final"] == straight["final"]
    for epoch in straight["epochs"]:
        assert all(math.isfinite(v) for v in epoch["train_loss"].values())
        assert set(epoch["test"]) == {"clean", "textured", "distorted"}


def test_the_held_out_slice_is_a_seeded_disjoint_part_of_each_tasks_training_data(domain_data):
    spec = domain_spec("moml")
    run_data = prepare_run_data(spec, domain_data, held_out=(0.2, "clean"))
    assert run_data.held_out is not None and len(run_data.held_out) == len(run_data.train) == 3
    for train_part, held in zip(run_data.train, run_data.held_out, strict=True):
        assert train_part.split is held.split  # the same task's training split
        assert not set(train_part.index.tolist()) & set(held.index.tolist())
        assert len(held) == round(0.2 * len(train_part.split))
        assert len(train_part) + len(held) == len(train_part.split)
    again = prepare_run_data(spec, domain_data, held_out=(0.2, "clean"))
    assert all(torch.equal(a.index, b.index) for a, b in zip(run_data.held_out, again.held_out, strict=True))


def test_noise_follows_the_noise_seed_and_never_reaches_evaluation(domain_data):
    noisy = {"textured": 0.5}
    clean_data = prepare_run_data(domain_spec("ew"), domain_data, None)
    runs = [prepare_run_data(domain_spec("ew", seed=seed, noise=noisy), domain_data, None) for seed in (0, 1)]
    for run_data in runs:
        record = run_data.noise["textured"]
        assert record["selected"] == round(0.5 * 359) and 0 < record["changed"] <= record["selected"]
        assert set(run_data.noise) == {"textured"}
        # only the named task's training targets change; evaluation reads the cache's clean splits
        assert torch.equal(run_data.train[0].y[0], clean_data.train[0].y[0])
        changed = int((run_data.train[1].y[0] != clean_data.train[1].y[0]).sum())
        assert changed == record["changed"]
        for split in ("val", "test"):
            for t in range(3):
                assert torch.equal(run_data.data.task_split(split, t)[1], clean_data.data.task_split(split, t)[1])
    # two seeds of a study see the very same noisy targets; another noise seed, other ones
    assert torch.equal(runs[0].train[1].y[0], runs[1].train[1].y[0])
    other = prepare_run_data(domain_spec("ew", noise=noisy, noise_seed=1), domain_data, None)
    assert not torch.equal(other.train[1].y[0], runs[0].train[1].y[0])


def test_evaluation_scores_each_task_on_its_own_inputs(domain_data):
    data = load("digit_domains", domain_data, options=resolve_options("digit_domains", DOMAINS))
    seen = []

    class Recorder(torch.nn.Module):
        """Predicts each task's true class for its own inputs only: a task scored on another's inputs fails."""

        def forward(self, x):
            seen.append(len(x))
            keys = [row.numpy().tobytes() for row in (x * 255).round().to(torch.uint8).flatten(1)]
            outputs = []
            for t in range(3):
                inputs, targets = data.task_split("test", t)
                lookup = {row.numpy().tobytes(): int(y) for row, y in zip(inputs.flatten(1), targets, strict=True)}
                classes = torch.tensor([lookup.get(k, 0) for k in keys])  # another task's inputs: unscored
                outputs.append(torch.nn.functional.one_hot(classes, 10).float())
            return outputs

    found = evaluate(Recorder(), data, "test", torch.device("cpu"), batch_size=50)
    assert found == {"clean": {"acc": 100.0}, "textured": {"acc": 100.0}, "distorted": {"acc": 100.0}}
    assert sum(seen) == sum(len(data.task_split("test", t)[0]) for t in range(3))
