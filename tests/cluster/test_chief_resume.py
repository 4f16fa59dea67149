"""A search step that runs a chief and workers is SIGKILLed mid-search and run again, as a KFP retry does.

The step runs as a process of its own, as a KFP task does, with the pipeline's default
``state_dir=""`` (no volume) and a fresh output folder per attempt (a retry is a new pod or
a new task folder). Two ways the product runs the chief:

- ``local``: ``nasflow run --num-workers 2`` (kfp.local): the chief oracle and the workers are
  processes the step started; only the step is killed, as a kfp.local task dies.
- ``pod``: a KFP task in Kubernetes: the chief oracle runs in the step's pod, the workers in
  an indexed Job (tests/fake_kube_api.py's kubelet starts them as processes). The pod dies
  whole (the step and its chief oracle); the worker pods of the first attempt go on, and
  the retry runs in a new pod.

Either way the retry must resume from the state the first attempt synced to the parent run:
exactly ``max_trials`` distinct trials, one FINISHED run each, the trials the first attempt
finished kept, the interrupted runs KILLED and linked from their re-runs, no RUNNING run
left, and no process of the first attempt still running once the retry starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_kube_api import NAMESPACE, FakeKubeApi, FakeKubelet
from mlflow_server import free_port, running_mlflow_server
from search_steps import search_processes

from nasflow import faults, tracking
from nasflow.steps._common import ERROR_FILE_ENV

pytestmark = pytest.mark.slow

MAX_TRIALS = 4
TESTS_DIR = Path(__file__).resolve().parents[1]

STEP = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from search_steps import tiny_search_step
tiny_search_step(Path({attempt!r}), {digits!r}, {uri!r}, {parent!r}, num_workers=2, max_trials={max_trials}, state_dir="")
"""


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow"), startup_timeout_s=300) as uri:
        yield uri


def _start_step(
    attempt_dir: Path, digits_dir: str, uri: str, parent_id: str, env: dict[str, str]
) -> subprocess.Popen:
    attempt_dir.mkdir(parents=True)
    code = STEP.format(
        tests=str(TESTS_DIR),
        attempt=str(attempt_dir),
        digits=digits_dir,
        uri=uri,
        parent=parent_id,
        max_trials=MAX_TRIALS,
    )
    log = (attempt_dir / "step.log").open("w")
    env = {**os.environ, **env, ERROR_FILE_ENV: str(attempt_dir / "error.txt")}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=attempt_dir, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _trial_runs(client, parent_id: str) -> list:
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`nasflow.role` = 'trial'",
        max_results=100,
    )


def _wait_until_mid_search(
    client, parent_id: str, step: subprocess.Popen, log: Path, tmp_path: Path
) -> set[str]:
    """Block until the state holds an ended trial and another trial runs; returns the committed trials' runs."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert step.poll() is None, f"the step ended before it could be killed: {log.read_text()[-2000:]}"
        runs = _trial_runs(client, parent_id)
        if any(run.info.status == "RUNNING" for run in runs) and client.list_artifacts(
            parent_id, "search_state"
        ):
            copy = client.download_artifacts(parent_id, "search_state/oracle.json", str(tmp_path))
            ended = set(json.loads(Path(copy).read_text())["end_order"])
            committed = {
                run.info.run_id
                for run in runs
                if run.info.status == "FINISHED" and run.data.tags["nasflow.trial_id"] in ended
            }
            if committed:
                return committed
        time.sleep(0.2)
    raise AssertionError("the search never had a synced ended trial and a running trial at once")


def _wait_gone(under: Path) -> list[int]:
    """PIDs of processes under ``under`` still alive after a generous wait (empty: all gone)."""
    deadline = time.monotonic() + 60
    while (alive := search_processes(under)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def _assert_resumed(client, parent_id: str, finished_before_kill: set[str]) -> None:
    runs = _trial_runs(client, parent_id)
    assert not [run for run in runs if run.info.status == "RUNNING"]
    finished = [run for run in runs if run.info.status == "FINISHED"]
    finished_ids = sorted(run.data.tags["nasflow.trial_id"] for run in finished)
    assert finished_ids == [str(n) for n in range(MAX_TRIALS)], (
        "exactly max_trials trials, one FINISHED run each"
    )
    assert finished_before_kill <= {run.info.run_id for run in finished}, (
        "the retry ran a finished trial again"
    )
    killed = [run for run in runs if run.info.status == "KILLED"]
    assert killed, "the trial running at the kill was closed as interrupted"
    links = {run.data.tags.get("nasflow.resumed_from_run"): run for run in runs}
    for run in killed:
        assert run.info.run_id in links, (
            f"interrupted run of trial {run.data.tags['nasflow.trial_id']} is not linked"
        )
        assert links[run.info.run_id].data.tags["nasflow.trial_id"] == run.data.tags["nasflow.trial_id"]
    assert client.list_artifacts(parent_id, "search_state"), "the state the retry resumed from"


def test_a_killed_step_with_local_workers_resumes_when_run_again(tmp_path, digits_dir, mlflow_uri):
    client = tracking.make_client(mlflow_uri)
    parent_id = tracking.start_parent_run(mlflow_uri, f"chief-resume-{tmp_path.name}", "search")
    first = _start_step(tmp_path / "attempt1", digits_dir, mlflow_uri, parent_id, {})
    try:
        finished_before_kill = _wait_until_mid_search(
            client, parent_id, first, tmp_path / "attempt1" / "step.log", tmp_path
        )
        first.send_signal(signal.SIGKILL)  # the task process only, as kfp.local's task dies
        first.wait()
        leftovers = _wait_gone(tmp_path / "attempt1")
        assert leftovers == [], "the first attempt's chief and workers outlived their step"
        retry = _start_step(tmp_path / "attempt2", digits_dir, mlflow_uri, parent_id, {})
        assert retry.wait(timeout=900) == 0, (tmp_path / "attempt2" / "step.log").read_text()[-3000:]
    finally:
        for pid in search_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)
    _assert_resumed(client, parent_id, finished_before_kill)


@pytest.mark.parametrize("point", ["state-write@1", "state-copy@1"])
def test_a_chief_killed_inside_its_state_save_resumes_when_run_again(point, tmp_path, digits_dir, mlflow_uri):
    # The kill matrix of tests/reliability on the chief/worker path: the chief oracle process
    # SIGKILLs itself (nasflow.faults) half-way through writing oracle.json at trial 1's end,
    # or while copying the state to the parent run after it (trial.json uploaded, oracle.json
    # not). The step fails with the chief's exit; run again in a fresh folder, it resumes.
    client = tracking.make_client(mlflow_uri)
    parent_id = tracking.start_parent_run(mlflow_uri, f"chief-fault-{tmp_path.name}", "search")
    env = {faults.FAULT_ENV: point, faults.FAULT_ONCE_ENV: str(tmp_path / "faults-fired")}
    try:
        first = _start_step(tmp_path / "attempt1", digits_dir, mlflow_uri, parent_id, env)
        assert first.wait(timeout=900) != 0
        assert "chief oracle exited with code -9" in (tmp_path / "attempt1" / "error.txt").read_text()
        assert _wait_gone(tmp_path / "attempt1") == [], "the first attempt's workers outlived their chief"
        runs = _trial_runs(client, parent_id)
        committed: set[str] = set()  # none, if trial 1 was the first trial to end
        if "search_state/oracle.json" in {item.path for item in client.list_artifacts(parent_id, "search_state")}:
            copy = client.download_artifacts(parent_id, "search_state/oracle.json", str(tmp_path))
            committed = set(json.loads(Path(copy).read_text())["end_order"])
        assert "1" not in committed, "trial 1's end was never committed"
        finished_before_kill = {
            run.info.run_id for run in runs
            if run.info.status == "FINISHED" and run.data.tags["nasflow.trial_id"] in committed
        }  # fmt: skip
        retry = _start_step(tmp_path / "attempt2", digits_dir, mlflow_uri, parent_id, env)
        assert retry.wait(timeout=900) == 0, (tmp_path / "attempt2" / "step.log").read_text()[-3000:]
    finally:
        for pid in search_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)
    _assert_resumed(client, parent_id, finished_before_kill)
    killed = {run.data.tags["nasflow.trial_id"] for run in _trial_runs(client, parent_id) if run.info.status == "KILLED"}
    assert "1" in killed, "trial 1's uncommitted finished run was closed KILLED"


def _pod_env(kube: FakeKubeApi, kubeconfig: Path, name: str, uid: str) -> dict[str, str]:
    """The search step's environment in a pod named ``name`` (downward API), with fresh ports."""
    return {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBECONFIG": str(kube.kubeconfig(kubeconfig)),
        "HOSTNAME": name,
        "NASFLOW_POD_UID": uid,
        "NASFLOW_NAMESPACE": NAMESPACE,
        "NASFLOW_POD_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(free_port()),
        "NASFLOW_BOOTSTRAP_PORT": str(free_port()),
    }


def test_a_killed_chief_pod_resumes_in_a_new_pod_and_retires_the_old_workers(
    tmp_path, digits_dir, mlflow_uri
):
    client = tracking.make_client(mlflow_uri)
    parent_id = tracking.start_parent_run(mlflow_uri, f"chief-resume-{tmp_path.name}", "search")
    kubelet = FakeKubelet(tmp_path / "pods")
    kube = FakeKubeApi(kubelet)
    try:
        first_env = _pod_env(kube, tmp_path / "kubeconfig", "nas-run-search-attempt1", "uid-attempt-1")
        first = _start_step(tmp_path / "attempt1", digits_dir, mlflow_uri, parent_id, first_env)
        finished_before_kill = _wait_until_mid_search(
            client, parent_id, first, tmp_path / "attempt1" / "step.log", tmp_path
        )
        # The pod dies whole: the step and the chief oracle it runs; its worker pods do not.
        for pid in [first.pid, *search_processes(tmp_path / "attempt1")]:
            os.kill(pid, signal.SIGKILL)
        first.wait()
        first_pods = list(kubelet.pods)
        assert first_pods and any(pod.process.poll() is None for pod in first_pods)
        second_env = _pod_env(kube, tmp_path / "kubeconfig", "nas-run-search-attempt2", "uid-attempt-2")
        retry = _start_step(tmp_path / "attempt2", digits_dir, mlflow_uri, parent_id, second_env)
        assert retry.wait(timeout=900) == 0, (tmp_path / "attempt2" / "step.log").read_text()[-3000:]
    finally:
        kube.close()
        for pid in search_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)
    # The retry deleted the first attempt's Job (its pods with it) before its chief started.
    assert ("batch", "jobs", "delete") in kube.calls
    assert list(kube.jobs) == ["nas-run-search-attempt2-workers"]
    assert all(pod.process.poll() is not None for pod in first_pods)
    _assert_resumed(client, parent_id, finished_before_kill)
