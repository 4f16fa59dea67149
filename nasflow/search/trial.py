"""One trial's work: build, train, measure and score a candidate."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nasflow import tracking
from nasflow.errors import InvalidArchitectureError
from nasflow.search.records import TRIAL_SEED_TAG, TrialRecord
from nasflow.search.settings import (
    COMPLETED,
    FAILED,
    INFEASIBLE,
    INVALID,
    INVALID_SCORE,
    OBJECTIVE_NAME,
    PRUNED,
    SearchSettings,
)
from nasflow.search.strategies import PARETO_COST
from nasflow.search.warm_start import REEVALUATION_SEED

logger = logging.getLogger(__name__)


@dataclass
class TrialContext:
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
        """Shape of one input sample."""
        return list(self.data.metadata.input_shape)

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return int(self.data.metadata.num_classes)

    def batch_size(self) -> int:
        """Training batch size: the settings' override, else the space's."""
        return int(self.settings.batch_size or self.space.batch_size())

    def _scoring_objective(self):
        # In pareto mode the oracle maximizes acc * cost^w; any fixed target T only
        # rescales that, so a constant keeps scores of different trials comparable.
        if self.objective.mode == "pareto" and self.objective.cost_target is None:
            return self.objective.replace(cost_target=1.0)
        return self.objective

    def run_trial(self, tuner, trial, epoch_logger_cls) -> dict[str, float]:
        """Build, train, measure and score one candidate; record it as a nested MLflow run.

        A failure of one candidate (NaN loss, OOM, a layer that refuses the shape, ...) is
        recorded FAILED and raised as Keras Tuner's ``FailedTrialError``: that trial fails,
        the search goes on.
        """
        import keras_tuner

        values = dict(trial.hyperparameters.values)
        run = self._open_run(tuner, trial, values)
        try:
            return self._train_and_score(tuner, trial, values, run, epoch_logger_cls)
        except keras_tuner.errors.FailedTrialError as error:
            run.fail(f"FailedTrialError: {error}")
            raise
        except Exception as error:
            run.fail(f"{type(error).__name__}: {error}")
            raise keras_tuner.errors.FailedTrialError(f"{type(error).__name__}: {error}") from error

    def _open_run(self, tuner, trial, values: dict[str, Any]) -> _TrialRun:
        """Start the trial's clock and its nested MLflow run (none without a parent run)."""
        from nasflow.spaces.schema import describe_architecture

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
                    TRIAL_SEED_TAG: str(initialization_seed(self.settings.seed, trial.trial_id, values)),
                },
                params=values,
                interrupted_runs=self.interrupted_runs,
            )
        return _TrialRun(record, started)

    def _train_and_score(self, tuner, trial, values: dict[str, Any], run: _TrialRun, epoch_logger_cls) -> dict[str, float]:
        """The trial's steps; a candidate that is invalid or over a cheap constraint is never trained."""
        import keras

        from nasflow.search.costs import count_flops, count_params
        from nasflow.search.objectives import constraint_violations

        epochs = int(values.get("tuner/epochs", self.settings.epochs))
        initial_epoch = int(values.get("tuner/initial_epoch", 0))
        # Keras' global state only; its full gc.collect() walked every object the process
        # had leaked so far (0.2 s a trial and growing, bench/results/cheap_trials_digits.md). The
        # interpreter's own generational collections still free the old models' cycles.
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(initialization_seed(self.settings.seed, trial.trial_id, values))
        try:
            model = self.space.build_model(trial.hyperparameters, self.input_shape, self.num_classes)
        except InvalidArchitectureError as error:
            # A sampled architecture that does not fit the input is a (bad) result, not a
            # failure: scored lowest, so the strategy learns to avoid it, and never
            # counted toward Keras Tuner's consecutive-failure stop.
            run.finish(INVALID, {OBJECTIVE_NAME: INVALID_SCORE}, reason=f"InvalidArchitectureError: {error}")
            return {OBJECTIVE_NAME: INVALID_SCORE}
        if run.record is not None:
            run.record.keep_architecture(model, self.space, values)  # issue 15: the trial's architecture view
        params, flops = count_params(model), count_flops(model)
        cheap = constraint_violations({"params": params, "flops": flops}, self.objective.cheap_constraints())
        if cheap:
            # Over a cheap constraint: never worth training, never selectable.
            reason = "; ".join(cheap)
            run.finish(INFEASIBLE, {"params": params, "flops": flops, OBJECTIVE_NAME: -1.0}, reason, feasible=False)
            return {OBJECTIVE_NAME: -1.0}
        if "tuner/trial_id" in values:
            initial_epoch = _continue_lower_rung(tuner, model, values["tuner/trial_id"], initial_epoch, run)
        reporter = None
        callbacks = [keras.callbacks.TerminateOnNaN()]
        if run.record is not None:
            callbacks.append(epoch_logger_cls(run.record))
        if self.settings.early_stopping != "none":
            from nasflow.search.early_stopping import epoch_reporter

            reporter = epoch_reporter(tuner.oracle, trial.trial_id)
            callbacks.append(reporter)
        fit_started = time.monotonic()
        history = self._fit(model, callbacks, epochs, initial_epoch)
        fit_seconds = time.monotonic() - fit_started
        if self.settings.strategy == "hyperband":
            # Only Hyperband continues trials from their weights; saving costs time.
            os.makedirs(os.path.dirname(tuner._get_checkpoint_fname(trial.trial_id)), exist_ok=True)
            model.save_weights(tuner._get_checkpoint_fname(trial.trial_id))
        pruned_at = reporter.pruned_at if reporter is not None else None
        training = _Training(history, epochs, initial_epoch, fit_seconds, pruned_at)
        result = self._measure_and_score(model, training, run)
        del model
        return result

    def _fit(self, model, callbacks: list, epochs: int, initial_epoch: int) -> dict[str, list[float]]:
        """Train on the train split, validating each epoch; a NaN/inf loss fails the trial.

        Returns:
            The Keras history (metric name -> one value per epoch).
        """
        import keras_tuner

        history = model.fit(
            self.data.x_train,
            self.data.y_train,
            validation_data=(self.data.x_val, self.data.y_val),
            epochs=epochs,
            initial_epoch=initial_epoch,
            batch_size=self.batch_size(),
            callbacks=callbacks,
            verbose=0,
        ).history
        losses = history.get("loss", [])
        if not losses or any(not math.isfinite(loss) for loss in losses):
            raise keras_tuner.errors.FailedTrialError(f"loss became NaN/inf at epoch {initial_epoch + len(losses)}")
        return history

    def _measure_and_score(self, model, training: _Training, run: _TrialRun) -> dict[str, float]:
        """Measure the costs the objective needs, score the trained candidate and record it.

        Returns:
            What the oracle is told: the score, the accuracy and, for a Pareto search, the cost.
        """
        from nasflow.search.costs import costs_to_measure, measure_candidate_costs
        from nasflow.search.objectives import constraint_violations, cost_value, objective_score

        history, pruned_at = training.history, training.pruned_at
        val_accuracy = float(history["val_accuracy"][-1])
        measure_size, measure_latency = costs_to_measure(self.objective, self.settings.measure_costs)
        costs = measure_candidate_costs(
            model, self.data.x_val[:1], measure_latency=measure_latency, measure_size=measure_size
        ).to_dict()
        cost_row = _cost_row(costs)
        violations = constraint_violations(cost_row, self.objective)
        # Infeasible trials score below zero: the oracle learns to avoid the region.
        score = float(objective_score(val_accuracy, cost_row, self._scoring_objective()))
        feasible = not violations
        metrics = {
            "final_val_accuracy": val_accuracy,
            "best_val_accuracy": float(max(history["val_accuracy"])),
            "final_val_loss": float(history["val_loss"][-1]),
            OBJECTIVE_NAME: score,
            "params": float(costs["params"]),
            "flops": float(costs["flops"]),
            **cost_metrics(costs),
            "fit_seconds": training.fit_seconds,
            "epochs_trained": float((pruned_at or training.epochs) - training.initial_epoch),
        }
        status = COMPLETED if feasible else INFEASIBLE
        if pruned_at is not None:
            metrics["pruned_at_epoch"] = float(pruned_at)
            status = PRUNED if feasible else INFEASIBLE
            run.tag({"nasflow.pruned_at_epoch": pruned_at})
        if measure_latency:
            run.tag({"nasflow.latency_runtime": costs.get("latency_runtime", "")})
        run.finish(status, metrics, reason="; ".join(violations), feasible=feasible)
        result = {OBJECTIVE_NAME: score, "val_accuracy": val_accuracy}
        if self.objective.mode == "pareto":
            # Multi-objective strategies optimize accuracy and this cost themselves.
            result[PARETO_COST] = cost_value(cost_row, self.objective.cost_metric) or math.inf
        return result


@dataclass
class _TrialRun:
    """A trial's MLflow record (None without a parent run) and when the trial started."""

    record: TrialRecord | None
    started: float

    def finish(self, status: str, metrics: Mapping[str, float], reason: str = "", feasible: bool | None = None) -> None:
        """Close the record with the trial's status, metrics and duration."""
        if self.record is not None:
            self.record.finish(
                status, metrics, duration_s=time.monotonic() - self.started, reason=reason, feasible=feasible
            )

    def fail(self, reason: str) -> None:
        """Record the trial FAILED unless it was already closed with its result."""
        if self.record is not None and not self.record.closed:
            self.finish(FAILED, {}, reason=reason)

    def tag(self, tags: Mapping[str, Any]) -> None:
        """Tag the record, if there is one."""
        if self.record is not None:
            self.record.tag(tags)


@dataclass(frozen=True)
class _Training:
    """What one fit produced, for scoring: history, epoch range, fit time, early-stopping epoch."""

    history: dict[str, list[float]]
    epochs: int
    initial_epoch: int
    fit_seconds: float
    pruned_at: int | None


def _continue_lower_rung(tuner, model, rung_trial_id: str, initial_epoch: int, run: _TrialRun) -> int:
    """Load the weights of the Hyperband rung this trial continues, where this process has them.

    Worker pods keep checkpoints on their own disk, so a rung trained by another worker is
    trained again from scratch: slower, never wrong.

    Returns:
        The epoch to start at: ``initial_epoch``, or 0 when the checkpoint is missing.
    """
    checkpoint = tuner._get_checkpoint_fname(rung_trial_id)
    if os.path.exists(checkpoint):
        model.load_weights(checkpoint)
        return initial_epoch
    run.tag({"nasflow.warm_start": "missing-checkpoint"})
    return 0


def _safe_describe(describe, space, values) -> str:
    try:
        return describe(space, values)
    except Exception as error:  # a description must never fail a trial
        logger.debug("cannot describe architecture: %s", error)
        return ""


def initialization_seed(search_seed: int, trial_id: str, values: Mapping[str, Any]) -> int:
    """The seed of a trial's weights, dropout and shuffling.

    The search seed plus the trial's number, unless the trial evaluates an earlier run's
    architecture again (warm start): then the seed that trial was trained with, so that on
    the same data the re-evaluation reproduces its result instead of drawing another
    initialization (bench/results/warm_start.md: on 1-epoch digits the redraw alone cost up
    to 25 points).
    """
    if REEVALUATION_SEED in values:
        return int(values[REEVALUATION_SEED])
    return int(search_seed) + _trial_number(trial_id)


def _trial_number(trial_id: str) -> int:
    digits = "".join(ch for ch in str(trial_id) if ch.isdigit())
    return int(digits) if digits else 0


def cost_metrics(costs: Mapping[str, Any]) -> dict[str, float]:
    """The size and latency metrics of a trial run, leaving out what was not measured."""
    metrics = {}
    if costs["size_bytes"]:
        metrics["size_bytes"] = float(costs["size_bytes"])
    if math.isfinite(costs["latency_p50_ms"]):
        metrics["latency_p50_ms"] = float(costs["latency_p50_ms"])
        metrics["latency_p95_ms"] = float(costs["latency_p95_ms"])
    return metrics


def _cost_row(costs: Mapping[str, Any]) -> dict[str, float | None]:
    # Costs that were not measured are None: objective_score and the constraints treat
    # them as absent (a constraint on an absent cost is a violation, so auto measures it).
    size = costs["size_bytes"] or None
    return {
        "params": costs["params"],
        "flops": costs["flops"],
        "size_kb": size / 1024.0 if size else None,
        "size_bytes": size,
        "latency_ms": costs["latency_p50_ms"] if math.isfinite(costs["latency_p50_ms"]) else None,
    }
