"""The architecture search: a Keras Tuner run in which every trial is a nested MLflow run.

Keras Tuner owns the loop, the oracle state, resume (``overwrite=False``) and the
distributed chief/worker protocol; the tuner built here only overrides ``run_trial``
(see :mod:`nasflow.search.trial`). The trial table is read back from MLflow rather than
from the oracle because on a worker the oracle is a gRPC client without ``trials``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path

from nasflow import faults, tracking
from nasflow.errors import SearchError
from nasflow.search.records import TrialRecord, close_as_killed, trial_runs
from nasflow.search.settings import OBJECTIVE_NAME, PROJECT_NAME, SearchSettings
from nasflow.search.state import make_crash_safe
from nasflow.search.strategies import PARETO_OBJECTIVES, OracleSettings, make_oracle
from nasflow.search.trial import TrialContext

logger = logging.getLogger(__name__)


class _BudgetExhausted(Exception):
    """Raised between trials when ``max_search_minutes`` has passed."""


class _QuotaReached(Exception):
    """Raised between trials when this process has run its share of trials."""


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

        def __init__(self, *, nas_context: TrialContext, **kwargs):
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

        #: Called after each trial's end is saved (e.g. :meth:`MlflowStateCopy.sync`); None: nothing.
        nas_state_sync = None

        def pre_create_trial(self):
            faults.kill_point("between-trials", len(getattr(self.oracle, "end_order", ())))
            if self.nas.deadline is not None and time.monotonic() > self.nas.deadline:
                raise _BudgetExhausted()
            if self.nas.trials_this_process and self.nas_trials_run >= self.nas.trials_this_process:
                self.nas_quota_reached = True
                raise _QuotaReached()

        def on_trial_end(self, trial):
            self.nas_trials_run += 1
            super().on_trial_end(trial)
            if self.nas_state_sync is not None:
                self.nas_state_sync()

        def run_trial(self, trial, *args, **kwargs):
            return self.nas.run_trial(self, trial, EpochLogger)

        def load_model(self, trial):
            model = self._try_build(trial.hyperparameters)
            model.load_weights(self._get_checkpoint_fname(trial.trial_id))
            return model

    return NasTuner


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
    trials_this_process: int = 0,
    state_sync=None,
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
        trials_this_process: Stop after this many trials (a recycled worker); 0: no limit.
        state_sync: Called after every trial's end is saved, to copy the state elsewhere
            (:class:`nasflow.search.state.MlflowStateCopy`); None: the state stays in ``work_dir``.

    Returns:
        The tuner (already searched). Call :func:`collect_trials` and
        :func:`choose_best` for the table and the choice.

    Raises:
        SearchError: Bad settings, or no trial completed.
    """
    import keras_tuner

    from nasflow.search.costs import costs_to_measure
    from nasflow.search.objectives import ObjectiveConfig
    from nasflow.search.warm_start import usable_priors

    objective = objective or ObjectiveConfig()
    costs_to_measure(objective, settings.measure_costs)  # refuses 'none' for a cost objective
    hyperparameters = keras_tuner.HyperParameters()
    space.declare(hyperparameters)
    priors = usable_priors(hyperparameters, settings.prior_observations)
    deadline = time.monotonic() + settings.max_search_minutes * 60 if settings.max_search_minutes else None
    context = TrialContext(space, data, settings, objective, parent, deadline, trials_this_process=trials_this_process)
    oracle = _make_search_oracle(space, settings, objective, hyperparameters, priors, context)
    tuner_class = _make_tuner_class()
    tuner = tuner_class(
        nas_context=context,
        oracle=oracle,
        hypermodel=_SpaceHyperModel(space, context.input_shape, context.num_classes),
        directory=str(work_dir),
        project_name=project_name,
        overwrite=overwrite,
    )
    tuner.nas_state_sync = state_sync
    if _is_distributed_chief():
        # A chief's tuner runs no trial: its oracle ends them (EndTrial calls) and copies the state.
        oracle.nas_after_end_trial = state_sync
    if not _is_distributed_worker():
        # The reloaded state holds the search time of earlier attempts: the budget goes on from there.
        context.deadline = oracle.search_deadline(settings.max_search_minutes)
    if parent is not None and not _is_distributed_worker():
        # Only the process that owns the oracle knows which trials have ended. A fresh start
        # under a parent that already has trial runs is a retry of an attempt killed before
        # its state was first saved: none of those runs ended a trial this oracle knows of.
        context.interrupted_runs = reconcile_trial_runs(parent, tuner.oracle)
    _search_until_stopped(tuner, settings, trials_this_process)
    return tuner


def _make_search_oracle(space, settings: SearchSettings, objective, hyperparameters, priors, context: TrialContext):
    """The strategy's oracle, wrapped for re-evaluated priors, early stopping and crash-safe state.

    Both the re-evaluation and early-stopping wrappers act on the chief of a distributed
    search, which owns the oracle (a worker's oracle is replaced by a gRPC client).
    """
    import keras_tuner

    from nasflow.search.confirmation import add_confirmation
    from nasflow.search.costs import cheap_constraint_check
    from nasflow.search.early_stopping import add_early_stopping, make_pruner
    from nasflow.search.warm_start import add_reevaluation, reevaluation_count, space_values_only

    oracle = make_oracle(
        settings.strategy,
        OracleSettings(
            objective=keras_tuner.Objective(OBJECTIVE_NAME, direction="max"),
            hyperparameters=hyperparameters,
            seed=settings.seed,
            max_trials=settings.max_trials,
            epochs=settings.epochs,
            max_consecutive_failed_trials=settings.max_consecutive_failed_trials,
            constraint_check=cheap_constraint_check(
                lambda hp: space.build_model(hp, context.input_shape, context.num_classes), hyperparameters, objective
            ),
            prior_observations=tuple(space_values_only(priors)),
            pareto_objectives=PARETO_OBJECTIVES if objective.mode == "pareto" else None,
        ),
    )
    oracle = add_reevaluation(oracle, priors, reevaluation_count(settings.max_trials))
    # Before early stopping: the confirmations take the last slots of the budget it funds.
    oracle = add_confirmation(
        oracle,
        settings.confirm_best,
        settings.max_trials,
        multi_objective=objective.mode == "pareto",
        time_budget_s=settings.max_search_minutes * 60,
    )
    oracle = add_early_stopping(oracle, make_pruner(settings.early_stopping), settings.epochs)
    # Atomic state files and a budget that counts every attempt (nasflow.search.state).
    return make_crash_safe(oracle)


def _search_until_stopped(tuner, settings: SearchSettings, trials_this_process: int) -> None:
    """Run the tuner until its budget, the wall-clock limit or this process's quota ends it.

    Raises:
        SearchError: Keras Tuner stopped after too many consecutive failed trials.
    """
    # A full collection walks every Python object of the process: with TensorFlow loaded
    # that was ~1-2 s a trial, most of the time outside fit (bench/results/cheap_trials_digits.md).
    # Objects alive now (modules, data) are moved out of the collector's sight for the
    # search, so the interpreter's collections walk only the trials' objects.
    gc.collect()
    gc.freeze()
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
    finally:
        gc.unfreeze()


def _is_distributed_worker() -> bool:
    """Whether Keras Tuner runs this process as a worker of a chief oracle (env-configured)."""
    return bool(os.environ.get("KERASTUNER_ORACLE_IP")) and os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief"


def _is_distributed_chief() -> bool:
    """Whether this process serves the oracle to worker processes (env-configured)."""
    return bool(os.environ.get("KERASTUNER_ORACLE_IP")) and os.environ.get("KERASTUNER_TUNER_ID") == "chief"


def _last_failure_reason(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1][:300] if len(lines) > 1 else "unknown"


def reconcile_trial_runs(parent: tracking.RunHandle, oracle) -> dict[str, str]:
    """Make MLflow agree with a reloaded oracle before a resumed search goes on.

    A run left RUNNING by a crash is closed as KILLED; a finished run of a trial the
    oracle has not committed as ended (``end_order`` in ``oracle.json``: killed after
    logging, before or while the oracle saved) is closed as KILLED too and the trial runs
    again, so that every trial has exactly one finished run.

    Returns:
        trial id -> id of the interrupted run, to link the re-run to it.
    """
    ended = set(getattr(oracle, "end_order", ()))
    interrupted: dict[str, str] = {}
    for run in trial_runs(parent):
        trial_id = run.data.tags.get("nasflow.trial_id", "")
        if run.info.status == "KILLED":
            continue
        if run.info.status == "RUNNING" or trial_id not in ended:
            close_as_killed(parent, run.info.run_id, "the search process stopped during this trial")
            interrupted[trial_id] = run.info.run_id
    return interrupted


def _SpaceHyperModel(space, input_shape, num_classes):  # noqa: N802 - a factory standing in for a class
    from nasflow.spaces.schema import SearchSpaceHyperModel

    return SearchSpaceHyperModel(space, input_shape, num_classes)
