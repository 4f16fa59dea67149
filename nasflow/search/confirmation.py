"""Confirmation of the best candidates: the last trials of a budget train them again.

A trial's validation accuracy is one draw: the initialization, the data order and, on small
validation sets, a handful of images move it. Picking the best single draw among many
trials picks the luckiest one as much as the best one (the winner's curse), and the model
trained from it tests lower than its score promised. So the search spends its last
``count`` trials racing the leaders, as SMAC's intensification races challengers against
its incumbent (Hutter et al., 2011): each of those trials trains, from a new seed, the
architecture that leads by the mean of its trainings (the ranking
:func:`nasflow.search.selection.choose_best` uses) and has fewer than
:data:`MAX_OBSERVATIONS` of them. A lucky draw is trained again until its mean falls
behind the next architecture, which is then trained again in turn, or until it holds with
:data:`MAX_OBSERVATIONS` trainings (counting the ones the strategy itself made and the
confirmations still running).

Measured on the NAS-Bench-201 and HPOBench tables (each query one training seed's
validation accuracy; tuning seeds 100-119, the same searches with the end of the budget
confirmed in different ways, ``bench/confirmation_rules.py``): on ``tpe``'s searches at 200
evaluations, 6 % of the budget raced to 4 trainings cut the regret of the pick on
ImageNet16-120 from 0.33 points (the best 3 confirmed once each, the rule before) to
0.25 (none: 0.36); on the default ``tpe_local``'s, 10 % raced to 4 was lower than 6 % on
8 of the 11 tables at 100 evaluations and on 9 of 11 at 200 (mean regret 5.6 % and 2.7 %
lower; ImageNet16-120 at 200: 0.245 against 0.266, none 0.388); at 50 any confirmation
cost more exploration than it gained. Hence ``auto``:
:data:`AUTO_SHARE` of the budget from :data:`AUTO_MIN_TRIALS` trials on, none below. Under a wall-clock budget
(``max_search_minutes``) the last slots are the trials the time left holds at the rate
trials have ended so far, and ``auto`` is its share of the trials the time allows.

The wrapper (:func:`add_confirmation`) works with any strategy's oracle, in the process
that owns it (the chief of a distributed search). Which trials were confirmations is part
of the oracle's saved state, so a resumed search neither repeats nor forgets one. The
trial's values are the architecture's own: nothing a strategy could copy into a proposal
of its own.
"""

from __future__ import annotations

import collections
import logging
import math
import statistics
from collections.abc import Mapping
from typing import Any

from nasflow.errors import SearchError

logger = logging.getLogger(__name__)

#: ``confirm_best`` when not given.
DEFAULT_CONFIRM_BEST = "auto"
#: Share of the trial budget ``auto`` spends on confirmation, and the smallest budget it does so at.
AUTO_SHARE = 0.10
AUTO_MIN_TRIALS = 100
#: Trainings of one architecture after which confirmation moves on to the next best.
MAX_OBSERVATIONS = 4
#: Key of the oracle state: confirmation trial id -> the trial id it trained again.
STATE_KEY = "nasflow_confirmations"


def confirmation_count(confirm_best: str, max_trials: int, multi_objective: bool = False) -> int:
    """How many trials at the end of the budget confirm the best architectures.

    Args:
        confirm_best: ``"auto"``, ``"none"`` or a number of confirmation trials (as text:
            the pipeline parameter is a string, like ``warm_start``).
        max_trials: The trial budget.
        multi_objective: A Pareto search: it has no single best to confirm, so ``auto``
            confirms none there.

    Raises:
        SearchError: Neither ``auto``, ``none`` nor a count that leaves the strategy a trial.
    """
    text = _normalized(confirm_best)
    if text == "auto":
        return round(AUTO_SHARE * max_trials) if max_trials >= AUTO_MIN_TRIALS and not multi_objective else 0
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


def _normalized(confirm_best: str) -> str:
    return str(confirm_best).strip().lower()


def architecture_key(values: Mapping[str, Any]) -> tuple:
    """What identifies an architecture among trial values: every value but Keras Tuner's ``tuner/*`` keys."""
    return tuple(sorted((name, repr(value)) for name, value in values.items() if not str(name).startswith("tuner/")))


class _ConfirmingOracle:
    """Mixed in front of a strategy's oracle class by :func:`add_confirmation`."""

    nasflow_confirm: int
    nasflow_confirmations: dict[str, str]
    #: ``confirm_best`` was ``auto``: under a wall-clock budget it is auto's share of the trials the time allows.
    nasflow_confirm_auto = False
    nasflow_max_observations = MAX_OBSERVATIONS
    nasflow_time_budget_s: float | None = None

    def populate_space(self, trial_id):
        confirmed = self._next_to_confirm()
        if confirmed is None:
            return super().populate_space(trial_id)
        self.nasflow_confirmations[trial_id] = confirmed.trial_id
        logger.info("confirmation: trial %s trains the architecture of trial %s again", trial_id, confirmed.trial_id)
        return {"status": "RUNNING", "values": _space_values(confirmed.hyperparameters.values)}

    def _slots_left(self) -> tuple[float, float]:
        """``(trials still to start, trials the whole search will have run)``, as far as known.

        By the trial budget and, under a wall-clock budget, by the rate at which trials have
        ended so far (every attempt's time and trials, every worker's trials): a search that
        ``max_search_minutes`` ends before ``max_trials`` still spends its last trials on
        confirmation.
        """
        # Early stopping funds more trials as it prunes: its budget, not the id-width ceiling.
        budget = getattr(self, "nasflow_trial_budget", None) or self.max_trials or math.inf
        left, total = budget - len(self.trials), budget
        time_budget_s = self.nasflow_time_budget_s
        if time_budget_s and hasattr(self, "search_elapsed_s"):
            elapsed = self.search_elapsed_s()
            ended = sum(str(trial.status) != "RUNNING" for trial in self.trials.values())
            if ended and elapsed > 0:
                by_time = max(0.0, time_budget_s - elapsed) * ended / elapsed
                left, total = min(left, by_time), min(total, len(self.trials) + by_time)
        return left, total

    def _next_to_confirm(self):
        """The leading trial to train again once the last slots come (see the module's docstring)."""
        left, total = self._slots_left()
        planned = self.nasflow_confirm
        if self.nasflow_confirm_auto and math.isfinite(total):
            # auto's share of what the search will run, which a wall-clock budget may cut short.
            planned = min(planned, confirmation_count("auto", int(total)))
        to_make = planned - len(self.nasflow_confirmations)
        if to_make < 1 or left > to_make:
            return None
        draws: dict[tuple, list] = {}
        for trial in self.trials.values():
            # Below zero: infeasible or invalid (nasflow's scores), never a candidate.
            if str(trial.status) == "COMPLETED" and trial.score is not None and trial.score >= 0:
                draws.setdefault(architecture_key(trial.hyperparameters.values), []).append(trial)
        # A confirmation another worker still trains is a draw on its way (distributed search).
        running = collections.Counter(
            architecture_key(self.trials[trial_id].hyperparameters.values)
            for trial_id in self.nasflow_confirmations
            if trial_id in self.trials and str(self.trials[trial_id].status) == "RUNNING"
        )
        leaders = sorted(draws.items(), key=lambda item: _mean_score(item[1]), reverse=True)
        for key, trials in leaders:
            if len(trials) + running[key] < self.nasflow_max_observations:
                return trials[0]
        return None

    def get_state(self):
        state = super().get_state()
        state[STATE_KEY] = dict(self.nasflow_confirmations)
        return state

    def set_state(self, state):
        super().set_state(state)
        self.nasflow_confirmations = dict(state.get(STATE_KEY, {}))


def _mean_score(trials) -> float:
    return statistics.fmean(trial.score for trial in trials)


def _space_values(values: Mapping[str, Any]) -> dict:
    # A re-evaluated prior carries its seed (tuner/seed): a confirmation draws a new one.
    return {name: value for name, value in values.items() if not str(name).startswith("tuner/")}


_CLASSES: dict[type, type] = {}


def add_confirmation(
    oracle, confirm_best: str, max_trials: int, multi_objective: bool = False, time_budget_s: float | None = None
):
    """Make ``oracle``'s last trials train its leading architectures again.

    Hyperband is left as it is: its brackets decide every trial, and already train the
    best candidates longer.

    Args:
        oracle: The strategy's oracle (in the process that owns it).
        confirm_best: ``auto``, ``none`` or a count of trials (:func:`confirmation_count`,
            with ``max_trials`` and ``multi_objective``); none leaves the oracle as it is.
        max_trials: The trial budget.
        multi_objective: A Pareto search (``auto`` confirms none).
        time_budget_s: The search's wall-clock budget (``max_search_minutes``), if any: the
            last trials it leaves time for are confirmations, and ``auto`` is its share of
            the trials the time allows. Needs the crash-safe oracle's search clock
            (:func:`nasflow.search.state.make_crash_safe`, applied after).

    Returns:
        The same oracle object.
    """
    import keras_tuner

    count = confirmation_count(confirm_best, max_trials, multi_objective=multi_objective)
    if count < 1 or isinstance(oracle, keras_tuner.oracles.HyperbandOracle):
        return oracle
    base = type(oracle)
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Confirming{base.__name__}", (_ConfirmingOracle, base), {})
    oracle.__class__ = _CLASSES[base]
    oracle.nasflow_confirm = int(count)
    oracle.nasflow_confirmations = {}
    oracle.nasflow_time_budget_s = time_budget_s or None
    oracle.nasflow_confirm_auto = _normalized(confirm_best) == "auto"
    return oracle
