"""The chief of a search on Kubernetes: its oracle in this pod, workers as an indexed Job."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from nasflow.cluster.processes import chief_exit, launch, stop, wait_for_chief_end, wait_for_oracle
from nasflow.cluster.spec import ORACLE_TIMEOUT_ENV, WorkerSpec
from nasflow.errors import ClusterError

logger = logging.getLogger(__name__)


def in_kubernetes() -> bool:
    """Whether this process runs in a Kubernetes pod."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def run_search_on_cluster(
    spec: WorkerSpec,
    *,
    num_workers: int,
    trials_per_process: int = 0,
    timeout_s: float = 24 * 3600,
    api_client: Any | None = None,
    chief_ip: str | None = None,
    bind_host: str = "0.0.0.0",  # noqa: S104 - workers in other pods connect to the chief
    oracle_port: int | None = None,
    bootstrap_port: int | None = None,
    poll_s: int = 10,
    image: str | None = None,
) -> None:
    """Chief in this pod, workers as an indexed Job owned by it (garbage-collected with it).

    1. The chief oracle starts as a subprocess; until its port answers, nothing else does.
    2. The spec and dataset are served read-only to the workers
       (:mod:`nasflow.cluster.bootstrap`): worker pods share no volume with this one.
    0. Worker Jobs an earlier attempt of this search left (a KFP retry runs in a new pod) are
       deleted, and waited for, before anything else (:func:`~nasflow.cluster.job.retire_stale_workers`).
    3. The Job is created (or adopted after a restart of this pod's step) and followed; every
       ``poll_s`` seconds the chief is checked too: a dead chief stops the workers, and a
       chief that ended the search deletes the Job, whose pods left, if any, hold no trial.

    Args:
        spec: What the chief and workers run.
        num_workers: Worker pods.
        trials_per_process: Recycle a worker process after this many trials (0: never).
        timeout_s: Longest the search may take.
        api_client: Kubernetes API client; defaults to the pod's in-cluster configuration.
        chief_ip: Address the workers reach this pod on; defaults to ``NASFLOW_POD_IP``
            (downward API ``status.podIP``), then the address of this host name.
        bind_host: Address the oracle and bootstrap servers listen on.
        oracle_port: Oracle port (``KERASTUNER_ORACLE_PORT``, else :data:`~nasflow.cluster.job.ORACLE_PORT`).
        bootstrap_port: Bootstrap port (``NASFLOW_BOOTSTRAP_PORT``, else
            :data:`~nasflow.cluster.job.BOOTSTRAP_PORT`).
        poll_s: Longest single watch of the Job, i.e. how late a dead chief is noticed.
        image: The workers' image: the one the pipeline was compiled with (the search
            component passes it). Default :func:`~nasflow.config.image_reference` of this
            process's ``NASFLOW_IMAGE_REGISTRY``, which a chief pod usually does not have.

    Raises:
        ClusterError: The pod lacks its downward-API settings, or the worker Job failed.
        SearchError: The chief oracle failed.
    """
    from nasflow.cluster.bootstrap import BootstrapServer
    from nasflow.cluster.job import (
        BOOTSTRAP_PORT,
        ORACLE_PORT,
        launch_workers,
        retire_stale_workers,
        wait_for_workers,
    )

    pod_name = os.environ.get("HOSTNAME", "")
    pod_uid = os.environ.get("NASFLOW_POD_UID", "")
    namespace = os.environ.get("NASFLOW_NAMESPACE") or _current_namespace()
    if not pod_name or not pod_uid:
        raise ClusterError(
            "distributed search on a cluster needs HOSTNAME and NASFLOW_POD_UID (downward API)"
        )
    chief_ip = chief_ip or os.environ.get("NASFLOW_POD_IP") or socket.gethostbyname(socket.gethostname())
    oracle_port = oracle_port or int(os.environ.get("KERASTUNER_ORACLE_PORT") or ORACLE_PORT)
    bootstrap_port = bootstrap_port or int(os.environ.get("NASFLOW_BOOTSTRAP_PORT") or BOOTSTRAP_PORT)
    work_dir = Path(spec.work_dir)
    log_dir = work_dir / "logs"
    spec_path = spec.save(work_dir / "worker_spec.json")
    # Before the chief reconciles the trial runs: no worker of an earlier attempt may write after.
    retire_stale_workers(spec.parent_run_id, namespace, pod_uid, api_client=api_client)
    chief = launch(
        spec_path, "chief", "chief", oracle_port, 0, log_dir, oracle_ip=bind_host, one_thread=False
    )
    try:
        local_address = "127.0.0.1" if bind_host == "0.0.0.0" else bind_host  # noqa: S104
        wait_for_oracle(chief, local_address, oracle_port, log_dir / "chief.log")
        manifest = _worker_job(
            spec, chief_ip=chief_ip, oracle_port=oracle_port, bootstrap_port=bootstrap_port,
            num_workers=num_workers, trials_per_process=trials_per_process, timeout_s=timeout_s,
            image=image, owner=(pod_name, pod_uid), namespace=namespace,
        )  # fmt: skip

        def chief_failure() -> str | None:
            if chief.poll() not in (None, 0):
                return chief_exit(chief, log_dir / "chief.log")
            return None

        with BootstrapServer(spec, host=bind_host, port=bootstrap_port, pack_dir=work_dir / "bootstrap"):
            launch_workers(manifest, api_client=api_client)
            wait_for_workers(
                manifest["metadata"]["name"], namespace, timeout_s,
                api_client=api_client, watch_chunk_s=poll_s, abort=chief_failure,
                finished=lambda: chief.poll() == 0,
            )  # fmt: skip
        wait_for_chief_end(chief, log_dir / "chief.log")
    finally:
        stop(chief)


def _worker_job(
    spec: WorkerSpec,
    *,
    chief_ip: str,
    oracle_port: int,
    bootstrap_port: int,
    num_workers: int,
    trials_per_process: int,
    timeout_s: float,
    image: str | None,
    owner: tuple[str, str],
    namespace: str,
) -> dict[str, Any]:
    """The worker Job of this chief: supervised workers that bootstrap from the chief's address."""
    from nasflow.cluster.job import worker_job_manifest
    from nasflow.config import CLUSTER_CREDENTIALS_SECRET, MLFLOW_CREDENTIAL_KEYS, image_reference

    command = [
        "python", "-m", "nasflow.cluster.worker", "--spec-url", f"http://{chief_ip}:{bootstrap_port}",
        "--role", "worker", "--supervise",
    ]  # fmt: skip
    if trials_per_process:
        command += ["--trials-per-process", str(trials_per_process)]
    worker_cpu = os.environ.get("NASFLOW_WORKER_CPU", "1")
    return worker_job_manifest(
        chief_ip=chief_ip,
        oracle_port=oracle_port,
        num_workers=num_workers,
        image=image or image_reference(),
        owner_pod_name=owner[0],
        owner_pod_uid=owner[1],
        namespace=namespace,
        command=command,
        env=_worker_pod_env(spec.tracking_uri, worker_cpu),
        secret_env={key: (CLUSTER_CREDENTIALS_SECRET, key) for key in MLFLOW_CREDENTIAL_KEYS},
        cpu=worker_cpu,
        memory=os.environ.get("NASFLOW_WORKER_MEMORY", "4Gi"),
        # Never outlive the chief's patience, even if nobody is left to delete the Job.
        active_deadline_s=int(timeout_s) + 600,
        search_run_id=spec.parent_run_id,
    )


def _worker_pod_env(tracking_uri: str, cpu: str) -> dict[str, str]:
    """Plain environment of a worker pod.

    TensorFlow sizes its thread pools by the node's cores, not the pod's CPU limit; on a big
    node a 1-CPU worker would run dozens of threads and be throttled. A whole-CPU limit sets
    the pools to match; a fractional one (``500m``) leaves TensorFlow's default. A
    ``NASFLOW_ORACLE_TIMEOUT_S`` set on the chief is how long its workers wait for it.
    """
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if os.environ.get(ORACLE_TIMEOUT_ENV):
        env[ORACLE_TIMEOUT_ENV] = os.environ[ORACLE_TIMEOUT_ENV]
    if cpu.isdigit() and int(cpu) > 0:
        env.update(TF_NUM_INTRAOP_THREADS=cpu, TF_NUM_INTEROP_THREADS="1" if cpu == "1" else "2")
    return env


def _current_namespace() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else "default"
