"""Tracking helpers on a real local MLflow store."""

from __future__ import annotations

import socket
import time

import pytest
from mlflow_stores import fresh_sqlite_uri

from nasflow import tracking
from nasflow.errors import TrackingError, TrackingUnavailableError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "given,env,expected_prefix",
    [
        ("http://mlflow:5000", None, "http://mlflow:5000"),
        ("", "http://from-env:5000", "http://from-env:5000"),
        ("", None, "sqlite:////"),
    ],
)
def test_resolve_tracking_uri(monkeypatch, tmp_path, given, env, expected_prefix):
    monkeypatch.chdir(tmp_path)
    if env:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri(given)
    assert uri.startswith(expected_prefix)
    if not given and not env:
        assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_plain_directory_becomes_absolute_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri("mlruns") == (tmp_path / "mlruns").resolve().as_uri()


def test_unreachable_server_is_one_line_naming_the_uri():
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(TrackingUnavailableError) as caught:
        tracking.check_reachable(uri, timeout_s=2)
    assert uri in str(caught.value) and "\n" not in str(caught.value)


def test_a_server_that_never_answers_hits_the_timeout():
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TrackingUnavailableError, match="timed out") as caught:
            tracking.check_reachable(uri, timeout_s=0.5)
    assert uri in str(caught.value) and "\n" not in str(caught.value)


def test_parent_run_is_found_again_and_children_nest(tmp_path):
    uri = fresh_sqlite_uri(tmp_path)
    first = tracking.start_parent_run(uri, "exp", "job-1", params={"a": 1, "nested": {"b": [1, 2]}})
    assert tracking.start_parent_run(uri, "exp", "job-1") == first, "a retried task reuses the parent"
    assert tracking.start_parent_run(uri, "exp", "job-2") != first
    parent = tracking.open_parent(uri, first)
    with tracking.child_run(parent, "child", tags={"nasflow.role": "trial"}) as child:
        child.log_metrics({"acc": 0.5, "not_a_number": float("nan"), "label": "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError), tracking.child_run(parent, "broken") as broken:
        raise ValueError("boom")
    client = tracking.make_client(uri)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == first
    assert client.get_run(child.run_id).data.metrics == {"acc": 0.5}
    failed = client.get_run(broken.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags[tracking.FAILURE_REASON_TAG] == "ValueError: boom"
    assert client.get_run(first).data.params["nested"] == '{"b": [1, 2]}'


def test_finish_closes_the_parent_and_kills_leftover_children(tmp_path):
    uri = fresh_sqlite_uri(tmp_path)
    parent_id = tracking.start_parent_run(uri, "exp", "job-9")
    leftover = tracking.start_child_run(tracking.open_parent(uri, parent_id), "trial-0")
    assert tracking.finish_parent_run(uri, "exp", "job-9", succeeded=False, message="search failed") == parent_id
    client = tracking.make_client(uri)
    assert client.get_run(parent_id).info.status == "FAILED"
    assert client.get_run(leftover.run_id).info.status == "KILLED"
    # A run identity started again reopens the same parent.
    assert tracking.start_parent_run(uri, "exp", "job-9") == parent_id
    assert client.get_run(parent_id).info.status == "RUNNING"


def test_with_retry_gives_up_with_a_tracking_error():
    calls = []

    def always_down():
        calls.append(1)
        raise ConnectionError("refused")

    with pytest.raises(TrackingError, match="log metrics"):
        tracking.with_retry(always_down, "log metrics", retry_seconds=1.2)
    assert len(calls) >= 2


# --- a trial's run: TrialRecord ---------------------------------------------------------------
class _CountingClient:
    """The real MlflowClient, counting the requests that reach the store."""

    def __init__(self, client):
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return call


def _counting_parent(tmp_path) -> tuple[tracking.RunHandle, _CountingClient]:
    uri = fresh_sqlite_uri(tmp_path)
    parent_id = tracking.start_parent_run(uri, "nasflow", "job-trial-record")
    parent = tracking.open_parent(uri, parent_id)
    counting = _CountingClient(parent.client)
    parent.client = counting
    return parent, counting


def test_a_short_trial_costs_five_requests_and_keeps_every_epoch(tmp_path):
    from nasflow.search.records import TrialRecord

    parent, counting = _counting_parent(tmp_path)
    record = TrialRecord.open(parent, "0007", tags={"nasflow.tuner_id": "tuner0"}, params={"filters": 32, "act": "relu"})
    for epoch in range(4):
        record.add_epoch(epoch, {"loss": 1.0 / (epoch + 1), "val_accuracy": 0.5 + 0.1 * epoch, "lr": float("nan")})
        time.sleep(0.005)
    record.tag({"nasflow.latency_runtime": "litert"})
    record.finish("COMPLETED", {"final_val_accuracy": 0.8}, duration_s=2.5, feasible=True)

    assert counting.calls == ["search_runs", "create_run", "log_batch", "log_batch", "set_terminated"]
    run = counting.get_run(record.run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"filters": "32", "act": "relu"}
    assert run.data.metrics["final_val_accuracy"] == 0.8 and run.data.metrics["duration_s"] == 2.5
    assert "lr" not in run.data.metrics, "non-finite values are skipped"
    tags = run.data.tags
    assert tags["nasflow.trial_status"] == "COMPLETED" and tags["nasflow.feasible"] == "true"
    assert tags["nasflow.latency_runtime"] == "litert" and tags["mlflow.parentRunId"] == parent.run_id
    history = counting.get_metric_history(record.run.run_id, "val_accuracy")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [round(m.value, 2) for m in history] == [0.5, 0.6, 0.7, 0.8]
    assert len({m.timestamp for m in history}) == 4, "each epoch keeps the time it ended"


def test_a_long_trial_sends_its_epochs_as_it_goes(tmp_path):
    from nasflow.search.records import TrialRecord

    parent, counting = _counting_parent(tmp_path)
    record = TrialRecord.open(parent, "0001", tags={}, params={}, flush_every_s=0.0)
    record.add_epoch(0, {"val_accuracy": 0.4})
    assert [m.step for m in counting.get_metric_history(record.run.run_id, "val_accuracy")] == [0]
    record.finish("FAILED", {}, duration_s=1.0, reason="FailedTrialError: loss became NaN/inf at epoch 1")
    run = counting.get_run(record.run.run_id)
    assert run.info.status == "FAILED" and "NaN" in run.data.tags[tracking.FAILURE_REASON_TAG]
    assert record.closed


def test_a_second_attempt_closes_the_first_and_says_so(tmp_path):
    from nasflow.search.records import TrialRecord

    parent, _ = _counting_parent(tmp_path)
    first = TrialRecord.open(parent, "0003", tags={}, params={})
    interrupted: dict[str, str] = {}
    second = TrialRecord.open(parent, "0003", tags={}, params={}, interrupted_runs=interrupted)
    assert interrupted == {"0003": first.run.run_id}
    assert parent.client.get_run(first.run.run_id).info.status == "KILLED"
    assert parent.client.get_run(second.run.run_id).data.tags["nasflow.resumed_from_run"] == first.run.run_id


def test_log_batch_splits_at_mlflows_limits(tmp_path):
    from mlflow.entities import Metric

    parent, counting = _counting_parent(tmp_path)
    run = tracking.start_child_run(parent, "many")
    counting.calls.clear()
    history = [Metric("m", float(step), 1_700_000_000_000 + step, step) for step in range(1500)]
    run.log_batch(history=history, tags={f"t{k}": k for k in range(150)})
    assert counting.calls == ["log_batch", "log_batch"]  # 100 tags + 900 metrics, then 50 + 600
    assert len(counting.get_metric_history(run.run_id, "m")) == 1500
    assert len([key for key in counting.get_run(run.run_id).data.tags if key.startswith("t")]) == 150


def test_a_local_store_commits_to_a_write_ahead_log_and_keeps_it_through_a_kill(tmp_path):
    """nasflow's connections to a local SQLite store use WAL with synchronous=NORMAL.

    The default (rollback journal, synchronous=FULL) fsyncs every one of MLflow's ~14
    commits a trial. What a SIGKILLed process committed is still there for the next one.
    """
    import sqlite3
    import subprocess
    import sys

    uri = fresh_sqlite_uri(tmp_path)
    client = tracking.make_client(uri)
    experiment = tracking.get_or_create_experiment(client, "wal")
    with client._tracking_client.store.engine.connect() as connection:
        driver = connection.connection.dbapi_connection
        assert driver.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert driver.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    script = (
        "import os, signal, sys\n"
        "from nasflow import tracking\n"
        "client = tracking.make_client(sys.argv[1])\n"
        "run = client.create_run(sys.argv[2], run_name='killed-writer')\n"
        "client.log_metric(run.info.run_id, 'val_accuracy', 0.75)\n"
        "print(run.info.run_id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, uri, experiment], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_id = killed.stdout.split()[-1]
    assert (tmp_path / "mlflow.db-wal").exists(), "the kill left the log for the next opener to recover"
    # A plain sqlite3 reader (as the MLflow UI's server is) sees the killed writer's commits.
    reader = sqlite3.connect(tmp_path / "mlflow.db")
    value = reader.execute("SELECT value FROM metrics WHERE run_uuid = ? AND key = 'val_accuracy'", (run_id,)).fetchone()
    reader.close()
    assert value == (0.75,)


def test_the_registry_step_opens_a_local_store_with_the_same_settings(tmp_path):
    """A register/promote process makes its clients in nasflow.registry, never via make_client."""
    import subprocess
    import sys

    uri = fresh_sqlite_uri(tmp_path)
    script = (
        "import sys\n"
        "import mlflow\n"
        "from nasflow.registry._mlflow import client_for, use_tracking_uri\n"
        "client = client_for(sys.argv[1])\n"
        "client.search_experiments()\n"
        "with client._tracking_client.store.engine.connect() as connection:\n"
        "    print(connection.connection.dbapi_connection.execute('PRAGMA synchronous').fetchone()[0])\n"
        "with use_tracking_uri(sys.argv[1]):\n"
        "    store = mlflow.tracking.MlflowClient()._tracking_client.store\n"
        "    with store.engine.connect() as connection:\n"
        "        print(connection.connection.dbapi_connection.execute('PRAGMA journal_mode').fetchone()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, uri], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["1", "wal"]  # synchronous=NORMAL, WAL
