"""Warm start: an earlier run's trials, found in MLflow by data and space, become the strategy's priors."""

from __future__ import annotations

import keras_tuner
import pytest
from mlflow_stores import fresh_sqlite_uri

from nasflow import tracking
from nasflow.data import prepare_dataset
from nasflow.errors import SearchError
from nasflow.search.records import collect_trials
from nasflow.search.strategies import OracleSettings, make_oracle
from nasflow.search.warm_start import (
    DATASET_HASH_TAG,
    REEVALUATION_SEED,
    SPACE_HASH_TAG,
    WARM_START_TAG,
    add_reevaluation,
    coerce_values,
    find_earlier_runs,
    space_hash,
    space_values_only,
    usable_priors,
)
from nasflow.spaces.schema import load_search_space
from nasflow.steps.search import search_step

TINY_SPACE = "bench/spaces/tiny_cnn.yaml"


def _flat_space() -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    for name in ("a", "b", "c", "d"):
        hp.Choice(name, [1, 2, 3, 4, 5])
    return hp


def _oracle(strategy: str, priors, **changes):
    settings = OracleSettings(
        objective=keras_tuner.Objective("score", "max"),
        hyperparameters=_flat_space(),
        seed=11,
        max_trials=30,
        epochs=1,
        prior_observations=tuple(priors),
    )
    return make_oracle(strategy, settings)


def test_values_from_mlflow_params_are_typed_as_the_space_declares():
    hp = keras_tuner.HyperParameters()
    load_search_space(TINY_SPACE).declare(hp)
    values = {"num_blocks": 2, "filters_0": 8, "kernel_size_0": 3, "filters_1": 4, "kernel_size_1": 3,
              "pooling": "flatten", "dense_units": 16, "learning_rate": 0.004}  # fmt: skip
    assert coerce_values(hp, {**values, "learning_rate": 0.004, "tuner/epochs": 3}) == values
    assert coerce_values(hp, {**values, "num_blocks": 1}) == {k: v for k, v in values.items() if not k.endswith("_1")} | {"num_blocks": 1}
    assert coerce_values(hp, {**values, "filters_0": 16}) is None  # not a choice of this space
    assert coerce_values(hp, {**values, "learning_rate": 0.5}) is None  # out of range
    assert coerce_values(hp, {k: v for k, v in values.items() if k != "pooling"}) is None


def test_evolution_starts_from_the_priors_instead_of_random_trials():
    priors = [({"a": 5, "b": 5, "c": 5, "d": 5}, 0.9), ({"a": 4, "b": 5, "c": 5, "d": 5}, 0.8)]
    oracle = _oracle("evolution", priors)
    for number in range(6):
        proposal = oracle.propose(str(number), oracle._trial_rng(str(number)), set())
        # A child of a prior: one hyperparameter changed (a random draw is this close by chance ~5 %).
        assert min(sum(proposal[k] != values[k] for k in "abcd") for values, _ in priors) <= 1, proposal
    cold = _oracle("evolution", [])
    proposals = [cold.propose(str(n), cold._trial_rng(str(n)), set()) for n in range(6)]
    assert any(min(sum(p[k] != v[k] for k in "abcd") for v, _ in priors) > 1 for p in proposals)


def test_reinforce_learns_from_the_priors_once():
    good, bad = {"a": 5, "b": 5, "c": 5, "d": 5}, {"a": 1, "b": 1, "c": 1, "d": 1}
    oracle = _oracle("reinforce", [(good, 0.9), (good | {"d": 4}, 0.85), (bad, 0.1), (bad | {"a": 2}, 0.12)])
    assert oracle.learn_priors() == 4 and oracle.learn_priors() == 0
    policy = oracle.policy()
    for name in "abc":
        assert policy[name]["5"] > 0.2 > policy[name]["1"], policy[name]
    # Saved with the oracle's state: a resumed search does not learn them twice.
    restored = _oracle("reinforce", [(good, 0.9)])
    restored.set_state(oracle.get_state())
    assert restored.learn_priors() == 0


def _end(oracle, trial, score: float) -> dict:
    from keras_tuner.engine import trial as trial_module

    oracle.update_trial(trial.trial_id, {"score": score})
    trial.status = trial_module.TrialStatus.COMPLETED
    oracle.end_trial(trial)
    return dict(trial.hyperparameters.values)


@pytest.mark.parametrize("strategy", ["tpe", "evolution"])
def test_re_evaluations_carry_the_prior_seed_and_count_as_tried_across_a_resume(tmp_path, strategy):
    best, second = {"a": 5, "b": 5, "c": 5, "d": 5}, {"a": 4, "b": 5, "c": 5, "d": 5}
    priors = [(best | {REEVALUATION_SEED: 40}, 0.9), (second | {REEVALUATION_SEED: 41}, 0.8), ({"a": 1}, 0.1)]
    hp = _flat_space()
    # The re-evaluations keep the seeds; the strategy learns from values of the space only.
    reevaluate = usable_priors(hp, priors)
    assert reevaluate == priors[:2]
    assert space_values_only(reevaluate) == [(best, 0.9), (second, 0.8)]

    def oracle_at(directory):
        oracle = add_reevaluation(_oracle(strategy, space_values_only(reevaluate)), reevaluate, count=2)
        oracle._set_project_dir(str(directory), "p")
        oracle.verbose = 0
        return oracle

    oracle = oracle_at(tmp_path)
    assert _end(oracle, oracle.create_trial("tuner0"), 0.9) == best | {REEVALUATION_SEED: 40}
    oracle.save()
    # A resumed search (the state reloaded into a new oracle) goes on with the second prior, once.
    resumed = oracle_at(tmp_path)
    resumed.reload()
    assert _end(resumed, resumed.create_trial("tuner0"), 0.8) == second | {REEVALUATION_SEED: 41}
    proposed = [_end(resumed, resumed.create_trial("tuner0"), 0.5) for _ in range(6)]
    assert all(REEVALUATION_SEED not in values for values in proposed), "the strategy's own trials draw new seeds"
    # A re-evaluated architecture counts as tried: the strategies' duplicate check refuses it.
    assert not resumed._is_new(best, set()) and not resumed._is_new(second, set())
    assert best not in proposed and second not in proposed


def _search(tmp_path, uri: str, name: str, warm_start: str, strategy: str, seed: int = 7) -> str:
    parent_id = tracking.start_parent_run(uri, "warm-start", name)
    out = tmp_path / name
    search_step(
        str(tmp_path / "data"), parent_run_id=parent_id, tracking_uri=uri, search_space=TINY_SPACE,
        strategy=strategy, max_trials=2, epochs=1, seed=seed, best_hyperparameters_path=str(out / "best.json"),
        trial_table_path=str(out / "trials.csv"), report_path=str(out / "report.md"), warm_start=warm_start,
    )  # fmt: skip
    return parent_id


def test_a_second_run_finds_the_first_and_evaluates_its_best_first(tmp_path):
    prepare_dataset("digits", tmp_path / "data", seed=3)
    uri = fresh_sqlite_uri(tmp_path)
    first_id = _search(tmp_path, uri, "first", "auto", "random")  # nothing earlier: a cold start
    client = tracking.make_client(uri)
    first = client.get_run(first_id)
    assert WARM_START_TAG not in first.data.tags
    assert first.data.tags[SPACE_HASH_TAG] == space_hash(load_search_space(TINY_SPACE))
    first_rows = collect_trials(tracking.RunHandle(client, first_id))
    best = max((row for row in first_rows if row["status"] == "COMPLETED"), key=lambda row: row["score"])
    # An accuracy search measured no size or latency per trial; the chosen one is measured after it.
    chosen = client.get_run(best["mlflow_run_id"])
    assert {"size_bytes", "latency_p50_ms"} <= set(chosen.data.metrics)
    assert chosen.data.tags["nasflow.costs_measured"] == "after-search"

    # Another search seed: the re-evaluation must still train from the seed the best was found with.
    second_id = _search(tmp_path, uri, "second", "auto", "evolution", seed=1234)
    second = client.get_run(second_id)
    assert second.data.tags[WARM_START_TAG] == first_id
    assert second.data.tags[DATASET_HASH_TAG] == first.data.tags[DATASET_HASH_TAG]
    assert second.data.params["search.warm_start_priors"] == str(len([r for r in first_rows if r["score"] is not None]))
    rows = {row["trial_id"]: row for row in collect_trials(tracking.RunHandle(client, second_id))}
    again = rows[min(rows)]
    assert {k: v for k, v in again["values"].items() if k != "tuner/seed"} == best["values"], (
        "the first run's best is evaluated again first"
    )
    # Same data, same architecture, same initialization: the first run's result, not a redraw.
    assert again["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-3)
    assert again["seed"] == best["seed"] == 7 + int(best["trial_id"])
    assert rows[max(rows)]["seed"] == 1234 + int(max(rows)), "the strategy's own trials draw from this run's seed"
    assert rows[max(rows)]["values"] != best["values"]

    with pytest.raises(SearchError, match="warm start: run 'no-such-run' not found"):
        find_earlier_runs(tracking.RunHandle(client, second_id), "no-such-run", second.data.tags)
    assert find_earlier_runs(tracking.RunHandle(client, second_id), "none", second.data.tags) == []
