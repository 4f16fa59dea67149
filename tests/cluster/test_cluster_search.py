"""The search step as the chief of a distributed search in a pod, its workers an indexed Job.

Everything runs for real except the cluster: the search step (``nasflow.steps.search_step``,
what the KFP component calls) sees ``KUBERNETES_SERVICE_HOST`` and takes the cluster path;
the real ``kubernetes`` client reaches tests/fake_kube_api.py through a kubeconfig; that
fake's kubelet starts each worker pod as a process from the Job manifest the chief created,
with the environment resolved as Kubernetes would and nothing shared with the chief but the
network: each worker gets the spec and dataset from the chief's bootstrap server. Trials go
to a real ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import kubernetes_validate
import pytest
from fake_kube_api import NAMESPACE, FakeKubeApi, FakeKubelet
from mlflow_server import free_port, running_mlflow_server
from search_steps import cmdline, search_processes, tiny_search_step

from nasflow import tracking
from nasflow.config import CLUSTER_CREDENTIALS_SECRET
from nasflow.steps._common import ERROR_FILE_ENV

pytestmark = pytest.mark.slow

CHIEF_POD = "nasflow-nas-x7k2p-system-container-impl-1234567890"
CHIEF_UID = "0b7c6d4e-1f2a-4b3c-8d9e-0a1b2c3d4e5f"

#: The image a pipeline compiled with NASFLOW_IMAGE_REGISTRY=registry.example.com/team names.
COMPILED_IMAGE = "registry.example.com/team/nasflow:0.1.0"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture
def in_a_pod(tmp_path, monkeypatch):
    """The chief's view of the world: the downward-API env of the search step, a kubeconfig."""

    def enter(kube: FakeKubeApi) -> None:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv("HOSTNAME", CHIEF_POD)
        monkeypatch.setenv("NASFLOW_POD_UID", CHIEF_UID)
        monkeypatch.setenv("NASFLOW_NAMESPACE", NAMESPACE)
        monkeypatch.setenv("NASFLOW_POD_IP", "127.0.0.1")
        monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_port()))
        monkeypatch.setenv("NASFLOW_BOOTSTRAP_PORT", str(free_port()))
        monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error.txt"))

    return enter


def _search(tmp_path: Path, digits_dir: str, uri: str, **kwargs) -> tuple[str, dict[str, float]]:
    # An experiment per test: the MLflow server is shared by the module.
    parent_id = tracking.start_parent_run(uri, f"cluster-{tmp_path.name}", "search")
    metrics = tiny_search_step(tmp_path, digits_dir, uri, parent_id, num_workers=2, **kwargs)
    return parent_id, metrics


def test_chief_pod_runs_the_search_over_an_indexed_worker_job(tmp_path, digits_dir, mlflow_uri, in_a_pod, monkeypatch):
    kubelet = FakeKubelet(tmp_path / "pods", secrets_data={CLUSTER_CREDENTIALS_SECRET: {"MLFLOW_TRACKING_USERNAME": "nas"}})
    kube = FakeKubeApi(kubelet)
    try:
        in_a_pod(kube)
        # The compiled pipeline names the workers' image; the chief pod has no registry setting.
        monkeypatch.delenv("NASFLOW_IMAGE_REGISTRY", raising=False)
        parent_id, metrics = _search(tmp_path, digits_dir, mlflow_uri, max_trials=3, worker_image=COMPILED_IMAGE)
    finally:
        kube.close()

    # The chief created one valid indexed Job, owned by its pod, and followed it to Complete.
    (job,) = kube.jobs.values()
    kubernetes_validate.validate({k: v for k, v in job.items() if k != "status"}, "1.32.0", strict=True)
    assert job["metadata"]["ownerReferences"][0]["uid"] == CHIEF_UID
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 24 * 3600 + 600
    assert job["status"]["conditions"][0]["type"] == "Complete"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == COMPILED_IMAGE
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == mlflow_uri
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == CLUSTER_CREDENTIALS_SECRET
    assert env["TF_NUM_INTRAOP_THREADS"]["value"] == container["resources"]["limits"]["cpu"] == "1"
    assert ("batch", "jobs", "create") in kube.calls and ("batch", "jobs", "watch") in kube.calls

    # Each worker pod ran as tuner<index>, took the spec and dataset from the chief over HTTP
    # into its own /tmp, and exited 0.
    pods = kubelet.pods
    assert sorted(pod.index for pod in pods) == [0, 1]
    for pod in pods:
        log = pod.log.read_text()
        assert pod.process.returncode == 0, log[-2000:]
        assert f"nasflow-worker-start role=worker tuner=tuner{pod.index}" in log
        bootstrap = next(line for line in log.splitlines() if line.startswith("nasflow-worker-bootstrap"))
        assert "from=http://127.0.0.1:" in bootstrap
        assert f"dataset={tmp_path / 'pods' / pod.name / 'tmp'}" in bootstrap

    # Exactly max_trials trials, each once, all nested under the one parent run.
    client = tracking.make_client(mlflow_uri)
    experiment = client.get_run(parent_id).info.experiment_id
    trials = client.search_runs([experiment], "tags.`nasflow.role` = 'trial'", max_results=50)
    trial_ids = [run.data.tags["nasflow.trial_id"] for run in trials]
    assert len(trial_ids) == 3 and len(set(trial_ids)) == 3
    assert all(run.data.tags["mlflow.parentRunId"] == parent_id for run in trials)
    assert {run.data.tags["nasflow.tuner_id"] for run in trials} <= {"tuner0", "tuner1"}
    assert all(run.info.status == "FINISHED" for run in trials)
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["trial_id"] in trial_ids and metrics["trials_completed"] == 3

    # The chief exited by itself once the workers were done; no process is left behind.
    assert "Traceback" not in (tmp_path / "state" / "logs" / "chief.log").read_text()
    assert search_processes(tmp_path) == []


def test_a_worker_pod_pending_until_the_search_ended_does_not_fail_it(tmp_path, digits_dir, mlflow_uri, in_a_pod, monkeypatch):
    # Pod 1 stays Pending (no node, no quota) while pod 0 runs every trial; Keras Tuner's chief
    # ends the search without waiting for a worker it never heard from. The search is done: the
    # chief deletes the Job instead of waiting for a pod that can only fail against a gone oracle
    # (before: the pod failed, was replaced until the backoff limit, and the Job failed the step).
    # The chief passes it on to its workers: long enough that a late pod cannot fail within the
    # 30 s the chief gives the Job to complete after the search ended, short enough that the old
    # code failed the step in ~4 minutes instead of hanging.
    monkeypatch.setenv("NASFLOW_ORACLE_TIMEOUT_S", "60")

    def oracle_gone() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", oracle_port), timeout=1):
            return False
        return True

    kubelet = FakeKubelet(tmp_path / "pods", start_when=lambda index: index != 1 or oracle_gone())
    kube = FakeKubeApi(kubelet)
    try:
        in_a_pod(kube)
        oracle_port = int(os.environ["KERASTUNER_ORACLE_PORT"])
        parent_id, metrics = _search(tmp_path, digits_dir, mlflow_uri, max_trials=2)
    finally:
        kube.close()

    assert metrics["trials_completed"] == 2
    client = tracking.make_client(mlflow_uri)
    experiment = client.get_run(parent_id).info.experiment_id
    trials = client.search_runs([experiment], "tags.`nasflow.role` = 'trial'", max_results=50)
    assert sorted(run.info.status for run in trials) == ["FINISHED", "FINISHED"]
    assert {run.data.tags["nasflow.tuner_id"] for run in trials} == {"tuner0"}
    assert ("batch", "jobs", "delete") in kube.calls and kube.jobs == {}
    assert kubelet.pods[0].index == 0 and kubelet.pods[0].env["NASFLOW_ORACLE_TIMEOUT_S"] == "60"
    assert search_processes(tmp_path) == []


def test_a_worker_pod_killed_again_and_again_fails_the_step_with_its_reason(
    tmp_path, digits_dir, mlflow_uri, in_a_pod
):
    kubelet = FakeKubelet(tmp_path / "pods", oom_kill_indices={1})
    kube = FakeKubeApi(kubelet)
    try:
        in_a_pod(kube)
        with pytest.raises(SystemExit):
            _search(tmp_path, digits_dir, mlflow_uri)
    finally:
        kube.close()

    # The step's one-line error, as the KFP component reports it.
    (message,) = (tmp_path / "error.txt").read_text().splitlines()
    assert message.startswith("search: worker job nasflow/") and "failed: pod" in message and "-workers-1-" in message
    assert "OOMKilled (exit code 137)" in message and "BackoffLimitExceeded" in message
    # backoffLimit = num_workers: the third failed pod fails the Job, and nothing runs on.
    assert sum(1 for pod in kubelet.pods if pod.index == 1) == 3
    assert search_processes(tmp_path) == []


def test_a_dead_chief_stops_the_workers(tmp_path, digits_dir, mlflow_uri, in_a_pod):
    kube = FakeKubeApi(FakeKubelet(tmp_path / "pods"))

    def kill_the_chief_once_workers_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            chiefs = [pid for pid in search_processes(tmp_path / "state") if b"--role\0chief" in cmdline(pid)]
            if chiefs and kube.kubelet.running():
                os.kill(chiefs[0], signal.SIGKILL)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_chief_once_workers_run, daemon=True)
    try:
        in_a_pod(kube)
        killer.start()
        with pytest.raises(SystemExit):
            _search(tmp_path, digits_dir, mlflow_uri, max_trials=50)
    finally:
        killer.join(timeout=5)
        kube.close()

    (message,) = (tmp_path / "error.txt").read_text().splitlines()
    assert "stopped worker job" in message and "the chief oracle exited with code -9" in message
    assert ("batch", "jobs", "delete") in kube.calls, "the workers were stopped with their Job"
    assert kube.jobs == {}
    assert search_processes(tmp_path) == []
