"""The ``mtlrepro`` command: the steps the workflow runs, usable by hand too.

::

    mtlrepro list                                  # methods, datasets, architectures
    mtlrepro check-config config/config.yaml       # validate a config, list its runs
    mtlrepro prepare multi_digits --out resources/data/multi_digits.pt
    mtlrepro train --spec '{...}' --data resources/data/multi_digits.pt --out results/runs/...
    mtlrepro table --title T --out-csv t.csv --out-md t.md results/runs/.../metrics.json ...
    mtlrepro figure --title T --out-png f.png --out-pdf f.pdf results/runs/.../metrics.json ...

A user error (bad config, missing data, non-finite loss) prints one line
``mtlrepro: error: ...`` and exits non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mtlrepro.errors import ConfigError, UserError

DEFAULT_SCHEMA = "workflow/schemas/config.schema.yaml"


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not valid JSON ({err}): {text[:80]}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"expected a JSON object, got {text[:80]}")
    return value


def cmd_list(args: argparse.Namespace) -> int:
    from mtlrepro.archs import ARCHS
    from mtlrepro.data import DATASETS, dataset_module
    from mtlrepro.weighting import registry

    print("methods:")
    for name, cls in sorted(registry().items()):
        print(f"  {name:<12} {cls.kind:<9} {(cls.__doc__ or '').strip().splitlines()[0]}")
    print("datasets:")
    for name in sorted(DATASETS):
        module = dataset_module(name)
        tasks = ", ".join(t.name for t in module.TASKS)
        print(f"  {name:<12} tasks: {tasks}" + (" (stand-in data)" if module.STAND_IN else ""))
    print("architectures:")
    for name in sorted(ARCHS):
        print(f"  {name}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from mtlrepro.config import check_config, load_yaml
    from mtlrepro.studies import runs_by_directory

    studies = check_config(load_yaml(args.config), args.schema)
    runs = runs_by_directory(studies)
    for study in studies.values():
        print(f"study {study.name}: {study.dataset}/{study.arch}, {len(study.runs)} runs")
    print(f"{len(runs)} distinct runs; config OK")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mtlrepro.data import prepare

    out = prepare(args.dataset, _json_arg(args.options), args.out)
    print(f"prepared {args.dataset} -> {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mtlrepro.run import RunSpec
    from mtlrepro.train import train

    result = train(
        RunSpec.from_json(_json_arg(args.spec)),
        args.data,
        args.out,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    final = result["final"]["test"]
    summary = ", ".join(f"{task} {next(iter(m))}={next(iter(m.values())):.2f}" for task, m in final.items())
    print(f"{result['run']['dir']}: epoch {result['selection']['epoch']} selected; test {summary}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from mtlrepro.report.runs import load_runs
    from mtlrepro.report.tables import summary_table, write_table

    runs = load_runs(args.metrics)
    write_table(summary_table(runs, baseline=args.baseline), runs, args.title, args.out_csv, args.out_md)
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    from mtlrepro.report.figures import accuracy_curves
    from mtlrepro.report.runs import load_runs

    accuracy_curves(load_runs(args.metrics), args.title, args.out_png, args.out_pdf)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mtlrepro`` command."""
    parser = argparse.ArgumentParser(prog="mtlrepro", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list methods, datasets and architectures")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check-config", help="validate a config file and count its runs")
    p.add_argument("config")
    p.add_argument("--schema", default=DEFAULT_SCHEMA)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("prepare", help="build a dataset's tensor cache")
    p.add_argument("dataset")
    p.add_argument("--options", default="{}", help="dataset options as a JSON object")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one run and write its metrics.json")
    p.add_argument("--spec", required=True, help="the run spec as a JSON object")
    p.add_argument("--data", required=True, help="the prepared dataset cache")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    for name, func, outs in (
        ("table", cmd_table, ("--out-csv", "--out-md")),
        ("figure", cmd_figure, ("--out-png", "--out-pdf")),
    ):
        p = sub.add_parser(name, help=f"write a study's {name} from its runs' metrics.json files")
        p.add_argument("metrics", nargs="+")
        p.add_argument("--title", required=True)
        for out in outs:
            p.add_argument(out, required=True)
        if name == "table":
            p.add_argument("--baseline", default="ew")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtlrepro`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as err:
        print(f"mtlrepro: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
