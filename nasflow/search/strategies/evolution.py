"""Regularized (aging) evolution as a Keras Tuner oracle (Real et al., 2019).

The first ``population_size`` trials are random. After that each trial takes the best of
``sample_size`` trials drawn from the population (the most recent ``population_size``
completed trials: the oldest dies first, whatever its score), optionally crosses it
with a second tournament winner, and mutates exactly one active hyperparameter.

Warm-started (``prior_observations``), the best priors make up the initial population,
so evolution starts as soon as they fill a tournament; they are the oldest members and
die first as trials complete.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from keras_tuner.engine import trial as trial_module

from nasflow.errors import SearchError
from nasflow.search.strategies import OracleSettings
from nasflow.search.strategies.base import (
    Saved,
    SeededOracle,
    active_hyperparameters,
    can_mutate,
    complete_values,
    in_space,
    mutate_value,
    sample_value,
)


class EvolutionOracle(SeededOracle):
    """Regularized evolution over a Keras Tuner search space.

    The population is derived from the base oracle's saved ``end_order``, and random
    draws from the seed and a saved proposal counter, so resume and distributed mode
    need no extra state.

    Args:
        objective: The Keras Tuner objective.
        max_trials: Total number of trials.
        population_size: Trials in the population; also the number of initial random trials.
        sample_size: Tournament size (at most ``population_size``).
        crossover_probability: Chance a child is first a uniform crossover of two parents.
        mutation_weights: Relative chance, by hyperparameter name, of being the one mutated
            (default 1 for every name not listed; 0 freezes a hyperparameter).
        **oracle_kwargs: The shared oracle settings of :class:`SeededOracle` (search space,
            seed, retries, failure limit, constraint check).
    """

    #: The evolution settings; the population itself derives from ``end_order`` and is
    #: written for readers of the state file only.
    SAVED_STATE = {
        **SeededOracle.SAVED_STATE,
        "evolution": (
            Saved("population_size", "population_size", int),
            Saved("sample_size", "sample_size", int),
            Saved("crossover_probability", "crossover_probability", float),
            Saved("population", "population", None),
        ),
    }

    def __init__(
        self,
        objective=None,
        max_trials: int | None = 10,
        population_size: int = 20,
        sample_size: int = 5,
        crossover_probability: float = 0.0,
        mutation_weights: Mapping[str, float] | None = None,
        **oracle_kwargs,
    ):
        if population_size < 1:
            raise SearchError(f"evolution population_size must be at least 1, got {population_size}")
        if not 1 <= sample_size <= population_size:
            raise SearchError(f"evolution sample_size must be in [1, population_size], got {sample_size}")
        if not 0.0 <= crossover_probability <= 1.0:
            raise SearchError(
                f"evolution crossover_probability must be in [0, 1], got {crossover_probability}"
            )
        super().__init__(objective=objective, max_trials=max_trials, **oracle_kwargs)
        self.population_size = population_size
        self.sample_size = sample_size
        self.crossover_probability = crossover_probability
        self.mutation_weights = dict(mutation_weights or {})

    def _members(self) -> list[tuple[dict, float]]:
        """``(values, score)`` of the living population, oldest first (priors before trials)."""
        trials = [
            (dict(self.trials[trial_id].hyperparameters.values), self._score_for_maximizing(self.trials[trial_id]))
            for trial_id in self.population
        ]
        room = self.population_size - len(trials)
        priors = [(values, score) for values, score in self.prior_observations[:room]] if room > 0 else []
        return priors[::-1] + trials

    @property
    def population(self) -> list[str]:
        """Trial ids of the living population, oldest first."""
        completed = [
            trial_id
            for trial_id in self.end_order
            if self.trials[trial_id].status == trial_module.TrialStatus.COMPLETED
            and self.trials[trial_id].score is not None
        ]
        return completed[-self.population_size :]

    def _tournament(self, population: list[tuple[dict, float]], rng: random.Random) -> dict:
        contenders = rng.sample(population, min(self.sample_size, len(population)))
        return dict(max(contenders, key=lambda member: member[1])[0])

    def _crossover(self, first: Mapping, second: Mapping, rng: random.Random) -> dict:
        hps = self.hyperparameters.copy()
        hps.values = {}
        for hp in hps.space:
            if hp.name in hps.values or not hps.is_active(hp):
                continue
            options = [
                parent[hp.name]
                for parent in (first, second)
                if hp.name in parent and in_space(hp, parent[hp.name])
            ]
            hps.values[hp.name] = rng.choice(options) if options else sample_value(hp, rng)
        return hps.values

    def _mutate(self, values: Mapping, rng: random.Random) -> dict:
        values = complete_values(self.hyperparameters, values, rng)
        mutable = [
            hp
            for hp in active_hyperparameters(self.hyperparameters, values)
            if can_mutate(hp) and self.mutation_weights.get(hp.name, 1.0) > 0
        ]
        if not mutable:
            return values
        weights = [self.mutation_weights.get(hp.name, 1.0) for hp in mutable]
        target = rng.choices(mutable, weights=weights, k=1)[0]
        values[target.name] = mutate_value(target, values[target.name], rng)
        return complete_values(self.hyperparameters, values, rng)

    def _random_new(self, rng: random.Random, rejected: set[str]) -> dict | None:
        for _ in range(self._max_collisions + 1):
            values = complete_values(self.hyperparameters, {}, rng)
            if self._is_new(values, rejected):
                return values
        return None

    def propose(self, trial_id: str, rng: random.Random, rejected: set[str]) -> dict | None:
        """A random trial while the first population fills, else a mutated tournament winner.

        Args:
            trial_id: The new trial's id.
            rng: This proposal's generator.
            rejected: Hashes of values the constraint check refused for this trial.

        Returns:
            New values, or None when no untried values can be found.
        """
        population = self._members()
        # Warm-started, evolution begins once the priors fill a tournament.
        warm = bool(self.prior_observations) and len(population) >= self.sample_size
        if not warm and (len(self.start_order) < self.population_size or not population):
            return self._random_new(rng, rejected)
        for _ in range(5 * (self._max_collisions + 1)):
            parent = self._tournament(population, rng)
            if self.crossover_probability > 0 and rng.random() < self.crossover_probability:
                parent = self._crossover(parent, self._tournament(population, rng), rng)
            child = self._mutate(parent, rng)
            if self._is_new(child, rejected):
                return child
        return self._random_new(rng, rejected)


__all__ = ["EvolutionOracle"]


def sizes_for_budget(max_trials: int) -> dict[str, int]:
    """Population and tournament sizes for a budget of ``max_trials``.

    A fifth of the budget is the random first population (4 to 20 trials, 20 as in
    Real et al.'s smaller settings and NAS-Bench-201's REA baseline), so that even a
    20-trial search evolves for 16 trials; the tournament is a third of the population.
    """
    population = max(4, min(20, max_trials // 5))
    return {"population_size": population, "sample_size": max(2, population // 3)}


def make(settings: OracleSettings) -> EvolutionOracle:
    """The registry's factory for this strategy (population sized from the budget)."""
    return EvolutionOracle(
        **sizes_for_budget(settings.max_trials),
        max_trials=settings.max_trials,
        constraint_check=settings.constraint_check,
        prior_observations=settings.prior_observations,
        **settings.common(),
    )
