"""nasflow.cli.remote against a real local HTTP server speaking the KFP v2beta1 REST API."""

# No `from __future__ import annotations`: kfp reads the component annotations as types.

import socket

import pytest
import yaml
from fake_kfp_server import FakeKfpServer
from kfp import compiler, dsl
from mlflow_stores import fresh_sqlite_uri

from nasflow.cli.remote import (
    ScheduledJob,
    SubmittedRun,
    make_client,
    normalize_cron,
    schedule_pipeline,
    submit_pipeline,
)
from nasflow.errors import ClusterError


@dsl.component(base_image="python:3.11-slim")
def _echo(message: str, repeats: int) -> str:
    return message * repeats


@dsl.pipeline(name="remote-test-pipeline")
def _pipeline(message: str = "hi", repeats: int = 1):
    _echo(message=message, repeats=repeats)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pkg") / "remote-test.yaml"
    compiler.Compiler().compile(_pipeline, str(path))
    return str(path)


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    # kfp.Client reads ~/.config/kfp/context.json; keep the user's out of the test.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KFP_BEARER_TOKEN", raising=False)
    with FakeKfpServer() as server:
        yield server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_submit_sends_the_compiled_spec_and_parameters(kfp_server, package):
    run = submit_pipeline(kfp_server.url, package, {"message": "ho", "repeats": 3}, run_name="smoke")

    assert isinstance(run, SubmittedRun)
    (created,) = kfp_server.calls("POST", "/apis/v2beta1/runs")
    assert run.run_id  # the ID the server assigned
    body = created.body
    assert body["display_name"] == "smoke"
    assert body["runtime_config"]["parameters"] == {"message": "ho", "repeats": 3}
    with open(package) as handle:
        compiled = yaml.safe_load(handle)
    assert body["pipeline_spec"] == compiled
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "remote-test-pipeline"
    (experiment,) = kfp_server.calls("POST", "/apis/v2beta1/experiments")
    assert experiment.body["display_name"] == "nasflow"
    assert body["experiment_id"] == kfp_server.experiments[0]["experiment_id"]
    assert run.url == f"{kfp_server.url}/#/runs/details/{run.run_id}"
    assert kfp_server.calls("GET", "/apis/v2beta1/healthz")
    assert all("authorization" not in r.headers for r in kfp_server.requests)


def test_submit_reuses_an_existing_experiment(kfp_server, package):
    submit_pipeline(kfp_server.url, package, {}, experiment="nightly")
    submit_pipeline(kfp_server.url, package, {}, experiment="nightly")

    assert len(kfp_server.calls("POST", "/apis/v2beta1/experiments")) == 1
    runs = kfp_server.calls("POST", "/apis/v2beta1/runs")
    assert len(runs) == 2
    assert runs[0].body["experiment_id"] == runs[1].body["experiment_id"]
    assert runs[0].body["display_name"].startswith("remote-test ")


def test_bearer_token_from_the_environment(kfp_server, package, monkeypatch):
    kfp_server.required_token = "s3cret-token"
    monkeypatch.setenv("MY_KFP_TOKEN", "s3cret-token")

    submit_pipeline(kfp_server.url, package, {"repeats": 2}, token_env="MY_KFP_TOKEN")

    assert kfp_server.requests
    assert {r.headers.get("authorization") for r in kfp_server.requests} == {"Bearer s3cret-token"}


def test_wrong_token_is_a_cluster_error_naming_the_host(kfp_server, package, monkeypatch):
    kfp_server.required_token = "right"
    monkeypatch.setenv("KFP_BEARER_TOKEN", "wrong")

    with pytest.raises(ClusterError, match=r"answered HTTP 401.*token") as info:
        submit_pipeline(kfp_server.url, package, {})
    assert kfp_server.url in str(info.value)
    assert "\n" not in str(info.value)


def test_schedule_sends_cron_concurrency_and_catchup(kfp_server, package):
    job = schedule_pipeline(
        kfp_server.url,
        package,
        {"message": "nightly"},
        cron="30 2 * * 1-5",
        job_name="nightly-nas",
        max_concurrency=2,
        no_catchup=False,
    )

    assert isinstance(job, ScheduledJob)
    (created,) = kfp_server.calls("POST", "/apis/v2beta1/recurringruns")
    body = created.body
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1-5"
    assert body["max_concurrency"] == "2" or body["max_concurrency"] == 2
    assert body["no_catchup"] is False
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "nightly-nas"
    assert body["runtime_config"]["parameters"] == {"message": "nightly"}
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "remote-test-pipeline"
    assert job.url == f"{kfp_server.url}/#/recurringrun/details/{job.job_id}"


def test_schedule_defaults_to_no_catchup_and_one_at_a_time(kfp_server, package):
    schedule_pipeline(kfp_server.url, package, {}, cron="0 0 3 * * *")

    (created,) = kfp_server.calls("POST", "/apis/v2beta1/recurringruns")
    assert created.body["no_catchup"] is True
    assert int(created.body["max_concurrency"]) == 1
    assert created.body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert created.body["display_name"] == "remote-test-schedule"


def test_invalid_cron_is_rejected_before_any_request(kfp_server, package):
    with pytest.raises(ClusterError, match="invalid cron"):
        schedule_pipeline(kfp_server.url, package, {}, cron="61 * * * *")
    assert kfp_server.requests == []


def test_unreachable_host_is_a_clean_cluster_error(package, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    url = f"http://127.0.0.1:{_free_port()}"

    with pytest.raises(ClusterError, match="cannot reach Kubeflow Pipelines") as info:
        submit_pipeline(url, package, {})
    assert url in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ClusterError, match=url):
        make_client(url)


def test_missing_package_is_a_cluster_error(kfp_server, tmp_path):
    with pytest.raises(ClusterError, match="pipeline package not found"):
        submit_pipeline(kfp_server.url, str(tmp_path / "nope.yaml"), {})


@pytest.mark.parametrize(
    "expression,expected",
    [
        ("0 3 * * *", "0 0 3 * * *"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("0 30 2 * * MON-FRI", "0 30 2 * * MON-FRI"),
        ("0 0 9 ? * 2-6", "0 0 9 ? * 2-6"),
        ("  5  4 1,15 JAN,jul * ", "0 5 4 1,15 JAN,jul *"),
        ("@daily", "@daily"),
        ("@every 6h30m", "@every 6h30m"),
    ],
)
def test_normalize_cron_accepts(expression, expected):
    assert normalize_cron(expression) == expected


@pytest.mark.parametrize(
    "expression,message",
    [
        ("", "expected 5 fields"),
        ("* * * *", "expected 5 fields"),
        ("0 0 0 0 0 0 0", "expected 5 fields"),
        ("60 * * * *", "minute"),
        ("0 24 * * *", "hour"),
        ("0 0 0 * *", "day of month"),
        ("0 0 1 13 *", "month"),
        ("0 0 * * 7", "day of week"),
        ("*/0 * * * *", "step"),
        ("0 0 * * FOO", "day of week"),
        ("@every soon", "@every"),
    ],
)
def test_normalize_cron_rejects(expression, message):
    with pytest.raises(ClusterError, match=message):
        normalize_cron(expression)


@pytest.mark.parametrize("final_state,succeeds", [("SUCCEEDED", True), ("FAILED", False)])
def test_submit_wait_follows_the_run_to_its_end(kfp_server, package, capsys, final_state, succeeds):
    from nasflow.cli.main import main as cli_main
    from nasflow.cli.remote import wait_for_run

    kfp_server.final_run_state = final_state
    run = submit_pipeline(kfp_server.url, package, {"message": "ho", "repeats": 1})
    if succeeds:
        assert wait_for_run(kfp_server.url, run.run_id, poll_s=0.05) == "SUCCEEDED"
    else:
        with pytest.raises(ClusterError, match=rf"run {run.run_id} ended FAILED .*#/runs/details/{run.run_id}"):
            wait_for_run(kfp_server.url, run.run_id, poll_s=0.05)
    polls = kfp_server.calls("GET", f"/apis/v2beta1/runs/{run.run_id}")
    assert len(polls) == 2, "polled while RUNNING, stopped at the final state"
    if not succeeds:  # the CLI's exit code is what CI gates on (success: the test below)
        code = cli_main(["submit", "--host", kfp_server.url, "--package", package, "--wait", "--poll-seconds", "0.05", "--param", "seed=1"])
        assert code == 2


def test_submit_wait_names_the_version_its_own_run_registered(kfp_server, package, capsys, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from nasflow import tracking
    from nasflow.cli.main import main as cli_main
    from nasflow.registry.registration import REGISTERED_VERSION_TAG

    uri = fresh_sqlite_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as in CI: the cluster's MLflow, not a parameter

    def pipeline_steps(run):
        # What start-tracking and register do on the cluster: a parent run keyed by the KFP
        # run ID, tagged with the version it registered; then another run registers a newer
        # version (challenger moves on) before this one's CI step reads the result.
        parent = tracking.start_parent_run(uri, "nasflow", run["run_id"])
        client.set_tag(parent, REGISTERED_VERSION_TAG, "nasflow-model/7")
        later = tracking.start_parent_run(uri, "nasflow", "another-run")
        client.set_tag(later, REGISTERED_VERSION_TAG, "nasflow-model/8")

    kfp_server.on_run_created = pipeline_steps
    outputs = tmp_path / "github-output"
    outputs.write_text("earlier=kept\n")
    code = cli_main(["submit", "--host", kfp_server.url, "--package", package, "--wait", "--poll-seconds", "0.05",
                     "--output-file", str(outputs)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    (run_id,) = kfp_server.runs
    assert "model_name: nasflow-model\nmodel_version: 7\n" in printed
    lines = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    assert lines["earlier"] == "kept" and lines["kfp_run_id"] == run_id
    assert (lines["model_name"], lines["model_version"]) == ("nasflow-model", "7")

    # A run that registered nothing fails the CI step with one line instead of guessing.
    kfp_server.on_run_created = lambda run: tracking.start_parent_run(uri, "nasflow", run["run_id"])
    assert cli_main(["submit", "--host", kfp_server.url, "--package", package, "--wait", "--poll-seconds", "0.05"]) == 2
    assert "registered no model" in capsys.readouterr().err
