"""Milliseconds per training iteration of every weighting method, as ratios to EW and to the floor.

All methods run in one process on the same model and the same batch,
interleaved over several rounds so that drift of the machine hits every method
alike; the reported figure is the median over rounds. Reference points
measured in the same run:

* ``fwd+1bwd``: one forward and one backward pass (what EW must cost);
* ``fwd+Tbwd``: one forward and T backward passes over the shared parameters,
  the floor for any method that needs per-task parameter gradients.

Every gradient method is measured in parameter mode and, where it allows, in
representation mode (``<name>@rep``). Also printed: the size of the per-task
gradient matrix [T x D] the step preallocates.

Run on demand, never in CI::

    python benchmarks/bench_weighting.py [--device cuda] [--tasks 2] [--rep-dim 50] [--methods ew,rlw,pcgrad]

``--tasks 10 --rep-dim 512`` is the wider-model setting.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mtlrepro.archs.hps import HPS
from mtlrepro.models.lenet import LeNetEncoder
from mtlrepro.step import Stepper
from mtlrepro.train import pick_device
from mtlrepro.weighting import parse_method, registry
from mtlrepro.weighting.base import GRADIENT, Batch


def loss_fn(outputs, y):
    return torch.stack([F.cross_entropy(o, y[:, t]) for t, o in enumerate(outputs)])


def variants() -> dict[str, dict]:
    """Method expression -> config entries: every method, gradient methods in both modes where allowed."""
    found: dict[str, dict] = {}
    for name, cls in sorted(registry().items()):
        if cls.kind != GRADIENT:
            found[name] = {}
            continue
        if not cls.representation_only:
            found[name] = {name: {"grad_wrt": "params"}}
        if not cls.params_only:
            found[f"{name}@rep"] = {name: {"grad_wrt": "representation"}}
    found["rlw+rgw"] = {}
    return found


def make_step(label: str, entries: dict, model: HPS, n_tasks: int, device, held_out) -> Callable:
    expression = label.split("@")[0]
    spec = parse_method(expression, entries, "benchmark")
    built = []
    for i, component in enumerate((spec.loss, spec.gradient)):
        if component is None:
            built.append(None)
            continue
        method = component.build(n_tasks, torch.Generator(device).manual_seed(i))
        built.append(method)
    stepper = Stepper(model, n_tasks, loss_fn, built[0], built[1], held_out)
    stepper.setup(torch.zeros(1, 1, 36, 36, device=device), steps_per_epoch=100, epochs=100)
    own = [p for method in stepper.methods for p in method.parameters()]
    counter = {"i": 0}

    def step(x, y):
        stepper.step(x, y, epoch=1 + counter["i"] // 100, iteration=counter["i"])
        counter["i"] += 1

    step.own_parameters = own  # type: ignore[attr-defined]
    return step


def reference_step(model, n_backward: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Forward, then ``n_backward`` backward passes (1 = the plain loss sum, T = one per task).

    The passes accumulate into ``.grad`` so that the optimizer step that follows
    updates every parameter, as it does after a method's step.
    """

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        losses = loss_fn(model(x), y)
        if n_backward == 1:
            losses.sum().backward()
            return
        for t in range(losses.shape[0]):
            losses[t].backward(retain_graph=t < losses.shape[0] - 1)

    step.own_parameters = []  # type: ignore[attr-defined]
    return step


def time_steps(step, optimizer, x, y, iters: int, device: torch.device) -> float:
    """Milliseconds per iteration of ``iters`` full steps (zero_grad, step, optimizer.step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        optimizer.zero_grad(set_to_none=True)
        for p in step.own_parameters:
            p.grad = None
        step(x, y)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000.0 * (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--rep-dim", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--methods", default="", help="comma-separated labels (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    heads = [nn.Linear(args.rep_dim, 10) for _ in range(args.tasks)]
    model = HPS(LeNetEncoder(1, 36, rep_dim=args.rep_dim), heads).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.rand(args.batch_size, 1, 36, 36, device=device)
    y = torch.randint(10, (args.batch_size, args.tasks), device=device)
    held = Batch(torch.rand(args.batch_size, 1, 36, 36, device=device), y.clone())

    wanted = set(filter(None, args.methods.split(",")))
    candidates = {"fwd+1bwd": reference_step(model, 1), f"fwd+{args.tasks}bwd": reference_step(model, args.tasks)}
    for label, entries in variants().items():
        if not wanted or label in wanted or label.split("@")[0] in wanted:
            candidates[label] = make_step(label, entries, model, args.tasks, device, lambda: held)
    if "ew" not in candidates:
        candidates["ew"] = make_step("ew", {}, model, args.tasks, device, None)
    for step in candidates.values():  # warm-up
        time_steps(step, optimizer, x, y, 2, device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, step in candidates.items():
            samples[name].append(time_steps(step, optimizer, x, y, args.iters, device))

    median = {name: statistics.median(values) for name, values in samples.items()}
    floor = median[f"fwd+{args.tasks}bwd"]
    shared = sum(p.numel() for p in model.shared_parameters())
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} tasks={args.tasks} "
        f"rep_dim={args.rep_dim} batch={args.batch_size} iters={args.iters} rounds={args.rounds}"
    )
    rep_width = args.batch_size * args.rep_dim
    print(
        f"G [T x D] = [{args.tasks} x {shared}] float32: {args.tasks * shared * 4 / 2**20:.2f} MiB (parameter mode); "
        f"[{args.tasks} x {rep_width}]: {args.tasks * rep_width * 4 / 2**20:.2f} MiB (representation mode)"
    )
    print(f"| {'method':<16} | {'ms/iter':>8} | {'/ EW':>6} | {'/ fwd+Tbwd':>10} |")
    print(f"|{'-' * 18}|{'-' * 10}|{'-' * 8}|{'-' * 12}|")
    for name, ms in median.items():
        print(f"| {name:<16} | {ms:8.2f} | {ms / median['ew']:6.3f} | {ms / floor:10.3f} |")


if __name__ == "__main__":
    main()
