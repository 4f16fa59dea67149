"""``nasflow runs`` and ``nasflow show``: past pipeline runs, read back from MLflow.

The register step logs the run's summary as ``summary.json`` on the parent run, so
``nasflow show RUN`` prints the very summary ``nasflow run`` printed at its end, for any
past run (a scheduled one included). A run that ended before registering shows its
status, its failure reason and what it logged.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasflow import tracking
from nasflow.errors import NasflowError

SUMMARY_ARTIFACT = "summary.json"


@dataclass
class PipelineRun:
    """One pipeline run (an MLflow parent run) and its headline numbers."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    start_time_ms: int | None
    end_time_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def from_mlflow(cls, run) -> PipelineRun:
        """From an ``mlflow.entities.Run``."""
        return cls(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            name=run.info.run_name or "",
            status=run.info.status,
            start_time_ms=run.info.start_time,
            end_time_ms=run.info.end_time,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            tags=dict(run.data.tags),
        )


def recent_runs(tracking_uri: str, experiment: str, limit: int = 10) -> list[PipelineRun]:
    """The most recent pipeline runs of ``experiment``, newest first.

    Raises:
        NasflowError: The experiment does not exist.
    """
    client = tracking.make_client(tracking_uri)
    found = tracking.with_retry(lambda: client.get_experiment_by_name(experiment), "get experiment")
    if found is None:
        raise NasflowError(f"no experiment '{experiment}' at {tracking_uri} (no pipeline has run there yet?)")
    runs = tracking.with_retry(
        lambda: client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{tracking.ROLE_TAG}` = 'pipeline'",
            order_by=["attributes.start_time DESC"],
            max_results=limit,
        ),
        "list pipeline runs",
    )
    return [PipelineRun.from_mlflow(run) for run in runs]


def format_runs(runs: list[PipelineRun]) -> str:
    """A table of runs with their headline numbers, one line each."""
    if not runs:
        return "no pipeline runs yet"
    header = (
        f"{'run id':<32}  {'started':<16}  {'status':<8}  {'dataset':<12}  {'trials':>6}  "
        f"{'best val':>8}  {'test acc':>8}  {'variant size':>12}  {'latency':>9}  model"
    )
    lines = [header]
    for run in runs:
        metrics = run.metrics
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.start_time_ms / 1000)) if run.start_time_ms else ""
        dataset = Path(run.params.get("dataset_name") or run.params.get("dataset", "")).name
        lines.append(
            f"{run.run_id:<32}  {started:<16}  {run.status:<8}  {dataset[:12]:<12}  "
            f"{_number(metrics.get('search.trials_total'), '{:.0f}'):>6}  "
            f"{_number(metrics.get('search.best_val_accuracy'), '{:.4f}'):>8}  "
            f"{_number(metrics.get('test_accuracy'), '{:.4f}'):>8}  "
            f"{_number(metrics.get('selected.size_kb'), '{:.1f} KiB'):>12}  "
            f"{_number(metrics.get('selected.latency_p50_ms'), '{:.3f} ms'):>9}  "
            f"{run.tags.get('nasflow.registered_version', '')}"
        )
    return "\n".join(lines)


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def find_run(tracking_uri: str, experiment: str, reference: str) -> PipelineRun:
    """The pipeline run a user names: a run id, a unique prefix of one, a run name or ``latest``.

    Raises:
        NasflowError: No run, or several, match.
    """
    client = tracking.make_client(tracking_uri)
    if len(reference) == 32:
        from mlflow.exceptions import MlflowException

        try:
            return PipelineRun.from_mlflow(tracking.with_retry(lambda: client.get_run(reference), "get run"))
        except MlflowException:
            pass
    runs = recent_runs(tracking_uri, experiment, limit=1000)
    if reference == "latest":
        if not runs:
            raise NasflowError(f"no pipeline runs in experiment '{experiment}'")
        return runs[0]
    matches = [run for run in runs if run.run_id.startswith(reference) or run.name == reference]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NasflowError(f"no pipeline run '{reference}' in experiment '{experiment}' (see: nasflow runs)")
    raise NasflowError(f"'{reference}' matches {len(matches)} runs; give more of the run id")


def run_summary(tracking_uri: str, run: PipelineRun) -> dict[str, Any] | None:
    """The summary the register step logged on the run, or ``None`` if it has none."""
    client = tracking.make_client(tracking_uri)
    names = {item.path for item in tracking.with_retry(lambda: client.list_artifacts(run.run_id), "list artifacts")}
    if SUMMARY_ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = tracking.with_retry(
            lambda: client.download_artifacts(run.run_id, SUMMARY_ARTIFACT, folder), "download summary"
        )
        summary = json.loads(Path(local).read_text())
    summary.setdefault("experiment_id", run.experiment_id)
    summary.setdefault("parent_run_id", run.run_id)
    return summary


def format_unfinished(run: PipelineRun, tracking_uri: str) -> str:
    """What a run that never registered a model shows: its status, why, what it logged."""
    from nasflow.cli.local_run import mlflow_ui_base

    lines = [
        "",
        f"pipeline run {run.run_id} ({run.name}): {run.status}, no model registered",
    ]
    reason = run.tags.get("nasflow.pipeline_message") or run.tags.get(tracking.FAILURE_REASON_TAG, "")
    if reason:
        lines.append(f"  reason            : {reason}")
    headline = {key: value for key, value in sorted(run.metrics.items()) if not key.startswith("system/")}
    for key, value in headline.items():
        lines.append(f"  {key:<18}: {value:g}")
    lines.append(f"  this run          : {mlflow_ui_base(tracking_uri)}/#/experiments/{run.experiment_id}/runs/{run.run_id}")
    return "\n".join(lines)
