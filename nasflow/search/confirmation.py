"""Confirmation of the best candidates: the last trials of a budget train them again.

A trial's validation accuracy is one draw: the initialization, the data order and, on small
validation sets, a handful of images move it. Picking the best single draw among many
trials picks the luckiest one as much as the best one (the winner's curse), and the model
trained from it tests lower than its score promised. So the search spends its last
``count`` trials training the best ``count`` architectures once more, each from a new
seed, and :func:`nasflow.search.selection.choose_best` ranks every architecture by the
mean of its draws.

On the NAS-Bench-201 tables (each query one training seed's validation accuracy, 20
search seeds, Optuna's TPE as the proposer) confirming the best 3 at the end of the
budget cut the regret of the pick from 0.31 to 0.15 points on ImageNet16-120 and from
0.32 to 0.22 on CIFAR-100 at 200 evaluations, and from 0.41 to 0.35 / 0.84 to 0.69 at
100; it was neutral on CIFAR-10, whose draws barely differ, and at 50 evaluations it cost
more than it gained (0.77 -> 0.90 on ImageNet16-120): a small budget is better spent
exploring. Hence ``auto``: the best :data:`AUTO_COUNT` are confirmed when the budget is
at least :data:`AUTO_MIN_TRIALS` trials, none below (``bench/results/tabular_nas.md``).

The wrapper (:func:`add_confirmation`) works with any strategy's oracle, in the process
that owns it (the chief of a distributed search). Which trials were confirmations is part
of the oracle's saved state, so a resumed search neither repeats nor forgets one. The
trial's values are the architecture's own: nothing a strategy could copy into a proposal
of its own.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from typing import Any

from nasflow.errors import SearchError

logger = logging.getLogger(__name__)

#: ``confirm_best`` when not given.
DEFAULT_CONFIRM_BEST = "auto"
#: Architectures ``auto`` confirms, and the smallest trial budget it does so at.
AUTO_COUNT = 3
AUTO_MIN_TRIALS = 100
#: Key of the oracle state: confirmation trial id -> the trial id it trained again.
STATE_KEY = "nasflow_confirmations"


def confirmation_count(confirm_best: str, max_trials: int, multi_objective: bool = False) -> int:
    """How many of the best architectures the end of the budget trains again.

    Args:
        confirm_best: ``"auto"``, ``"none"`` or a number of architectures (as text: the
            pipeline parameter is a string, like ``warm_start``).
        max_trials: The trial budget.
        multi_objective: A Pareto search: it has no single best to confirm, so ``auto``
            confirms none there.

    Raises:
        SearchError: Neither ``auto``, ``none`` nor a count that leaves the strategy a trial.
    """
    text = str(confirm_best).strip().lower()
    if text == "auto":
        return AUTO_COUNT if max_trials >= AUTO_MIN_TRIALS and not multi_objective else 0
    if text in ("none", "0"):
        return 0
    if not text.isdigit():
        raise SearchError(f"confirm_best must be auto, none or a number of trials, got {confirm_best!r}")
    count = int(text)
    if count >= max_trials:
        raise SearchError(
            f"confirm_best {count} leaves no trial to search with: it must be below max_trials ({max_trials})"
        )
    return count


def architecture_key(values: Mapping[str, Any]) -> tuple:
    """What identifies an architecture among trial values: every value but Keras Tuner's ``tuner/*`` keys."""
    return tuple(sorted((name, repr(value)) for name, value in values.items() if not str(name).startswith("tuner/")))


class _ConfirmingOracle:
    """Mixed in front of a strategy's oracle class by :func:`add_confirmation`."""

    nasflow_confirm: int
    nasflow_confirmations: dict[str, str]

    def populate_space(self, trial_id):
        confirmed = self._next_to_confirm()
        if confirmed is None:
            return super().populate_space(trial_id)
        self.nasflow_confirmations[trial_id] = confirmed.trial_id
        logger.info("confirmation: trial %s trains the architecture of trial %s again", trial_id, confirmed.trial_id)
        return {"status": "RUNNING", "values": _space_values(confirmed.hyperparameters.values)}

    def _next_to_confirm(self):
        """The best completed trial whose architecture is not confirmed yet, once the last slots come."""
        if len(self.nasflow_confirmations) >= self.nasflow_confirm:
            return None
        # Early stopping funds more trials as it prunes: its budget, not the id-width ceiling.
        budget = getattr(self, "nasflow_trial_budget", None) or self.max_trials
        if not budget or len(self.trials) < budget - self.nasflow_confirm:
            return None
        confirmed = {
            architecture_key(self.trials[trial_id].hyperparameters.values)
            for trial_id in self.nasflow_confirmations.values()
            if trial_id in self.trials
        }
        scored = [
            trial
            for trial in self.trials.values()
            if str(trial.status) == "COMPLETED"
            and trial.score is not None
            and trial.score >= 0  # below zero: infeasible or invalid (nasflow's scores)
            and trial.trial_id not in self.nasflow_confirmations
        ]
        # An architecture the strategy itself trained more than once (Optuna's samplers may
        # repeat their favourite) is measured already: its mean is what the choice ranks.
        observed = collections.Counter(architecture_key(trial.hyperparameters.values) for trial in scored)
        for trial in sorted(scored, key=lambda trial: trial.score, reverse=True):
            key = architecture_key(trial.hyperparameters.values)
            if key not in confirmed and observed[key] == 1:
                return trial
        return None

    def get_state(self):
        state = super().get_state()
        state[STATE_KEY] = dict(self.nasflow_confirmations)
        return state

    def set_state(self, state):
        super().set_state(state)
        self.nasflow_confirmations = dict(state.get(STATE_KEY, {}))


def _space_values(values: Mapping[str, Any]) -> dict:
    # A re-evaluated prior carries its seed (tuner/seed): a confirmation draws a new one.
    return {name: value for name, value in values.items() if not str(name).startswith("tuner/")}


_CLASSES: dict[type, type] = {}


def add_confirmation(oracle, count: int):
    """Make ``oracle``'s last ``count`` trials train its best ``count`` architectures again.

    Hyperband is left as it is: its brackets decide every trial, and already train the
    best candidates longer.

    Args:
        oracle: The strategy's oracle (in the process that owns it).
        count: Architectures to confirm (from :func:`confirmation_count`); 0 leaves the
            oracle as it is.

    Returns:
        The same oracle object.
    """
    import keras_tuner

    if count < 1 or isinstance(oracle, keras_tuner.oracles.HyperbandOracle):
        return oracle
    base = type(oracle)
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Confirming{base.__name__}", (_ConfirmingOracle, base), {})
    oracle.__class__ = _CLASSES[base]
    oracle.nasflow_confirm = int(count)
    oracle.nasflow_confirmations = {}
    return oracle
