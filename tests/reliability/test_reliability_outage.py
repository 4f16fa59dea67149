"""MLflow outages: unreachable at start fails fast; a restart mid-search loses no trial."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow_server import free_port, running_mlflow_server
from search_process import start, trial_runs, wait_for

pytestmark = pytest.mark.slow


def test_unreachable_server_fails_before_anything_runs(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    process = subprocess.run(
        [sys.executable, "-m", "nasflow.cli.main", "run", "--dataset", "digits", "--tracking-uri", uri,
         "--output-dir", str(tmp_path / "runs"), "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert process.returncode == 2
    lines = [line for line in process.stderr.splitlines() if line.startswith("nasflow:")]
    assert len(lines) == 1 and uri in lines[0] and "unreachable" in lines[0], process.stderr
    assert "retrying" not in process.stderr, "an unreachable server at start is not waited for"
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("splits.npz")), "nothing ran"


def test_server_restart_mid_search_loses_no_trial(tmp_path):
    port = free_port()
    server_dir = tmp_path / "server"
    with running_mlflow_server(server_dir, port=port) as uri:
        search = start(tmp_path, uri, "random", max_trials=3, epochs=2)
        wait_for(
            lambda: any(run.data.tags.get("nasflow.trial_id") == "0" for run in trial_runs(uri, tmp_path)),
            process=search,
        )
    # The server is down while the search goes on; it comes back on the same port.
    time.sleep(6)
    with running_mlflow_server(server_dir, port=port) as uri:
        assert search.wait(timeout=400) == 0, (tmp_path / "search-0.log").read_text()[-3000:]
        runs = trial_runs(uri, tmp_path)
    finished = {run.data.tags["nasflow.trial_id"]: run for run in runs if run.info.status == "FINISHED"}
    assert sorted(finished) == ["0", "1", "2"], [(r.data.tags.get("nasflow.trial_id"), r.info.status) for r in runs]
    for run in finished.values():
        for metric in ("final_val_accuracy", "params", "flops", "duration_s"):
            assert metric in run.data.metrics, (run.data.tags["nasflow.trial_id"], metric)
    assert (tmp_path / "out" / "best.json").exists()
    assert "retrying" in (tmp_path / "search-0.log").read_text(), "the outage was felt, and ridden out"
