"""Multi-input training: one batch per task per step, an epoch as long as the longest task, seeded cycling.

The batches of an epoch are a pure function of (seed, epoch, step), so a run
resumed at any step draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from mtlrepro.data import Split
from mtlrepro.tasks import Task
from mtlrepro.train import EpochBatches, Part, stack_tasks

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
