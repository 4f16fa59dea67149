"""MLflow tracking for a pipeline run: one parent run, nested runs for every candidate.

Each KFP task is a separate process, so nothing here relies on MLflow's fluent
"active run" state: every call names its run id explicitly through ``MlflowClient``.
The parent run is found again by the KFP pipeline-job id it is tagged with, which is
what lets the exit handler close it even though it cannot take task outputs.

Calls to the tracking server are retried with exponential backoff so that a server
restart in the middle of a long search costs time, not results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nasflow.errors import ParameterConflictError, TrackingError, TrackingUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")

PIPELINE_JOB_TAG = "nasflow.pipeline_job_id"
ROLE_TAG = "nasflow.role"
PARENT_TAG = "mlflow.parentRunId"
FAILURE_REASON_TAG = "nasflow.failure_reason"
#: Prefix of the parent-run tag a step sets when it failed deterministically (+ step name).
DETERMINISTIC_FAILURE_TAG = "nasflow.deterministic_failure."

#: How long logging keeps retrying while the server is down before giving up.
DEFAULT_RETRY_SECONDS = 180.0


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The tracking URI to use: the argument, else ``MLFLOW_TRACKING_URI``, else local SQLite.

    The local default is an absolute ``sqlite:///<cwd>/mlflow.db`` so that every KFP task
    process, whatever its working directory, writes to the same store.
    """
    uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        uri = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    if "://" not in uri:
        # A plain directory path means a file store; make it absolute for the same reason.
        uri = Path(uri).resolve().as_uri()
    return uri


def is_remote(tracking_uri: str) -> bool:
    """Whether the URI names a tracking server (as opposed to a local store)."""
    return tracking_uri.startswith(("http://", "https://"))


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifact folder beside a local SQLite store; ``None`` lets a server decide."""
    if tracking_uri.startswith("sqlite:///"):
        db_path = Path(tracking_uri[len("sqlite:///") :])
        return (db_path.parent / "mlartifacts").resolve().as_uri()
    return None


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer.

    Raises:
        TrackingError: The server's ``/health`` endpoint cannot be reached, or a local
            store's folder cannot be created.
    """
    if is_remote(tracking_uri):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - user-given server
                if response.status != 200:
                    raise TrackingUnavailableError(f"MLflow tracking server {tracking_uri} answered HTTP {response.status} on /health")
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingUnavailableError(f"MLflow tracking server {tracking_uri} is unreachable: {reason}") from error
    elif tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingError(f"MLflow store {tracking_uri}: cannot create {folder}: {error}") from error


def with_retry(call: Callable[[], T], what: str, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> T:
    """Run a tracking call, retrying with exponential backoff while the server is away.

    Args:
        call: The call to make.
        what: A few words naming the call, for the log and the final error.
        retry_seconds: Total time to keep retrying.

    Raises:
        TrackingUnavailableError: The call still failed when the time ran out.
    """
    from mlflow.exceptions import MlflowException

    deadline = time.monotonic() + retry_seconds
    delay = 0.5
    while True:
        try:
            return call()
        except (MlflowException, ConnectionError, OSError) as error:
            # A 4xx answer (bad parameter, missing run) will not get better by waiting.
            status = getattr(error, "get_http_status_code", lambda: 500)()
            if isinstance(error, MlflowException) and 400 <= status < 500:
                raise
            if time.monotonic() + delay > deadline:
                raise TrackingUnavailableError(f"MLflow call '{what}' kept failing for {retry_seconds:.0f}s: {error}") from error
            logger.warning("MLflow call '%s' failed (%s); retrying in %.1fs", what, type(error).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def make_client(tracking_uri: str | None = None):
    """An ``MlflowClient`` bound to the resolved tracking URI (and registry)."""
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    tune_local_store(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _sqlite_write_ahead_log(dbapi_connection, _record) -> None:
    """Put a new SQLite connection in WAL mode with ``synchronous=NORMAL``.

    MLflow's SQL store commits every statement group on its own, and SQLite's default
    (rollback journal, ``synchronous=FULL``) fsyncs each commit: ~14 commits a trial cost
    0.27 s a trial on this project's disks, a third of a trial's time outside ``fit``
    (bench/results/cheap_trials_digits.md). In WAL mode a commit is an append to the log, and
    with ``NORMAL`` it is not fsynced: a killed process (SIGKILL, OOM, a KFP retry)
    loses nothing it committed; only an OS crash or power cut can lose the last commits,
    never the database. WAL also lets readers (the MLflow UI, other KFP tasks) read while
    a trial writes. The mode is kept in the file, so other processes use the log too.
    """
    import sqlite3

    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError as error:  # e.g. a file system without shared memory
        logger.debug("SQLite store left in its journal mode: %s", error)
    finally:
        cursor.close()


def tune_local_store(tracking_uri: str) -> None:
    """Give every SQLite connection this process opens the settings of :func:`_sqlite_write_ahead_log`.

    Only for a ``sqlite:`` URI (other stores are left alone), once per process. Called
    wherever nasflow points MLflow at a store (:func:`make_client`, the registry's client
    and fluent API), so every step's connections get the same settings.
    """
    if not tracking_uri.startswith("sqlite:"):
        return
    import sqlalchemy
    from sqlalchemy import event

    if not event.contains(sqlalchemy.engine.Engine, "connect", _sqlite_write_ahead_log):
        event.listen(sqlalchemy.engine.Engine, "connect", _sqlite_write_ahead_log)


def get_or_create_experiment(client, name: str) -> str:
    """The id of the named experiment, created (with a local artifact folder) if missing."""
    experiment = with_retry(lambda: client.get_experiment_by_name(name), "get experiment")
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            with_retry(lambda: client.restore_experiment(experiment.experiment_id), "restore experiment")
        return experiment.experiment_id
    location = default_artifact_location(client.tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another task created it between our two calls.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _flatten(values: Mapping[str, Any]) -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
        flat[str(key)] = text[:6000]
    return flat


def start_parent_run(
    tracking_uri: str | None,
    experiment: str,
    pipeline_job_id: str,
    params: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> str:
    """Create the pipeline's parent run, or return it if this job already made one.

    Finding it by the job-id tag makes a retried task reuse the run instead of
    starting a second parent.

    Returns:
        The parent run id.
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    client = make_client(uri)
    experiment_id = get_or_create_experiment(client, experiment)
    existing = find_parent_run(client, experiment_id, pipeline_job_id)
    if existing is not None:
        # The same run identity again: a retry or a resume after a crash. Reopen it so the
        # finished trials it holds count towards this attempt.
        run = with_retry(lambda: client.get_run(existing), "get parent run")
        if run.info.status != "RUNNING":
            with_retry(lambda: client.update_run(existing, status="RUNNING"), "reopen parent run")
            client.set_tag(existing, "nasflow.resumed", "true")
        # A new pipeline run on this parent starts with a clean slate: a step that failed
        # deterministically last time gets to run again (its inputs may have been fixed).
        for key in run.data.tags:
            if key.startswith(DETERMINISTIC_FAILURE_TAG):
                with_retry(lambda key=key: client.delete_tag(existing, key), "clear failure marker")
        if params:
            # The same parameters again are skipped; a changed one is refused by name.
            log_params_once(client, existing, params)
        return existing
    tags = {PIPELINE_JOB_TAG: pipeline_job_id, ROLE_TAG: "pipeline"}
    run = with_retry(
        lambda: client.create_run(experiment_id, tags=tags, run_name=run_name or f"nas-pipeline-{pipeline_job_id}"),
        "create parent run",
    )
    if params:
        log_params_once(client, run.info.run_id, params)
    return run.info.run_id


def find_parent_run(client, experiment_id: str, pipeline_job_id: str) -> str | None:
    """The parent run tagged with this pipeline job id, if any."""
    # Nested runs carry the job id too: only the role tag tells the parent from its (many) children.
    query = f"tags.`{PIPELINE_JOB_TAG}` = '{pipeline_job_id}' and tags.`{ROLE_TAG}` = 'pipeline'"
    runs = with_retry(
        lambda: client.search_runs([experiment_id], filter_string=query, max_results=5),
        "find parent run",
    )
    parents = [run for run in runs if PARENT_TAG not in run.data.tags]
    return parents[0].info.run_id if parents else None


def finish_parent_run(
    tracking_uri: str | None, experiment: str, pipeline_job_id: str, succeeded: bool, message: str = ""
) -> str | None:
    """Close the parent run and any nested run a crash left RUNNING.

    Returns:
        The parent run id, or ``None`` when the pipeline failed before creating it.
    """
    client = make_client(tracking_uri)
    experiment_obj = with_retry(lambda: client.get_experiment_by_name(experiment), "get experiment")
    if experiment_obj is None:
        return None
    parent_id = find_parent_run(client, experiment_obj.experiment_id, pipeline_job_id)
    if parent_id is None:
        return None
    for run in with_retry(
        lambda: client.search_runs(
            [experiment_obj.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = 'RUNNING'",
            max_results=1000,
        ),
        "find unfinished child runs",
    ):
        client.set_tag(run.info.run_id, FAILURE_REASON_TAG, "the pipeline ended while this run was still running")
        client.set_terminated(run.info.run_id, status="KILLED")
    if message:
        client.set_tag(parent_id, "nasflow.pipeline_message", message[:5000])
    client.set_terminated(parent_id, status="FINISHED" if succeeded else "FAILED")
    return parent_id


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches (MLflow caps a batch at 100)."""
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in _flatten(params).items()]
    for start in range(0, len(items), 100):
        batch = items[start : start + 100]
        with_retry(lambda batch=batch: client.log_batch(run_id, params=batch), "log params")


def log_params_once(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params on a run that several steps write (the parent run): each key once.

    MLflow refuses to change a logged parameter, deep in a step and with a message that
    names neither step. Reading the run first turns that into a clear error naming the key
    and both values, and makes logging the same values again (a retried task) a no-op.

    Raises:
        ParameterConflictError: A key is already logged with a different value.
    """
    existing = with_retry(lambda: client.get_run(run_id), "get run").data.params
    wanted = _flatten(params)
    conflicts = [(key, existing[key], value) for key, value in wanted.items() if key in existing and existing[key] != value]
    if conflicts:
        described = "; ".join(f"{key!r} is {old!r}, refusing {new!r}" for key, old, new in conflicts)
        raise ParameterConflictError(
            f"MLflow run {run_id}: parameter already logged with another value ({described}); "
            "a parameter is logged once: give a different value its own key"
        )
    new_params = {key: value for key, value in wanted.items() if key not in existing}
    if new_params:
        log_params(client, run_id, new_params)


def failure_marker(tracking_uri: str | None, parent_run_id: str, step: str) -> str | None:
    """The line an earlier attempt of ``step`` failed with deterministically, if it left one.

    Best effort and quick: an unreachable server or a missing run reads as "no marker",
    and the step then reports whatever is wrong itself.
    """
    try:
        uri = resolve_tracking_uri(tracking_uri)
        check_reachable(uri, timeout_s=2.0)
        run = make_client(uri).get_run(parent_run_id)
    except Exception as error:  # noqa: BLE001 - a marker is an optimization, never a new failure
        logger.debug("no failure marker read for %s: %s", step, error)
        return None
    return run.data.tags.get(DETERMINISTIC_FAILURE_TAG + step)


def mark_deterministic_failure(tracking_uri: str | None, parent_run_id: str, step: str, line: str) -> None:
    """Leave ``line`` on the parent run, so that a retried attempt of ``step`` fails at once.

    KFP retries a task whatever its exit code (kfp.local and Argo alike); the parent run
    is what every attempt of every step can read.
    """
    try:
        client = make_client(tracking_uri)
        with_retry(
            lambda: client.set_tag(parent_run_id, DETERMINISTIC_FAILURE_TAG + step, line[:5000]),
            "mark deterministic failure",
            retry_seconds=10.0,
        )
    except Exception as error:  # noqa: BLE001 - the step is failing already; say so, do not mask it
        logger.warning("could not mark the %s failure on parent run %s: %s", step, parent_run_id, error)


def metric_items(metrics: Mapping[str, Any], step: int = 0, timestamp_ms: int | None = None) -> list:
    """MLflow ``Metric`` entities of the finite numbers in ``metrics`` (others are skipped)."""
    import math

    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return [
        Metric(key, float(value), now, step)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    ]


#: What one MLflow ``log_batch`` request may carry.
_MAX_BATCH_ENTITIES = 1000
_MAX_BATCH_TAGS = 100


def log_batch(
    client,
    run_id: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    step: int = 0,
    history: Sequence[Any] = (),
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Send metrics and tags in as few ``log_batch`` requests as MLflow allows: usually one.

    ``metrics`` are logged at ``step``; ``history`` holds ready ``Metric`` entities (earlier
    epochs with their own steps and times).
    """
    from mlflow.entities import RunTag

    metric_list = [*history, *metric_items(metrics or {}, step)]
    tag_list = [RunTag(key, value) for key, value in _flatten(tags or {}).items()]
    while metric_list or tag_list:
        tag_chunk, tag_list = tag_list[:_MAX_BATCH_TAGS], tag_list[_MAX_BATCH_TAGS:]
        room = _MAX_BATCH_ENTITIES - len(tag_chunk)
        metric_chunk, metric_list = metric_list[:room], metric_list[room:]
        with_retry(
            lambda m=metric_chunk, t=tag_chunk: client.log_batch(run_id, metrics=m, tags=t), "log metrics and tags"
        )


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite numeric metrics in one batch; non-numbers are skipped."""
    log_batch(client, run_id, metrics=metrics, step=step)


def set_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set several tags in one batch."""
    from mlflow.entities import RunTag

    items = [RunTag(key, value) for key, value in _flatten(tags).items()]
    if items:
        with_retry(lambda: client.log_batch(run_id, tags=items), "set tags")


def log_artifact(client, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file or folder to the run's artifacts."""
    path = Path(path)
    if path.is_dir():
        with_retry(lambda: client.log_artifacts(run_id, str(path), artifact_path), f"log artifacts {path.name}")
    else:
        with_retry(lambda: client.log_artifact(run_id, str(path), artifact_path), f"log artifact {path.name}")


class RunHandle:
    """A run being written to, with the client that writes it."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id
        self._run = None

    def cached_run(self):
        """The run as first read, for what never changes (experiment id, creation tags).

        One ``get_run`` per process instead of one per trial.
        """
        if self._run is None:
            self._run = with_retry(lambda: self.client.get_run(self.run_id), "get run")
        return self._run

    def log_params(self, params: Mapping[str, Any]) -> None:
        """See :func:`log_params`."""
        log_params(self.client, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """See :func:`log_metrics`."""
        log_metrics(self.client, self.run_id, metrics, step)

    def log_batch(
        self,
        *,
        metrics: Mapping[str, Any] | None = None,
        step: int = 0,
        history: Sequence[Any] = (),
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """See :func:`log_batch`."""
        log_batch(self.client, self.run_id, metrics=metrics, step=step, history=history, tags=tags)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """See :func:`set_tags`."""
        set_tags(self.client, self.run_id, tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """See :func:`log_artifact`."""
        log_artifact(self.client, self.run_id, path, artifact_path)

    def terminate(self, status: str) -> None:
        """End the run with an MLflow status (FINISHED, FAILED, KILLED)."""
        with_retry(lambda: self.client.set_terminated(self.run_id, status=status), "end run")


class ParentRunHandle(RunHandle):
    """The pipeline's parent run, which every step writes: parameters are logged once each."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """See :func:`log_params_once`."""
        log_params_once(self.client, self.run_id, params)


def open_parent(tracking_uri: str | None, parent_run_id: str) -> ParentRunHandle:
    """A handle on an existing parent run (checks that it exists)."""
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    client = make_client(uri)
    parent = ParentRunHandle(client, parent_run_id)
    try:
        parent.cached_run()
    except TrackingUnavailableError:
        raise
    except Exception as error:
        raise TrackingError(f"MLflow {uri}: parent run {parent_run_id!r} not found: {error}") from error
    return parent


def start_child_run(parent: RunHandle, run_name: str, tags: Mapping[str, Any] | None = None) -> RunHandle:
    """Create a run nested under ``parent`` in the same experiment."""
    client = parent.client
    parent_run = parent.cached_run()
    all_tags = {PARENT_TAG: parent.run_id}
    for key in (PIPELINE_JOB_TAG,):
        if key in parent_run.data.tags:
            all_tags[key] = parent_run.data.tags[key]
    all_tags.update({key: str(value) for key, value in (tags or {}).items()})
    run = with_retry(
        lambda: client.create_run(parent_run.info.experiment_id, tags=all_tags, run_name=run_name), "create child run"
    )
    return RunHandle(client, run.info.run_id)


@contextlib.contextmanager
def child_run(parent: RunHandle, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[RunHandle]:
    """A nested run that ends FINISHED, or FAILED with the reason when the block raises."""
    run = start_child_run(parent, run_name, tags)
    try:
        yield run
    except BaseException as error:
        run.set_tags({FAILURE_REASON_TAG: f"{type(error).__name__}: {error}"[:5000]})
        run.terminate("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    run.terminate("FINISHED")
