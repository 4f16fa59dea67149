"""The architecture search: a Keras Tuner run in which every trial is a nested MLflow run.

Keras Tuner owns the loop, the oracle state, resume (``overwrite=False``) and the
distributed chief/worker protocol; :class:`NasTuner` only overrides ``run_trial`` to
train one candidate, measure what it costs, score it against the objective and write
all of that to MLflow. The trial table is read back from MLflow rather than from the
oracle because on a worker the oracle is a gRPC client without ``trials``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasflow import tracking
from nasflow.errors import InvalidArchitectureError, SearchError

logger = logging.getLogger(__name__)

PROJECT_NAME = "search"
STRATEGIES = ("random", "bayesian", "hyperband", "evolution", "reinforce")
#: The strategy bench/search_efficiency.py found best (bench/results/search_efficiency.md).
DEFAULT_STRATEGY = "reinforce"
OBJECTIVE_NAME = "score"

#: Trial statuses written to the ``nasflow.trial_status`` tag of each nested run.
COMPLETED, FAILED, INVALID, INFEASIBLE = "COMPLETED", "FAILED", "INVALID", "INFEASIBLE"

TRIAL_TABLE_COLUMNS = (
    "trial_id",
    "status",
    "feasible",
    "score",
    "val_accuracy",
    "params",
    "flops",
    "size_kb",
    "latency_ms",
    "epochs",
    "duration_s",
    "fit_s",
    "architecture",
    "reason",
    "mlflow_run_id",
)


@dataclass(frozen=True)
class SearchSettings:
    """Everything that shapes one search, apart from data and space."""

    strategy: str = DEFAULT_STRATEGY
    max_trials: int = 10
    epochs: int = 3
    seed: int = 42
    max_search_minutes: float = 0.0
    max_consecutive_failed_trials: int = 5
    batch_size: int | None = None
    measure_latency: bool = True
    #: Worker processes pulling trials from one chief oracle (0: trials run in this process).
    num_workers: int = 0
    #: Start a fresh worker process after this many trials (0: never), to keep the
    #: per-trial overhead flat despite Keras' leak across builds.
    trials_per_process: int = 0

    def validate(self) -> None:
        """Raise ``SearchError`` naming the first bad setting."""
        if self.strategy not in STRATEGIES:
            raise SearchError(f"strategy {self.strategy!r} is unknown (expected one of {', '.join(STRATEGIES)})")
        if self.max_trials < 1:
            raise SearchError(f"max_trials must be at least 1, got {self.max_trials}")
        if self.epochs < 1:
            raise SearchError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_search_minutes < 0:
            raise SearchError(f"max_search_minutes must be >= 0, got {self.max_search_minutes}")
        if self.num_workers < 0 or self.trials_per_process < 0:
            raise SearchError("num_workers and trials_per_process must be >= 0")

    @property
    def uses_worker_processes(self) -> bool:
        """Whether trials run in worker processes rather than in this one."""
        return self.num_workers > 0 or self.trials_per_process > 0


@dataclass
class SearchResult:
    """What the search hands to the training step."""

    best_trial_id: str
    best_values: dict[str, Any]
    best_row: dict[str, Any]
    rows: list[dict[str, Any]]
    pareto_front: list[int] = field(default_factory=list)

    def best_hyperparameters_json(self, space_source: str) -> dict[str, Any]:
        """The JSON document written as the search's ``best_hyperparameters`` artifact."""
        return {
            "trial_id": self.best_trial_id,
            "values": self.best_values,
            "search_space": space_source,
            "val_accuracy": self.best_row.get("val_accuracy"),
            "score": self.best_row.get("score"),
            "architecture": self.best_row.get("architecture"),
        }


class _BudgetExhausted(Exception):
    """Raised between trials when ``max_search_minutes`` has passed."""


class _QuotaReached(Exception):
    """Raised between trials when this process has run its share of trials."""


def make_oracle(
    strategy: str,
    max_trials: int,
    epochs: int,
    seed: int,
    hyperparameters,
    max_consecutive_failed_trials: int = 5,
    constraint_check: Callable[[dict], list[str]] | None = None,
):
    """The Keras Tuner oracle for a strategy name, maximizing the trial ``score``.

    Args:
        strategy: One of :data:`STRATEGIES`.
        max_trials: Trials to run in total (Hyperband: an upper bound on top of its schedule).
        epochs: Epochs per trial (Hyperband: the maximum epochs of its last rung).
        seed: Random seed; passed as given except 0, which Keras Tuner reads as "random".
        hyperparameters: A declared ``keras_tuner.HyperParameters`` for the space.
        max_consecutive_failed_trials: Stop after this many failures in a row.
        constraint_check: Values -> violated cheap constraints, for oracles that resample.
    """
    import keras_tuner

    objective = keras_tuner.Objective(OBJECTIVE_NAME, direction="max")
    # Keras Tuner treats seed=0 as "pick a random seed"; keep runs reproducible.
    seed = seed if seed != 0 else 1_000_003
    common = dict(
        objective=objective,
        hyperparameters=hyperparameters,
        seed=seed,
        max_consecutive_failed_trials=max_consecutive_failed_trials,
    )
    if strategy == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if strategy == "bayesian":
        # Keras Tuner's default of 3 random points per hyperparameter makes any short
        # search a random search; a third of the budget leaves room for the GP to act.
        initial = max(2, min(3 * len(hyperparameters.space), max_trials // 3))
        return keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=max_trials, num_initial_points=initial, **common
        )
    if strategy == "hyperband":
        oracle = keras_tuner.oracles.HyperbandOracle(
            max_epochs=max(epochs, 2), factor=3, hyperband_iterations=1_000, **common
        )
        # Hyperband has no trial count of its own; cap it so budgets are comparable.
        oracle.max_trials = max_trials
        return oracle
    if strategy in ("evolution", "reinforce"):
        from nasflow.oracles import EvolutionOracle, ReinforceOracle

        cls = EvolutionOracle if strategy == "evolution" else ReinforceOracle
        return cls(max_trials=max_trials, constraint_check=constraint_check, **common)
    raise SearchError(f"strategy {strategy!r} is unknown (expected one of {', '.join(STRATEGIES)})")


def _make_tuner_class():
    import keras
    import keras_tuner

    class EpochLogger(keras.callbacks.Callback):
        """Hands every epoch's metrics to the trial's :class:`TrialRecord`."""

        def __init__(self, record: TrialRecord):
            super().__init__()
            self.record = record

        def on_epoch_end(self, epoch, logs=None):
            self.record.add_epoch(epoch, logs or {})

    class NasTuner(keras_tuner.Tuner):
        """A Keras Tuner whose trials are scored by accuracy and cost and tracked in MLflow."""

        def __init__(self, *, nas_context: _TrialContext, **kwargs):
            self.nas = nas_context
            super().__init__(**kwargs)

        nas_trials_run = 0
        nas_quota_reached = False

        def _populate_initial_space(self):
            # The space declares every hyperparameter and condition itself, so Keras
            # Tuner need not build models to discover them (slow, and a default
            # architecture may not even fit the input).
            hp = self.oracle.get_space()
            self.nas.space.declare(hp)
            self.oracle.update_space(hp)

        def pre_create_trial(self):
            if self.nas.deadline is not None and time.monotonic() > self.nas.deadline:
                raise _BudgetExhausted()
            if self.nas.trials_this_process and self.nas_trials_run >= self.nas.trials_this_process:
                self.nas_quota_reached = True
                raise _QuotaReached()

        def on_trial_end(self, trial):
            self.nas_trials_run += 1
            super().on_trial_end(trial)

        def run_trial(self, trial, *args, **kwargs):
            return self.nas.run_trial(self, trial, EpochLogger)

        def load_model(self, trial):
            model = self._try_build(trial.hyperparameters)
            model.load_weights(self._get_checkpoint_fname(trial.trial_id))
            return model

    return NasTuner


@dataclass
class _TrialContext:
    """What every trial needs: data, space, objective, tracking."""

    space: Any
    data: Any
    settings: SearchSettings
    objective: Any
    parent: tracking.RunHandle | None
    deadline: float | None = None
    #: trial id -> MLflow run id of an attempt a crash interrupted (set on resume).
    interrupted_runs: dict[str, str] = field(default_factory=dict)
    trials_this_process: int = 0

    @property
    def input_shape(self) -> list[int]:
        return list(self.data.metadata.input_shape)

    @property
    def num_classes(self) -> int:
        return int(self.data.metadata.num_classes)

    def batch_size(self) -> int:
        return int(self.settings.batch_size or self.space.batch_size())

    def _scoring_objective(self):
        # In pareto mode the oracle maximizes acc * cost^w; any fixed target T only
        # rescales that, so a constant keeps scores of different trials comparable.
        if self.objective.mode == "pareto" and self.objective.cost_target is None:
            return self.objective.replace(cost_target=1.0)
        return self.objective

    def run_trial(self, tuner, trial, epoch_logger_cls) -> dict[str, float]:
        """Build, train, measure and score one candidate; record it as a nested MLflow run."""
        import keras
        import keras_tuner

        from nasflow.costs import count_flops, count_params, measure_candidate_costs
        from nasflow.objectives import constraint_violations, objective_score
        from nasflow.search_space import describe_architecture

        hp = trial.hyperparameters
        values = dict(hp.values)
        started = time.monotonic()
        architecture = _safe_describe(describe_architecture, self.space, values)
        record = None
        if self.parent is not None:
            record = TrialRecord.open(
                self.parent,
                trial.trial_id,
                tags={
                    "nasflow.strategy": self.settings.strategy,
                    "nasflow.tuner_id": getattr(tuner, "tuner_id", "tuner0"),
                    "nasflow.architecture": architecture,
                },
                params=values,
                interrupted_runs=self.interrupted_runs,
            )

        def finish(status: str, metrics: Mapping[str, float], reason: str = "", feasible: bool | None = None):
            if record is not None:
                record.finish(status, metrics, duration_s=time.monotonic() - started, reason=reason, feasible=feasible)

        epochs = int(values.get("tuner/epochs", self.settings.epochs))
        initial_epoch = int(values.get("tuner/initial_epoch", 0))
        try:
            keras.backend.clear_session()
            keras.utils.set_random_seed(self.settings.seed + _trial_number(trial.trial_id))
            try:
                model = self.space.build_model(hp, self.input_shape, self.num_classes)
            except InvalidArchitectureError as error:
                finish(INVALID, {}, reason=f"InvalidArchitectureError: {error}")
                # Re-raised as is, Keras Tuner records the trial INVALID: a sampled
                # architecture that does not fit the input is not a failure of the search.
                raise
            params, flops = count_params(model), count_flops(model)
            cheap = constraint_violations({"params": params, "flops": flops}, self.objective.cheap_constraints())
            if cheap:
                # Over a cheap constraint: never worth training, never selectable.
                reason = "; ".join(cheap)
                finish(INFEASIBLE, {"params": params, "flops": flops, OBJECTIVE_NAME: -1.0}, reason, feasible=False)
                return {OBJECTIVE_NAME: -1.0}
            if "tuner/trial_id" in values:
                # Hyperband continues a trial of a lower rung from its weights. Worker pods
                # keep checkpoints on their own disk, so a rung trained by another worker is
                # trained again from scratch: slower, never wrong.
                checkpoint = tuner._get_checkpoint_fname(values["tuner/trial_id"])
                if os.path.exists(checkpoint):
                    model.load_weights(checkpoint)
                else:
                    initial_epoch = 0
                    if record is not None:
                        record.tag({"nasflow.warm_start": "missing-checkpoint"})
            callbacks = [keras.callbacks.TerminateOnNaN()]
            if record is not None:
                callbacks.append(epoch_logger_cls(record))
            fit_started = time.monotonic()
            history = model.fit(
                self.data.x_train,
                self.data.y_train,
                validation_data=(self.data.x_val, self.data.y_val),
                epochs=epochs,
                initial_epoch=initial_epoch,
                batch_size=self.batch_size(),
                callbacks=callbacks,
                verbose=0,
            )
            fit_seconds = time.monotonic() - fit_started
            losses = history.history.get("loss", [])
            if not losses or any(not math.isfinite(loss) for loss in losses):
                raise keras_tuner.errors.FailedTrialError(f"loss became NaN/inf at epoch {initial_epoch + len(losses)}")
            val_accuracy = float(history.history["val_accuracy"][-1])
            os.makedirs(os.path.dirname(tuner._get_checkpoint_fname(trial.trial_id)), exist_ok=True)
            model.save_weights(tuner._get_checkpoint_fname(trial.trial_id))
            costs = measure_candidate_costs(
                model, self.data.x_val[:1], measure_latency=self.settings.measure_latency
            ).to_dict()
            cost_row = _cost_row(costs)
            violations = constraint_violations(cost_row, self.objective)
            # Infeasible trials score below zero: the oracle learns to avoid the region.
            score = float(objective_score(val_accuracy, cost_row, self._scoring_objective()))
            feasible = not violations
            metrics = {
                "final_val_accuracy": val_accuracy,
                "best_val_accuracy": float(max(history.history["val_accuracy"])),
                "final_val_loss": float(history.history["val_loss"][-1]),
                OBJECTIVE_NAME: score,
                "params": float(costs["params"]),
                "flops": float(costs["flops"]),
                "size_bytes": float(costs["size_bytes"]),
                "latency_p50_ms": float(costs["latency_p50_ms"]),
                "latency_p95_ms": float(costs["latency_p95_ms"]),
                "fit_seconds": fit_seconds,
                "epochs_trained": float(epochs - initial_epoch),
            }
            if record is not None:
                record.tag({"nasflow.latency_runtime": costs.get("latency_runtime", "")})
            finish(
                COMPLETED if feasible else INFEASIBLE,
                metrics,
                reason="; ".join(violations),
                feasible=feasible,
            )
            del model
            return {OBJECTIVE_NAME: score, "val_accuracy": val_accuracy}
        except InvalidArchitectureError:
            raise
        except keras_tuner.errors.FailedTrialError as error:
            if record is not None and not record.closed:
                finish(FAILED, {}, reason=f"FailedTrialError: {error}")
            raise
        except Exception as error:
            # Any other failure of one candidate (OOM, a layer that refuses the
            # shape, ...) fails that trial only; the search goes on.
            if record is not None and not record.closed:
                finish(FAILED, {}, reason=f"{type(error).__name__}: {error}")
            raise keras_tuner.errors.FailedTrialError(f"{type(error).__name__}: {error}") from error


#: Epoch metrics wait at most this long before they are sent: a trial of a few seconds sends
#: them once, with its final metrics; a long trial still shows live curves in the MLflow UI.
EPOCH_FLUSH_S = 30.0


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
        run = tracking.start_child_run(parent, run_name=f"trial-{trial_id}", tags=all_tags)
        run.log_params(params)
        return cls(run, flush_every_s)

    def add_epoch(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Keep one epoch's metrics; send what is kept if the last send is old enough."""
        self._epochs.extend(tracking.metric_items(logs, step=epoch))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.run.log_batch(history=self._drain())

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
        """Send everything left in one batch and end the run (FINISHED, or FAILED for a failure)."""
        tags = {**self._tags, "nasflow.trial_status": status}
        if feasible is not None:
            tags["nasflow.feasible"] = str(feasible).lower()
        if reason:
            tags[tracking.FAILURE_REASON_TAG if status != INFEASIBLE else "nasflow.infeasible_reason"] = reason
        self.run.log_batch(metrics={**metrics, "duration_s": duration_s}, history=self._drain(), tags=tags)
        self.run.terminate("FINISHED" if status in (COMPLETED, INFEASIBLE) else "FAILED")
        self.closed = True

    def _drain(self) -> list:
        items, self._epochs = self._epochs, []
        self._last_flush = time.monotonic()
        return items


def _safe_describe(describe, space, values) -> str:
    try:
        return describe(space, values)
    except Exception as error:  # a description must never fail a trial
        logger.debug("cannot describe architecture: %s", error)
        return ""


def _trial_number(trial_id: str) -> int:
    digits = "".join(ch for ch in str(trial_id) if ch.isdigit())
    return int(digits) if digits else 0


def _cost_row(costs: Mapping[str, Any]) -> dict[str, float]:
    return {
        "params": costs["params"],
        "flops": costs["flops"],
        "size_kb": costs["size_bytes"] / 1024.0,
        "size_bytes": costs["size_bytes"],
        "latency_ms": costs["latency_p50_ms"],
    }


def run_search(
    data,
    space,
    settings: SearchSettings,
    objective=None,
    *,
    parent: tracking.RunHandle | None,
    work_dir: str | Path,
    overwrite: bool = True,
    project_name: str = PROJECT_NAME,
    in_process: bool = True,
    trials_this_process: int = 0,
):
    """Run the search and return the chosen trial.

    Args:
        data: A ``DatasetSplits`` (train/val used; test never touched here).
        space: A validated ``SearchSpace``.
        settings: Strategy and budget.
        objective: An ``ObjectiveConfig``; accuracy-only when ``None``.
        parent: The pipeline's parent MLflow run; trials are nested under it.
        work_dir: Where Keras Tuner keeps its oracle state and trial checkpoints.
        overwrite: Start afresh (``True``) or resume what ``work_dir`` holds.
        project_name: Keras Tuner project folder name inside ``work_dir``.
        in_process: Always true here; worker processes are started by ``nasflow.distributed``.
        trials_this_process: Stop after this many trials (a recycled worker); 0: no limit.

    Returns:
        The tuner (already searched). Call :func:`collect_trials` and
        :func:`choose_best` for the table and the choice.

    Raises:
        SearchError: Bad settings, or no trial completed.
    """
    import keras_tuner

    from nasflow.costs import cheap_constraint_check
    from nasflow.objectives import ObjectiveConfig

    settings.validate()
    objective = objective or ObjectiveConfig()
    hyperparameters = keras_tuner.HyperParameters()
    space.declare(hyperparameters)
    deadline = time.monotonic() + settings.max_search_minutes * 60 if settings.max_search_minutes else None
    context = _TrialContext(space, data, settings, objective, parent, deadline, trials_this_process=trials_this_process)
    oracle = make_oracle(
        settings.strategy,
        settings.max_trials,
        settings.epochs,
        settings.seed,
        hyperparameters,
        settings.max_consecutive_failed_trials,
        constraint_check=cheap_constraint_check(
            lambda hp: space.build_model(hp, context.input_shape, context.num_classes), hyperparameters, objective
        ),
    )
    tuner_class = _make_tuner_class()
    tuner = tuner_class(
        nas_context=context,
        oracle=oracle,
        hypermodel=_SpaceHyperModel(space, context.input_shape, context.num_classes),
        directory=str(work_dir),
        project_name=project_name,
        overwrite=overwrite,
    )
    if parent is not None and not overwrite and not _is_distributed_worker():
        # Only the process that owns the oracle knows which trials have ended.
        context.interrupted_runs = reconcile_trial_runs(parent, tuner.oracle)
    try:
        tuner.search()
    except _BudgetExhausted:
        logger.info("search stopped: the wall-clock budget of %.1f min is used up", settings.max_search_minutes)
    except _QuotaReached:
        logger.info("this process ran its %d trials; a fresh one takes over", trials_this_process)
    except RuntimeError as error:
        if "consecutive failures" not in str(error):
            raise
        first_line = str(error).splitlines()[0]
        reason = _last_failure_reason(str(error))
        raise SearchError(f"search stopped: {first_line.rstrip('.')}; last failure: {reason}") from error
    return tuner


def _is_distributed_worker() -> bool:
    """Whether Keras Tuner runs this process as a worker of a chief oracle (env-configured)."""
    return bool(os.environ.get("KERASTUNER_ORACLE_IP")) and os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief"


def _last_failure_reason(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1][:300] if len(lines) > 1 else "unknown"


def _trial_runs(parent: tracking.RunHandle, extra_filter: str = "", max_results: int = 5000) -> list:
    """The nested trial runs of ``parent`` (optionally narrowed by an MLflow filter)."""
    client = parent.client
    experiment_id = parent.cached_run().info.experiment_id
    query = f"tags.`{tracking.PARENT_TAG}` = '{parent.run_id}' and tags.`{tracking.ROLE_TAG}` = 'trial'"
    if extra_filter:
        query += f" and {extra_filter}"
    return tracking.with_retry(
        lambda: client.search_runs([experiment_id], filter_string=query, max_results=max_results), "list trial runs"
    )


def _close_as_killed(parent: tracking.RunHandle, run_id: str, reason: str) -> None:
    handle = tracking.RunHandle(parent.client, run_id)
    handle.set_tags({"nasflow.trial_status": "KILLED", tracking.FAILURE_REASON_TAG: f"interrupted: {reason}"})
    handle.terminate("KILLED")


def close_running_attempts(parent: tracking.RunHandle, trial_id: str) -> dict[str, str]:
    """Close, as KILLED, runs of this trial that a dead process left RUNNING."""
    closed = {}
    for run in _trial_runs(parent, f"tags.`nasflow.trial_id` = '{trial_id}' and attributes.status = 'RUNNING'"):
        _close_as_killed(parent, run.info.run_id, "the process running this trial stopped")
        closed[trial_id] = run.info.run_id
    return closed


def reconcile_trial_runs(parent: tracking.RunHandle, oracle) -> dict[str, str]:
    """Make MLflow agree with a reloaded oracle before a resumed search goes on.

    A run left RUNNING by a crash is closed as KILLED; a finished run of a trial the
    oracle does not count as ended (killed after logging, before the oracle saved) is
    closed as KILLED too, so that every trial has exactly one finished run.

    Returns:
        trial id -> id of the interrupted run, to link the re-run to it.
    """
    ended = {
        trial_id
        for trial_id, trial in getattr(oracle, "trials", {}).items()
        if str(trial.status) in ("COMPLETED", "FAILED", "INVALID")
    }
    interrupted: dict[str, str] = {}
    for run in _trial_runs(parent):
        trial_id = run.data.tags.get("nasflow.trial_id", "")
        if run.info.status == "KILLED":
            continue
        if run.info.status == "RUNNING" or trial_id not in ended:
            _close_as_killed(parent, run.info.run_id, "the search process stopped during this trial")
            interrupted[trial_id] = run.info.run_id
    return interrupted


def _SpaceHyperModel(space, input_shape, num_classes):  # noqa: N802 - a factory standing in for a class
    from nasflow.search_space import SearchSpaceHyperModel

    return SearchSpaceHyperModel(space, input_shape, num_classes)


def collect_trials(parent: tracking.RunHandle) -> list[dict[str, Any]]:
    """The trial table, read from the nested MLflow runs of the parent run.

    Runs a crash left behind (KILLED, or RUNNING with no result) are left out: the
    re-run of that trial is its own row.
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
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        status = tags.get("nasflow.trial_status", "")
        if run.info.status in ("KILLED", "RUNNING"):
            continue
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
            "duration_s": metrics.get("duration_s"),
            "fit_s": metrics.get("fit_seconds"),
            "architecture": tags.get("nasflow.architecture", ""),
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


def choose_best(rows: list[dict[str, Any]], objective=None) -> SearchResult:
    """Pick the trial to train, by the objective's selection policy, among feasible completed trials.

    Raises:
        SearchError: No trial completed within the constraints.
    """
    from nasflow.objectives import ObjectiveConfig, pareto_front, select_trial

    objective = objective or ObjectiveConfig()
    completed = [row for row in rows if row["status"] == COMPLETED and row["feasible"]]
    if not completed:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        summary = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())) or "no trials ran"
        reasons = [row["reason"] for row in rows if row["reason"]]
        hint = f"; last reason: {reasons[-1]}" if reasons else ""
        raise SearchError(f"no trial completed within the constraints ({summary}){hint}")
    cost_key = _cost_key(objective)
    index = select_trial(rows, objective)
    best = rows[index]
    values = {key: value for key, value in best["values"].items()}
    front = pareto_front(rows, cost_key=cost_key)
    return SearchResult(best["trial_id"], values, best, rows, front)


def _cost_key(objective) -> str:
    return {"latency_ms": "latency_ms", "size_kb": "size_kb", "params": "params", "flops": "flops"}.get(
        getattr(objective, "cost_metric", "latency_ms"), "latency_ms"
    )


def write_trial_table(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write the trial table as CSV (hyperparameters as one JSON column)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*TRIAL_TABLE_COLUMNS, "hyperparameters"])
        for row in rows:
            writer.writerow([_cell(row.get(column)) for column in TRIAL_TABLE_COLUMNS] + [json.dumps(row["values"])])


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Counts and bests for the KFP Metrics artifact."""
    completed = [row for row in rows if row["status"] == COMPLETED]
    accuracies = [row["val_accuracy"] for row in completed if row["val_accuracy"] is not None]
    return {
        "trials_total": float(len(rows)),
        "trials_completed": float(len(completed)),
        "trials_failed": float(sum(row["status"] in (FAILED, INVALID) for row in rows)),
        "trials_infeasible": float(sum(row["status"] == INFEASIBLE for row in rows)),
        "best_val_accuracy": float(max(accuracies)) if accuracies else 0.0,
        "mean_trial_seconds": float(np.mean([row["duration_s"] for row in rows if row["duration_s"]] or [0.0])),
    }
