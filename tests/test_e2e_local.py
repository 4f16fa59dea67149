"""The whole pipeline through kfp.local on `digits`, checked through MLflow.

Two runs: one on the default local SQLite store, one against a real `mlflow server`
process on 127.0.0.1 (which also exercises evolution + the Pareto objective and a
chained compression variant).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from e2e_runs import tiny_params
from mlflow_server import create_tagged_version, running_mlflow_server

from nasflow import tracking
from nasflow.cli.local_run import run_pipeline_locally
from nasflow.cli.main import main as cli_main
from nasflow.data import load_prepared

pytestmark = pytest.mark.slow


def _params(**overrides):
    return tiny_params(**overrides)


def _runs(client, parent_id: str, role: str):
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`nasflow.role` = '{role}'",
    )


def _check_run(result, tracking_uri: str, expected_trials: int, model_name: str) -> None:
    summary = result.summary
    client = tracking.make_client(tracking_uri)
    experiment = client.get_experiment_by_name("nasflow")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`nasflow.role` = 'pipeline'"
    )
    parent = next(run for run in parents if run.info.run_id == summary["parent_run_id"])
    assert parent.info.status == "FINISHED"

    trials = _runs(client, parent.info.run_id, "trial")
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

    variants = {run.data.tags["nasflow.variant"] for run in _runs(client, parent.info.run_id, "compression")}
    assert {"float32", "float16", "int8"} <= variants
    assert _runs(client, parent.info.run_id, "train")

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


@pytest.fixture(scope="module")
def sqlite_run(tiny_sqlite_run):
    # The run is shared with the tests that read its results (tests/ui, test_run_views).
    return tiny_sqlite_run


def test_local_pipeline_tracks_every_candidate_and_registers(sqlite_run):
    result, uri = sqlite_run
    _check_run(result, uri, expected_trials=2, model_name="digits-e2e")
    summary = result.summary
    assert summary["aliases"] == ["challenger", "champion"], "the first version becomes champion"
    assert summary["promotion"]["promoted"] is True
    assert summary["test_accuracy"] > 0.5


def test_promote_cli_refuses_and_exits_non_zero(sqlite_run, capsys):
    result, uri = sqlite_run
    champion = str(result.summary["model_version"])
    code = cli_main(["promote", "--model-name", "digits-e2e", "--tracking-uri", uri, "--min-improvement", "0.5"])
    out = capsys.readouterr().out
    # The challenger is already champion: promoting it again changes nothing and succeeds.
    assert code == 0, out
    client = tracking.make_client(uri)
    assert str(client.get_model_version_by_alias("digits-e2e", "champion").version) == champion

    # A worse version in the same store (tagged as registration tags it): the gate refuses it.
    worse_metric = result.summary["test_accuracy"] - 0.2
    worse = create_tagged_version(client, "digits-e2e", worse_metric, metric_name="test_accuracy")
    try:
        code = cli_main(["promote", "--model-name", "digits-e2e", "--version", worse, "--tracking-uri", uri])
        out = capsys.readouterr().out
        assert code == 1, out
        assert out.startswith(f"refused: digits-e2e version {worse}: ") and "does not beat champion" in out
        assert str(client.get_model_version_by_alias("digits-e2e", "champion").version) == champion
        assert client.get_model_version("digits-e2e", worse).tags["nasflow.promotion.decision"] == "refused"
    finally:
        client.delete_model_version("digits-e2e", worse)  # the shared run's registry as it was

    code = cli_main(["promote", "--model-name", "no-such-model", "--tracking-uri", uri])
    assert code == 2


def test_pipeline_against_a_real_mlflow_server(tmp_path):
    with running_mlflow_server(tmp_path / "server") as uri:
        result = run_pipeline_locally(
            _params(
                strategy="evolution",
                objective_mode="pareto",
                max_trials=3,
                tracking_uri=uri,
                model_name="digits-server",
                compression_variants=["float16", "int8", "structured_prune+int8"],
                # With this seed the first trial's model is ~137 KB; the other two are smaller.
                max_size_kb=100.0,
            ),
            tmp_path / "runs",
            stream=None,
        )
        _check_run(result, uri, expected_trials=3, model_name="digits-server")
        client = tracking.make_client(uri)
        pareto = {item.path for item in client.list_artifacts(result.summary["parent_run_id"], "search")}
        assert any(path.endswith("pareto.png") for path in pareto), pareto
        assert any(path.endswith("pareto.csv") for path in pareto), pareto
        trials = _runs(client, result.summary["parent_run_id"], "trial")
        infeasible = [run for run in trials if run.data.tags["nasflow.trial_status"] == "INFEASIBLE"]
        assert infeasible, "the size constraint marks at least one trial infeasible"
        for run in infeasible:
            assert run.data.tags["nasflow.feasible"] == "false"
            assert "max_size_kb" in run.data.tags["nasflow.infeasible_reason"]
            assert run.data.metrics["size_bytes"] / 1024 > 100
        chosen = client.get_run(result.summary["parent_run_id"]).data.tags["nasflow.best_trial_id"]
        assert chosen not in {run.data.tags["nasflow.trial_id"] for run in infeasible}
        variants = {v["name"] for v in result.summary["variants"]}
        assert "structured_prune+int8" in variants
        json.dumps(result.summary)
