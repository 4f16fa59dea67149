"""Cheap trials: each trial measures only the costs the objective and constraints use."""

from __future__ import annotations

import gc

import pytest
from mlflow_stores import fresh_sqlite_uri

from nasflow import tracking
from nasflow.errors import SearchError
from nasflow.search.costs import costs_to_measure
from nasflow.search.objectives import ObjectiveConfig
from nasflow.search.records import collect_trials
from nasflow.search.settings import SearchSettings
from nasflow.search.tuner import run_search
from nasflow.spaces.schema import load_search_space

TINY_SPACE = "bench/spaces/tiny_cnn.yaml"


@pytest.mark.parametrize(
    "objective,measure,expected",
    [
        ({}, "auto", (False, False)),
        ({"mode": "reward", "cost_metric": "latency_ms", "cost_target": 2.0}, "auto", (False, True)),
        ({"mode": "pareto", "cost_metric": "size_kb"}, "auto", (True, False)),
        ({"mode": "pareto", "cost_metric": "params"}, "auto", (False, False)),
        ({"max_latency_ms": 3.0}, "auto", (False, True)),  # a constraint needs its cost even for accuracy
        ({"max_size_kb": 30.0, "max_params": 10}, "auto", (True, False)),
        ({}, "all", (True, True)),
        ({"mode": "pareto", "cost_metric": "flops"}, "none", (False, False)),
    ],
)
def test_what_each_trial_measures(objective, measure, expected):
    assert costs_to_measure(ObjectiveConfig.from_parameters(objective), measure) == expected


def test_none_is_refused_when_the_objective_needs_a_measured_cost(tmp_path):
    with pytest.raises(SearchError, match="measure_costs 'none' cannot score this objective: it uses latency_ms"):
        run_search(
            None, load_search_space(TINY_SPACE), SearchSettings("random", max_trials=1, measure_costs="none"),
            ObjectiveConfig(max_latency_ms=2.0), parent=None, work_dir=tmp_path,
        )  # fmt: skip
    with pytest.raises(SearchError, match="measure_costs must be one of auto, all, none"):
        SearchSettings(measure_costs="some")


@pytest.mark.parametrize(
    "objective,present,absent",
    [
        (ObjectiveConfig(), {"params", "flops"}, {"size_bytes", "latency_p50_ms", "latency_p95_ms"}),
        (
            ObjectiveConfig(mode="reward", cost_metric="latency_ms", cost_target=1.0),
            # The size comes free with the flatbuffer converted for the latency.
            {"params", "flops", "latency_p50_ms", "latency_p95_ms", "size_bytes"},
            set(),
        ),
    ],
    ids=["accuracy", "latency-reward"],
)
def test_a_trial_records_the_costs_its_objective_uses(digits, tmp_path, monkeypatch, objective, present, absent):
    uri = fresh_sqlite_uri(tmp_path)
    parent = tracking.open_parent(uri, tracking.start_parent_run(uri, "nasflow", "cheap-trials"))
    settings = SearchSettings("random", max_trials=1, epochs=1, seed=5)
    full_collections = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: full_collections.append(args) or collect(*args))
    run_search(digits, load_search_space(TINY_SPACE), settings, objective, parent=parent, work_dir=tmp_path / "tuner")
    # One full collection before the search (then gc.freeze); none per trial: Keras'
    # clear_session() would walk every object the process has leaked (~0.2 s a trial).
    assert len(full_collections) == 1, full_collections
    [row] = collect_trials(parent)
    assert row["status"] == "COMPLETED", row
    metrics = parent.client.get_run(row["mlflow_run_id"]).data.metrics
    assert present <= set(metrics) and not absent & set(metrics), sorted(metrics)
    # Only Hyperband continues trials from their weights: nobody else pays for saving them.
    assert not list((tmp_path / "tuner").rglob("*.weights.h5"))
