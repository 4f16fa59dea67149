"""Tracking helpers on a real local MLflow store."""

from __future__ import annotations

import socket
import time

import pytest

from nasflow import tracking
from nasflow.errors import TrackingError


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
    started = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        tracking.check_reachable(uri, timeout_s=2)
    assert uri in str(caught.value) and "\n" not in str(caught.value)
    assert time.monotonic() - started < 10


def test_parent_run_is_found_again_and_children_nest(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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
