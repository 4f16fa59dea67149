"""Run a search as Keras Tuner's chief oracle plus worker processes.

Two needs share this machinery:

* **Fan-out** (``num_workers`` > 1): N workers pull trials from one chief oracle over
  gRPC (``KERASTUNER_TUNER_ID``/``KERASTUNER_ORACLE_IP``/``KERASTUNER_ORACLE_PORT``).
  Locally they are processes on 127.0.0.1; on a cluster an indexed Kubernetes Job.
* **Flat per-trial cost** (``trials_per_process`` > 0): Keras 3 / TF 2.21 leak objects on
  every build + fit, so a long-lived trial process gets slower with every trial. A
  worker exits after N trials and is started again under the same tuner id; the chief
  keeps the oracle, so nothing is lost and resume keeps working.

The chief is a process of its own too, so a worker failing for good can stop it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasflow import tracking
from nasflow.errors import ClusterError, SearchError, meaningful_lines

logger = logging.getLogger(__name__)

#: Exit code of a worker that stopped because it reached its trial quota.
RECYCLE_EXIT_CODE = 75
#: A worker slot that fails this many times in a row fails the search.
MAX_CONSECUTIVE_WORKER_FAILURES = 3


@dataclass
class WorkerSpec:
    """Everything a chief or worker process needs, as JSON."""

    dataset_dir: str
    space_config: dict[str, Any]
    space_source: str
    settings: dict[str, Any]
    objective: dict[str, Any]
    parent_run_id: str
    tracking_uri: str
    work_dir: str
    overwrite: bool

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> WorkerSpec:
        """Read a spec written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@contextlib.contextmanager
def tracking_for_workers(tracking_uri: str, num_workers: int) -> Iterator[str]:
    """A tracking URI several processes may write to at once.

    SQLite takes one writer at a time; with more than one worker a local ``mlflow
    server`` on loopback fronts the same store for the duration of the search.
    """
    if num_workers <= 1 or tracking.is_remote(tracking_uri):
        yield tracking_uri
        return
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"nasflow-mlflow-{port}.log"
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                tracking.check_reachable(uri, timeout_s=1)
                break
            except Exception as error:  # noqa: BLE001 - keep polling until the deadline
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SearchError(
                        f"could not start a local MLflow server for the workers (log: {log_path})"
                    ) from error
                time.sleep(0.5)
        yield uri
    finally:
        _stop(server)


def _stop(process: subprocess.Popen, timeout_s: float = 15) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, 15)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=timeout_s)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(meaningful_lines(text)[-lines:])


def _chief_exit(chief: subprocess.Popen, log: Path) -> str:
    """One line on a chief that has exited: its code and the last lines of its log."""
    return f"the chief oracle exited with code {chief.returncode}: {_tail(log)}"


def _launch(
    spec_path: Path,
    role: str,
    tuner_id: str,
    port: int,
    quota: int,
    log_dir: Path,
    *,
    oracle_ip: str = "127.0.0.1",
    one_thread: bool = True,
) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=oracle_ip, KERASTUNER_ORACLE_PORT=str(port))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if one_thread:
        # One thread per worker: on a small machine, N workers x all cores oversubscribes.
        env.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    command = [sys.executable, "-m", "nasflow.search_worker", "--spec", str(spec_path), "--role", role]
    if quota:
        command += ["--trials-per-process", str(quota)]
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{tuner_id}.log").open("a") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def run_search_processes(
    spec: WorkerSpec,
    *,
    num_workers: int,
    trials_per_process: int = 0,
    timeout_s: float | None = None,
) -> dict[str, int]:
    """Run the chief and ``num_workers`` recycled worker processes on this machine.

    Returns:
        Per tuner id, how many processes it took (1 + recycles + restarts).

    Raises:
        SearchError: The chief died, or a worker slot failed repeatedly.
    """
    num_workers = max(1, num_workers)
    work_dir = Path(spec.work_dir)
    log_dir = work_dir / "logs"
    spec_path = spec.save(work_dir / "worker_spec.json")
    port = free_port()
    chief = _launch(spec_path, "chief", "chief", port, 0, log_dir)
    workers: dict[str, subprocess.Popen] = {}
    processes_per_slot = {f"tuner{k}": 0 for k in range(num_workers)}
    failures = dict.fromkeys(processes_per_slot, 0)
    done: set[str] = set()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    try:
        _wait_for_oracle(chief, "127.0.0.1", port, log_dir / "chief.log")
        for tuner_id in processes_per_slot:
            workers[tuner_id] = _launch(spec_path, "worker", tuner_id, port, trials_per_process, log_dir)
            processes_per_slot[tuner_id] += 1
        while len(done) < num_workers:
            if deadline is not None and time.monotonic() > deadline:
                raise SearchError(f"the distributed search did not finish within {timeout_s:.0f}s")
            if chief.poll() is not None and chief.returncode != 0:
                raise SearchError(_chief_exit(chief, log_dir / "chief.log"))
            for tuner_id, process in list(workers.items()):
                code = process.poll()
                if code is None or tuner_id in done:
                    continue
                if code == 0:
                    done.add(tuner_id)
                    continue
                if code == RECYCLE_EXIT_CODE:
                    failures[tuner_id] = 0
                else:
                    failures[tuner_id] += 1
                    logger.warning(
                        "worker %s exited with code %s: %s",
                        tuner_id,
                        code,
                        _tail(log_dir / f"{tuner_id}.log"),
                    )
                    if failures[tuner_id] >= MAX_CONSECUTIVE_WORKER_FAILURES:
                        raise SearchError(
                            f"worker {tuner_id} failed {failures[tuner_id]} times in a row (exit code {code}): "
                            f"{_tail(log_dir / f'{tuner_id}.log')}"
                        )
                workers[tuner_id] = _launch(spec_path, "worker", tuner_id, port, trials_per_process, log_dir)
                processes_per_slot[tuner_id] += 1
            time.sleep(0.5)
        _wait_for_chief_end(chief, log_dir / "chief.log")
    finally:
        for process in workers.values():
            _stop(process)
        _stop(chief)
    return processes_per_slot


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
) -> None:
    """Chief in this pod, workers as an indexed Job owned by it (garbage-collected with it).

    1. The chief oracle starts as a subprocess; until its port answers, nothing else does.
    2. The spec and dataset are served read-only to the workers
       (:mod:`nasflow.worker_bootstrap`): worker pods share no volume with this one.
    3. The Job is created (or adopted after a restart of this pod's step) and followed; every
       ``poll_s`` seconds the chief is checked too, and a dead chief stops the workers.

    Args:
        spec: What the chief and workers run.
        num_workers: Worker pods.
        trials_per_process: Recycle a worker process after this many trials (0: never).
        timeout_s: Longest the search may take.
        api_client: Kubernetes API client; defaults to the pod's in-cluster configuration.
        chief_ip: Address the workers reach this pod on; defaults to ``NASFLOW_POD_IP``
            (downward API ``status.podIP``), then the address of this host name.
        bind_host: Address the oracle and bootstrap servers listen on.
        oracle_port: Oracle port (``KERASTUNER_ORACLE_PORT``, else :data:`~nasflow.workers.ORACLE_PORT`).
        bootstrap_port: Bootstrap port (``NASFLOW_BOOTSTRAP_PORT``, else
            :data:`~nasflow.workers.BOOTSTRAP_PORT`).
        poll_s: Longest single watch of the Job, i.e. how late a dead chief is noticed.

    Raises:
        ClusterError: The pod lacks its downward-API settings, or the worker Job failed.
        SearchError: The chief oracle failed.
    """
    from nasflow.config import CLUSTER_CREDENTIALS_SECRET, MLFLOW_CREDENTIAL_KEYS, image_reference
    from nasflow.worker_bootstrap import BootstrapServer
    from nasflow.workers import (
        BOOTSTRAP_PORT,
        ORACLE_PORT,
        launch_workers,
        wait_for_workers,
        worker_job_manifest,
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
    worker_cpu = os.environ.get("NASFLOW_WORKER_CPU", "1")
    work_dir = Path(spec.work_dir)
    log_dir = work_dir / "logs"
    spec_path = spec.save(work_dir / "worker_spec.json")
    chief = _launch(
        spec_path, "chief", "chief", oracle_port, 0, log_dir, oracle_ip=bind_host, one_thread=False
    )
    try:
        local_address = "127.0.0.1" if bind_host == "0.0.0.0" else bind_host  # noqa: S104
        _wait_for_oracle(chief, local_address, oracle_port, log_dir / "chief.log")
        command = [
            "python", "-m", "nasflow.search_worker", "--spec-url", f"http://{chief_ip}:{bootstrap_port}",
            "--role", "worker", "--supervise",
        ]  # fmt: skip
        if trials_per_process:
            command += ["--trials-per-process", str(trials_per_process)]
        manifest = worker_job_manifest(
            chief_ip=chief_ip,
            oracle_port=oracle_port,
            num_workers=num_workers,
            image=image_reference(),
            owner_pod_name=pod_name,
            owner_pod_uid=pod_uid,
            namespace=namespace,
            command=command,
            env=_worker_pod_env(spec.tracking_uri, worker_cpu),
            secret_env={key: (CLUSTER_CREDENTIALS_SECRET, key) for key in MLFLOW_CREDENTIAL_KEYS},
            cpu=worker_cpu,
            memory=os.environ.get("NASFLOW_WORKER_MEMORY", "4Gi"),
            # Never outlive the chief's patience, even if nobody is left to delete the Job.
            active_deadline_s=int(timeout_s) + 600,
        )

        def chief_failure() -> str | None:
            if chief.poll() not in (None, 0):
                return _chief_exit(chief, log_dir / "chief.log")
            return None

        with BootstrapServer(spec, host=bind_host, port=bootstrap_port, pack_dir=work_dir / "bootstrap"):
            launch_workers(manifest, api_client=api_client)
            wait_for_workers(
                manifest["metadata"]["name"], namespace, timeout_s,
                api_client=api_client, watch_chunk_s=poll_s, abort=chief_failure,
            )  # fmt: skip
        _wait_for_chief_end(chief, log_dir / "chief.log")
    finally:
        _stop(chief)


def _worker_pod_env(tracking_uri: str, cpu: str) -> dict[str, str]:
    """Plain environment of a worker pod.

    TensorFlow sizes its thread pools by the node's cores, not the pod's CPU limit; on a big
    node a 1-CPU worker would run dozens of threads and be throttled. A whole-CPU limit sets
    the pools to match; a fractional one (``500m``) leaves TensorFlow's default.
    """
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if cpu.isdigit() and int(cpu) > 0:
        env.update(TF_NUM_INTRAOP_THREADS=cpu, TF_NUM_INTEROP_THREADS="1" if cpu == "1" else "2")
    return env


def _wait_for_oracle(
    chief: subprocess.Popen, host: str, port: int, log: Path, timeout_s: float = 600
) -> None:
    """Block until the chief serves its oracle; fail with its log if it dies first."""
    deadline = time.monotonic() + timeout_s
    while not _port_open(host, port):
        if chief.poll() is not None:
            raise SearchError(_chief_exit(chief, log))
        if time.monotonic() > deadline:
            raise SearchError(
                f"the chief oracle did not open port {port} within {timeout_s:.0f}s: {_tail(log)}"
            )
        time.sleep(0.3)


def _wait_for_chief_end(chief: subprocess.Popen, log: Path, grace_s: float = 3) -> None:
    """After the workers: stop the chief, whose oracle has nothing left to hand out.

    Every worker that exited 0 was told STOPPED by the oracle (or ran out of wall-clock
    budget), and each trial's result was saved by the chief before its EndTrial call
    returned, so nothing is lost by stopping it. Waiting for it instead costs up to 20 s:
    Keras Tuner's chief polls for the end of the search in 20 s sleeps.
    """
    try:
        chief.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _stop(chief)
        return
    if chief.returncode != 0:
        raise SearchError(_chief_exit(chief, log))


def _current_namespace() -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else "default"
