"""``nasflow``: one command line with subcommands over the same functions the components call.

    nasflow run       run the whole pipeline locally (kfp.local)
    nasflow compile   write the pipeline's KFP IR YAML
    nasflow submit    start a run on a Kubeflow Pipelines cluster
    nasflow schedule  create a recurring run on a cluster
    nasflow promote   run the promotion gate (exit 1 when it refuses)
    nasflow validate  check a search-space file and print its size

Errors a user can cause are printed as one ``nasflow: ...`` line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasflow import __version__
from nasflow.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, repo_root
from nasflow.errors import NasflowError

DEFAULT_PACKAGE = "pipelines/nas_pipeline.yaml"
EXIT_REFUSED = 1
EXIT_ERROR = 2

#: Defaults of ``nasflow run`` (the small local budget of ``make run``).
RUN_DEFAULTS = {
    "dataset": "mnist-5k",
    "strategy": "reinforce",  # nasflow.search.DEFAULT_STRATEGY
    "max_trials": 8,
    "epochs": 3,
    "train_epochs": 10,
    "seed": 42,
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """Options that map one-to-one to pipeline parameters (run, submit, schedule)."""
    from nasflow.search.strategies import STRATEGIES

    group = parser.add_argument_group("pipeline parameters")
    group.add_argument(
        "--dataset", default=RUN_DEFAULTS["dataset"], help="mnist-5k, digits, wine, keras:NAME or a path"
    )
    group.add_argument("--label-column", default="label", help="label column of CSV/Parquet data")
    group.add_argument("--search-space", default="", help="bundled name (cnn, mlp, mobile_cnn) or YAML path")
    group.add_argument("--strategy", default=RUN_DEFAULTS["strategy"], choices=STRATEGIES)
    group.add_argument("--max-trials", type=_positive_int, default=RUN_DEFAULTS["max_trials"])
    group.add_argument(
        "--epochs", type=_positive_int, default=RUN_DEFAULTS["epochs"], help="epochs per trial"
    )
    group.add_argument(
        "--max-search-minutes", type=_non_negative_float, default=0.0, help="wall-clock budget (0: none)"
    )
    group.add_argument(
        "--objective", dest="objective_mode", default="accuracy", choices=("accuracy", "reward", "pareto")
    )
    group.add_argument(
        "--cost-metric", default="latency_ms", choices=("latency_ms", "size_kb", "params", "flops")
    )
    group.add_argument(
        "--cost-target", type=_non_negative_float, default=0.0, help="reward target T (0: none)"
    )
    group.add_argument("--reward-exponent", type=float, default=-0.07, help="reward exponent w")
    group.add_argument("--selection", default="most_accurate", choices=("most_accurate", "knee"))
    group.add_argument("--max-params", type=int, default=0)
    group.add_argument("--max-flops", type=int, default=0)
    group.add_argument("--max-latency-ms", type=_non_negative_float, default=0.0)
    group.add_argument("--max-size-kb", type=_non_negative_float, default=0.0)
    group.add_argument("--train-epochs", type=_positive_int, default=RUN_DEFAULTS["train_epochs"])
    group.add_argument("--use-gpu", action="store_true", help="request one GPU for training")
    group.add_argument(
        "--compression-variants",
        nargs="+",
        default=["float16", "int8"],
        metavar="VARIANT",
        help="e.g. float16 int8 dynamic structured_prune+int8 magnitude_prune distill+int8",
    )
    group.add_argument("--max-accuracy-drop", type=_non_negative_float, default=1.0, help="points")
    group.add_argument("--prefer", default="size", choices=("size", "latency"))
    group.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    group.add_argument("--min-improvement", type=_non_negative_float, default=0.0)
    group.add_argument("--seed", type=int, default=RUN_DEFAULTS["seed"])
    group.add_argument(
        "--tracking-uri", default="", help="MLflow URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    group.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    group.add_argument("--state-dir", default="", help="persistent tuner state folder (resume after a crash)")
    group.add_argument("--workers", dest="num_workers", type=int, default=0, help="search worker processes")
    group.add_argument(
        "--trials-per-process", type=int, default=0, help="recycle a search worker after N trials (0: never)"
    )
    group.add_argument(
        "--run-identity",
        default="",
        help="name of this run; run again with the same name to resume it after a crash",
    )


PIPELINE_PARAMETER_NAMES = (
    "dataset", "label_column", "search_space", "strategy", "max_trials", "epochs", "max_search_minutes",
    "objective_mode", "cost_metric", "cost_target", "reward_exponent", "selection", "max_params", "max_flops",
    "max_latency_ms", "max_size_kb", "train_epochs", "use_gpu", "compression_variants", "max_accuracy_drop",
    "prefer", "model_name", "min_improvement", "seed", "tracking_uri", "experiment", "state_dir", "run_identity",
    "num_workers", "trials_per_process",
)  # fmt: skip


def pipeline_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline parameters from parsed options."""
    params = {name: getattr(args, name) for name in PIPELINE_PARAMETER_NAMES}
    for key in ("dataset", "search_space", "state_dir"):
        # Local paths become absolute so every task process finds them.
        value = params[key]
        if value and not value.startswith("keras:") and Path(value).exists():
            params[key] = str(Path(value).resolve())
    return params


def build_parser() -> argparse.ArgumentParser:
    """The ``nasflow`` argument parser."""
    parser = argparse.ArgumentParser(prog="nasflow", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"nasflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline locally through kfp.local")
    _add_pipeline_options(run)
    run.add_argument("--output-dir", default="nasflow-runs", help="pipeline root for artifacts and logs")
    run.add_argument("--quiet", action="store_true", help="print only the summary")

    compile_ = commands.add_parser("compile", help="write the pipeline's KFP IR YAML")
    compile_.add_argument("--output", default=None, help=f"default: {DEFAULT_PACKAGE} in the source tree")

    for name, help_text in (
        ("submit", "start a run on Kubeflow Pipelines"),
        ("schedule", "create a recurring run"),
    ):
        remote = commands.add_parser(name, help=help_text)
        remote.add_argument(
            "--host", required=True, help="KFP API endpoint, e.g. https://kfp.example.com/pipeline"
        )
        remote.add_argument("--experiment-name", "--kfp-experiment", dest="kfp_experiment", default="nasflow")
        remote.add_argument("--package", default=None, help="compiled pipeline YAML (default: compile now)")
        remote.add_argument("--token-env", default="KFP_BEARER_TOKEN", help="env var holding a bearer token")
        remote.add_argument(
            "--param", action="append", default=[], metavar="KEY=VALUE", help="extra parameter (JSON value)"
        )
        if name == "submit":
            remote.add_argument(
                "--wait", action="store_true", help="wait for the run to end; fail unless it succeeds"
            )
            remote.add_argument("--timeout-minutes", type=_non_negative_float, default=24 * 60)
            remote.add_argument("--poll-seconds", type=_non_negative_float, default=10.0)
        if name == "schedule":
            remote.add_argument("--cron", required=True, help='e.g. "0 3 * * 1" (5 or 6 fields)')
            remote.add_argument("--job-name", default=None)
        _add_pipeline_options(remote)

    promote = commands.add_parser("promote", help="run the promotion gate; exit 1 when it refuses")
    promote.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    promote.add_argument("--version", default=None, help="default: the version behind alias 'challenger'")
    promote.add_argument("--min-improvement", type=_non_negative_float, default=0.0)
    promote.add_argument("--metric", default=None, help="metric tag to compare (default: the version's own)")
    promote.add_argument("--tracking-uri", default="")

    validate = commands.add_parser("validate", help="check a search-space YAML and print its size")
    validate.add_argument("file", help="YAML path, or a bundled name (cnn, mlp, mobile_cnn)")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from nasflow.cli.local_run import format_summary, run_pipeline_locally

    params = pipeline_parameters(args)
    if params["run_identity"] and not params["state_dir"]:
        # Resuming needs the tuner state where the next attempt will look for it.
        params["state_dir"] = str((Path(args.output_dir) / "state" / params["run_identity"]).resolve())
    if params["search_space"]:
        # Fail in a second on a bad space file, not after data prep and the search task's retries.
        from nasflow.spaces.schema import load_search_space, resolve_search_space

        load_search_space(resolve_search_space(params["search_space"], "image"))
    if not args.quiet:
        print(
            f"nasflow {__version__}: running the NAS pipeline locally (kfp.local) on {params['dataset']}",
            file=sys.stderr,
        )
    result = run_pipeline_locally(params, args.output_dir, stream=None if args.quiet else sys.stderr)
    print(format_summary(result.summary, result.seconds))
    print(f"  artifacts         : {result.run_dir}")
    return 0


def compile_pipeline(output: str | Path | None = None) -> Path:
    """Compile ``nas_pipeline`` to KFP IR YAML and return the path."""
    from kfp import compiler

    from pipelines.nas_pipeline import nas_pipeline

    path = Path(output) if output else repo_root() / DEFAULT_PACKAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(nas_pipeline, str(path))
    return path


def _remote_parameters(args: argparse.Namespace) -> dict[str, Any]:
    params = pipeline_parameters(args)
    # On a cluster the URI comes from the ConfigMap unless given explicitly.
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or key not in PIPELINE_PARAMETER_NAMES:
            raise NasflowError(
                f"--param {item!r}: expected KEY=VALUE with KEY one of the pipeline parameters"
            )
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _package(args: argparse.Namespace) -> str:
    if args.package:
        if not Path(args.package).is_file():
            raise NasflowError(f"--package {args.package}: file not found")
        return args.package
    return str(compile_pipeline(Path(os.environ.get("TMPDIR", "/tmp")) / f"nasflow-{os.getpid()}.yaml"))


def _cmd_submit(args: argparse.Namespace) -> int:
    from nasflow.cli.remote import submit_pipeline

    run = submit_pipeline(
        args.host,
        _package(args),
        _remote_parameters(args),
        experiment=args.kfp_experiment,
        token_env=args.token_env,
    )
    print(f"run_id: {run.run_id}\nurl: {run.url}", flush=True)
    if args.wait:
        from nasflow.cli.remote import wait_for_run

        state = wait_for_run(
            args.host,
            run.run_id,
            timeout_s=args.timeout_minutes * 60,
            poll_s=args.poll_seconds,
            token_env=args.token_env,
        )
        print(f"state: {state}")
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    from nasflow.cli.remote import schedule_pipeline

    job = schedule_pipeline(
        args.host,
        _package(args),
        _remote_parameters(args),
        cron=args.cron,
        experiment=args.kfp_experiment,
        job_name=args.job_name,
        token_env=args.token_env,
    )
    print(f"job_id: {job.job_id}\nurl: {job.url}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from nasflow import tracking
    from nasflow.registry.promotion import promote

    uri = tracking.resolve_tracking_uri(args.tracking_uri or None)
    tracking.check_reachable(uri)
    decision = promote(
        args.model_name,
        args.version,
        min_improvement=args.min_improvement,
        metric_name=args.metric,
        tracking_uri=uri,
    )
    verdict = "promoted" if decision.promoted else "refused"
    print(f"{verdict}: {decision.model_name} version {decision.version}: {decision.reason}")
    return 0 if decision.promoted else EXIT_REFUSED


def _cmd_validate(args: argparse.Namespace) -> int:
    from nasflow.spaces.schema import load_search_space, resolve_search_space, search_space_size

    # A bundled name (``cnn``) means the same file here as in ``--search-space``.
    space = load_search_space(resolve_search_space(args.file, "image"))
    size = search_space_size(space)
    print(
        f"{args.file}: valid {space.family} space '{space.name}' for {space.modality} data, "
        f"{len(space.hyperparameters)} hyperparameters, size: "
        + ("continuous" if size is None else f"{size:,} distinct architectures")
    )
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    print(compile_pipeline(args.output))
    return 0


COMMANDS = {
    "run": _cmd_run,
    "compile": _cmd_compile,
    "submit": _cmd_submit,
    "schedule": _cmd_schedule,
    "promote": _cmd_promote,
    "validate": _cmd_validate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasflow`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except NasflowError as error:
        print(f"nasflow: {args.command}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("nasflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
