"""Confirmation of the best candidates: the last trials train them again, the pick is by the mean."""

from __future__ import annotations

import json

import keras_tuner
import pytest
from keras_tuner.engine import trial as trial_module
from mlflow_stores import fresh_sqlite_uri

from nasflow import tracking
from nasflow.data import prepare_dataset
from nasflow.errors import SearchError
from nasflow.search.confirmation import add_confirmation, confirmation_count
from nasflow.search.records import collect_trials
from nasflow.search.selection import choose_best
from nasflow.search.settings import SearchSettings
from nasflow.search.state import make_crash_safe
from nasflow.search.strategies import OracleSettings, make_oracle
from nasflow.steps.search import search_step

TINY_SPACE = "bench/spaces/tiny_cnn.yaml"


def _oracle(strategy: str, directory, max_trials: int = 10, confirm: int | str = 3, time_budget_s=None):
    hp = keras_tuner.HyperParameters()
    for name in ("a", "b", "c", "d"):
        hp.Choice(name, [1, 2, 3, 4, 5])
    oracle = make_oracle(
        strategy,
        OracleSettings(objective=keras_tuner.Objective("score", "max"), hyperparameters=hp, seed=5,
                       max_trials=max_trials, epochs=1),
    )  # fmt: skip
    oracle = make_crash_safe(add_confirmation(oracle, str(confirm), max_trials, time_budget_s=time_budget_s))
    oracle._set_project_dir(str(directory), "p")
    oracle.verbose = 0
    return oracle


def _score(values) -> float:
    # A deterministic landscape: higher values score higher, ties broken by position.
    return sum(values[k] * 10 ** -i for i, k in enumerate("abcd")) / 10


def _run(oracle, count: int, score=None) -> list[dict]:
    ran = []
    for _ in range(count):
        trial = oracle.create_trial("tuner0")
        if trial.status != trial_module.TrialStatus.RUNNING:
            break
        values = dict(trial.hyperparameters.values)
        oracle.update_trial(trial.trial_id, {"score": (score or _score)(values)})
        trial.status = trial_module.TrialStatus.COMPLETED
        oracle.end_trial(trial)
        ran.append(values)
    return ran


@pytest.mark.parametrize("strategy", ["tpe", "evolution", "random"])
def test_the_last_trials_race_the_leader_to_four_trainings_then_the_next_across_a_resume(tmp_path, strategy):
    oracle = _oracle(strategy, tmp_path, max_trials=11, confirm=4)
    explored = _run(oracle, 7)
    assert len({json.dumps(v, sort_keys=True) for v in explored}) == 7, "the strategy's own trials are distinct"
    best, second = sorted(explored, key=_score, reverse=True)[:2]
    assert _run(oracle, 1) == [best]
    oracle.save()
    # A resumed search (state reloaded into a new oracle) goes on where it was: the leader
    # holds its (noise-free) mean, so it is trained until it has MAX_OBSERVATIONS = 4
    # trainings, then the runner-up is trained again; then the budget is spent.
    resumed = _oracle(strategy, tmp_path, max_trials=11, confirm=4)
    resumed.reload()
    assert _run(resumed, 5) == [best, best, second]
    assert len(resumed.trials) == 11
    assert resumed.create_trial("tuner0").status == trial_module.TrialStatus.STOPPED


def test_a_leader_whose_mean_falls_behind_gives_the_next_confirmation_to_the_runner_up(tmp_path):
    oracle = _oracle("random", tmp_path, max_trials=8, confirm=3)
    first_draws = iter([0.9, 0.8, 0.7, 0.6, 0.5])
    explored = _run(oracle, 5, lambda values: next(first_draws))
    retrainings = iter([0.85, 0.0, 0.0])
    # The leader's first retraining (0.85) keeps its mean (0.875) ahead of the runner-up's
    # draw (0.8), so it is trained a third time; that one (0.0) drops its mean to 0.58 and
    # the runner-up is trained next.
    assert _run(oracle, 3, lambda values: next(retrainings)) == [explored[0], explored[0], explored[1]]


def _run_on_a_clock(oracle, seconds_per_trial: float) -> list[bool]:
    """Trials ending every ``seconds_per_trial`` of search time; which were confirmations."""
    ended = 0
    # The search clock (the crash-safe oracle's, every attempt's time) is this test's input.
    oracle.search_elapsed_s = lambda: ended * seconds_per_trial
    confirmations = []
    while True:
        trial = oracle.create_trial("tuner0")
        if trial.status != trial_module.TrialStatus.RUNNING:
            return confirmations
        confirmations.append(trial.trial_id in oracle.nasflow_confirmations)
        oracle.update_trial(trial.trial_id, {"score": _score(trial.hyperparameters.values)})
        trial.status = trial_module.TrialStatus.COMPLETED
        oracle.end_trial(trial)
        ended += 1
        if ended * seconds_per_trial >= 100:  # the budget is used up: the tuner starts no more
            return confirmations


def test_a_wall_clock_budget_leaves_its_last_trials_to_confirmation(tmp_path):
    # max_trials (50) is far off: the 100 s budget ends the search after 10 trials of 10 s,
    # and the confirmations take the last two the time left holds.
    oracle = _oracle("random", tmp_path, max_trials=50, confirm=2, time_budget_s=100)
    assert _run_on_a_clock(oracle, 10.0) == [False] * 8 + [True, True]


def test_auto_under_a_wall_clock_budget_confirms_its_share_of_the_trials_the_time_allows(tmp_path):
    # auto's count for max_trials 200 is 20; 100 s at 0.625 s a trial allow 160: 10 % is 16.
    oracle = _oracle("random", tmp_path, max_trials=200, confirm="auto", time_budget_s=100)
    assert oracle.nasflow_confirm == 20
    assert _run_on_a_clock(oracle, 0.625) == [False] * 144 + [True] * 16
    # At 2 s a trial the budget allows 50, below auto's 100: no confirmation.
    oracle = _oracle("random", tmp_path / "short", max_trials=200, confirm="auto", time_budget_s=100)
    assert _run_on_a_clock(oracle, 2.0) == [False] * 50


def test_infeasible_trials_are_never_confirmed(tmp_path):
    oracle = _oracle("random", tmp_path, max_trials=6, confirm=2)
    for number in range(4):
        trial = oracle.create_trial("tuner0")
        # Every trial infeasible (nasflow scores those below zero): nothing to confirm.
        oracle.update_trial(trial.trial_id, {"score": -0.5 - number})
        trial.status = trial_module.TrialStatus.COMPLETED
        oracle.end_trial(trial)
    assert oracle.nasflow_confirmations == {}
    ran = _run(oracle, 2)
    # Trial 4 is the strategy's (no feasible trial to confirm yet); trial 5 confirms it.
    assert ran[1] == ran[0] and oracle.nasflow_confirmations == {"5": "4"}


def _row(trial_id: str, values: dict, val: float) -> dict:
    return {"trial_id": trial_id, "status": "COMPLETED", "feasible": True, "score": val, "val_accuracy": val,
            "params": 100, "flops": 100, "size_kb": None, "latency_ms": None, "architecture": str(values),
            "reason": "", "mlflow_run_id": f"run{trial_id}", "values": values}  # fmt: skip


def test_the_choice_is_by_the_mean_of_an_architectures_trainings():
    lucky, steady = {"a": 1}, {"a": 2}
    rows = [
        _row("0", lucky, 0.95),  # the best single draw...
        _row("1", steady, 0.93),
        _row("2", lucky | {"tuner/seed": 9}, 0.85),  # ...trained again: a mean of 0.90
        _row("3", steady, 0.92),  # a mean of 0.925
    ]
    result = choose_best(rows)
    assert result.best_values == steady and result.best_trial_id in ("1", "3")
    assert result.observations == 2 and result.val_accuracy == pytest.approx(0.925)
    assert result.best_row is rows[int(result.best_trial_id)], "the table's own row, not a copy"
    document = result.best_hyperparameters_json("space.yaml")
    assert document["observations"] == 2 and document["val_accuracy"] == pytest.approx(0.925)
    # An architecture trained once competes with its one draw.
    assert choose_best(rows[:2]).best_values == lucky


def test_confirm_best_auto_spends_ten_percent_from_a_hundred_trials_and_refuses_bad_values():
    assert confirmation_count("auto", 99) == 0
    assert confirmation_count("auto", 100) == 10
    assert confirmation_count("auto", 200) == 20
    assert confirmation_count("auto", 200, multi_objective=True) == 0, "a Pareto search has no single best"
    assert confirmation_count("none", 200) == 0
    assert confirmation_count("2", 5) == 2
    with pytest.raises(SearchError, match="confirm_best must be auto, none or a number of trials, got 'best'"):
        SearchSettings(confirm_best="best")
    with pytest.raises(SearchError, match=r"confirm_best 4 leaves no trial to search with: it must be below max_trials \(4\)"):
        SearchSettings(max_trials=4, confirm_best="4")


def test_a_search_confirms_its_best_on_real_training_from_a_new_seed(tmp_path):
    prepare_dataset("digits", tmp_path / "data", seed=3)
    uri = fresh_sqlite_uri(tmp_path)
    parent_id = tracking.start_parent_run(uri, "confirm", "run")
    out = tmp_path / "out"
    search_step(
        str(tmp_path / "data"), parent_run_id=parent_id, tracking_uri=uri, search_space=TINY_SPACE,
        strategy="random", max_trials=3, epochs=1, seed=7, best_hyperparameters_path=str(out / "best.json"),
        trial_table_path=str(out / "trials.csv"), report_path=str(out / "report.md"), confirm_best="1",
    )  # fmt: skip
    rows = {row["trial_id"]: row for row in collect_trials(tracking.RunHandle(tracking.make_client(uri), parent_id))}
    assert sorted(rows) == ["0", "1", "2"]
    best_of_two = max((rows["0"], rows["1"]), key=lambda row: row["score"])
    assert rows["2"]["values"] == best_of_two["values"], "the last trial trains the best architecture again"
    assert rows["2"]["seed"] != best_of_two["seed"], "from a new initialization"
    document = json.loads((out / "best.json").read_text())
    means = {
        "again": (best_of_two["val_accuracy"] + rows["2"]["val_accuracy"]) / 2,
        "other": min((rows["0"], rows["1"]), key=lambda row: row["score"])["val_accuracy"],
    }
    if means["again"] >= means["other"]:
        assert document["observations"] == 2 and document["val_accuracy"] == pytest.approx(means["again"])
    else:
        assert document["observations"] == 1 and document["val_accuracy"] == pytest.approx(means["other"])


def test_the_trainings_the_strategy_made_count_toward_the_four(tmp_path):
    # Four cells, 7 trials of tpe (which trains the same values twice at most), then 5
    # confirmations: the best cell is trained until it has 4 trainings in all, its own
    # repeats included, and the rest go to the runner-up.
    hp = keras_tuner.HyperParameters()
    hp.Choice("a", [1, 2])
    hp.Choice("b", [1, 2])
    oracle = make_oracle(
        "tpe",
        OracleSettings(objective=keras_tuner.Objective("score", "max"), hyperparameters=hp, seed=5,
                       max_trials=12, epochs=1),
    )  # fmt: skip
    oracle = add_confirmation(oracle, "5", 12)
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.verbose = 0

    def score(values):
        return values["a"] + values["b"] / 10

    cells = [json.dumps(v, sort_keys=True) for v in _run(oracle, 7, score)]
    best, second = (json.dumps({"a": 2, "b": b}, sort_keys=True) for b in (2, 1))
    assert cells.count(best) == 2, "tpe trained its favourite twice"
    confirmed = [json.dumps(v, sort_keys=True) for v in _run(oracle, 5, score)]
    assert confirmed == [best] * 2 + [second] * (4 - cells.count(second)) + [json.dumps({"a": 1, "b": 2}, sort_keys=True)] * (
        5 - 2 - (4 - cells.count(second))
    )
    assert sorted(oracle.nasflow_confirmations) == sorted(list(oracle.trials)[7:])


def test_the_search_gives_confirmation_its_wall_clock_budget():
    from nasflow.search.objectives import ObjectiveConfig
    from nasflow.search.tuner import _make_search_oracle
    from nasflow.spaces.schema import load_search_space

    space = load_search_space(TINY_SPACE)
    hp = keras_tuner.HyperParameters()
    space.declare(hp)
    settings = SearchSettings(max_trials=200, max_search_minutes=5)
    oracle = _make_search_oracle(space, settings, ObjectiveConfig(), hp, [], context=None)
    assert (oracle.nasflow_confirm, oracle.nasflow_time_budget_s, oracle.nasflow_confirm_auto) == (20, 300, True)
    assert hasattr(oracle, "search_elapsed_s"), "the crash-safe clock the budget is read from"
    oracle = _make_search_oracle(space, SearchSettings(max_trials=200, confirm_best="3"), ObjectiveConfig(), hp, [], None)
    assert (oracle.nasflow_confirm, oracle.nasflow_time_budget_s, oracle.nasflow_confirm_auto) == (3, None, False)
