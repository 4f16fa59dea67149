"""Distributed Keras Tuner workers on Kubernetes.

The pipeline's search step is the Keras Tuner *chief*: it serves the oracle on its pod IP and
launches ``num_workers`` workers as one indexed ``batch/v1`` Job. Each worker learns its role
only from environment variables (``KERASTUNER_TUNER_ID=tuner<index>``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``), exactly as Keras Tuner's distributed
mode expects. The Job is owned by the chief's pod, so Kubernetes garbage-collects it together
with the pod whatever way the step ends.

The Kubernetes API calls here are exactly the rules in :data:`REQUIRED_RBAC`, which is also the
Role ``nasflow-search`` in ``k8s/base/rbac.yaml`` (a test keeps the two equal).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from nasflow.errors import ClusterError, meaningful_lines

logger = logging.getLogger(__name__)

#: Port the chief serves the Keras Tuner oracle on; the NetworkPolicies in k8s/base open it.
ORACLE_PORT = 8000
#: Port the chief serves the worker spec and dataset on (:mod:`nasflow.cluster.bootstrap`).
BOOTSTRAP_PORT = 8001
#: Labels of the chief pod (set on the search step with ``kfp.kubernetes.add_pod_label``).
CHIEF_POD_LABELS: dict[str, str] = {"nasflow.io/role": "search-chief"}
#: Labels of every worker pod; the NetworkPolicies select workers by these.
WORKER_POD_LABELS: dict[str, str] = {"nasflow.io/role": "search-worker"}
#: Label of a worker Job naming the search it serves (the parent MLflow run's id), so that a
#: retried search step finds the Jobs of its earlier attempts (:func:`retire_stale_workers`).
SEARCH_RUN_LABEL = "nasflow.io/search-run"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
#: Annotations of every worker pod. Kubeflow profile namespaces inject an Istio sidecar into
#: every pod; a Job's pod with a sidecar never completes (the proxy keeps running after the
#: worker exits), so workers opt out, as KFP's own pipeline pods do.
WORKER_POD_ANNOTATIONS: dict[str, str] = {"sidecar.istio.io/inject": "false"}
#: Extended resource a GPU worker requests (NVIDIA device plugin / GPU Operator).
GPU_RESOURCE = "nvidia.com/gpu"
#: Node label the NVIDIA GPU Operator puts on GPU nodes.
GPU_NODE_SELECTOR: dict[str, str] = {"nvidia.com/gpu.present": "true"}
#: Taint commonly put on GPU nodes so that only pods asking for GPUs land there.
GPU_TOLERATIONS: tuple[dict[str, str], ...] = (
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
)
#: Annotation Kubernetes sets on every pod of an indexed Job.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
#: Non-root user of the nasflow image (docker/Dockerfile).
IMAGE_UID = 10001

_RESERVED_ENV = (
    "KERASTUNER_TUNER_ID",
    "KERASTUNER_ORACLE_IP",
    "KERASTUNER_ORACLE_PORT",
    "JOB_COMPLETION_INDEX",
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Pods of an indexed Job are named <job>-<index>-<suffix>; leave room for both within 63 chars.
_MAX_JOB_NAME = 52


class RbacRule(NamedTuple):
    """One rule of a Kubernetes Role: verbs allowed on a resource of an API group."""

    api_group: str
    resource: str
    verbs: tuple[str, ...]


#: Every Kubernetes API call :func:`launch_workers` and :func:`wait_for_workers` make.
REQUIRED_RBAC: tuple[RbacRule, ...] = (
    # create: launch; get: adopt an existing Job after a chief restart; list + watch: follow it;
    # delete: stop the workers when the wait times out.
    RbacRule("batch", "jobs", ("create", "delete", "get", "list", "watch")),
    # list: find the failed worker pod to report why it failed.
    RbacRule("", "pods", ("list",)),
    # get: the last lines of the failed worker's log.
    RbacRule("", "pods/log", ("get",)),
)


def worker_job_name(owner_pod_name: str) -> str:
    """The worker Job's name for a chief pod: ``<pod name>-workers``, cut to fit pod names.

    Args:
        owner_pod_name: Name of the chief's pod.

    Returns:
        A DNS-1123 label of at most 52 characters.
    """
    base = owner_pod_name.lower()[: _MAX_JOB_NAME - len("-workers")].rstrip("-.")
    return re.sub(r"[^a-z0-9-]", "-", base) + "-workers"


def worker_job_manifest(
    *,
    chief_ip: str,
    oracle_port: int,
    num_workers: int,
    image: str,
    owner_pod_name: str,
    owner_pod_uid: str,
    namespace: str,
    command: list[str],
    env: dict[str, str],
    cpu: str,
    memory: str,
    secret_env: Mapping[str, tuple[str, str]] | None = None,
    service_account: str = "nasflow-search",
    gpus: int = 0,
    backoff_limit: int | None = None,
    active_deadline_s: int | None = None,
    ttl_after_finished_s: int = 3600,
    search_run_id: str = "",
) -> dict[str, Any]:
    """Build the indexed Job that runs ``num_workers`` Keras Tuner workers.

    Worker ``i`` gets ``KERASTUNER_TUNER_ID=tuner<i>`` from its completion index (through the
    pod annotation Kubernetes sets and dependent environment-variable expansion, so no shell
    wrapper is needed), and the chief's address in ``KERASTUNER_ORACLE_IP/PORT``.

    Args:
        chief_ip: Pod IP of the chief serving the oracle.
        oracle_port: Port of the oracle (normally :data:`ORACLE_PORT`).
        num_workers: Number of workers; the Job's ``completions`` and ``parallelism``.
        image: Container image of the workers (the pipeline's own image).
        owner_pod_name: Name of the chief pod; the Job is garbage-collected with it.
        owner_pod_uid: UID of the chief pod.
        namespace: Namespace of the chief pod (owner references cannot cross namespaces).
        command: Worker command, e.g. ``["nasflow", "search-worker", ...]``.
        env: Extra environment (e.g. ``MLFLOW_TRACKING_URI``); must not set the Keras Tuner
            variables, which this function owns.
        cpu: CPU request and limit of each worker, e.g. ``"2"``.
        memory: Memory request and limit of each worker, e.g. ``"4Gi"``.
        secret_env: Environment read from Secrets, ``{ENV: (secret name, key)}`` (e.g. the
            MLflow credentials); optional, so a cluster without the Secret still works.
        service_account: Service account of the worker pods. Workers never call the Kubernetes
            API, so its token is not mounted.
        gpus: GPUs per worker; above 0 the pods also get :data:`GPU_NODE_SELECTOR` and
            :data:`GPU_TOLERATIONS`.
        backoff_limit: Pod retries of the whole Job; defaults to ``num_workers``.
        active_deadline_s: Optional wall-clock limit of the Job in seconds.
        ttl_after_finished_s: Seconds a finished Job is kept before Kubernetes deletes it.
        search_run_id: The search's parent MLflow run, as the Job's :data:`SEARCH_RUN_LABEL`.

    Returns:
        The Job as a plain dict, ready for ``BatchV1Api.create_namespaced_job``.

    Raises:
        ClusterError: If an argument cannot make a valid Job.
    """
    secret_env = dict(secret_env or {})
    _check_job_arguments(num_workers, oracle_port, chief_ip, command, namespace, gpus, env, secret_env)
    labels = {
        "app.kubernetes.io/name": "nasflow-search-worker",
        "app.kubernetes.io/part-of": "nasflow",
        **WORKER_POD_LABELS,
    }
    container = _worker_container(
        image, command, _worker_env(chief_ip, oracle_port, env, secret_env), cpu=cpu, memory=memory, gpus=gpus
    )
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": num_workers,
        "parallelism": num_workers,
        "backoffLimit": num_workers if backoff_limit is None else backoff_limit,
        "ttlSecondsAfterFinished": ttl_after_finished_s,
        "template": {
            "metadata": {"labels": dict(labels), "annotations": dict(WORKER_POD_ANNOTATIONS)},
            "spec": _worker_pod_spec(container, service_account, gpus),
        },
    }
    if active_deadline_s is not None:
        job_spec["activeDeadlineSeconds"] = active_deadline_s
    job_labels = dict(labels)
    if search_run_id:
        if not _LABEL_VALUE.match(search_run_id):
            raise ClusterError(f"search run id {search_run_id!r} is not a valid Kubernetes label value")
        job_labels[SEARCH_RUN_LABEL] = search_run_id
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": worker_job_name(owner_pod_name),
            "namespace": namespace,
            "labels": job_labels,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": owner_pod_name,
                    "uid": owner_pod_uid,
                    # blockOwnerDeletion would need update rights on pods/finalizers.
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": job_spec,
    }


def _check_job_arguments(
    num_workers: int,
    oracle_port: int,
    chief_ip: str,
    command: list[str],
    namespace: str,
    gpus: int,
    env: Mapping[str, str],
    secret_env: Mapping[str, tuple[str, str]],
) -> None:
    """Raise ``ClusterError`` for an argument that cannot make a valid Job."""
    if num_workers < 1:
        raise ClusterError(f"num_workers must be at least 1, got {num_workers}")
    if not 0 < oracle_port < 65536:
        raise ClusterError(f"oracle_port must be a TCP port, got {oracle_port}")
    if not chief_ip:
        raise ClusterError("chief_ip is empty: the workers need the chief pod's IP")
    if not command:
        raise ClusterError("command is empty: the workers need a command to run")
    if not _DNS_LABEL.match(namespace):
        raise ClusterError(f"namespace {namespace!r} is not a valid Kubernetes namespace")
    if gpus < 0:
        raise ClusterError(f"gpus must be 0 or more, got {gpus}")
    reserved = sorted((set(env) | set(secret_env)) & set(_RESERVED_ENV))
    if reserved:
        raise ClusterError(f"env must not set {', '.join(reserved)}: worker_job_manifest sets them")


def _worker_env(
    chief_ip: str, oracle_port: int, env: Mapping[str, str], secret_env: Mapping[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """The worker container's environment: its tuner id from the completion index, the chief's address."""
    return [
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
            },
        },
        # $(VAR) refers to a variable defined earlier in this list; Kubernetes expands it.
        {"name": "KERASTUNER_TUNER_ID", "value": "tuner$(JOB_COMPLETION_INDEX)"},
        {"name": "KERASTUNER_ORACLE_IP", "value": chief_ip},
        {"name": "KERASTUNER_ORACLE_PORT", "value": str(oracle_port)},
        *({"name": key, "value": value} for key, value in sorted(env.items())),
        *(
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": secret_key, "optional": True}},
            }
            for key, (secret, secret_key) in sorted(secret_env.items())
        ),
    ]


def _worker_container(
    image: str, command: list[str], env: list[dict[str, Any]], *, cpu: str, memory: str, gpus: int
) -> dict[str, Any]:
    """The worker container: non-root, read-only root filesystem, no capabilities."""
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    if gpus:
        resources["limits"][GPU_RESOURCE] = str(gpus)
    return {
        "name": "worker",
        "image": image,
        "imagePullPolicy": "Always",
        "command": list(command),
        "env": env,
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "capabilities": {"drop": ["ALL"]},
        },
        # The image keeps HOME and caches under /tmp; search output goes there too.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _worker_pod_spec(container: dict[str, Any], service_account: str, gpus: int) -> dict[str, Any]:
    """The worker pod: never restarted in place (the Job retries), no API token, GPU placement."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if gpus:
        pod_spec["nodeSelector"] = dict(GPU_NODE_SELECTOR)
        pod_spec["tolerations"] = [dict(toleration) for toleration in GPU_TOLERATIONS]
    return pod_spec


def _api_client(api_client: Any | None) -> Any:
    """The given Kubernetes API client, or one from in-cluster config (kubeconfig as fallback)."""
    if api_client is not None:
        return api_client
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            # KUBECONFIG is read now: the client's own default was fixed when it was imported.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except (config.ConfigException, OSError) as error:
            raise ClusterError(
                f"no Kubernetes configuration: not in a pod and no kubeconfig ({error})"
            ) from error
    return client.ApiClient()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def launch_workers(manifest: dict[str, Any], *, api_client: Any | None = None) -> None:
    """Create the worker Job; adopt it instead if the same chief pod already created it.

    Args:
        manifest: A Job from :func:`worker_job_manifest`.
        api_client: A ``kubernetes.client.ApiClient``; defaults to in-cluster configuration.

    Raises:
        ClusterError: If the Job cannot be created, or a Job of that name belongs to another pod.
    """
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    batch = client.BatchV1Api(_api_client(api_client))
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"]["namespace"]
    try:
        batch.create_namespaced_job(namespace=namespace, body=manifest)
        logger.info("launched worker job %s/%s", namespace, name)
        return
    except ApiException as error:
        if error.status != 409:
            raise ClusterError(
                f"cannot create worker job {namespace}/{name}: HTTP {error.status} {_one_line(error.reason)}"
            ) from error
    # 409: the chief restarted in the same pod and launched before; anything else is a clash.
    try:
        existing = batch.read_namespaced_job(name=name, namespace=namespace)
    except ApiException as error:
        raise ClusterError(f"cannot read worker job {namespace}/{name}: HTTP {error.status}") from error
    wanted = {ref["uid"] for ref in manifest["metadata"].get("ownerReferences", [])}
    owners = {ref.uid for ref in (existing.metadata.owner_references or [])}
    if not wanted & owners:
        raise ClusterError(f"worker job {namespace}/{name} already exists and belongs to another pod")
    logger.info("adopted existing worker job %s/%s", namespace, name)


def retire_stale_workers(
    search_run_id: str,
    namespace: str,
    own_pod_uid: str,
    *,
    api_client: Any | None = None,
    timeout_s: float = 300,
    poll_s: float = 2,
) -> list[str]:
    """Delete the worker Jobs an earlier attempt of this search left, and wait until they are gone.

    A retried search step runs in a new pod. The first attempt's Job is owned by the old
    pod, which Kubernetes keeps (Failed) until the workflow is cleaned up, so its workers go
    on: they finish the trial they hold and end its MLflow run, after the retry has closed
    that run as interrupted and handed the trial out again. Deleting the Job in the
    foreground and waiting until it is gone means every such pod has terminated before the
    retry's chief reconciles the trial runs: no write of the first attempt can land after.

    Args:
        search_run_id: The search's parent MLflow run (the Jobs' :data:`SEARCH_RUN_LABEL`).
        namespace: Namespace of the Jobs.
        own_pod_uid: UID of this chief pod; its own Job (a restart in the same pod) is kept.
        api_client: A ``kubernetes.client.ApiClient``; defaults to in-cluster configuration.
        timeout_s: Longest wait for the deleted Jobs to disappear.
        poll_s: Seconds between checks.

    Returns:
        Names of the Jobs deleted.

    Raises:
        ClusterError: The Jobs cannot be listed or deleted, or are not gone within ``timeout_s``.
    """
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    batch = client.BatchV1Api(_api_client(api_client))
    try:
        listed = batch.list_namespaced_job(
            namespace=namespace, label_selector=f"{SEARCH_RUN_LABEL}={search_run_id}"
        )
        stale = [
            job.metadata.name
            for job in listed.items
            if own_pod_uid not in {ref.uid for ref in (job.metadata.owner_references or [])}
        ]
        for name in stale:
            logger.info("deleting worker job %s/%s of an earlier attempt of this search", namespace, name)
            batch.delete_namespaced_job(name=name, namespace=namespace, propagation_policy="Foreground")
    except ApiException as error:
        raise ClusterError(
            f"cannot retire the worker jobs of an earlier attempt: HTTP {error.status} {_one_line(error.reason)}"
        ) from error
    deadline = time.monotonic() + timeout_s
    for name in stale:
        while True:
            try:
                batch.read_namespaced_job(name=name, namespace=namespace)
            except ApiException as error:
                if error.status == 404:
                    break
                raise ClusterError(
                    f"cannot read worker job {namespace}/{name}: HTTP {error.status}"
                ) from error
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"worker job {namespace}/{name} of an earlier attempt was not gone {timeout_s:g} s after its deletion"
                )
            time.sleep(poll_s)
    return stale


def _job_outcome(job: Any) -> str | None:
    """``"complete"``, ``"failed"`` or None (still running) from a Job's conditions."""
    for condition in (job.status and job.status.conditions) or []:
        if condition.status == "True" and condition.type in ("Complete", "SuccessCriteriaMet"):
            return "complete"
        if condition.status == "True" and condition.type in ("Failed", "FailureTarget"):
            return "failed"
    return None


def _finished_at(pod: Any) -> Any:
    """When the pod's container terminated (``datetime.max`` if unknown)."""
    import datetime

    for status in pod.status.container_statuses or []:
        terminated = status.state and status.state.terminated
        if terminated and terminated.finished_at:
            return terminated.finished_at
    return datetime.datetime.max.replace(tzinfo=datetime.UTC)


def _failure_reason(core: Any, job: Any) -> str:
    """Why a worker Job failed: the failed pod's termination reason and last log line."""
    from kubernetes.client.rest import ApiException

    name = job.metadata.name
    namespace = job.metadata.namespace
    job_reason = ""
    for condition in (job.status and job.status.conditions) or []:
        if condition.type == "Failed" and condition.status == "True":
            job_reason = _one_line(f"{condition.reason or ''} {condition.message or ''}")
    pods = core.list_namespaced_pod(namespace=namespace, label_selector=f"job-name={name}").items
    failed = [pod for pod in pods if pod.status and pod.status.phase == "Failed"]
    if not failed:
        return job_reason or "no failed pod found"
    # The first pod to fail is the cause; pods failing after it were stopped with the Job.
    pod = min(failed, key=_finished_at)
    reason = pod.status.reason or ""
    for status in pod.status.container_statuses or []:
        terminated = status.state and status.state.terminated
        if terminated:
            reason = f"{terminated.reason or 'Error'} (exit code {terminated.exit_code})"
            if terminated.message:
                reason += f": {_one_line(terminated.message)}"
            break
    detail = f"pod {pod.metadata.name} {reason or 'failed'}"
    try:
        log = core.read_namespaced_pod_log(name=pod.metadata.name, namespace=namespace, tail_lines=20)
    except ApiException as error:
        logger.warning("cannot read log of %s/%s: HTTP %s", namespace, pod.metadata.name, error.status)
        log = ""
    lines = meaningful_lines(log or "")
    if lines:
        detail += f"; last log line: {_one_line(lines[-1])}"
    if job_reason:
        detail += f" [{job_reason}]"
    return detail


def wait_for_workers(
    name: str,
    namespace: str,
    timeout_s: float,
    *,
    api_client: Any | None = None,
    watch_chunk_s: int = 60,
    abort: Callable[[], str | None] | None = None,
    finished: Callable[[], bool] | None = None,
    finish_grace_s: float = 30,
) -> None:
    """Block until the worker Job completes; on failure or timeout raise with the reason.

    Lists the Job, then watches it from that resource version. On timeout, or when ``abort``
    gives a reason, the Job is deleted (its pods with it) so no worker keeps running after
    the chief gave up.

    Args:
        name: Name of the Job (:func:`worker_job_name`).
        namespace: Its namespace.
        timeout_s: Seconds to wait in total.
        api_client: A ``kubernetes.client.ApiClient``; defaults to in-cluster configuration.
        watch_chunk_s: Longest single watch request; the watch is renewed until the deadline.
        abort: Asked between watch requests; a non-empty answer (e.g. "the chief oracle
            died") deletes the Job and raises with that reason.
        finished: Asked between watch requests; True means the chief's oracle ended the
            search. The Job then gets ``finish_grace_s`` to complete (its workers were told
            STOPPED and are exiting); after that it is deleted and the wait returns: a pod
            still pending or starting holds no trial and could only fail against the gone
            oracle. A failure once the search has ended is logged, not raised.
        finish_grace_s: See ``finished``.

    Raises:
        ClusterError: If the Job does not exist, fails (naming the failed pod and its reason),
            does not finish within ``timeout_s``, or ``abort`` gives a reason.
    """
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = _api_client(api_client)
    batch = client.BatchV1Api(api)
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout_s
    ended_at: float | None = None  # when ``finished`` first said the search had ended
    try:
        job, resource_version = _list_job(batch, namespace, name)
        while (outcome := _job_outcome(job)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            reason = abort() if abort is not None else None
            if reason:
                batch.delete_namespaced_job(name=name, namespace=namespace, propagation_policy="Background")
                raise ClusterError(f"stopped worker job {namespace}/{name}: {reason}")
            if ended_at is None and finished is not None and finished():
                ended_at = time.monotonic()
            if ended_at is not None:
                grace_left = ended_at + finish_grace_s - time.monotonic()
                if grace_left <= 0:
                    batch.delete_namespaced_job(name=name, namespace=namespace, propagation_policy="Background")
                    logger.info("the search ended; deleted worker job %s/%s and its idle pods", namespace, name)
                    return
                remaining = min(remaining, grace_left)
            job, resource_version = _watch_job(
                batch, namespace, name, job, resource_version, max(1, int(min(remaining, watch_chunk_s)))
            )
        if outcome == "complete":
            logger.info("worker job %s/%s completed", namespace, name)
            return
        if outcome == "failed" and ended_at is not None:
            # Only a pod that never had a trial can fail once the search has ended.
            logger.warning("worker job %s/%s failed after the search ended: %s", namespace, name,
                           _failure_reason(core, job))  # fmt: skip
            return
        if outcome == "failed":
            raise ClusterError(f"worker job {namespace}/{name} failed: {_failure_reason(core, job)}")
        batch.delete_namespaced_job(name=name, namespace=namespace, propagation_policy="Background")
    except ApiException as error:
        raise ClusterError(
            f"Kubernetes API error on worker job {namespace}/{name}: HTTP {error.status} {_one_line(error.reason)}"
        ) from error
    raise ClusterError(f"worker job {namespace}/{name} did not finish within {timeout_s:g} s; deleted it")


def _list_job(batch: Any, namespace: str, name: str) -> tuple[Any, str]:
    """The Job and the list's resource version, to watch from."""
    listed = batch.list_namespaced_job(namespace=namespace, field_selector=f"metadata.name={name}")
    if not listed.items:
        raise ClusterError(f"worker job {namespace}/{name} not found")
    return listed.items[0], listed.metadata.resource_version


def _watch_job(
    batch: Any, namespace: str, name: str, job: Any, resource_version: str, timeout_s: int
) -> tuple[Any, str]:
    """Watch the Job for up to ``timeout_s`` or until it has an outcome; its latest state and version."""
    from kubernetes import watch

    stream = watch.Watch().stream(
        batch.list_namespaced_job,
        namespace=namespace,
        field_selector=f"metadata.name={name}",
        resource_version=resource_version,
        timeout_seconds=timeout_s,
    )
    for event in stream:
        if event["type"] == "DELETED":
            raise ClusterError(f"worker job {namespace}/{name} was deleted while the chief waited")
        if event["type"] == "ERROR":
            # Resource version too old (410): fall back to a fresh list.
            return _list_job(batch, namespace, name)
        job = event["object"]
        resource_version = job.metadata.resource_version
        if _job_outcome(job) is not None:
            break
    return job, resource_version
