"""Early stopping of poor candidates (multi-fidelity search), usable with every strategy.

Each epoch's validation accuracy of a running trial is reported to the oracle
(``oracle.update_trial(trial_id, {EPOCH_METRIC: value}, step=epoch)``, which Keras Tuner
forwards over its chief/worker gRPC protocol too). The oracle keeps every trial's learning
curve in the trial's metrics (saved with the trial, so a resumed search still has them),
asks the pruner whether the reporting trial can still win, and answers ``STOPPED`` when
it cannot: the worker that runs the trial then stops ``fit``. The decision is made where
all learning curves are, on the chief, and reaches any worker in the reply it already
waits for; no extra state or connection is needed.

Rules (both maximize the validation accuracy):

* ``median`` -- the median stopping rule of Vizier (Golovin et al., 2017) and Katib: stop
  a trial at epoch ``e`` when its best value so far is below the median of the values
  that ended trials reached at epoch ``e``; only after ``warmup_epochs`` epochs and once
  ``min_trials`` ended trials have a value there.
* ``asha`` -- asynchronous successive halving (Li et al., 2020): rungs at
  ``min_epochs * eta**k`` epochs; a trial reaching a rung continues only if its value there
  is among the top ``1/eta`` of all values recorded at that rung (the first trials at a
  rung continue only when they are the best there, as Optuna's ``SuccessiveHalvingPruner``).

A trial is never stopped after its last epoch (nothing left to save). A stopped trial still
ends ``COMPLETED`` in the oracle with its last validation accuracy as its score, so every
strategy learns from it; nasflow records it ``PRUNED`` in MLflow. The search's budget of
``max_trials`` full trials becomes a budget of ``max_trials * epochs`` epochs: the epochs a
pruned trial did not use go to extra trials.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: ``early_stopping`` choices (the pipeline parameter and ``SearchSettings.early_stopping``).
EARLY_STOPPING: tuple[str, ...] = ("none", "median", "asha")

#: The per-epoch metric reported to the oracle. Not ``val_accuracy``: Keras Tuner files the
#: final result of a trial under step 0 and would mix it into the first epoch's value.
EPOCH_METRIC = "nasflow_epoch_val_accuracy"

#: Recorded (step = epochs reached) on a trial the pruner stopped, in the oracle's trial.
PRUNED_METRIC = "nasflow_pruned_at_epoch"

#: What ``update_trial`` answers for a trial that should stop (Keras Tuner's status name).
STOPPED = "STOPPED"


@dataclass(frozen=True)
class Curve:
    """One trial's learning curve as the pruner sees it.

    Attributes:
        values: Epoch index (0-based) -> validation accuracy after that epoch.
        ended: Whether the trial has ended (completed, pruned or failed).
    """

    values: Mapping[int, float]
    ended: bool


@dataclass(frozen=True)
class MedianStopping:
    """The median stopping rule.

    Attributes:
        warmup_epochs: Epochs a trial always trains before it can be stopped.
        min_trials: Ended trials that must have reached an epoch before it is judged.
    """

    warmup_epochs: int = 1
    min_trials: int = 3

    def should_stop(self, curve: Mapping[int, float], others: Sequence[Curve], max_epochs: int) -> bool:
        """Whether the trial whose curve this is should stop now (after its latest epoch).

        Args:
            curve: The trial's own values so far, epoch -> value.
            others: Every other trial's curve.
            max_epochs: Epochs a full trial trains.
        """
        if not curve:
            return False
        epoch = max(curve)
        if epoch + 1 <= self.warmup_epochs or epoch + 1 >= max_epochs:
            return False
        peers = [other.values[epoch] for other in others if other.ended and epoch in other.values]
        peers = [value for value in peers if math.isfinite(value)]
        if len(peers) < self.min_trials:
            return False
        best_so_far = max(value for step, value in curve.items() if step <= epoch)
        return best_so_far < statistics.median(peers)


@dataclass(frozen=True)
class SuccessiveHalving:
    """Asynchronous successive halving (ASHA) as a stopping rule.

    Attributes:
        min_epochs: Epochs of the first rung.
        reduction_factor: ``eta``: rungs are ``min_epochs * eta**k`` epochs apart, and
            ``1/eta`` of the trials reaching a rung go on.
    """

    min_epochs: int = 1
    reduction_factor: int = 3

    def rungs(self, max_epochs: int) -> list[int]:
        """Epoch counts at which trials are judged (those before the last epoch)."""
        rungs, epochs = [], self.min_epochs
        while epochs < max_epochs:
            rungs.append(epochs)
            epochs *= self.reduction_factor
        return rungs

    def should_stop(self, curve: Mapping[int, float], others: Sequence[Curve], max_epochs: int) -> bool:
        """Whether the trial should stop at the rung it just reached (False between rungs).

        Args:
            curve: The trial's own values so far, epoch -> value.
            others: Every other trial's curve (running ones included: ASHA is asynchronous).
            max_epochs: Epochs a full trial trains.
        """
        if not curve:
            return False
        epoch = max(curve)
        if epoch + 1 not in self.rungs(max_epochs):
            return False
        value = curve[epoch]
        competing = sorted(
            [other.values[epoch] for other in others if epoch in other.values and math.isfinite(other.values[epoch])]
            + [value],
            reverse=True,
        )
        promoted = max(1, len(competing) // self.reduction_factor)
        return not value >= competing[promoted - 1]


def make_pruner(name: str) -> MedianStopping | SuccessiveHalving | None:
    """The rule named by ``early_stopping`` (None for ``"none"``)."""
    return {"none": None, "median": MedianStopping(), "asha": SuccessiveHalving()}[name]


def _curve_of(trial) -> dict[int, float]:
    if not trial.metrics.exists(EPOCH_METRIC):
        return {}
    return {
        int(observation.step): float(observation.value[-1])
        for observation in trial.metrics.get_history(EPOCH_METRIC)
        if observation.value
    }


def _pruned_at(trial) -> int | None:
    if not trial.metrics.exists(PRUNED_METRIC):
        return None
    history = trial.metrics.get_history(PRUNED_METRIC)
    return int(history[-1].step) if history else None


class _EarlyStoppingOracle:
    """Mixed in front of a strategy's oracle class by :func:`add_early_stopping`."""

    nasflow_pruner: MedianStopping | SuccessiveHalving
    nasflow_epochs: int
    nasflow_max_trials: int

    def update_trial(self, trial_id, metrics, step=0):
        if set(metrics) != {EPOCH_METRIC}:
            return super().update_trial(trial_id, metrics, step=step)
        return self._report_epoch(trial_id, float(metrics[EPOCH_METRIC]), int(step))

    def _report_epoch(self, trial_id: str, value: float, epoch: int):
        import keras_tuner

        @keras_tuner.synchronized
        def report(oracle):
            trial = oracle.trials[trial_id]
            if not trial.metrics.exists(EPOCH_METRIC):
                trial.metrics.register(EPOCH_METRIC, direction="max")
            trial.metrics.update(EPOCH_METRIC, value, step=epoch)
            others = [
                Curve(_curve_of(other), str(other.status) != "RUNNING")
                for other_id, other in oracle.trials.items()
                if other_id != trial_id
            ]
            stop = oracle.nasflow_pruner.should_stop(_curve_of(trial), others, oracle.nasflow_epochs)
            if stop:
                if not trial.metrics.exists(PRUNED_METRIC):
                    trial.metrics.register(PRUNED_METRIC, direction="max")
                trial.metrics.update(PRUNED_METRIC, float(epoch + 1), step=epoch + 1)
            oracle._save_trial(trial)
            if not stop:
                return trial
            # The reply says STOPPED; the stored trial stays RUNNING until the tuner ends it.
            answer = copy.copy(trial)
            answer.status = STOPPED
            return answer

        return report(self)

    def create_trial(self, tuner_id):
        import keras_tuner

        @keras_tuner.synchronized
        def create(oracle):
            if not oracle.nasflow_max_trials:
                return super(_EarlyStoppingOracle, oracle).create_trial(tuner_id)  # noqa: UP008 - nested function
            # Epochs a pruned trial did not train fund further trials.
            unused = sum(
                oracle.nasflow_epochs - reached
                for trial in oracle.trials.values()
                if (reached := _pruned_at(trial)) is not None
            )
            budget = oracle.nasflow_max_trials + unused // oracle.nasflow_epochs
            oracle.nasflow_trial_budget = budget  # what wrappers that plan the budget's end read
            # Keras Tuner pads trial ids to the digits of max_trials: during the call it is the
            # most trials the epoch budget can ever fund (one epoch each), so ids keep one width.
            ceiling = oracle.nasflow_max_trials * oracle.nasflow_epochs
            oracle.max_trials = ceiling if len(oracle.trials) < budget else len(oracle.trials)
            try:
                return super(_EarlyStoppingOracle, oracle).create_trial(tuner_id)  # noqa: UP008 - nested function
            finally:
                oracle.max_trials = budget

        return create(self)


_CLASSES: dict[type, type] = {}


def add_early_stopping(oracle, pruner: MedianStopping | SuccessiveHalving | None, epochs: int):
    """Make ``oracle`` (any Keras Tuner oracle) take per-epoch reports and stop poor trials.

    Args:
        oracle: The strategy's oracle (in the process that owns it: the chief).
        pruner: The rule; None leaves the oracle as it is.
        epochs: Epochs a full trial trains.

    Returns:
        The same oracle object.
    """
    if pruner is None:
        return oracle
    base = type(oracle)
    if base not in _CLASSES:
        _CLASSES[base] = type(f"EarlyStopping{base.__name__}", (_EarlyStoppingOracle, base), {})
    oracle.__class__ = _CLASSES[base]
    oracle.nasflow_pruner = pruner
    oracle.nasflow_epochs = max(1, int(epochs))
    oracle.nasflow_max_trials = int(oracle.max_trials or 0)
    return oracle


def epoch_reporter(oracle, trial_id: str):
    """A Keras callback reporting each epoch's ``val_accuracy`` and stopping ``fit`` when told.

    Its ``pruned_at`` is the number of epochs reached when the oracle stopped the trial
    (None while it was not stopped).
    """
    import keras

    class EpochReporter(keras.callbacks.Callback):
        pruned_at: int | None = None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_accuracy")
            if value is None or not math.isfinite(float(value)):
                return
            answer = oracle.update_trial(trial_id, {EPOCH_METRIC: float(value)}, step=int(epoch))
            if str(getattr(answer, "status", "")) == STOPPED:
                self.pruned_at = int(epoch) + 1
                self.model.stop_training = True

    return EpochReporter()
