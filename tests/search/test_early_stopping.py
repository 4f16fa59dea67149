"""Early stopping: the pruning rules on given learning curves, the oracle that applies them, a pruned trial in MLflow."""

from __future__ import annotations

import keras_tuner
import pytest
import yaml
from mlflow_stores import fresh_sqlite_uri

from nasflow import tracking
from nasflow.data import load_raw_dataset, split_dataset
from nasflow.errors import SearchError
from nasflow.search.early_stopping import (
    EARLY_STOPPING,
    EPOCH_METRIC,
    STOPPED,
    Curve,
    MedianStopping,
    SuccessiveHalving,
    add_early_stopping,
    make_pruner,
)
from nasflow.search.records import collect_trials
from nasflow.search.selection import choose_best
from nasflow.search.settings import SearchSettings
from nasflow.search.strategies import OracleSettings, make_oracle
from nasflow.search.tuner import run_search
from nasflow.spaces.schema import load_search_space


def _curves(*curves: tuple[list[float], bool]) -> list[Curve]:
    return [Curve(dict(enumerate(values)), ended) for values, ended in curves]


ENDED = _curves(([0.5, 0.6, 0.7], True), ([0.4, 0.5, 0.6], True), ([0.3, 0.4, 0.5], True))


@pytest.mark.parametrize(
    "curve,others,stop",
    [
        ([0.1, 0.2], ENDED, True),  # best so far 0.2 < median 0.5 at epoch 1
        ([0.1, 0.55], ENDED, False),  # 0.55 >= median 0.5
        ([0.6, 0.2], ENDED, False),  # best so far (0.6, epoch 0) counts, not the last value
        ([0.0], ENDED, False),  # warm-up: never judged after its first epoch
        ([0.1, 0.1, 0.1], ENDED, False),  # the last epoch: nothing left to save
        ([0.1, 0.2], ENDED[:2], False),  # fewer than 3 ended trials reached epoch 1
        ([0.1, 0.2], _curves(([0.9, 0.9], False), ([0.9, 0.9], False), ([0.9, 0.9], False)), False),  # running ones do not count
        ([0.1, 0.2], _curves(([0.9], True), ([0.9], True), ([0.9], True)), False),  # ended before epoch 1
    ],
)
def test_median_stopping_rule(curve, others, stop):
    assert MedianStopping().should_stop(dict(enumerate(curve)), others, max_epochs=3) is stop


@pytest.mark.parametrize(
    "curve,others,max_epochs,stop",
    [
        ([0.5], [], 3, False),  # alone at the rung: the best there
        ([0.5], _curves(([0.6], False)), 3, True),  # fewer than eta at the rung: only the best goes on
        ([0.7], _curves(([0.6], False)), 3, False),
        ([0.5], _curves(([0.9], True), ([0.8], True), ([0.1], False), ([0.2], True), ([0.3], True)), 3, True),  # 6 at rung 1: top 2 go on
        ([0.85], _curves(([0.9], True), ([0.8], True), ([0.1], False), ([0.2], True), ([0.3], True)), 3, False),
        ([0.1, 0.2], _curves(([0.9, 0.9], True)), 9, False),  # epoch 2 is not a rung (1, 3)
        ([0.1, 0.2, 0.3], _curves(([0.9, 0.9, 0.9], True)), 9, True),  # rung 3
        ([0.1, 0.2, 0.3], _curves(([0.9, 0.9, 0.9], True)), 3, False),  # the last epoch is no rung
    ],
)
def test_successive_halving(curve, others, max_epochs, stop):
    assert SuccessiveHalving().should_stop(dict(enumerate(curve)), others, max_epochs) is stop


def test_rungs_and_names():
    assert SuccessiveHalving().rungs(10) == [1, 3, 9]
    assert SuccessiveHalving(min_epochs=2, reduction_factor=2).rungs(9) == [2, 4, 8]
    assert EARLY_STOPPING == ("none", "median", "asha")
    assert make_pruner("none") is None and isinstance(make_pruner("asha"), SuccessiveHalving)
    with pytest.raises(SearchError, match="early_stopping must be one of none, median, asha"):
        SearchSettings(early_stopping="hyperband")


def _oracle(max_trials: int, epochs: int):
    hp = keras_tuner.HyperParameters()
    hp.Float("x", 0.0, 1.0)
    oracle = make_oracle(
        "random",
        OracleSettings(
            objective=keras_tuner.Objective("score", "max"), hyperparameters=hp, seed=3, max_trials=max_trials, epochs=epochs
        ),
    )
    return add_early_stopping(oracle, SuccessiveHalving(), epochs)


def _run(oracle, curve: list[float]) -> tuple[str, int]:
    """One trial through the oracle as a worker runs it: per-epoch reports until told to stop."""
    trial = oracle.create_trial("tuner0")
    if trial.status == "STOPPED":
        return trial.trial_id, 0
    reached = 0
    for epoch, value in enumerate(curve):
        reached = epoch + 1
        if oracle.update_trial(trial.trial_id, {EPOCH_METRIC: value}, step=epoch).status == STOPPED:
            break
    oracle.update_trial(trial.trial_id, {"score": curve[reached - 1]})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    return trial.trial_id, reached


def test_oracle_stops_poor_trials_and_spends_their_epochs_on_more_trials(tmp_path):
    oracle = _oracle(max_trials=3, epochs=3)
    oracle._set_project_dir(str(tmp_path), "p")
    curves = ([0.8, 0.9, 0.95], [0.2, 0.3, 0.4], [0.1, 0.2, 0.3], [0.3, 0.4, 0.5], [0.9, 0.9, 0.9], [0.99] * 3)
    reached = [_run(oracle, curve)[1] for curve in curves]
    # Trial 0 runs in full; 1, 2 and 3 are not the best at the first rung and stop there,
    # leaving 6 epochs: two more trials. Trial 4 leads its rung and goes on; then the budget is spent.
    assert reached == [3, 1, 1, 1, 3, 0]
    assert sorted(oracle.trials) == ["0", "1", "2", "3", "4"]
    # The pruned trials still ended COMPLETED in the oracle, scored by their last accuracy.
    assert {trial.status for trial in oracle.trials.values()} == {"COMPLETED"}
    assert sorted(trial.score for trial in oracle.trials.values()) == pytest.approx([0.1, 0.2, 0.3, 0.9, 0.95])


#: Two candidates only: one learns, one (learning rate 1e-7) cannot.
TWO_CANDIDATES = {
    "name": "two_candidates",
    "family": "cnn",
    "modality": "image",
    "hyperparameters": [
        {"name": "num_blocks", "type": "fixed", "value": 1},
        {"name": "filters_0", "type": "fixed", "value": 8},
        {"name": "kernel_size_0", "type": "fixed", "value": 3},
        {"name": "pooling", "type": "fixed", "value": "flatten"},
        {"name": "dense_units", "type": "fixed", "value": 0},
        {"name": "learning_rate", "type": "choice", "values": [0.02, 1.0e-7]},
    ],
    "training": {"batch_size": 32},
}


def test_a_pruned_trial_is_recorded_in_mlflow(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TWO_CANDIDATES))
    space = load_search_space(tmp_path / "space.yaml")
    data = split_dataset(load_raw_dataset("digits"), 0.2, 0.2, seed=3)
    uri = fresh_sqlite_uri(tmp_path)
    parent = tracking.open_parent(uri, tracking.start_parent_run(uri, "nasflow", "early-stopping-test"))
    good = {name["name"]: name.get("value") for name in TWO_CANDIDATES["hyperparameters"][:-1]} | {"learning_rate": 0.02}
    # The good candidate comes first (a warm-start prior is evaluated again first), so the
    # one that cannot learn meets it at ASHA's first rung and stops there.
    settings = SearchSettings(
        "random", max_trials=2, epochs=3, seed=4, early_stopping="asha", prior_observations=((good, 0.9),)
    )
    run_search(data, space, settings, parent=parent, work_dir=tmp_path / "tuner")
    rows = {row["values"]["learning_rate"]: row for row in collect_trials(parent)}
    assert rows[0.02]["status"] == "COMPLETED" and rows[0.02]["epochs"] == 3
    pruned = rows[1.0e-7]
    assert pruned["status"] == "PRUNED" and pruned["epochs"] == 1 and pruned["pruned_at_epoch"] == 1
    run = parent.client.get_run(pruned["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["nasflow.trial_status"] == "PRUNED" and run.data.tags["nasflow.pruned_at_epoch"] == "1"
    assert len(parent.client.get_metric_history(run.info.run_id, "val_accuracy")) == 1
    # It informed the strategy with its last accuracy, and is not the one chosen.
    assert run.data.metrics["score"] == pytest.approx(run.data.metrics["final_val_accuracy"])
    assert choose_best(list(rows.values())).best_row is rows[0.02]


def test_pruned_trials_are_chosen_only_when_nothing_completed():
    rows = [
        {"trial_id": "0", "status": "PRUNED", "feasible": True, "val_accuracy": 0.4, "reason": "", "values": {"a": 1}},
        {"trial_id": "1", "status": "PRUNED", "feasible": True, "val_accuracy": 0.6, "reason": "", "values": {"a": 2}},
        {"trial_id": "2", "status": "FAILED", "feasible": False, "val_accuracy": None, "reason": "x", "values": {}},
    ]
    assert choose_best(rows).best_trial_id == "1" and choose_best(rows).best_row is rows[1]
    rows.append({"trial_id": "3", "status": "COMPLETED", "feasible": True, "val_accuracy": 0.5, "reason": "", "values": {}})
    assert choose_best(rows).best_trial_id == "3"
