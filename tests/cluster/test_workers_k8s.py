"""nasflow.cluster.job: the worker Job manifest, and launch/wait against a local fake Kubernetes API.

The fake (tests/fake_kube_api.py, scripted mode) is a real HTTP server on 127.0.0.1 answering the
few batch/v1 and core/v1 endpoints the real ``kubernetes`` client calls; it records every call as
an RBAC (group, resource, verb) triple, so the Role in k8s/base is compared both with
``REQUIRED_RBAC`` and with what the code really did. tests/cluster/test_cluster_search.py runs the same
fake with a kubelet that really starts the worker pods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fake_kube_api import FakeKubeApi

from nasflow.cluster import job
from nasflow.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32.0"
CHIEF_UID = "3f1c9a52-5b1e-4c1e-9a51-0c2a0d7e9b11"


def _manifest(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        chief_ip="10.1.2.3",
        oracle_port=job.ORACLE_PORT,
        num_workers=4,
        image="docker.io/nasflow/nasflow:0.1.0",
        owner_pod_name="nas-pipeline-abc12-system-container-impl-2950135530",
        owner_pod_uid=CHIEF_UID,
        namespace="nasflow",
        command=["nasflow", "search-worker", "--output-dir", "/tmp/search"],
        env={"MLFLOW_TRACKING_URI": "http://mlflow.nasflow.svc.cluster.local:5000"},
        cpu="2",
        memory="4Gi",
    )
    kwargs.update(overrides)
    return job.worker_job_manifest(**kwargs)


# --- the manifest ---------------------------------------------------------------------------
@pytest.mark.parametrize("gpus", [0, 2])
def test_manifest_is_schema_valid(gpus):
    kubernetes_validate.validate(_manifest(gpus=gpus), K8S_VERSION, strict=True)


def test_manifest_is_an_indexed_job_owned_by_the_chief():
    job = _manifest()
    spec = job["spec"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimit"] == 4
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "nas-pipeline-abc12-system-container-impl-2950135530",
        "uid": CHIEF_UID,
        "blockOwnerDeletion": False,
    }
    assert job["metadata"]["namespace"] == "nasflow"
    assert len(job["metadata"]["name"]) <= 52 and job["metadata"]["name"].endswith("-workers")
    # Kubeflow profile namespaces inject Istio sidecars; a Job pod with one never completes.
    assert spec["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}


def test_manifest_sets_the_keras_tuner_environment():
    pod = _manifest()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    index_ref = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index_ref == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["KERASTUNER_TUNER_ID"]["value"] == "tuner$(JOB_COMPLETION_INDEX)"
    names = [e["name"] for e in container["env"]]
    assert names.index("JOB_COMPLETION_INDEX") < names.index("KERASTUNER_TUNER_ID")  # $(VAR) needs order
    assert env["KERASTUNER_ORACLE_IP"]["value"] == "10.1.2.3"
    assert env["KERASTUNER_ORACLE_PORT"]["value"] == str(job.ORACLE_PORT)
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http://mlflow.")
    assert container["command"] == ["nasflow", "search-worker", "--output-dir", "/tmp/search"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    assert pod["serviceAccountName"] == "nasflow-search"
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_gpu_workers_land_on_gpu_nodes():
    pod = _manifest(gpus=1)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"num_workers": 0}, "num_workers"),
        ({"oracle_port": 70000}, "oracle_port"),
        ({"chief_ip": ""}, "chief_ip"),
        ({"command": []}, "command"),
        ({"namespace": "Not_Valid"}, "namespace"),
        ({"env": {"KERASTUNER_TUNER_ID": "chief"}}, "KERASTUNER_TUNER_ID"),
        ({"gpus": -1}, "gpus"),
    ],
)
def test_manifest_rejects_bad_arguments(overrides, message):
    with pytest.raises(ClusterError, match=message):
        _manifest(**overrides)


def test_long_pod_names_give_valid_job_names():
    name = job.worker_job_name("A" * 80 + "-x")
    assert len(name) <= 52 and name == name.lower() and not name.startswith("-")


# --- RBAC -------------------------------------------------------------------------------------
def _role_rules() -> set[tuple[str, str, str]]:
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "base" / "rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "nasflow-search"]
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _required() -> set[tuple[str, str, str]]:
    return {(r.api_group, r.resource, verb) for r in job.REQUIRED_RBAC for verb in r.verbs}


def test_role_grants_exactly_the_required_rules():
    assert _role_rules() == _required()


def test_role_is_bound_to_the_search_service_account():
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "base" / "rbac.yaml").read_text()))
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "nasflow-search"}
    assert {"kind": "ServiceAccount", "name": "nasflow-search", "namespace": "nasflow"} in binding["subjects"]


# --- launch / wait against a fake API server ----------------------------------------------------
@pytest.fixture
def kube():
    api = FakeKubeApi()
    yield api
    api.close()


def _with_condition(job: dict[str, Any], kind: str, reason: str = "") -> dict[str, Any]:
    done = json.loads(json.dumps(job))
    done["metadata"]["resourceVersion"] = "6"
    done["status"] = {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": ""}]}
    return done


def test_launch_then_wait_until_complete(kube):
    manifest = _manifest()
    name = manifest["metadata"]["name"]
    job.launch_workers(manifest, api_client=kube.api_client())
    assert kube.jobs[name]["spec"]["completionMode"] == "Indexed"
    kube.watch_events = [{"type": "MODIFIED", "object": _with_condition(kube.jobs[name], "Complete")}]

    job.wait_for_workers(name, "nasflow", timeout_s=20, api_client=kube.api_client())

    assert kube.calls == [("batch", "jobs", "create"), ("batch", "jobs", "list"), ("batch", "jobs", "watch")]


def test_relaunch_by_the_same_chief_adopts_the_job(kube):
    job.launch_workers(_manifest(), api_client=kube.api_client())
    job.launch_workers(_manifest(), api_client=kube.api_client())
    with pytest.raises(ClusterError, match="belongs to another pod"):
        job.launch_workers(_manifest(owner_pod_uid="someone-else"), api_client=kube.api_client())


def test_failed_worker_is_reported_with_pod_reason_and_log(kube):
    manifest = _manifest()
    name = manifest["metadata"]["name"]
    job.launch_workers(manifest, api_client=kube.api_client())
    kube.pods.append({
        "job": name,
        "pod": {
            "metadata": {"name": f"{name}-2-x7k9q", "namespace": "nasflow"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [{
                    "name": "worker", "ready": False, "restartCount": 0, "image": "i", "imageID": "",
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }],
            },
        },
    })
    kube.logs[f"{name}-2-x7k9q"] = "Epoch 1/3\nloading digits\n\n"
    kube.watch_events = [{"type": "MODIFIED", "object": _with_condition(kube.jobs[name], "Failed", "BackoffLimitExceeded")}]

    with pytest.raises(ClusterError) as info:
        job.wait_for_workers(name, "nasflow", timeout_s=20, api_client=kube.api_client())

    message = str(info.value)
    assert f"pod {name}-2-x7k9q OOMKilled (exit code 137)" in message
    assert "last log line: loading digits" in message
    assert "BackoffLimitExceeded" in message
    assert "\n" not in message


def test_timeout_deletes_the_workers(kube):
    manifest = _manifest()
    name = manifest["metadata"]["name"]
    job.launch_workers(manifest, api_client=kube.api_client())

    with pytest.raises(ClusterError, match="did not finish within 1 s"):
        job.wait_for_workers(name, "nasflow", timeout_s=1, api_client=kube.api_client(), watch_chunk_s=1)

    assert name not in kube.jobs
    assert ("batch", "jobs", "delete") in kube.calls


def test_a_search_that_ended_deletes_a_job_still_running_after_the_grace(kube):
    # The chief ended the search; a pod that never got a trial keeps the Job from completing.
    manifest = _manifest()
    name = manifest["metadata"]["name"]
    job.launch_workers(manifest, api_client=kube.api_client())

    job.wait_for_workers(
        name, "nasflow", timeout_s=20, api_client=kube.api_client(), watch_chunk_s=1,
        finished=lambda: True, finish_grace_s=1,
    )  # fmt: skip

    assert name not in kube.jobs and ("batch", "jobs", "delete") in kube.calls


def test_a_job_that_fails_after_the_search_ended_does_not_fail_the_search(kube):
    manifest = _manifest()
    name = manifest["metadata"]["name"]
    job.launch_workers(manifest, api_client=kube.api_client())
    kube.pods.append({"job": name, "pod": {"metadata": {"name": f"{name}-1-late1"}, "status": {"phase": "Failed"}}})
    kube.watch_events = [{"type": "MODIFIED", "object": _with_condition(kube.jobs[name], "Failed", "BackoffLimitExceeded")}]

    job.wait_for_workers(name, "nasflow", timeout_s=20, api_client=kube.api_client(), finished=lambda: True)

    with pytest.raises(ClusterError, match="failed"):  # the same Job while the search runs
        kube.watch_events = [{"type": "MODIFIED", "object": _with_condition(kube.jobs[name], "Failed")}]
        job.wait_for_workers(name, "nasflow", timeout_s=20, api_client=kube.api_client(), finished=lambda: False)


def test_missing_job_is_a_cluster_error(kube):
    with pytest.raises(ClusterError, match="not found"):
        job.wait_for_workers("ghost-workers", "nasflow", timeout_s=5, api_client=kube.api_client())


def test_the_code_uses_exactly_the_role(kube):
    """Every (group, resource, verb) the launcher really sent, over all paths, is the Role."""
    manifest = _manifest()
    name = manifest["metadata"]["name"]
    api = kube.api_client()
    job.launch_workers(manifest, api_client=api)
    job.launch_workers(manifest, api_client=api)  # adopt: create (409) + get
    kube.pods.append({"job": name, "pod": {"metadata": {"name": "p"}, "status": {"phase": "Failed"}}})
    kube.watch_events = [{"type": "MODIFIED", "object": _with_condition(kube.jobs[name], "Failed")}]
    with pytest.raises(ClusterError):
        job.wait_for_workers(name, "nasflow", timeout_s=20, api_client=api)
    with pytest.raises(ClusterError):
        job.wait_for_workers(name, "nasflow", timeout_s=1, api_client=api, watch_chunk_s=1)

    assert set(kube.calls) == _required() == _role_rules()
