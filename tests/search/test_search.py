"""The search engine: oracles per strategy, trial scoring and recording, selection."""

from __future__ import annotations

import threading
import time

import keras_tuner
import pytest

from nasflow.errors import SearchError
from nasflow.search.objectives import ObjectiveConfig
from nasflow.search.records import collect_trials
from nasflow.search.selection import choose_best, write_trial_table
from nasflow.search.settings import SearchSettings
from nasflow.search.strategies import STRATEGIES, OracleSettings, make_oracle, missing_requirement
from nasflow.search.tuner import run_search
from nasflow.spaces.schema import load_search_space, parse_search_space, resolve_search_space


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_has_an_oracle(strategy):
    hp = keras_tuner.HyperParameters()
    load_search_space(resolve_search_space("cnn", "image")).declare(hp)
    settings = OracleSettings(
        objective=keras_tuner.Objective("score", "max"), hyperparameters=hp, seed=0, max_trials=5, epochs=3
    )
    if missing_requirement(strategy):
        # An optional extra (gp: torch): one clear line saying what to install.
        with pytest.raises(SearchError, match="pip install"):
            make_oracle(strategy, settings)
        return
    oracle = make_oracle(strategy, settings)
    assert isinstance(oracle, keras_tuner.Oracle)
    assert oracle.objective.name == "score" and oracle.objective.direction == "max"
    assert oracle.max_trials == 5
    # Keras Tuner reads seed 0 as "random"; nasflow keeps runs reproducible instead.
    assert oracle.seed != 0


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"strategy": "grid"}, "strategy 'grid' is unknown"),
        ({"max_trials": 0}, "max_trials must be at least 1"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_settings_are_refused_where_they_are_made(changes, message):
    with pytest.raises(SearchError, match=message):
        SearchSettings(**changes)


def test_search_records_every_trial_and_picks_the_best(digits, parent, tmp_path):
    space = load_search_space(resolve_search_space("cnn", "image"))
    run_search(digits, space, SearchSettings("random", max_trials=3, epochs=1, seed=4), parent=parent, work_dir=tmp_path)
    rows = collect_trials(parent)
    assert [row["trial_id"] for row in rows] == ["0", "1", "2"]
    completed = [row for row in rows if row["status"] == "COMPLETED"]
    assert completed, rows
    for row in completed:
        assert 0 <= row["val_accuracy"] <= 1 and row["params"] > 0 and row["flops"] > 0
        assert row["latency_ms"] is None and row["size_kb"] is None, "an accuracy search times nothing"
        assert row["values"]["num_blocks"] in (1, 2, 3)
    best = choose_best(rows)
    assert best.best_row["val_accuracy"] == max(row["val_accuracy"] for row in completed)
    write_trial_table(rows, tmp_path / "trials.csv")
    assert (tmp_path / "trials.csv").read_text().count("\n") == 4


def test_hyperband_continues_trials_from_their_weights(digits, parent, tmp_path):
    space = load_search_space(resolve_search_space("cnn", "image"))
    run_search(digits, space, SearchSettings("hyperband", max_trials=6, epochs=3, seed=8), parent=parent, work_dir=tmp_path)
    rows = collect_trials(parent)
    continued = [row for row in rows if "tuner/trial_id" in row["values"]]
    assert continued, "Hyperband promoted at least one trial to a higher rung"
    assert all(row["status"] == "COMPLETED" for row in continued)


def test_hyperband_trains_from_scratch_when_the_lower_rung_checkpoint_is_elsewhere(digits, parent, tmp_path):
    # On a cluster a rung may have been trained by another worker pod, whose disk this one
    # cannot see. Checkpoints are deleted as soon as they are written to make every rung so.
    stop = threading.Event()

    def delete_checkpoints() -> None:
        while not stop.is_set():
            try:
                for checkpoint in tmp_path.rglob("*.weights.h5"):
                    checkpoint.unlink(missing_ok=True)
            except FileNotFoundError:
                pass  # a folder the tuner removed mid-walk: the deleter must outlive it, or checkpoints survive
            time.sleep(0.02)

    deleter = threading.Thread(target=delete_checkpoints, daemon=True)
    deleter.start()
    space = load_search_space(resolve_search_space("cnn", "image"))
    try:
        run_search(digits, space, SearchSettings("hyperband", max_trials=6, epochs=3, seed=8), parent=parent, work_dir=tmp_path)
    finally:
        stop.set()
        deleter.join()
    runs = {run.data.tags["nasflow.trial_id"]: run for run in parent.client.search_runs(
        [parent.client.get_run(parent.run_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.run_id}'", max_results=100)}
    continued = [row for row in collect_trials(parent) if "tuner/trial_id" in row["values"]]
    assert continued, "Hyperband promoted at least one trial to a higher rung"
    for row in continued:
        assert row["status"] == "COMPLETED"
        assert runs[row["trial_id"]].data.tags["nasflow.warm_start"] == "missing-checkpoint"
        assert row["epochs"] == row["values"]["tuner/epochs"], "all epochs trained, not just the new ones"


def test_cheap_constraint_marks_trials_infeasible_without_training(digits, parent, tmp_path):
    space = load_search_space(resolve_search_space("cnn", "image"))
    objective = ObjectiveConfig(max_params=10)
    run_search(digits, space, SearchSettings("random", max_trials=2, epochs=1, seed=4), objective, parent=parent, work_dir=tmp_path)
    rows = collect_trials(parent)
    assert {row["status"] for row in rows} == {"INFEASIBLE"}
    assert all("max_params 10" in row["reason"] for row in rows)
    assert all(row["fit_s"] is None for row in rows), "never trained"
    with pytest.raises(SearchError, match="no trial completed within the constraints"):
        choose_best(rows, objective)


def test_invalid_architectures_are_recorded_not_fatal(digits, parent, tmp_path):
    # Four 2x2 max-pools cannot fit an 8x8 image: every trial is invalid.
    space = parse_search_space(
        {
            "name": "too-deep",
            "family": "cnn",
            "modality": "image",
            "hyperparameters": [
                {"name": "num_blocks", "type": "fixed", "value": 4},
                {"repeat": {"count": "num_blocks", "hyperparameters": [
                    {"name": "filters", "type": "choice", "values": [4, 8]},
                    {"name": "kernel_size", "type": "fixed", "value": 3},
                ]}},
                {"name": "pooling", "type": "fixed", "value": "flatten"},
                {"name": "dense_units", "type": "fixed", "value": 0},
                {"name": "learning_rate", "type": "fixed", "value": 0.001},
            ],
        }
    )
    run_search(digits, space, SearchSettings("random", max_trials=2, epochs=1, seed=4), parent=parent, work_dir=tmp_path)
    rows = collect_trials(parent)
    assert rows and {row["status"] for row in rows} == {"INVALID"}
    assert "spatial size" in rows[0]["reason"]


def test_evolution_resamples_architectures_over_a_cheap_constraint(digits, parent, tmp_path):
    space = load_search_space(resolve_search_space("cnn", "image"))
    objective = ObjectiveConfig(max_params=20_000)
    settings = SearchSettings("evolution", max_trials=3, epochs=1, seed=4)
    tuner = run_search(digits, space, settings, objective, parent=parent, work_dir=tmp_path)
    rows = collect_trials(parent)
    assert len(rows) == 3
    # Oversized candidates were redrawn before training, so none is even recorded.
    assert all(row["status"] == "COMPLETED" and row["params"] <= 20_000 for row in rows), rows
    assert tuner.oracle.constraint_rejections > 0
