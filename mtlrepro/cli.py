"""The ``mtlrepro`` command: the steps the workflow runs, usable by hand too.

::

    mtlrepro list                                  # methods, datasets, architectures
    mtlrepro check-config config/config.yaml       # validate a config, list its runs
    mtlrepro prepare multi_digits --out resources/data/multi_digits.pt
    mtlrepro prepare nyuv2 --raw resources/raw/nyuv2 --out resources/data/nyuv2.pt
    mtlrepro train --spec '{...}' --data resources/data/multi_digits.pt --out results/runs/...
    mtlrepro table method_table --study '{...}' --out results/tables/rw/s/method_table results/runs/.../metrics.json
    mtlrepro figure learning_curves --study '{...}' --out results/figures/rw/s/learning_curves .../metrics.json
    mtlrepro flatness results/runs/... --data resources/data/multi_digits.pt --out results/analysis/.../flatness.json

A user error (bad config, missing data, non-finite loss) prints one line
``mtlrepro: error: ...`` and exits non-zero, without a traceback. ``train``
stopped by SIGTERM or SIGINT saves a checkpoint, prints one line
``mtlrepro: interrupted by ...`` and exits as the signal would have (143 or
130); running it again resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from mtlrepro.errors import ConfigError, UserError
from mtlrepro.interrupt import Interrupted


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not valid JSON ({err}): {text[:80]}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"expected a JSON object, got {text[:80]}")
    return value


def _at_least(convert: Callable[[str], float], minimum: float, meaning: str) -> Callable[[str], float]:
    """An argparse type: ``convert(text)``, refused below ``minimum`` (and NaN) with what the value means."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {meaning}") from None
        if not value >= minimum:  # NaN included
            raise argparse.ArgumentTypeError(f"must be {meaning}, got {text}")
        return value

    return parse


_positive_int = _at_least(int, 1, "a positive integer")
_minutes = _at_least(float, 0.0, "a number of minutes, 0 or more")


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
    from mtlrepro.config import SCHEMA_FILE, check_config, load_yaml
    from mtlrepro.studies import runs_by_directory

    studies = check_config(load_yaml(args.config), args.schema or SCHEMA_FILE)
    runs = runs_by_directory(studies)
    for study in studies.values():
        print(f"study {study.name}: {study.dataset}/{study.arch}, {len(study.runs)} runs")
    print(f"{len(runs)} distinct runs; config OK")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mtlrepro.data import prepare

    out = prepare(args.dataset, _json_arg(args.options), args.out, raw=args.raw, path=args.path, progress=True)
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
        checkpoint_minutes=args.checkpoint_minutes,
    )
    final = result["final"]["test"]
    summary = ", ".join(f"{task} {next(iter(m))}={next(iter(m.values())):.2f}" for task, m in final.items())
    print(f"{result['run']['dir']}: epoch {result['selection']['epoch']} selected; test {summary}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from mtlrepro.report.outputs import write_table

    write_table(args.kind, args.inputs, _json_arg(args.study), args.out)
    return 0


def cmd_figure(args: argparse.Namespace) -> int:
    from mtlrepro.report.outputs import write_figure

    write_figure(args.kind, args.inputs, _json_arg(args.study), args.out)
    return 0


def cmd_twin(args: argparse.Namespace) -> int:
    from mtlrepro.report.outputs import write_twin

    write_twin(args.kind, args.inputs, _json_arg(args.study), args.out)
    return 0


def cmd_scorecard(args: argparse.Namespace) -> int:
    from mtlrepro.config import SCHEMA_FILE, check_config, load_yaml
    from mtlrepro.report.evidence import write_scorecard

    config = _json_arg(args.config) if args.config.lstrip().startswith("{") else load_yaml(args.config)
    studies = [study.to_json() for study in check_config(config, args.schema or SCHEMA_FILE).values()]
    verdicts = write_scorecard(studies, args.metrics, args.analyses, args.out)
    for verdict in verdicts:
        print(f"{verdict.claim_id}: {verdict.verdict}")
    return 0


def cmd_flatness(args: argparse.Namespace) -> int:
    from mtlrepro.analysis.flatness import analyse_run

    result = analyse_run(
        args.run_dir, args.data, args.out, args.batches, args.batch_size, args.seed, threads=args.threads
    )
    print(f"{args.run_dir}: top Hessian eigenvalue {result['top_eigenvalue']:.4g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mtlrepro`` command."""
    parser = argparse.ArgumentParser(prog="mtlrepro", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list methods, datasets and architectures")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check-config", help="validate a config file and count its runs")
    p.add_argument("config")
    p.add_argument("--schema", default=None, help="a JSON schema other than the shipped one")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("prepare", help="build a dataset's tensor cache")
    p.add_argument("dataset")
    p.add_argument("--options", default="{}", help="dataset options as a JSON object")
    p.add_argument("--out", required=True)
    p.add_argument("--raw", default=None, help="where raw files are downloaded, verified and unpacked")
    p.add_argument("--path", default=None, help="a directory that already holds the raw files (no download)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one run and write its metrics.json")
    p.add_argument("--spec", required=True, help="the run spec as a JSON object")
    p.add_argument("--data", required=True, help="the prepared dataset cache")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads of torch")
    p.add_argument(
        "--checkpoint-minutes",
        type=_minutes,
        default=None,
        help="also checkpoint within an epoch every so many minutes (0: after every step); default: epoch ends only",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    for name, func, suffixes in (
        ("table", cmd_table, ".csv/.md/.tex"),
        ("figure", cmd_figure, ".png/.pdf"),
        ("twin", cmd_twin, ".csv/.md/.tex"),
    ):
        p = sub.add_parser(name, help=f"write one {name} of a study from its runs' records")
        p.add_argument("kind", help="the output kind (e.g. method_table, learning_curves)")
        p.add_argument("inputs", nargs="+", help="metrics.json of every run (flatness: the runs' flatness.json)")
        p.add_argument("--study", required=True, help="the study's description as a JSON object")
        p.add_argument("--out", required=True, help=f"output path without suffix ({suffixes} are added)")
        p.set_defaults(func=func)

    p = sub.add_parser("scorecard", help="judge every claim of both papers and list every published number")
    p.add_argument("--config", required=True, help="the config (a YAML file or a JSON object) whose studies ran")
    p.add_argument("--schema", default=None, help="a JSON schema other than the shipped one")
    p.add_argument("--metrics", nargs="*", default=[], help="metrics.json of every run")
    p.add_argument("--analyses", nargs="*", default=[], help="flatness.json of every analysed run")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_scorecard)

    p = sub.add_parser("flatness", help="measure the flatness of a run's selected model (RW Figure 1)")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="the prepared dataset cache")
    p.add_argument("--out", required=True, help="the flatness.json to write")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads of torch")
    p.set_defaults(func=cmd_flatness)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtlrepro`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Interrupted as err:
        print(f"mtlrepro: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("mtlrepro: interrupted", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"mtlrepro: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
