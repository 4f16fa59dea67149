"""Keras Tuner's own oracles, set up so that short budgets are not wasted."""

from __future__ import annotations

import keras_tuner

from nasflow.search.strategies import OracleSettings


def random_search(settings: OracleSettings) -> keras_tuner.Oracle:
    """Uniform random search."""
    return keras_tuner.oracles.RandomSearchOracle(max_trials=settings.max_trials, **settings.common())


def bayesian_optimization(settings: OracleSettings) -> keras_tuner.Oracle:
    """Keras Tuner's Gaussian-process Bayesian optimization."""
    # Keras Tuner's default of 3 random points per hyperparameter makes any short
    # search a random search; a third of the budget leaves room for the GP to act.
    initial = max(2, min(3 * len(settings.hyperparameters.space), settings.max_trials // 3))
    return keras_tuner.oracles.BayesianOptimizationOracle(
        max_trials=settings.max_trials, num_initial_points=initial, **settings.common()
    )


def hyperband(settings: OracleSettings) -> keras_tuner.Oracle:
    """Hyperband, continuing promoted trials from their weights."""
    oracle = keras_tuner.oracles.HyperbandOracle(
        max_epochs=max(settings.epochs, 2), factor=3, hyperband_iterations=1_000, **settings.common()
    )
    # Hyperband has no trial count of its own; cap it so budgets are comparable.
    oracle.max_trials = settings.max_trials
    return oracle
