"""Item 5 of issue 12: evolution sized from the budget, REINFORCE's advantage at the right scale."""

from __future__ import annotations

import keras_tuner
import pytest

from nasflow.search.strategies import OracleSettings, make_oracle
from nasflow.search.strategies.reinforce import ReinforceOracle

OBJECTIVE = keras_tuner.Objective("score", direction="max")


def _space() -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Choice("op", ["a", "b", "c"])
    return hp


def test_reinforce_advantages_are_unit_scale_from_the_first_update():
    # Williams (1992): the baseline is an estimate of the expected reward from earlier
    # trials only; the advantage is then normalized by the spread of earlier advantages.
    # Zero-initialised moving averages without bias correction made the second update
    # sqrt(1 / (1 - decay)) ~ 3.2x the size of later ones of the same surprise.
    oracle = ReinforceOracle(objective=OBJECTIVE, max_trials=10, hyperparameters=_space(), seed=1)
    oracle._logits_for("k", 3)
    assert oracle.learn({"k": 0}, 0.5) == 0.0  # no earlier reward: no baseline yet
    assert oracle.learn({"k": 1}, 0.6) == pytest.approx(1.0)
    assert oracle.learn({"k": 2}, 0.4) < 0
    # A run of equal rewards: the baseline converges to the reward itself.
    for _ in range(60):
        oracle.learn({"k": 0}, 0.7)
    assert oracle._baseline == pytest.approx(0.7, abs=1e-3)


def test_reinforce_baseline_is_the_mean_of_earlier_rewards_at_the_start():
    oracle = ReinforceOracle(
        objective=OBJECTIVE, max_trials=10, hyperparameters=_space(), seed=1, baseline_decay=0.5
    )
    oracle._logits_for("k", 3)
    oracle.learn({"k": 0}, 0.2)
    # Bias-corrected EMA after one reward is that reward, not (1 - decay) x reward.
    assert oracle._baseline == pytest.approx(0.2)


@pytest.mark.parametrize(
    "max_trials,population,sample", [(20, 4, 2), (50, 10, 3), (100, 20, 6), (500, 20, 6)]
)
def test_evolution_is_sized_from_the_budget(max_trials, population, sample):
    oracle = make_oracle(
        "evolution",
        OracleSettings(
            objective=OBJECTIVE, hyperparameters=_space(), seed=3, max_trials=max_trials, epochs=1
        ),
    )
    assert (oracle.population_size, oracle.sample_size) == (population, sample)
    # At the default budget of 20 trials, 16 trials evolve (the population is 4).
    assert max_trials - oracle.population_size >= 0.75 * max_trials or max_trials > 80
