"""The tiny end-to-end pipeline run several test modules read (run once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow_stores import fresh_sqlite_uri

from nasflow import tracking
from nasflow.data import load_prepared

TINY = {
    "dataset": "digits",
    "max_trials": 2,
    "epochs": 1,
    "train_epochs": 2,
    "seed": 7,
    "compression_variants": ["float16", "int8"],
}

#: Registered model name of the shared SQLite run.
SQLITE_MODEL = "digits-e2e"


def tiny_params(**overrides):
    """``nasflow run``'s defaults with the tiny budget and ``overrides``."""
    from nasflow.cli.main import build_parser, pipeline_parameters

    params = pipeline_parameters(build_parser().parse_args(["run"]))
    params.update(TINY)
    params.update(overrides)
    return params


def run_tiny_on_sqlite(root: Path):
    """Run the tiny pipeline on a fresh SQLite store under ``root``; returns ``(LocalRun, uri)``."""
    from nasflow.cli.local_run import run_pipeline_locally

    uri = fresh_sqlite_uri(root)
    result = run_pipeline_locally(
        tiny_params(strategy="random", tracking_uri=uri, model_name=SQLITE_MODEL), root / "runs", stream=None
    )
    return result, uri


def runs_of(client, parent_id: str, role: str):
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`nasflow.role` = '{role}'",
    )


def check_run(result, tracking_uri: str, expected_trials: int, model_name: str) -> None:
    summary = result.summary
    client = tracking.make_client(tracking_uri)
    experiment = client.get_experiment_by_name("nasflow")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`nasflow.role` = 'pipeline'"
    )
    parent = next(run for run in parents if run.info.run_id == summary["parent_run_id"])
    assert parent.info.status == "FINISHED"

    trials = runs_of(client, parent.info.run_id, "trial")
    assert len(trials) == expected_trials
    assert len({run.data.tags["nasflow.trial_id"] for run in trials}) == expected_trials
    for trial in trials:
        assert trial.info.status in ("FINISHED", "FAILED")
        if trial.data.tags["nasflow.trial_status"] in ("COMPLETED", "INFEASIBLE"):
            assert trial.data.params, "every hyperparameter is a param"
            for metric in ("final_val_accuracy", "params", "flops", "duration_s"):
                assert metric in trial.data.metrics, metric
            if trial.data.tags.get("nasflow.best_trial") == "true":
                # An accuracy search measures size and latency once, for the chosen (and Pareto) trials.
                assert {"size_bytes", "latency_p50_ms"} <= set(trial.data.metrics)
            history = client.get_metric_history(trial.info.run_id, "val_accuracy")
            assert len(history) >= 1
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/trials.csv", "search/best_hyperparameters.json"} <= artifacts
    assert client.list_artifacts(parent.info.run_id, "search_space")

    variants = {run.data.tags["nasflow.variant"] for run in runs_of(client, parent.info.run_id, "compression")}
    assert {"float32", "float16", "int8"} <= variants
    assert runs_of(client, parent.info.run_id, "train")

    version = client.get_model_version_by_alias(model_name, "challenger")
    assert str(version.version) == str(summary["model_version"])

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{model_name}@challenger")
    data = load_prepared(next(result.run_dir.glob("*/data-prep/dataset")))
    scores = np.asarray(served.predict(data.x_test.astype(np.float32)))
    served_accuracy = float(np.mean(np.argmax(scores, axis=-1) == data.y_test))
    selected = next(v for v in summary["variants"] if v["name"] == summary["selected_variant"])
    # The registry serves the selected variant through its own runtime (LiteRT for .tflite).
    assert abs(served_accuracy - selected["accuracy"]) <= 0.02 + 1e-9
    if selected["name"] in ("float32", "float16"):
        # A plain conversion of the trained Keras model: same accuracy as Keras itself.
        assert abs(served_accuracy - summary["test_accuracy"]) <= 0.02 + 1e-9
