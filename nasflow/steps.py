"""What each pipeline step does, from plain paths and values to files and MLflow records.

A KFP component calls exactly one of these functions; so do the tests, without KFP.
Every user-caused failure surfaces as one ``nasflow: ...`` line on stderr (and in
``NASFLOW_ERROR_FILE`` when the local runner set one) and a non-zero exit.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nasflow import tracking
from nasflow.errors import NasflowError, SearchError

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

ERROR_FILE_ENV = "NASFLOW_ERROR_FILE"


def user_errors(step_name: str) -> Callable[[F], F]:
    """Turn a ``NasflowError`` into one printed line and exit code 1."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except NasflowError as error:
                message = f"{step_name}: {error}"
                print(f"nasflow: {message}", file=sys.stderr, flush=True)
                error_file = os.environ.get(ERROR_FILE_ENV)
                if error_file:
                    with open(error_file, "a", encoding="utf-8") as handle:
                        handle.write(message.replace("\n", " ") + "\n")
                raise SystemExit(1) from error

        return wrapper  # type: ignore[return-value]

    return decorate


# --------------------------------------------------------------------------- tracking


@user_errors("start-tracking")
def start_tracking_step(
    tracking_uri: str, experiment: str, pipeline_job_id: str, params: Mapping[str, Any] | None = None
) -> str:
    """Check the tracking server and open the pipeline's parent run; returns its id."""
    return tracking.start_parent_run(tracking_uri, experiment, pipeline_job_id, params=params)


def finish_tracking_step(
    tracking_uri: str, experiment: str, pipeline_job_id: str, state: str, error_message: str = ""
) -> None:
    """Close the parent run (FINISHED or FAILED) and any trial a crash left RUNNING."""
    try:
        tracking.finish_parent_run(
            tracking_uri, experiment, pipeline_job_id, succeeded=state == "SUCCEEDED", message=error_message
        )
    except NasflowError as error:
        # The exit handler must not mask the pipeline's own outcome.
        print(f"nasflow: finish-tracking: {error}", file=sys.stderr)


# --------------------------------------------------------------------------- data


@user_errors("data-prep")
def data_prep_step(
    dataset: str,
    output_dir: str,
    *,
    label_column: str = "label",
    seed: int = 42,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    min_samples_per_class: int = 5,
) -> dict[str, Any]:
    """Load, validate and split a dataset into ``output_dir``; returns its metadata."""
    from nasflow.data import prepare_dataset

    metadata = prepare_dataset(
        dataset,
        output_dir,
        label_column=label_column,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        min_samples_per_class=min_samples_per_class,
    )
    return metadata.to_dict()


# --------------------------------------------------------------------------- search


@user_errors("search")
def search_step(
    dataset_dir: str,
    *,
    parent_run_id: str,
    tracking_uri: str,
    search_space: str,
    strategy: str,
    max_trials: int,
    epochs: int,
    seed: int,
    best_hyperparameters_path: str,
    trial_table_path: str,
    report_path: str,
    objective: Mapping[str, Any] | None = None,
    max_search_minutes: float = 0.0,
    state_dir: str = "",
    num_workers: int = 0,
    trials_per_process: int = 0,
) -> dict[str, float]:
    """Run the architecture search and write the best hyperparameters, trial table and report.

    Returns:
        Scalar metrics for the KFP ``Metrics`` artifact.
    """
    from nasflow.data import load_prepared
    from nasflow.objectives import ObjectiveConfig
    from nasflow.search import (
        PROJECT_NAME,
        SearchSettings,
        choose_best,
        collect_trials,
        run_search,
        summarize_rows,
        write_trial_table,
    )
    from nasflow.search_space import load_search_space, resolve_search_space

    data = load_prepared(dataset_dir)
    space_path = resolve_search_space(search_space or None, data.metadata.modality)
    space = load_search_space(space_path)
    if space.modality != data.metadata.modality:
        raise SearchError(
            f"search space {space_path} is for {space.modality} data but dataset {data.metadata.name} is {data.metadata.modality}"
        )
    objective_config = _objective_config(objective or {}, ObjectiveConfig)
    settings = SearchSettings(
        strategy=strategy,
        max_trials=max_trials,
        epochs=epochs,
        seed=seed,
        max_search_minutes=max_search_minutes,
        num_workers=num_workers,
        trials_per_process=trials_per_process,
    )
    settings.validate()
    parent = tracking.open_parent(tracking_uri, parent_run_id)
    parent.log_params(
        {
            "search.strategy": strategy,
            "search.max_trials": max_trials,
            "search.epochs": epochs,
            "search.space": space.name,
            "search.objective": objective_config.mode,
            "dataset": data.metadata.name,
        }
    )
    parent.log_artifact(space_path, "search_space")
    # A persistent state folder (PVC/bucket on a cluster) lets a retried task resume.
    work_dir = Path(state_dir) if state_dir else Path(best_hyperparameters_path).parent / "tuner"
    resume = bool(state_dir) and (work_dir / PROJECT_NAME / "oracle.json").exists()
    if settings.uses_worker_processes:
        _search_with_workers(dataset_dir, space, space_path, settings, objective_config, parent, work_dir, resume)
    else:
        run_search(data, space, settings, objective_config, parent=parent, work_dir=work_dir, overwrite=not resume)

    rows = collect_trials(parent)
    Path(trial_table_path).parent.mkdir(parents=True, exist_ok=True)
    write_trial_table(rows, trial_table_path)
    _log_named(parent, trial_table_path, "trials.csv", "search")
    result = choose_best(rows, objective_config)
    document = result.best_hyperparameters_json(str(space_path))
    document["search_space_config"] = space.to_dict()
    document["objective"] = objective_config.__dict__
    Path(best_hyperparameters_path).parent.mkdir(parents=True, exist_ok=True)
    Path(best_hyperparameters_path).write_text(json.dumps(document, indent=2, default=str))
    _log_named(parent, best_hyperparameters_path, "best_hyperparameters.json", "search")
    parent.set_tags({"nasflow.best_trial_id": result.best_trial_id, "nasflow.best_architecture": result.best_row["architecture"]})
    tracking.set_tags(parent.client, result.best_row["mlflow_run_id"], {"nasflow.best_trial": "true"})

    pareto_dir = Path(trial_table_path).parent / "pareto"
    report = _search_report(rows, result, objective_config, pareto_dir)
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(report)
    for produced in sorted(pareto_dir.glob("pareto.*")):
        parent.log_artifact(produced, "search")
    metrics = summarize_rows(rows)
    metrics["chosen_val_accuracy"] = float(result.best_row["val_accuracy"] or 0.0)
    parent.log_metrics({f"search.{key}": value for key, value in metrics.items()})
    return metrics


def _search_with_workers(dataset_dir, space, space_path, settings, objective_config, parent, work_dir, resume) -> None:
    """Chief + worker processes: local processes, or an indexed Job when running in a pod."""
    from dataclasses import asdict

    from nasflow import distributed

    spec = distributed.WorkerSpec(
        dataset_dir=str(Path(dataset_dir).resolve()),
        space_config=space.to_dict(),
        space_source=str(space_path),
        settings=asdict(settings),
        objective=asdict(objective_config),
        parent_run_id=parent.run_id,
        tracking_uri=parent.client.tracking_uri,
        work_dir=str(Path(work_dir).resolve()),
        overwrite=not resume,
    )
    if distributed.in_kubernetes() and settings.num_workers > 0:
        distributed.run_search_on_cluster(
            spec, num_workers=settings.num_workers, trials_per_process=settings.trials_per_process
        )
        return
    with distributed.tracking_for_workers(spec.tracking_uri, settings.num_workers) as worker_uri:
        spec.tracking_uri = worker_uri
        distributed.run_search_processes(
            spec, num_workers=settings.num_workers, trials_per_process=settings.trials_per_process
        )


def _log_named(run: tracking.RunHandle, path: str, file_name: str, artifact_dir: str) -> None:
    """Log a KFP artifact file (which has no extension) under a name a person can open."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        named = Path(folder) / file_name
        shutil.copyfile(path, named)
        run.log_artifact(named, artifact_dir or None)


def _objective_config(values: Mapping[str, Any], config_cls):
    known = {name for name in config_cls.__dataclass_fields__}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SearchError(f"unknown objective setting(s): {', '.join(unknown)}")
    # Pipeline parameters use 0 for "no constraint" because KFP has no optional numbers.
    cleaned = {key: (None if key.startswith("max_") and not value else value) for key, value in values.items()}
    if cleaned.get("cost_target") == 0:
        cleaned["cost_target"] = None
    return config_cls(**cleaned)


def _search_report(rows, result, objective_config, folder: Path) -> str:
    """Markdown for the KFP UI: chosen trial, trial table, Pareto front."""
    from nasflow.objectives import pareto_markdown, plot_pareto
    from nasflow.search import _cost_key

    cost_key = _cost_key(objective_config)
    chosen = rows.index(result.best_row)
    lines = [
        "# Architecture search",
        "",
        f"Chosen trial **{result.best_trial_id}**: `{result.best_row['architecture']}` "
        f"(val accuracy {result.best_row['val_accuracy']:.4f}).",
        "",
        pareto_markdown(rows, result.pareto_front, chosen, cost_key),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    front_ids = set(result.pareto_front)
    with (folder / "pareto.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial_id", "status", "feasible", "val_accuracy", cost_key, "on_front", "chosen"])
        for index, row in enumerate(rows):
            writer.writerow(
                [row["trial_id"], row["status"], row["feasible"], row["val_accuracy"], row.get(cost_key),
                 index in front_ids, index == chosen]
            )
    try:
        plot_pareto(rows, result.pareto_front, chosen, folder / "pareto.png", cost_key=cost_key)
    except Exception as error:  # a plot is a nicety; the search result stands without it
        logger.warning("could not draw the Pareto plot: %s", error)
    else:
        import base64

        # Inline, so the KFP UI shows the plot without access to the MLflow store.
        encoded = base64.b64encode((folder / "pareto.png").read_bytes()).decode("ascii")
        lines += ["", f"![Pareto front: accuracy against {cost_key}](data:image/png;base64,{encoded})"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- train


@user_errors("train")
def train_step(
    dataset_dir: str,
    best_hyperparameters_path: str,
    *,
    parent_run_id: str,
    tracking_uri: str,
    epochs: int,
    seed: int,
    model_dir: str,
    use_gpu: bool = False,
) -> dict[str, Any]:
    """Train the chosen architecture on train+val and evaluate it on test.

    Returns:
        ``{"metrics": {...}, "confusion_matrix": [[...]], "class_names": [...]}``.
    """
    from nasflow.data import load_prepared
    from nasflow.search_space import parse_search_space
    from nasflow.train import train_final_model

    data = load_prepared(dataset_dir)
    best = _read_json(best_hyperparameters_path, "best hyperparameters")
    space = parse_search_space(best["search_space_config"], source=best.get("search_space", "<best hyperparameters>"))
    parent = tracking.open_parent(tracking_uri, parent_run_id)
    with tracking.child_run(parent, "train", tags={tracking.ROLE_TAG: "train"}) as run:
        run.log_params({**best["values"], "train.epochs": epochs, "train.seed": seed})

        def log_epoch(epoch, logs):
            run.log_metrics({key: float(value) for key, value in (logs or {}).items()}, step=epoch)

        result = train_final_model(
            data, space, best["values"], epochs=epochs, output_dir=model_dir, seed=seed, use_gpu=use_gpu,
            epoch_callback=log_epoch,
        )
        metrics = {
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "epochs_run": float(result.epochs_run),
            "params": float(result.params),
        }
        run.log_metrics(metrics)
        run.set_tags({"nasflow.device": result.device, "nasflow.mixed_precision": str(result.mixed_precision).lower()})
        run.log_artifact(result.model_path, "model")
    parent.log_metrics({"test_accuracy": result.test_accuracy})
    info = {"architecture": best.get("architecture", ""), "trial_id": best.get("trial_id"), "train_run_id": run.run_id}
    Path(model_dir, "training.json").write_text(json.dumps({**info, "metrics": metrics}, indent=2))
    return {"metrics": metrics, "confusion_matrix": result.confusion_matrix, "class_names": result.class_names}


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SearchError(f"{path}: cannot read {what}: {error}") from error


# --------------------------------------------------------------------------- compress


@user_errors("compress")
def compress_step(
    dataset_dir: str,
    model_dir: str,
    *,
    parent_run_id: str,
    tracking_uri: str,
    variants: Sequence[str],
    max_accuracy_drop: float,
    prefer: str,
    output_dir: str,
    seed: int = 42,
    fine_tune_epochs: int = 2,
) -> dict[str, Any]:
    """Produce, measure and select compressed variants; one MLflow child run each.

    Returns:
        ``{"selected": name, "reason": str, "markdown": table, "metrics": {...}}``.
    """
    import keras

    from nasflow.compression import compress_model
    from nasflow.compression.pipeline import REPORT_FILES
    from nasflow.data import load_prepared

    data = load_prepared(dataset_dir)
    model = keras.saving.load_model(Path(model_dir) / "model.keras", safe_mode=True)
    parent = tracking.open_parent(tracking_uri, parent_run_id)
    report = compress_model(
        model,
        data,
        output_dir,
        variants=list(variants),
        max_accuracy_drop=max_accuracy_drop,
        prefer=prefer,
        fine_tune_epochs=fine_tune_epochs,
        seed=seed,
    )
    for variant in [report.baseline, *report.variants]:
        with tracking.child_run(
            parent, f"compress-{variant.name}", tags={tracking.ROLE_TAG: "compression", "nasflow.variant": variant.name}
        ) as run:
            run.log_params({"variant": variant.name, "technique": variant.technique})
            run.log_metrics(
                {
                    "test_accuracy": variant.accuracy,
                    "size_bytes": variant.size_bytes,
                    "gzip_bytes": variant.gzip_bytes,
                    "latency_p50_ms": variant.latency_p50_ms,
                    "latency_p95_ms": variant.latency_p95_ms,
                    "params": variant.params,
                    "sparsity": variant.sparsity,
                }
            )
            run.set_tags({"nasflow.selected": str(variant.name == report.selected).lower()})
            run.log_artifact(variant.path, "model")
    for name, reason in report.skipped.items():
        with tracking.child_run(
            parent, f"compress-{name}", tags={tracking.ROLE_TAG: "compression", "nasflow.variant": name}
        ) as run:
            run.set_tags({"nasflow.variant_status": "SKIPPED", "nasflow.skip_reason": reason[:5000]})
    for file_name in REPORT_FILES:
        parent.log_artifact(Path(output_dir) / file_name, "compression")
    parent.set_tags({"nasflow.compression.selected": report.selected, "nasflow.compression.reason": report.reason})
    selected = next((v for v in [report.baseline, *report.variants] if v.name == report.selected), report.baseline)
    metrics = {
        "baseline_accuracy": report.baseline.accuracy,
        "baseline_size_bytes": float(report.baseline.size_bytes),
        "selected_accuracy": selected.accuracy,
        "selected_size_bytes": float(selected.size_bytes),
        "selected_latency_p50_ms": selected.latency_p50_ms,
    }
    return {"selected": report.selected, "reason": report.reason, "markdown": report.to_markdown(), "metrics": metrics}


# --------------------------------------------------------------------------- register


@user_errors("register")
def register_step(
    dataset_dir: str,
    model_dir: str,
    compressed_dir: str,
    *,
    parent_run_id: str,
    tracking_uri: str,
    model_name: str,
    min_improvement: float,
    summary_path: str,
) -> dict[str, Any]:
    """Register the selected variant, set ``challenger``, run the promotion gate; write the summary."""
    from nasflow.data import load_prepared
    from nasflow.registry import promote, register_model

    data = load_prepared(dataset_dir)
    from nasflow.compression.pipeline import REPORT_FILES

    report = _read_json(str(Path(compressed_dir) / REPORT_FILES[2]), "compression report")
    training = _read_json(str(Path(model_dir) / "training.json"), "training record")
    int8 = next((v for v in report["variants"] if v["name"] == "int8"), None)
    selected_name = report["selected"]
    candidates = [report["baseline"], *report["variants"]]
    selected = next(v for v in candidates if v["name"] == selected_name)
    serve = "keras" if selected_name == "float32" else "tflite"
    uri = tracking.resolve_tracking_uri(tracking_uri)
    version = register_model(
        keras_model_path=str(Path(model_dir) / "model.keras"),
        tflite_path=selected["path"] if serve == "tflite" else None,
        extra_artifacts={"int8_tflite": int8["path"]} if int8 else None,
        serve=serve,
        model_name=model_name,
        test_metric_name="test_accuracy",
        test_metric_value=float(selected["accuracy"]),
        input_example=data.x_test[:5],
        run_id=parent_run_id,
        tags={"nasflow.variant": selected_name, "nasflow.architecture": training.get("architecture", "")},
        tracking_uri=uri,
    )
    decision = promote(model_name, version.version, min_improvement=min_improvement, tracking_uri=uri)
    summary = {
        "architecture": training.get("architecture", ""),
        "trial_id": training.get("trial_id"),
        "test_accuracy": training["metrics"]["test_accuracy"],
        "variants": [
            {
                "name": v["name"],
                "accuracy": v["accuracy"],
                "size_bytes": v["size_bytes"],
                "latency_p50_ms": v["latency_p50_ms"],
            }
            for v in candidates
        ],
        "selected_variant": selected_name,
        "selection_reason": report["reason"],
        "model_name": version.name,
        "model_version": version.version,
        "aliases": ["challenger", *(["champion"] if decision.promoted else [])],
        "promotion": {"promoted": decision.promoted, "reason": decision.reason},
        "tracking_uri": uri,
        "parent_run_id": parent_run_id,
    }
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_path).write_text(json.dumps(summary, indent=2))
    parent = tracking.open_parent(uri, parent_run_id)
    _log_named(parent, summary_path, "summary.json", "")
    return summary
