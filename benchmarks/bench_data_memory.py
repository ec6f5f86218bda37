"""Resident memory of a train job's data as the dataset grows: memory-mapped cache against an eager load.

For datasets of growing size (the ``multi_digits`` stand-in with more and more
training pairs), one fresh process per (size, mode) reads the cache and draws
one epoch of training batches the way a train job does
(:class:`mtlrepro.train.EpochBatches` over :class:`mtlrepro.train.Part`), then
reports from ``/proc/self/status``:

* ``RssAnon``: private memory, what a job holds on its own and what a
  scheduler's memory limit counts first;
* ``RssFile``: file pages mapped into the process; the kernel shares them with
  the page cache and drops them under memory pressure.

``mmap`` is :func:`mtlrepro.data.load` (``torch.load(mmap=True)``); the
baseline ``eager`` is the same cache read with ``torch.load(mmap=False)``,
measured in the same run. The private memory of the memory-mapped job stays
flat as the dataset grows, that of the eager job grows with it. Printed: each mode's private
memory, their ratio, and the growth of each from the smallest dataset to the
largest.

Run on demand, never in CI (it writes caches of up to a few hundred MB)::

    python benchmarks/bench_data_memory.py [--sizes 10000,40000,160000] [--dir /tmp/bench-data]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mtlrepro.data import prepare

CHILD = r"""
import json, sys, torch
from mtlrepro.data import MTLData, Split, load
from mtlrepro.train import EpochBatches, Part

path, mode = sys.argv[1], sys.argv[2]
data = load("multi_digits", path)
if mode == "eager":
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    entry = payload["splits"]["train"]
    data.splits["train"] = Split(x=entry["x"], y=tuple(entry["y"]), source=None)
train = data.splits["train"]
part = Part(train, train.y, torch.arange(len(train)))
batches = EpochBatches((part,), data.tasks, batch_size=256, seed=0, epoch=1)
total = 0.0
for k in range(len(batches)):
    total += float(batches[k].x.float().mean())
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
kib = lambda key: int(status[key].split()[0])
print(json.dumps({"anon_mb": kib("RssAnon") / 1024, "file_mb": kib("RssFile") / 1024, "checksum": total}))
"""


def measure(path: Path, mode: str) -> dict[str, float]:
    """Run the child in a fresh process and return its memory figures."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,40000,160000", help="numbers of training pairs")
    parser.add_argument("--dir", default=None, help="where the caches are written (default: a temporary directory)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(args.dir or scratch)
        where.mkdir(parents=True, exist_ok=True)
        print(f"{'pairs':>8} {'cache MB':>9} {'mmap anon MB':>13} {'eager anon MB':>14} {'mmap/eager':>11}")
        base: dict[str, float] = {}
        for n in sizes:
            path = prepare("multi_digits", {"n_train": n, "n_val": 500, "n_test": 500}, where / f"digits{n}.pt")
            size_mb = path.stat().st_size / 2**20
            mapped, eager = measure(path, "mmap"), measure(path, "eager")
            assert mapped["checksum"] == eager["checksum"], "the two loads must read the same batches"
            base = base or {"mmap": mapped["anon_mb"], "eager": eager["anon_mb"], "cache": size_mb}
            print(
                f"{n:>8} {size_mb:>9.1f} {mapped['anon_mb']:>13.1f} {eager['anon_mb']:>14.1f} "
                f"{mapped['anon_mb'] / eager['anon_mb']:>11.2f}"
            )
            last = (size_mb, mapped["anon_mb"], eager["anon_mb"])
        grown = last[0] - base["cache"]
        print(
            f"growth from the smallest to the largest cache (+{grown:.0f} MB on disk): "
            f"mmap +{last[1] - base['mmap']:.0f} MB private, eager +{last[2] - base['eager']:.0f} MB private"
        )


if __name__ == "__main__":
    main()
