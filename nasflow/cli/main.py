"""``nasflow``: one command line with subcommands over the same functions the components call.

    nasflow run       run the whole pipeline locally (kfp.local)
    nasflow compile   write the pipeline's KFP IR YAML
    nasflow submit    start a run on a Kubeflow Pipelines cluster
    nasflow schedule  create a recurring run on a cluster
    nasflow promote   run the promotion gate (exit 1 when it refuses)
    nasflow validate  check a search-space file and print its size
    nasflow runs      list recent pipeline runs with their headline numbers (from MLflow)
    nasflow show RUN  print a past run's summary, as ``nasflow run`` printed it

Errors a user can cause are printed as one ``nasflow: ...`` line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasflow import __version__
from nasflow.config import DEFAULT_MODEL_NAME, repo_root
from nasflow.errors import NasflowError
from nasflow.preflight import check_run_parameters

DEFAULT_PACKAGE = "pipelines/nas_pipeline.yaml"
EXIT_REFUSED = 1
EXIT_ERROR = 2

def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


#: Pipeline parameters whose option keeps an older, shorter name (the parameter's own
#: dashed name works too).
OPTION_ALIASES = {"objective_mode": "--objective", "num_workers": "--workers"}


def _allowed_values() -> dict[str, tuple[str, ...]]:
    """Parameters with a closed set of values, from the core constants that define them.

    Only the help text shows them: the values are checked once, where the settings are made.
    """
    from nasflow.compression.selection import PREFERENCES
    from nasflow.search.objectives import COST_METRICS, MODES, SELECTIONS
    from nasflow.search.strategies import STRATEGIES

    return {
        "strategy": STRATEGIES,
        "objective_mode": MODES,
        "cost_metric": COST_METRICS,
        "selection": SELECTIONS,
        "prefer": tuple(PREFERENCES),
    }


@dataclass(frozen=True)
class PipelineParameter:
    """One parameter of ``nas_pipeline``, read from its signature and docstring."""

    name: str
    kind: type
    default: Any
    help: str


def pipeline_signature() -> list[PipelineParameter]:
    """The pipeline's parameters: the single declaration every option is generated from."""
    import inspect

    import docstring_parser

    from pipelines.nas_pipeline import nas_pipeline

    function = nas_pipeline.pipeline_func
    docs = docstring_parser.parse(function.__doc__ or "").params
    helps = {param.arg_name: " ".join((param.description or "").split()) for param in docs}
    types = typing.get_type_hints(function)
    return [
        PipelineParameter(name, types[name], parameter.default, helps.get(name, ""))
        for name, parameter in inspect.signature(function).parameters.items()
    ]


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """One option per pipeline parameter (run, submit, schedule), generated from the signature."""
    group = parser.add_argument_group("pipeline parameters")
    allowed = _allowed_values()
    for parameter in pipeline_signature():
        flags = [f"--{parameter.name.replace('_', '-')}"]
        if parameter.name in OPTION_ALIASES:
            flags.insert(0, OPTION_ALIASES[parameter.name])
        help_text = parameter.help
        if parameter.name in allowed:
            help_text = f"{help_text} One of: {', '.join(allowed[parameter.name])}."
        options: dict[str, Any] = {"dest": parameter.name, "default": parameter.default}
        if parameter.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif parameter.kind is list:
            options.update(nargs="+", metavar="VALUE", default=list(parameter.default))
        else:
            options["type"] = parameter.kind
        # argparse %-formats help strings: a docstring's own "%" (e.g. "10 % of") is literal.
        group.add_argument(*flags, help=f"{help_text.replace('%', '%%')} (default: %(default)s)", **options)


def pipeline_parameter_names() -> list[str]:
    """Names of the pipeline's parameters, in signature order."""
    return [parameter.name for parameter in pipeline_signature()]


def pipeline_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline parameters from parsed options."""
    params = {name: getattr(args, name) for name in pipeline_parameter_names()}
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
            remote.add_argument(  # issue 13: CI promotes exactly the version its run registered
                "--output-file",
                default=None,
                help="with --wait: append kfp_run_id=, model_name=, model_version= lines (e.g. $GITHUB_OUTPUT)",
            )
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
    _add_history_commands(commands)
    return parser


# --- issue 15: `nasflow runs` and `nasflow show RUN` (past runs, read back from MLflow) -----------


def _add_history_commands(commands) -> None:
    from nasflow.config import DEFAULT_EXPERIMENT

    runs = commands.add_parser("runs", help="list recent pipeline runs with their headline numbers")
    runs.add_argument("--limit", type=int, default=10, help="how many runs, newest first")
    show = commands.add_parser("show", help="print a past run's summary (as `nasflow run` printed it)")
    show.add_argument("run", nargs="?", default="latest", help="run id, a unique prefix of one, or 'latest'")
    for parser in (runs, show):
        parser.add_argument(
            "--tracking-uri", default="", help="MLflow URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
        )
        parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT)


def _history_uri(args: argparse.Namespace) -> str:
    from nasflow import tracking

    uri = tracking.resolve_tracking_uri(args.tracking_uri or None)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        # Reading must not create an empty store where the user mistyped a path.
        raise NasflowError(f"no MLflow store at {uri} (give --tracking-uri or run from the folder of mlflow.db)")
    tracking.check_reachable(uri)
    return uri


def _cmd_runs(args: argparse.Namespace) -> int:
    from nasflow.cli.history import format_runs, recent_runs

    print(format_runs(recent_runs(_history_uri(args), args.experiment, args.limit)))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from nasflow.cli.history import find_run, format_unfinished, run_summary
    from nasflow.cli.local_run import format_summary

    uri = _history_uri(args)
    run = find_run(uri, args.experiment, args.run)
    summary = run_summary(uri, run)
    if summary is None:
        print(format_unfinished(run, uri))
        return 0
    seconds = (run.end_time_ms - run.start_time_ms) / 1000 if run.end_time_ms and run.start_time_ms else None
    print(format_summary(summary, seconds))
    return 0


# --- end issue 15


def _cmd_run(args: argparse.Namespace) -> int:
    from nasflow.cli.local_run import format_summary, run_pipeline_locally

    params = pipeline_parameters(args)
    check_run_parameters(params)
    if params["run_identity"] and not params["state_dir"]:
        # Resuming needs the tuner state where the next attempt will look for it.
        params["state_dir"] = str((Path(args.output_dir) / "state" / params["run_identity"]).resolve())
    # --- issue 15: refuse a bad dataset or search space before any run or folder exists.
    from nasflow.cli.inputs import check_run_inputs

    check_run_inputs(params)
    # --- end issue 15
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
        if not sep or key not in pipeline_parameter_names():
            raise NasflowError(
                f"--param {item!r}: expected KEY=VALUE with KEY one of the pipeline parameters"
            )
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    check_run_parameters(params)
    return params


def _package(args: argparse.Namespace) -> str:
    if args.package:
        if not Path(args.package).is_file():
            raise NasflowError(f"--package {args.package}: file not found")
        return args.package
    return str(compile_pipeline(Path(os.environ.get("TMPDIR", "/tmp")) / f"nasflow-{os.getpid()}.yaml"))


def _cmd_submit(args: argparse.Namespace) -> int:
    from nasflow.cli.remote import submit_pipeline

    parameters = _remote_parameters(args)
    run = submit_pipeline(
        args.host,
        _package(args),
        parameters,
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
        from nasflow.cli.remote import report_registered_version

        report_registered_version(parameters, run.run_id, args.output_file)
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
    "runs": _cmd_runs,
    "show": _cmd_show,
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
