"""The whole pipeline through kfp.local on `digits`, checked through MLflow.

Two runs: one on the default local SQLite store, one against a real `mlflow server`
process on 127.0.0.1 (which also exercises evolution + the Pareto objective and a
chained compression variant).
"""

from __future__ import annotations

import io
import json
import re

import pytest
from e2e_runs import check_run, runs_of, tiny_params
from mlflow_server import create_tagged_version, running_mlflow_server

from nasflow import progress, tracking
from nasflow.cli.local_run import _ProgressTee, _TerminalProgress, format_summary, run_pipeline_locally
from nasflow.cli.main import main as cli_main
from nasflow.search import architecture


@pytest.fixture(scope="module")
def sqlite_run(tiny_sqlite_run):
    # The session's one pipeline run, shared with tests/ui (slow tier: a browser reads it).
    return tiny_sqlite_run


def test_local_pipeline_tracks_every_candidate_and_registers(sqlite_run):
    result, uri = sqlite_run
    check_run(result, uri, expected_trials=2, model_name="digits-e2e")
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


def test_a_finished_run_carries_views_links_and_headline_numbers(sqlite_run, capsys):
    """What `nasflow run` showed, and what `nasflow runs` / `nasflow show` find afterwards."""
    result, uri = sqlite_run
    summary = result.summary
    client = tracking.make_client(uri)
    parent = client.get_run(summary["parent_run_id"])
    assert summary["experiment_id"] == parent.info.experiment_id
    for metric in ("test_accuracy", "search.best_val_accuracy", "selected.size_kb", "selected.latency_p50_ms"):
        assert metric in parent.data.metrics, metric
    search_files = {item.path for item in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/report.html", "search/pareto.png", "search/best_so_far.png"} <= search_files
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
        "and tags.`nasflow.role` = 'trial'",
    )  # fmt: skip
    for trial in trials:
        assert re.match(r"^trial-\d{3} \S", trial.info.run_name), trial.info.run_name
        names = {item.path for item in client.list_artifacts(trial.info.run_id, "architecture")}
        assert {"architecture/model.dot", "architecture/summary.txt"} <= names
        if architecture.graphviz_available():
            assert "architecture/model.png" in names, "a 2-trial search draws every trial"

    # What `nasflow run` showed on the terminal, replayed from the run's log.
    terminal = io.StringIO()
    _ProgressTee(io.StringIO(), _TerminalProgress(terminal, interactive=False)).write(result.log_path.read_text())
    shown = [line.strip() for line in terminal.getvalue().splitlines()]
    assert [line.split("  ")[0] for line in shown if line.startswith("trial")] == ["trial 1/2", "trial 2/2"], shown
    assert any(line.startswith("epoch 1/2  loss") for line in shown), shown
    assert [line.split("  ")[0] for line in shown if line.startswith("variant")] == ["variant 1/3", "variant 2/3", "variant 3/3"]
    task_line = re.compile(r"(Executing task|finished with status|Running pipeline|Pipeline .* finished)")
    noise = [line for line in shown if not (task_line.search(line) or progress.parse(line))]
    assert not noise, f"only task and progress lines reach the terminal: {noise}"

    assert cli_main(["runs", "--tracking-uri", uri]) == 0
    listing = capsys.readouterr().out
    assert parent.info.run_id in listing and f"{summary['test_accuracy']:.4f}" in listing
    assert cli_main(["show", parent.info.run_id[:8], "--tracking-uri", uri]) == 0
    shown = capsys.readouterr().out
    assert shown.strip() == format_summary(summary, (parent.info.end_time - parent.info.start_time) / 1000).strip()
    assert f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in shown


@pytest.mark.slow  # a second whole pipeline run, against a real mlflow server process
def test_pipeline_against_a_real_mlflow_server(tmp_path):
    with running_mlflow_server(tmp_path / "server") as uri:
        result = run_pipeline_locally(
            tiny_params(
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
        check_run(result, uri, expected_trials=3, model_name="digits-server")
        client = tracking.make_client(uri)
        pareto = {item.path for item in client.list_artifacts(result.summary["parent_run_id"], "search")}
        assert any(path.endswith("pareto.png") for path in pareto), pareto
        assert any(path.endswith("pareto.csv") for path in pareto), pareto
        trials = runs_of(client, result.summary["parent_run_id"], "trial")
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
