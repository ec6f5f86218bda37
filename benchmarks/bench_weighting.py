"""Milliseconds per training iteration of EW, RLW, RGW and RLW+RGW, as ratios to EW.

All methods run in one process on the same model (LeNet HPS, the multi_digits
setting) and the same batch, interleaved over several rounds so that drift of
the machine hits every method alike; the reported figure is the median over
rounds. Two reference points are measured in the same run:

* ``fwd+1bwd``: one forward and one backward pass (what EW must cost);
* ``fwd+Tbwd``: one forward and T backward passes over the shared parameters,
  the floor for any method that needs per-task gradients (RGW's target).

Run on demand, never in CI::

    python benchmarks/bench_weighting.py [--device cuda] [--tasks 2] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mtlrepro.archs import build_model
from mtlrepro.data import Task
from mtlrepro.train import Stepper, TrainingOptions, pick_device
from mtlrepro.weighting import parse_method

METHODS = ("ew", "rlw", "rgw", "rlw+rgw")


def make_stepper(expression: str, model, tasks, device) -> Stepper:
    spec = parse_method(expression, {}, "benchmark")
    loss = None if spec.loss is None else spec.loss.build(len(tasks), torch.Generator(device).manual_seed(0))
    grad = None if spec.gradient is None else spec.gradient.build(len(tasks), torch.Generator(device).manual_seed(1))
    return Stepper(model, tasks, loss, grad, TrainingOptions())


def reference_step(model, tasks, n_backward: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Forward, then ``n_backward`` backward passes (1 = the plain loss sum, T = one per task).

    The passes accumulate into ``.grad`` so that the optimizer step that follows
    updates every parameter, as it does after a method's step.
    """

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        outputs = model(x)
        losses = [F.cross_entropy(o, y[:, t]) for t, o in enumerate(outputs)]
        if n_backward == 1:
            torch.stack(losses).sum().backward()
            return
        for t, loss in enumerate(losses):
            loss.backward(retain_graph=t < len(losses) - 1)

    return step


def time_steps(step, optimizer, x, y, iters: int, device: torch.device) -> float:
    """Milliseconds per iteration of ``iters`` full steps (zero_grad, step, optimizer.step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        optimizer.zero_grad(set_to_none=True)
        step(x, y)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000.0 * (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    tasks = tuple(Task(f"T{i}", 10) for i in range(args.tasks))
    torch.manual_seed(0)
    model = build_model("hps", "lenet", (1, 36, 36), [t.n_classes for t in tasks]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(args.batch_size, 1, 36, 36, device=device)
    y = torch.randint(10, (args.batch_size, args.tasks), device=device)

    candidates = {name: make_stepper(name, model, tasks, device).step for name in METHODS}
    candidates["fwd+1bwd"] = reference_step(model, tasks, 1)
    candidates[f"fwd+{args.tasks}bwd"] = reference_step(model, tasks, args.tasks)
    for step in candidates.values():  # warm-up
        time_steps(step, optimizer, x, y, 3, device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, step in candidates.items():
            samples[name].append(time_steps(step, optimizer, x, y, args.iters, device))

    median = {name: statistics.median(values) for name, values in samples.items()}
    floor = median[f"fwd+{args.tasks}bwd"]
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"tasks={args.tasks} batch={args.batch_size} iters={args.iters} rounds={args.rounds}"
    )
    print(f"| {'method':<10} | {'ms/iter':>8} | {'/ EW':>6} | {'/ fwd+Tbwd':>10} |")
    print(f"|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 12}|")
    for name, ms in median.items():
        print(f"| {name:<10} | {ms:8.2f} | {ms / median['ew']:6.3f} | {ms / floor:10.3f} |")


if __name__ == "__main__":
    main()
