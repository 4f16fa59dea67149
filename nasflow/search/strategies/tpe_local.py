"""TPE warm-up, then local search around the incumbent: the ``tpe_local`` strategy.

Model-based search wins early and mutation-based search around the best candidate wins
at moderate budgets on small discrete NAS spaces (White et al., 2020, "Local search is
state of the art for NAS benchmarks"; Real et al., 2019). This oracle therefore runs
Optuna's TPE for its first ``warmup_trials`` trials and then proposes, trial after
trial, an untried neighbour of the best observation so far (warm-start observations
included): that trial with one active hyperparameter changed (conditional children of a
changed parent drawn afresh). Among the untried neighbours it takes the one whose new
value is most typical of the best fifth of the observations (TPE's density ratio, one
hyperparameter at a time). A neighbour that scores better becomes the centre, so the
search climbs; once every neighbour of the best observation has been tried, the next
best one's neighbourhood is searched (best-first). With probability
``explore_probability`` a trial is TPE's proposal instead, so the search still looks
elsewhere.

Every proposal, local or not, is a trial of the same Optuna study (the local ones are
enqueued with fixed values), so the journal in the tuner's folder holds the whole search:
resume after a SIGKILL, the chief/worker mode, constraints (a refused neighbour is told
as the worst value and the next untried neighbour is drawn), failures and conditional
spaces (neighbours are completed under ``when`` / ``repeat`` conditions) work exactly as
for ``tpe``. The phase a trial belongs to depends only on the trials ended so far, the
warm-up length on the budget only below 50 trials, so a 200-trial search makes the same
first 50 proposals as a 50-trial one with the same seed. In ``--objective pareto`` mode
there is no single incumbent: the strategy is TPE's multi-objective search throughout.
"""

from __future__ import annotations

import math
import random

from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from nasflow.search.strategies import OracleSettings
from nasflow.search.strategies.base import (
    MAX_ENUMERATED_VALUES,
    Saved,
    can_mutate,
    discrete_values,
    in_space,
    sample_value,
)
from nasflow.search.strategies.optuna_sampler import OptunaOracle, _constraint, _import_optuna

#: TPE trials before the local search starts (fewer for budgets under 2.5 x this).
WARMUP_TRIALS = 20
#: Random trials TPE starts with, inside the warm-up.
STARTUP_TRIALS = 10
#: Chance that a trial after the warm-up is TPE's proposal rather than a neighbour.
EXPLORE_PROBABILITY = 0.1
#: Share of the observations that count as "good" when ranking neighbours.
GOOD_FRACTION = 0.2
#: Random values tried per continuous hyperparameter in a neighbourhood.
CONTINUOUS_DRAWS = 4
#: Best observations whose neighbourhoods are searched before falling back to TPE.
MAX_EXPANDED = 50
#: Observations a configuration needs before it may be the centre of the local search.
CONFIRMATIONS = 2


def warmup_for_budget(max_trials: int) -> tuple[int, int]:
    """``(warm-up trials, random startup trials)`` for a budget of ``max_trials``.

    Budgets of 50 trials and more get the full :data:`WARMUP_TRIALS` /
    :data:`STARTUP_TRIALS`; smaller ones spend 40 % on the warm-up (a fifth of the budget
    random), so even a 10-trial search climbs for 6 trials.
    """
    if not max_trials:
        return WARMUP_TRIALS, STARTUP_TRIALS
    warmup = max(2, min(WARMUP_TRIALS, int(0.4 * max_trials)))
    return warmup, max(1, min(STARTUP_TRIALS, warmup // 2, max_trials // 5))


def _tpe_factory(startup: int):
    def make_sampler(seed: int, max_trials: int, multi_objective: bool):
        optuna = _import_optuna()
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=startup,
            multivariate=True,
            group=True,
            constant_liar=True,
            constraints_func=_constraint if multi_objective else None,
        )

    return make_sampler


class TpeLocalOracle(OptunaOracle):
    """TPE for a warm-up, then best-first local search around the best observations.

    Args:
        warmup_trials: Trials proposed by TPE before the local search starts.
        startup_trials: Random trials TPE starts with.
        explore_probability: Chance a post-warm-up trial is TPE's proposal instead.
        confirmations: Observations a configuration needs before its neighbourhood is
            searched; 1 takes every single (noisy) observation at face value.
        **kwargs: What :class:`OptunaOracle` takes (objective, space, seed, budget,
            constraint check, warm-start observations...), except the sampler factory.
    """

    #: The phase settings and the counts of local and repeated proposals. A state saved
    #: before confirmations existed resumes the search it was: one observation each.
    SAVED_STATE = {
        **OptunaOracle.SAVED_STATE,
        "tpe_local": (
            Saved("warmup_trials", "warmup_trials", int),
            Saved("startup_trials", "startup_trials", int),
            Saved("explore_probability", "explore_probability", float),
            Saved("local_proposals", "local_proposals", int, 0),
            Saved("confirmations", "confirmations", int, 1),
            Saved("repeat_proposals", "repeat_proposals", int, 0),
        ),
    }

    def __init__(
        self,
        warmup_trials: int = WARMUP_TRIALS,
        startup_trials: int = STARTUP_TRIALS,
        explore_probability: float = EXPLORE_PROBABILITY,
        confirmations: int = CONFIRMATIONS,
        **kwargs,
    ):
        # Its own proposals decide what is run again (a configuration at most twice); TPE's
        # repeats during the warm-up and exploration become untried neighbours, as measured.
        kwargs.setdefault("max_repeats", 1)
        super().__init__(_tpe_factory(startup_trials), **kwargs)
        self.warmup_trials = warmup_trials
        self.startup_trials = startup_trials
        self.explore_probability = explore_probability
        self.confirmations = confirmations
        self.local_proposals = 0
        self.repeat_proposals = 0
        self._scratch = None

    def _observations(self) -> list[tuple[dict, float]]:
        """``(values, score)`` of the completed trials and warm-start priors, larger is better."""
        observed = [
            (dict(values), float(score))
            for values, score in self.prior_observations
            if score is not None and math.isfinite(float(score))
        ]
        for trial_id in self.end_order:
            stored = self.trials[trial_id]
            if stored.status != trial_module.TrialStatus.COMPLETED or stored.score is None:
                continue
            score = self._score_for_maximizing(stored)
            if math.isfinite(score):
                observed.append((dict(stored.hyperparameters.values), score))
        return observed

    def _scratch_space(self):
        """One copy of the space to evaluate conditions on, renewed if the space grew."""
        if self._scratch is None or len(self._scratch.space) != len(self.hyperparameters.space):
            self._scratch = self.hyperparameters.copy()
        return self._scratch

    def _complete(self, values: dict, rng: random.Random) -> dict:
        """:func:`complete_values` on one reused copy of the space (copying it is the slow part)."""
        hps = self._scratch_space()
        hps.values = {}
        for hp in hps.space:
            if hp.name in hps.values or not hps.is_active(hp):
                continue
            value = values.get(hp.name)
            hps.values[hp.name] = (
                value if hp.name in values and in_space(hp, value) else sample_value(hp, rng)
            )
        return dict(hps.values)

    def _neighbours(self, values: dict, rng: random.Random) -> list[tuple[str, object, dict]]:
        """``(changed name, new value, completed values)`` of every one-change neighbour.

        Finite hyperparameters give each of their other values; continuous ones a few
        random draws. Conditional children of a changed parent are completed at random.
        """
        hps = self._scratch_space()
        hps.values = dict(values)
        seen, neighbours = set(), []
        for hp in hps.space:
            if hp.name in seen or hp.name not in values or not hps.is_active(hp) or not can_mutate(hp):
                continue
            seen.add(hp.name)
            finite = isinstance(hp, hp_module.Choice | hp_module.Boolean) or (
                hp.step is not None and hp._get_n_values() <= MAX_ENUMERATED_VALUES
            )
            options = (
                discrete_values(hp) if finite else [sample_value(hp, rng) for _ in range(CONTINUOUS_DRAWS)]
            )
            for option in options:
                if option != values[hp.name]:
                    neighbours.append((hp.name, option, {**values, hp.name: option}))
            hps.values = dict(values)
        return [(name, option, self._complete(candidate, rng)) for name, option, candidate in neighbours]

    def _value_preference(self, observed: list[tuple[dict, float]]):
        """Score of a (name, value): log of how much likelier it is among the best observations.

        TPE's density ratio l(x)/g(x) for one hyperparameter at a time, counted over the
        top :data:`GOOD_FRACTION` of observations versus the rest, with one pseudo-count.
        """
        ranked = sorted(observed, key=lambda pair: pair[1], reverse=True)
        cut = max(1, math.ceil(GOOD_FRACTION * len(ranked)))
        good, bad = ranked[:cut], ranked[cut:]

        def counts(group):
            table: dict[tuple[str, str], int] = {}
            for values, _ in group:
                for name, value in values.items():
                    table[(name, repr(value))] = table.get((name, repr(value)), 0) + 1
            return table

        good_counts, bad_counts = counts(good), counts(bad)

        def preference(name: str, value) -> float:
            key = (name, repr(value))
            return math.log((good_counts.get(key, 0) + 1) / (len(good) + 1)) - math.log(
                (bad_counts.get(key, 0) + 1) / (len(bad) + 1)
            )

        return preference

    def _ranked_cells(self) -> list[tuple[dict, float, int]]:
        """Observed configurations best first by mean score: ``(values, mean, observations)``.

        Each query of a configuration is one noisy draw, so a configuration is ranked by
        the mean of its draws, and one still running counts as an observation on its way
        (parallel workers do not all repeat the same one). Warm-start observations count
        as confirmed: they cannot be run again when they are no longer in the space.
        """
        cells: dict[str, list] = {}
        for values, score in self._observations():
            cell = cells.setdefault(self._compute_values_hash(values), [values, [], 0])
            cell[1].append(score)
        for values, _ in self.prior_observations:
            digest = self._compute_values_hash(values)
            if digest in cells:
                cells[digest][2] = self.confirmations
        for trial in self.ongoing_trials.values():
            digest = self._compute_values_hash(trial.hyperparameters.values)
            if digest in cells:
                cells[digest][2] += 1
        ranked = [
            (values, sum(scores) / len(scores), len(scores) + extra)
            for values, scores, extra in cells.values()
        ]
        return sorted(ranked, key=lambda cell: cell[1], reverse=True)

    def _local_candidate(self, rng: random.Random, rejected: set[str]) -> tuple[dict, bool] | None:
        """``(values, is_repeat)``: the next local move, or None when there is none.

        Configurations are visited best first by mean score. The first one observed
        fewer than ``confirmations`` times is run again (a single lucky draw must not
        become the centre of the search); else, among the untried neighbours of the first
        one that has any, the one whose changed value the observations favour most
        (:meth:`_value_preference`) is taken, ties broken at random.
        """
        preference = self._value_preference(self._observations())
        for values, _, observations in self._ranked_cells()[:MAX_EXPANDED]:
            if observations < self.confirmations:
                return values, True
            untried = [
                (preference(name, option) + 1e-6 * rng.random(), candidate)
                for name, option, candidate in self._neighbours(values, rng)
                if self._is_new(candidate, rejected)
            ]
            if untried:
                return max(untried, key=lambda pair: pair[0])[1], False
        return None

    def propose(self, trial_id: str, rng: random.Random, rejected: set[str]) -> dict | None:
        """TPE during the warm-up (and when exploring), else a local move around the best.

        A local move is a repeat of the best configuration not yet confirmed, or an
        untried neighbour of the best confirmed one (:meth:`_local_candidate`).

        Args:
            trial_id: The new trial's id.
            rng: This proposal's generator.
            rejected: Hashes of values the constraint check refused for this trial.

        Returns:
            New values, or None when no untried values can be found.
        """
        if self.multi_objective or self._completed() < self.warmup_trials:
            return super().propose(trial_id, rng, rejected)
        explore = rng.random() < self.explore_probability
        move = None if explore else self._local_candidate(rng, rejected)
        if move is None:
            return super().propose(trial_id, rng, rejected)
        candidate, is_repeat = move
        # Fixed values need no model: a random sampler keeps the ask cheap.
        self.study.sampler = _import_optuna().samplers.RandomSampler(seed=rng.randrange(2**31))
        optuna_trial, values = self._ask(trial_id, fixed=candidate)
        if not is_repeat and not self._is_new(values, rejected):
            self._fail(optuna_trial.number, "repeats values already tried")
            return super().propose(trial_id, rng, rejected)
        self._pending = optuna_trial.number
        if is_repeat:
            self.repeat_proposals += 1
        else:
            self.local_proposals += 1
        return values

    def _completed(self) -> int:
        return sum(
            1
            for trial_id in self.end_order
            if self.trials[trial_id].status == trial_module.TrialStatus.COMPLETED
        )

    def set_state(self, state):
        """Restore what :meth:`get_state` saved, and the sampler of the saved warm-up."""
        super().set_state(state)
        self.sampler_factory = _tpe_factory(self.startup_trials)


def make(settings: OracleSettings) -> TpeLocalOracle:
    """The registry's factory for ``tpe_local`` (warm-up sized from the budget)."""
    warmup, startup = warmup_for_budget(settings.max_trials)
    return TpeLocalOracle(
        warmup_trials=warmup,
        startup_trials=startup,
        explore_probability=EXPLORE_PROBABILITY,
        confirmations=CONFIRMATIONS,
        max_trials=settings.max_trials,
        pareto_objectives=settings.pareto_objectives,
        prior_observations=settings.prior_observations,
        constraint_check=settings.constraint_check,
        **settings.common(),
    )


__all__ = ["TpeLocalOracle", "make", "warmup_for_budget"]
