"""Distributed and recycled searches: a chief oracle and worker processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow_stores import fresh_sqlite_uri
from search_steps import assert_killed_trial_was_rerun, tiny_search_step

from nasflow import tracking

pytestmark = pytest.mark.slow


def _kill_worker_mid_trial(uri: str, tuner_id: str, stop: threading.Event, killed: list[str]) -> None:
    """SIGKILL the worker process of ``tuner_id`` once, while one of its trial runs is RUNNING."""
    client = tracking.make_client(uri)
    query = f"tags.`nasflow.tuner_id` = '{tuner_id}' and attributes.status = 'RUNNING'"
    while not stop.is_set():
        experiment = client.get_experiment_by_name("nasflow")
        running = client.search_runs([experiment.experiment_id], query) if experiment else []
        pids = [pid for pid in _worker_pids(tuner_id)] if running else []
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(running[0].info.run_id)
            return
        time.sleep(0.2)


def _worker_pids(tuner_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"nasflow.cluster.worker" in (entry / "cmdline").read_bytes():
                if f"KERASTUNER_TUNER_ID={tuner_id}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _search(tmp_path, digits_dir, **kwargs):
    uri = fresh_sqlite_uri(tmp_path)
    parent_id = tracking.start_parent_run(uri, "nasflow", f"dist-{tmp_path.name}")
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_worker_mid_trial, args=(uri, "tuner1", stop, killed), daemon=True)
    killer.start()
    tiny_search_step(tmp_path, digits_dir, uri, parent_id, **{"max_trials": 4, **kwargs})
    stop.set()
    killer.join()
    client = tracking.make_client(uri)
    parent = client.get_run(parent_id)
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string="tags.`nasflow.role` = 'trial'", max_results=100
    )
    return parent_id, trials, out, tmp_path / "state", killed


def test_two_recycled_workers_share_one_search_and_survive_a_killed_worker(tmp_path, digits_dir):
    # One search covers the worker machinery: fan-out over two worker slots, recycling (each slot
    # exits after every trial and is started again under the same tuner id), and a worker process
    # SIGKILLed in the middle of a trial.
    parent_id, trials, out, state, killed = _search(
        tmp_path, digits_dir, num_workers=2, trials_per_process=1, max_trials=4
    )
    finished = [run for run in trials if run.info.status in ("FINISHED", "FAILED")]
    trial_ids = [run.data.tags["nasflow.trial_id"] for run in finished]
    assert len(trial_ids) == 4
    assert len(set(trial_ids)) == 4, "no trial runs twice"
    assert all(run.data.tags["mlflow.parentRunId"] == parent_id for run in trials)
    assert {run.data.tags["nasflow.tuner_id"] for run in finished} <= {"tuner0", "tuner1"}
    assert json.loads((out / "best.json").read_text())["trial_id"] in trial_ids
    # The chief wrote its oracle and exited when the workers were done.
    assert (state / "search" / "oracle.json").exists()
    assert "Traceback" not in (state / "logs" / "chief.log").read_text()
    # One trial per process: the 4 trials and the re-run of the killed one took at least 5 worker
    # starts, and both slots were recycled. (A slot's last start, which only finds the oracle
    # stopped, races the chief's exit, so it is not counted on.)
    starts = {slot: (state / "logs" / f"{slot}.log").read_text().count("nasflow-worker-start") for slot in ("tuner0", "tuner1")}
    assert sum(starts.values()) >= 4 + 1 and min(starts.values()) >= 2, starts
    # The killed worker's slot was started again and got the same trial back from the chief;
    # the interrupted run is closed KILLED and the re-run says which run it resumes.
    assert_killed_trial_was_rerun(trials, finished, killed, "tuner1")


def test_a_worker_that_arrives_after_the_search_ended_does_not_fail_it(tmp_path, digits_dir, monkeypatch):
    # tuner1 starts only once the chief has exited: tuner0 ran every trial, and Keras Tuner's
    # chief ends the search without waiting for a worker it has never heard from. That worker
    # holds no trial; the search is done and must say so, not retry the slot against a gone
    # oracle until it gives up (before: "worker tuner1 failed 3 times in a row").
    late_hook = Path(__file__).resolve().parents[1] / "late_worker"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(late_hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("NASFLOW_TEST_LATE_TUNER", "tuner1")
    monkeypatch.setenv("NASFLOW_ORACLE_TIMEOUT_S", "5")
    uri = fresh_sqlite_uri(tmp_path)
    parent_id = tracking.start_parent_run(uri, "nasflow", f"late-{tmp_path.name}")
    tiny_search_step(tmp_path, digits_dir, uri, parent_id, num_workers=2, max_trials=2)
    client = tracking.make_client(uri)
    trials = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], filter_string="tags.`nasflow.role` = 'trial'"
    )
    assert sorted(run.info.status for run in trials) == ["FINISHED", "FINISHED"]
    assert {run.data.tags["nasflow.tuner_id"] for run in trials} == {"tuner0"}
    assert json.loads((tmp_path / "out" / "best.json").read_text())["trial_id"] in {
        run.data.tags["nasflow.trial_id"] for run in trials
    }


def test_a_worker_whose_chief_is_gone_exits_instead_of_waiting_an_hour(tmp_path, digits_dir):
    import subprocess
    import sys
    from dataclasses import asdict

    from mlflow_server import free_port

    from nasflow.cluster.spec import WorkerSpec
    from nasflow.search.objectives import ObjectiveConfig
    from nasflow.search.settings import SearchSettings
    from nasflow.spaces.schema import load_search_space, resolve_search_space

    uri = fresh_sqlite_uri(tmp_path)
    spec = WorkerSpec(
        dataset_dir=digits_dir,
        space_config=load_search_space(resolve_search_space("cnn", "image")).to_dict(),
        space_source="cnn",
        settings=asdict(SearchSettings("random", max_trials=2, epochs=1, seed=1)),
        objective=asdict(ObjectiveConfig()),
        parent_run_id=tracking.start_parent_run(uri, "nasflow", "orphan"),
        tracking_uri=uri,
        work_dir=str(tmp_path / "work"),
        overwrite=False,
    )
    port = free_port()  # nothing listens: the chief is gone
    env = dict(os.environ, KERASTUNER_TUNER_ID="tuner0", KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(port), NASFLOW_ORACLE_TIMEOUT_S="2")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "nasflow.cluster.worker", "--spec", str(spec.save(tmp_path / "spec.json")), "--role", "worker"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"nasflow: the chief oracle at 127.0.0.1:{port} did not answer within 2 s" in result.stdout.splitlines()
