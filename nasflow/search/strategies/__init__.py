"""Search strategies as Keras Tuner oracles, by name.

Every strategy is a factory ``OracleSettings -> keras_tuner.Oracle`` in a module of its
own, registered here by one line. Entries are ``"module:function"`` strings, imported
only when a strategy is made, so listing :data:`STRATEGIES` (the CLI's choices) does not
import Keras Tuner or TensorFlow. nasflow's own oracles subclass ``keras_tuner.Oracle``
and only override ``populate_space`` (plus ``end_trial`` for learning strategies),
keeping their state in what the oracle saves, so ``overwrite=False`` resume and
chief/worker distributed mode work as for the built-in oracles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nasflow.errors import SearchError

#: A cheap constraint: hyperparameter values -> violation messages (empty when acceptable).
ConstraintCheck = Callable[[dict], list[str]]

#: Strategy name -> "module:factory". Adding a strategy is one module and one line here.
_FACTORIES: dict[str, str] = {
    "random": "nasflow.search.strategies.builtin:random_search",
    "bayesian": "nasflow.search.strategies.builtin:bayesian_optimization",
    "hyperband": "nasflow.search.strategies.builtin:hyperband",
    "evolution": "nasflow.search.strategies.evolution:make",
    "reinforce": "nasflow.search.strategies.reinforce:make",
    "tpe": "nasflow.search.strategies.optuna_sampler:tpe",
    "gp": "nasflow.search.strategies.optuna_sampler:gp",
    "nsga2": "nasflow.search.strategies.optuna_sampler:nsga2",
    "tpe_local": "nasflow.search.strategies.tpe_local:make",
}

#: Names of every strategy, in the order the CLI lists them.
STRATEGIES: tuple[str, ...] = tuple(_FACTORIES)

#: The trial metric holding the objective's cost in ``--objective pareto`` mode.
PARETO_COST = "cost"
#: What multi-objective strategies optimize in pareto mode: (trial metric, direction).
PARETO_OBJECTIVES: tuple[tuple[str, str], ...] = (("val_accuracy", "max"), (PARETO_COST, "min"))

#: Strategies that need a package beyond nasflow's own requirements: name -> module.
_REQUIRES: dict[str, str] = {"gp": "torch"}


def missing_requirement(name: str) -> str | None:
    """The package strategy ``name`` needs and this environment lacks, or None."""
    import importlib.util

    module = _REQUIRES.get(name)
    return module if module is not None and importlib.util.find_spec(module) is None else None


#: The seed a search given seed 0 runs with.
ZERO_SEED_REPLACEMENT = 1_000_003


@dataclass(frozen=True)
class OracleSettings:
    """What every strategy factory is given.

    Attributes:
        objective: A ``keras_tuner.Objective`` (nasflow maximizes the trial ``score``).
        hyperparameters: A declared ``keras_tuner.HyperParameters`` for the space.
        seed: Random seed (never 0: Keras Tuner reads 0 as "pick one").
        max_trials: Trials to run in total.
        epochs: Epochs per trial (multi-fidelity strategies: the most a trial gets).
        max_consecutive_failed_trials: Stop after this many failures in a row.
        constraint_check: Values -> violated cheap constraints, for oracles that resample.
        prior_observations: Trials of earlier runs on the same data and space (warm
            start), as ``(hyperparameter values, score)`` pairs, best first; a strategy
            learns from them as if it had run them (they are not trials of this search
            and do not count toward ``max_trials``).
        pareto_objectives: For ``--objective pareto``: ``(metric, "max"|"min")`` pairs of
            trial metrics that multi-objective strategies (``tpe``, ``gp``, ``nsga2``)
            optimize instead of the scalar score; None otherwise.
    """

    objective: Any
    hyperparameters: Any
    seed: int
    max_trials: int
    epochs: int
    max_consecutive_failed_trials: int = 5
    constraint_check: ConstraintCheck | None = None
    prior_observations: tuple[tuple[dict, float], ...] = ()
    pareto_objectives: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        """Keep seed 0 reproducible: Keras Tuner would read it as "pick a random seed"."""
        if self.seed == 0:
            object.__setattr__(self, "seed", ZERO_SEED_REPLACEMENT)

    def common(self) -> dict[str, Any]:
        """The keyword arguments every ``keras_tuner.Oracle`` takes."""
        return dict(
            objective=self.objective,
            hyperparameters=self.hyperparameters,
            seed=self.seed,
            max_consecutive_failed_trials=self.max_consecutive_failed_trials,
        )


def check_strategy(name: str) -> str:
    """Return ``name`` if it is a registered strategy.

    Raises:
        SearchError: It is not.
    """
    if name not in _FACTORIES:
        raise SearchError(f"strategy {name!r} is unknown (expected one of {', '.join(STRATEGIES)})")
    return name


def make_oracle(strategy: str, settings: OracleSettings):
    """The Keras Tuner oracle of a registered strategy."""
    module_name, _, factory_name = _FACTORIES[check_strategy(strategy)].partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    return factory(settings)


__all__ = [
    "PARETO_COST",
    "PARETO_OBJECTIVES",
    "STRATEGIES",
    "ConstraintCheck",
    "OracleSettings",
    "check_strategy",
    "make_oracle",
    "missing_requirement",
]
