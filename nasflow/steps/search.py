"""The search step: run the architecture search, write the choice, the trial table and a report."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nasflow import tracking
from nasflow.errors import SearchError
from nasflow.steps._common import log_named, user_errors

logger = logging.getLogger(__name__)


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
    worker_image: str = "",
    html_report_path: str = "",
    early_stopping: str = "none",
    measure_costs: str = "auto",
    warm_start: str = "none",
    confirm_best: str = "auto",
) -> dict[str, float]:
    """Run the architecture search and write the best hyperparameters, trial table and report.

    In order: the space and settings are checked against the data (before any trial), the
    parent run gets the warm-start priors and the inputs, the search runs (resuming what an
    earlier attempt left), and the chosen trial is written out with its reports.
    ``html_report_path`` receives the interactive HTML report (also logged on the parent run
    as ``search/report.html``). ``worker_image`` is the image of the worker pods of a search
    on Kubernetes (the compiled pipeline passes its own image); empty:
    :func:`nasflow.config.image_reference`.

    Returns:
        Scalar metrics for the KFP ``Metrics`` artifact.
    """
    from nasflow.data import load_prepared
    from nasflow.search.costs import costs_to_measure
    from nasflow.search.objectives import ObjectiveConfig
    from nasflow.search.settings import SearchSettings

    data = load_prepared(dataset_dir)
    space_path, space = _space_for(data, search_space)
    objective_config = ObjectiveConfig.from_parameters(objective or {})
    settings = SearchSettings(
        strategy=strategy,
        max_trials=max_trials,
        epochs=epochs,
        seed=seed,
        max_search_minutes=max_search_minutes,
        num_workers=num_workers,
        trials_per_process=trials_per_process,
        early_stopping=early_stopping,
        measure_costs=measure_costs,
        confirm_best=confirm_best,
    )
    costs_to_measure(objective_config, settings.measure_costs)  # refuses 'none' for a cost objective
    parent = tracking.open_parent(tracking_uri, parent_run_id)
    settings = _warm_start(parent, settings, warm_start, data, space, objective_config)
    _log_search_inputs(parent, settings, space, space_path, objective_config, data.metadata.name)
    _run_resumable_search(
        parent, data, dataset_dir, space, space_path, settings, objective_config,
        state_dir=state_dir, default_state_dir=Path(best_hyperparameters_path).parent / "tuner",
        worker_image=worker_image,
    )
    return _choose_and_report(
        parent, data, space, space_path, settings, objective_config,
        best_hyperparameters_path=best_hyperparameters_path, trial_table_path=trial_table_path,
        report_path=report_path, html_report_path=html_report_path,
    )


def _space_for(data, search_space: str):
    """The search space to use (named, a YAML path, or picked by modality), checked against the data.

    Returns:
        The space's YAML path and the loaded space.
    """
    from nasflow.spaces.schema import load_search_space, resolve_search_space

    space_path = resolve_search_space(search_space or None, data.metadata.modality)
    space = load_search_space(space_path)
    if space.modality != data.metadata.modality:
        raise SearchError(
            f"search space {space_path} is for {space.modality} data but dataset {data.metadata.name} is {data.metadata.modality}"
        )
    return space_path, space


def _log_search_inputs(parent, settings, space, space_path, objective_config, dataset_name: str) -> None:
    """Log what the search ran with on the parent run, and the space's YAML beside it."""
    parent.log_params(
        {
            "search.strategy": settings.strategy,
            "search.max_trials": settings.max_trials,
            "search.epochs": settings.epochs,
            "search.space": space.name,
            "search.objective": objective_config.mode,
            # start-tracking logged ``dataset`` as the path the user gave; this is its short name.
            "dataset_name": dataset_name,
        }
    )
    parent.log_artifact(space_path, "search_space")


def _run_resumable_search(
    parent, data, dataset_dir: str, space, space_path, settings, objective_config, *, state_dir: str,
    default_state_dir: Path, worker_image: str,
) -> None:
    """Run the search in this process or in worker processes, resuming what an earlier attempt left.

    A retried task resumes from the state of the attempt before: by default a copy kept
    in the parent run's artifacts (no volume to set up), or a persistent state_dir (PVC).
    """
    from nasflow.search.settings import PROJECT_NAME
    from nasflow.search.state import prepare_state
    from nasflow.search.tuner import run_search

    state = prepare_state(
        parent,
        state_dir=state_dir,
        default_dir=default_state_dir,
        project_name=PROJECT_NAME,
    )
    work_dir, resume = state.work_dir, state.resume
    with _search_progress(parent, settings, resume):
        if settings.uses_worker_processes:
            _search_with_workers(
                dataset_dir, space, space_path, settings, objective_config, parent, work_dir, resume, worker_image,
                state_copy=state.copy is not None,
            )
        else:
            run_search(
                data, space, settings, objective_config, parent=parent, work_dir=work_dir, overwrite=not resume,
                state_sync=state.sync,
            )


def _choose_and_report(
    parent,
    data,
    space,
    space_path,
    settings,
    objective_config,
    *,
    best_hyperparameters_path: str,
    trial_table_path: str,
    report_path: str,
    html_report_path: str,
) -> dict[str, float]:
    """Choose the trial to train, write the choice and the reports, log the search's metrics.

    The choice reads the trial runs on the parent run, not the tuner's memory, so a resumed
    or distributed search chooses among every trial that any attempt or worker finished.

    Returns:
        Scalar metrics for the KFP ``Metrics`` artifact.
    """
    from nasflow.search.records import collect_trials
    from nasflow.search.selection import choose_best, summarize_rows

    rows = collect_trials(parent)
    result = choose_best(rows, objective_config)
    if settings.measure_costs == "auto":
        result = _measure_chosen_and_front(parent, rows, result, space, data, objective_config)
    _write_choice(parent, rows, result, space, space_path, objective_config, trial_table_path, best_hyperparameters_path)
    pareto_dir = Path(trial_table_path).parent / "pareto"
    _write_reports(parent, rows, result, objective_config, pareto_dir, report_path, html_report_path)
    metrics = summarize_rows(rows)
    metrics["chosen_val_accuracy"] = float(result.val_accuracy or 0.0)
    parent.log_metrics({f"search.{key}": value for key, value in metrics.items()})
    return metrics


def _write_choice(
    parent, rows, result, space, space_path, objective_config, trial_table_path: str, best_hyperparameters_path: str
) -> None:
    """Write and log the trial table and the chosen trial's hyperparameters; tag the chosen trial."""
    from nasflow.search.selection import write_trial_table

    Path(trial_table_path).parent.mkdir(parents=True, exist_ok=True)
    write_trial_table(rows, trial_table_path)
    log_named(parent, trial_table_path, "trials.csv", "search")
    document = result.best_hyperparameters_json(str(space_path))
    document["search_space_config"] = space.to_dict()
    document["objective"] = objective_config.__dict__
    Path(best_hyperparameters_path).parent.mkdir(parents=True, exist_ok=True)
    Path(best_hyperparameters_path).write_text(json.dumps(document, indent=2, default=str))
    log_named(parent, best_hyperparameters_path, "best_hyperparameters.json", "search")
    parent.set_tags({"nasflow.best_trial_id": result.best_trial_id, "nasflow.best_architecture": result.best_row["architecture"]})
    tracking.set_tags(parent.client, result.best_row["mlflow_run_id"], {"nasflow.best_trial": "true"})


def _write_reports(parent, rows, result, objective_config, pareto_dir: Path, report_path: str, html_report_path: str):
    """The Markdown report (KFP UI), the Pareto files and the HTML report, logged on the parent run."""
    report = _search_report(rows, result, objective_config, pareto_dir)
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(report)
    for produced in sorted(pareto_dir.glob("pareto.*")):
        parent.log_artifact(produced, "search")
    _html_report(parent, rows, result, objective_config, pareto_dir, html_report_path)


def _warm_start(parent, settings, warm_start: str, data, space, objective):
    """Tag the parent run for later runs to find; return the settings with this run's priors."""
    from nasflow.search.warm_start import WARM_START_TAG, find_earlier_runs, prior_observations, run_tags

    tags = run_tags(data.metadata.content_hash, space, objective)
    parent.set_tags(tags)
    earlier = find_earlier_runs(parent, warm_start, tags)
    if not earlier:
        if warm_start not in ("", "none"):
            logger.info("warm start: no earlier run on the same data and space; starting cold")
        return settings
    priors = prior_observations(parent, earlier, objective)
    parent.set_tags({WARM_START_TAG: ",".join(run.info.run_id for run in earlier)})
    parent.log_params({"search.warm_start_priors": len(priors)})
    logger.info("warm start: %d prior observations from %d earlier run(s)", len(priors), len(earlier))
    return dataclasses.replace(settings, prior_observations=tuple(priors))


def _measure_chosen_and_front(parent, rows, result, space, data, objective):
    """Measure TFLite size and LiteRT latency of the chosen trial and the Pareto candidates.

    With ``measure_costs="auto"`` trials measure only what the objective needs, so an
    accuracy search has no size or latency yet. The chosen trial and the Pareto front (on
    the objective's cost, or on FLOPs where that cost was not measured) are measured now,
    once each, and logged to their trial runs. The models are built again from their values
    without training: size and latency depend on the architecture, not on the weights.

    Returns:
        The result, its Pareto front computed again with the measured costs.
    """
    from nasflow.search.costs import measure_candidate_costs
    from nasflow.search.objectives import cost_value, pareto_front
    from nasflow.search.selection import cost_key_for
    from nasflow.search.trial import cost_metrics
    from nasflow.train import hyperparameters_from_values

    cost_key = cost_key_for(objective)
    chosen = rows.index(result.best_row)
    candidates = {chosen, *pareto_front(rows, cost_key), *pareto_front(rows, "flops")}
    for index in sorted(candidates):
        row = rows[index]
        need_latency, need_size = cost_value(row, "latency_ms") is None, cost_value(row, "size_kb") is None
        if not (need_latency or need_size):
            continue
        try:
            model = space.build_model(
                hyperparameters_from_values(space, row["values"]),
                list(data.metadata.input_shape),
                int(data.metadata.num_classes),
            )
            costs = measure_candidate_costs(
                model, data.x_val[:1], measure_latency=need_latency, measure_size=need_size
            ).to_dict()
        except Exception as error:  # noqa: BLE001 - a missing cost must not lose the search
            logger.warning("trial %s: could not measure size and latency: %s", row["trial_id"], error)
            continue
        metrics = cost_metrics(costs)
        tags = {"nasflow.costs_measured": "after-search"}
        if need_latency:
            tags["nasflow.latency_runtime"] = costs["latency_runtime"]
            row["latency_ms"] = metrics.get("latency_p50_ms")
        if need_size and "size_bytes" in metrics:
            row["size_kb"] = metrics["size_bytes"] / 1024.0
        tracking.RunHandle(parent.client, row["mlflow_run_id"]).log_batch(metrics=metrics, tags=tags)
    return dataclasses.replace(result, rows=rows, pareto_front=pareto_front(rows, cost_key))


@contextlib.contextmanager
def _search_progress(parent: tracking.RunHandle, settings, resume: bool) -> Iterator[None]:
    """One progress line per finished trial, from whichever process knows the count.

    In one process the trials report themselves as they end (``TrialRecord.finish``); with
    worker processes this step watches their trial runs appear in MLflow.
    """
    import time

    from nasflow import progress
    from nasflow.search.records import collect_trials, trial_runs

    deadline = time.monotonic() + settings.max_search_minutes * 60 if settings.max_search_minutes else None
    reporter = progress.SearchProgress(total=settings.max_trials, deadline=deadline)
    if resume:
        # A resumed search goes on counting from the trials that already ended.
        reporter.done = len(collect_trials(parent))
    if not settings.uses_worker_processes:
        progress.start_search(reporter.total, deadline).done = reporter.done
        try:
            yield
        finally:
            progress.stop_search()
        return
    watcher = progress.TrialRunWatcher(
        lambda: trial_runs(parent, "attributes.status != 'RUNNING'"), reporter, interval_s=5.0
    )
    if resume:
        watcher.mark_seen(run.info.run_id for run in trial_runs(parent))
    with watcher:
        yield


def _search_with_workers(
    dataset_dir, space, space_path, settings, objective_config, parent, work_dir, resume, worker_image="",
    state_copy=False,
) -> None:
    """Chief + worker processes: local processes, or an indexed Job when running in a pod."""
    from dataclasses import asdict

    from nasflow import cluster

    spec = cluster.WorkerSpec(
        dataset_dir=str(Path(dataset_dir).resolve()),
        space_config=space.to_dict(),
        space_source=str(space_path),
        settings=asdict(settings),
        objective=asdict(objective_config),
        parent_run_id=parent.run_id,
        tracking_uri=parent.client.tracking_uri,
        work_dir=str(Path(work_dir).resolve()),
        overwrite=not resume,
        state_copy=state_copy,  # the chief owns the state: it keeps the copy a retry resumes from
    )
    if cluster.in_kubernetes() and settings.num_workers > 0:
        cluster.run_search_on_cluster(
            spec,
            num_workers=settings.num_workers,
            trials_per_process=settings.trials_per_process,
            image=worker_image or None,
        )
        return
    with cluster.tracking_for_workers(spec.tracking_uri, settings.num_workers) as worker_uri:
        spec.tracking_uri = worker_uri
        cluster.run_search_processes(
            spec, num_workers=settings.num_workers, trials_per_process=settings.trials_per_process
        )


def _html_report(parent, rows, result, objective_config, folder: Path, html_report_path: str) -> None:
    """Diagrams for the chosen trial, the front and a few more; the HTML report on the parent run."""
    from nasflow.search.architecture import render_trial_diagrams, trials_to_render
    from nasflow.search.report import plot_best_so_far, search_report_html
    from nasflow.search.selection import cost_key_for

    chosen = rows.index(result.best_row)
    diagrams = render_trial_diagrams(parent.client, rows, trials_to_render(rows, chosen, list(result.pareto_front)))
    curve = folder / "best_so_far.png"
    try:
        plot_best_so_far(rows, curve)
    except Exception as error:  # noqa: BLE001 - a plot is a nicety
        logger.warning("could not draw the best-so-far curve: %s", error)
    else:
        parent.log_artifact(curve, "search")
    pareto_png = folder / "pareto.png"
    document = search_report_html(
        rows,
        chosen=chosen,
        front=list(result.pareto_front),
        cost_key=cost_key_for(objective_config),
        pareto_png=pareto_png.read_bytes() if pareto_png.exists() else None,
        best_so_far_png=curve.read_bytes() if curve.exists() else None,
        diagrams=diagrams,
    )
    report = folder / "report.html"
    report.write_text(document, encoding="utf-8")
    parent.log_artifact(report, "search")
    if html_report_path:
        Path(html_report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(html_report_path).write_text(document, encoding="utf-8")


def _search_report(rows, result, objective_config, folder: Path) -> str:
    """Markdown for the KFP UI: chosen trial, trial table, Pareto front."""
    from nasflow.search.objectives import pareto_markdown, plot_pareto
    from nasflow.search.selection import cost_key_for

    cost_key = cost_key_for(objective_config)
    chosen = rows.index(result.best_row)
    lines = [
        "# Architecture search",
        "",
        f"Chosen trial **{result.best_trial_id}**: `{result.best_row['architecture']}` "
        f"(val accuracy {result.val_accuracy:.4f}"
        + (f", the mean of {result.observations} trainings" if result.observations > 1 else "")
        + ").",
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
