"""Trial records in MLflow: one nested run per trial, written in few requests, read back as rows."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from nasflow import faults, progress, tracking
from nasflow.search.settings import COMPLETED, INFEASIBLE, INVALID, OBJECTIVE_NAME, PRUNED

logger = logging.getLogger(__name__)


#: Epoch metrics wait at most this long before they are sent: a trial of a few seconds sends
#: them once, with its final metrics; a long trial still shows live curves in the MLflow UI.
EPOCH_FLUSH_S = 30.0
#: Tag of a trial run: the seed its weights, dropout and shuffling were drawn from (what a
#: warm-started run needs to evaluate the trial's architecture again the same way).
TRIAL_SEED_TAG = "nasflow.trial_seed"


class TrialRecord:
    """The nested MLflow run of one trial, written in as few requests as the UI allows.

    Opening it closes a stale attempt of the same trial (a worker that died mid-trial leaves
    its run RUNNING) and creates the run with its tags and params. Epoch metrics are kept and
    sent at most every :data:`EPOCH_FLUSH_S`; the final metrics, the kept epochs and every tag
    gathered on the way go in one batch when the trial finishes. A trial of a few seconds
    costs 5 requests (search for a stale attempt, create, params, one batch, end) instead of
    9 + one per epoch: on a shared tracking server that is what limits how many workers a
    search can use (``docs/scaling.md``).
    """

    def __init__(self, run: tracking.RunHandle, flush_every_s: float = EPOCH_FLUSH_S):
        self.run = run
        self.flush_every_s = flush_every_s
        self.closed = False
        self._epochs: list = []
        self._tags: dict[str, Any] = {}
        self._last_flush = time.monotonic()
        self._architecture_files: dict[str, str] = {}
        self.trial_id = ""
        self.architecture = ""

    @classmethod
    def open(
        cls,
        parent: tracking.RunHandle,
        trial_id: str,
        *,
        tags: Mapping[str, Any],
        params: Mapping[str, Any],
        interrupted_runs: dict[str, str] | None = None,
        flush_every_s: float = EPOCH_FLUSH_S,
    ) -> TrialRecord:
        """Start the run of ``trial_id`` under ``parent``.

        Args:
            parent: The search's parent run.
            trial_id: Keras Tuner's trial id.
            tags: Tags describing the trial (strategy, tuner id, architecture).
            params: The trial's hyperparameter values.
            interrupted_runs: Trial id -> run id of an interrupted attempt; updated with any
                attempt closed here, and the new run names the one it resumes.
            flush_every_s: See :data:`EPOCH_FLUSH_S`.
        """
        interrupted = interrupted_runs if interrupted_runs is not None else {}
        interrupted.update(close_running_attempts(parent, trial_id))
        all_tags = {
            tracking.ROLE_TAG: "trial",
            "nasflow.trial_id": trial_id,
            "nasflow.trial_status": "RUNNING",
            **tags,
        }
        if trial_id in interrupted:
            all_tags["nasflow.resumed_from_run"] = interrupted[trial_id]
        run = tracking.start_child_run(
            parent, run_name=trial_run_name(trial_id, str(tags.get("nasflow.architecture", ""))), tags=all_tags
        )
        run.log_params(params)
        record = cls(run, flush_every_s)
        record.trial_id, record.architecture = trial_id, str(tags.get("nasflow.architecture", ""))
        faults.kill_point("trial", trial_id)
        return record

    def add_epoch(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Keep one epoch's metrics; send what is kept if the last send is old enough."""
        self._epochs.extend(tracking.metric_items(logs, step=epoch))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.run.log_batch(history=self._drain())

    def keep_architecture(self, model, space: Any = None, values: Mapping[str, Any] | None = None) -> None:
        """Keep the built model's architecture view (DOT + summary); uploaded when the trial finishes."""
        from nasflow.search.architecture import describe_model

        self._architecture_files = describe_model(model, space, values).files()

    def tag(self, tags: Mapping[str, Any]) -> None:
        """Add tags to the run; they are sent with the final batch."""
        self._tags.update(tags)

    def finish(
        self,
        status: str,
        metrics: Mapping[str, float],
        *,
        duration_s: float,
        reason: str = "",
        feasible: bool | None = None,
    ) -> None:
        """Send everything left in one batch and end the run (FINISHED, or FAILED for a failure).

        A ``PRUNED`` trial (stopped early, see :mod:`nasflow.search.early_stopping`) ends
        FINISHED: it trained and was scored, on fewer epochs. An ``INVALID`` one (an
        architecture that cannot be built for the input) ends FINISHED too: it is a result
        of the search, not a failure.
        """
        tags = {**self._tags, "nasflow.trial_status": status}
        if feasible is not None:
            tags["nasflow.feasible"] = str(feasible).lower()
        if reason:
            tags[tracking.FAILURE_REASON_TAG if status != INFEASIBLE else "nasflow.infeasible_reason"] = reason
        self.run.log_batch(metrics={**metrics, "duration_s": duration_s}, history=self._drain(), tags=tags)
        self._upload_architecture()
        self.run.terminate("FINISHED" if status in (COMPLETED, INFEASIBLE, INVALID, PRUNED) else "FAILED")
        self.closed = True
        reporter = progress.search_reporter()
        if reporter is not None:
            reporter.trial_finished(
                self.trial_id,
                status,
                val_accuracy=metrics.get("final_val_accuracy"),
                architecture=self.architecture,
                seconds=duration_s,
                reason=reason,
            )

    def _upload_architecture(self) -> None:
        """One upload of the trial's ``architecture/`` folder; a failure costs the view, not the trial."""
        if not self._architecture_files:
            return
        import tempfile
        from pathlib import Path

        from nasflow.search.architecture import ARTIFACT_DIR

        try:
            with tempfile.TemporaryDirectory() as folder:
                for name, text in self._architecture_files.items():
                    Path(folder, name).write_text(text, encoding="utf-8")
                self.run.log_artifact(folder, ARTIFACT_DIR)
        except Exception as error:  # noqa: BLE001 - the view is a nicety
            logger.warning("trial %s: could not store its architecture view: %s", self.trial_id, error)

    def _drain(self) -> list:
        items, self._epochs = self._epochs, []
        self._last_flush = time.monotonic()
        return items


def trial_run_name(trial_id: str, architecture: str = "") -> str:
    """``trial-007 conv32k3-conv64k5bn|gap|dense64``: sorts by trial and reads well in the runs table."""
    number = progress.trial_number(trial_id)
    name = f"trial-{int(number):03d}" if number.isdigit() else f"trial-{trial_id}"
    compact = progress.compact_architecture(architecture)
    return f"{name} {compact}"[:240].rstrip() if compact else name


def trial_runs(parent: tracking.RunHandle, extra_filter: str = "", max_results: int = 5000) -> list:
    """The nested trial runs of ``parent`` (optionally narrowed by an MLflow filter)."""
    client = parent.client
    experiment_id = parent.cached_run().info.experiment_id
    query = f"tags.`{tracking.PARENT_TAG}` = '{parent.run_id}' and tags.`{tracking.ROLE_TAG}` = 'trial'"
    if extra_filter:
        query += f" and {extra_filter}"
    return tracking.with_retry(
        lambda: client.search_runs([experiment_id], filter_string=query, max_results=max_results), "list trial runs"
    )


def close_as_killed(parent: tracking.RunHandle, run_id: str, reason: str) -> None:
    """End an interrupted trial run as KILLED, with the reason."""
    handle = tracking.RunHandle(parent.client, run_id)
    handle.set_tags({"nasflow.trial_status": "KILLED", tracking.FAILURE_REASON_TAG: f"interrupted: {reason}"})
    handle.terminate("KILLED")


def close_running_attempts(parent: tracking.RunHandle, trial_id: str) -> dict[str, str]:
    """Close, as KILLED, runs of this trial that a dead process left RUNNING.

    Returns:
        ``{trial_id: run id}`` of the latest interrupted attempt (closed here, or already
        KILLED by the chief of a resumed distributed search, whose workers do not share its
        memory), for the new run to link; empty when the trial never ran before.
    """
    latest = None
    query = f"tags.`nasflow.trial_id` = '{trial_id}' and attributes.status != 'FINISHED' and attributes.status != 'FAILED'"
    for run in trial_runs(parent, query):
        if run.info.status != "KILLED":
            close_as_killed(parent, run.info.run_id, "the process running this trial stopped")
        if latest is None or run.info.start_time >= latest.info.start_time:
            latest = run
    return {trial_id: latest.info.run_id} if latest is not None else {}


def collect_trials(parent: tracking.RunHandle) -> list[dict[str, Any]]:
    """The trial table, read from the nested MLflow runs of the parent run.

    Runs a crash left behind (KILLED, or RUNNING with no result) are left out: the
    re-run of that trial is its own row. There is one row per trial id whatever happened:
    should a trial still have two ended runs (a resumed search normally closes the older as
    KILLED, see ``reconcile_trial_runs``), the one started last is the trial's row.
    """
    client = parent.client
    experiment_id = tracking.with_retry(lambda: client.get_run(parent.run_id), "get parent run").info.experiment_id
    runs = []
    page_token = None
    while True:
        page = tracking.with_retry(
            lambda token=page_token: client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent.run_id}' and tags.`{tracking.ROLE_TAG}` = 'trial'",
                max_results=1000,
                page_token=token,
            ),
            "list trial runs",
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            break
    rows = []
    latest: dict[str, Any] = {}
    for run in runs:
        if run.info.status in ("KILLED", "RUNNING"):
            continue
        trial_id = run.data.tags.get("nasflow.trial_id", "")
        if trial_id in latest and latest[trial_id].info.start_time >= run.info.start_time:
            continue
        latest[trial_id] = run
    for run in latest.values():
        tags, metrics = run.data.tags, run.data.metrics
        status = tags.get("nasflow.trial_status", "")
        row = {
            "trial_id": tags.get("nasflow.trial_id", ""),
            "status": status,
            "feasible": tags.get("nasflow.feasible", "false") == "true",
            "score": metrics.get(OBJECTIVE_NAME),
            "val_accuracy": metrics.get("final_val_accuracy"),
            "params": metrics.get("params"),
            "flops": metrics.get("flops"),
            "size_kb": (metrics["size_bytes"] / 1024.0) if "size_bytes" in metrics else None,
            "latency_ms": metrics.get("latency_p50_ms"),
            "epochs": metrics.get("epochs_trained"),
            "pruned_at_epoch": metrics.get("pruned_at_epoch"),
            "duration_s": metrics.get("duration_s"),
            "fit_s": metrics.get("fit_seconds"),
            "architecture": tags.get("nasflow.architecture", ""),
            "seed": int(tags[TRIAL_SEED_TAG]) if tags.get(TRIAL_SEED_TAG, "").lstrip("-").isdigit() else None,
            "reason": tags.get(tracking.FAILURE_REASON_TAG) or tags.get("nasflow.infeasible_reason", ""),
            "mlflow_run_id": run.info.run_id,
            "values": {key: _parse_param(value) for key, value in run.data.params.items()},
        }
        rows.append(row)
    rows.sort(key=lambda row: (str(row["trial_id"]), row["mlflow_run_id"]))
    return rows


def _parse_param(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        if text in ("True", "False"):
            return text == "True"
        return text
