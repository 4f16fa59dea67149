"""Start and stop a real ``mlflow server`` on 127.0.0.1 for tests.

Usage (a plain module: pytest puts ``tests/`` on ``sys.path``, so test files import it
as ``mlflow_server``)::

    from mlflow_server import running_mlflow_server

    with running_mlflow_server(tmp_path) as uri:            # SQLite backend in tmp_path
        ...
    with running_mlflow_server(tmp_path, backend_uri=dsn) as uri:   # e.g. PostgreSQL
        ...

Artifacts are proxied by the server (``mlflow-artifacts:/``) into ``tmp_path``; the
server's log is ``tmp_path/mlflow-server.log`` and is quoted when start-up fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow_stores import fresh_sqlite_uri

#: Servers started by :func:`running_mlflow_server`: process, log file, start-up deadline.
_booting: dict[str, tuple[subprocess.Popen, Path, float]] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _stop_process_group(process: subprocess.Popen, timeout_s: float = 2.0) -> None:
    """Stop the server and the workers it forked (its own session, so its own group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@contextmanager
def running_mlflow_server(
    tmp_path: Path | str,
    backend_uri: str | None = None,
    *,
    workers: int = 1,
    startup_timeout_s: float = 180.0,
    wait: bool = True,
    port: int | None = None,
    host: str = "127.0.0.1",
) -> Iterator[str]:
    """Run ``mlflow server`` on a free loopback port for the duration of the block.

    Args:
        tmp_path: Folder for the default SQLite store, the artifacts and the log.
        backend_uri: Backend (and registry) store URI; default ``sqlite:///<tmp_path>/mlflow.db``.
        workers: Server worker processes (1 keeps start-up fast on 2 cores; requests are
            still served concurrently).
        startup_timeout_s: How long to wait for ``/health`` to answer.
        wait: Whether to wait for ``/health`` before yielding. With ``False`` the block
            runs while the server boots (e.g. to train a model meanwhile) and must call
            :func:`wait_until_healthy` before the first request.
        port: A fixed port (e.g. to restart a server where its clients expect it).
        host: Address to listen on, e.g. a container network's gateway for clients in containers.

    Yields:
        The tracking URI, e.g. ``http://127.0.0.1:43125``.
    """
    root = Path(tmp_path)
    root.mkdir(parents=True, exist_ok=True)
    database = root / "mlflow.db"  # a restarted server (same folder) keeps its store
    backend = backend_uri or (f"sqlite:///{database}" if database.exists() else fresh_sqlite_uri(root))
    artifacts = root / "mlflow-artifacts"
    artifacts.mkdir(exist_ok=True)
    port = port or free_port()
    uri = f"http://{host}:{port}"
    log_path = root / "mlflow-server.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    # MLflow's GenAI job runner (about ten huey consumer processes per server) serves nothing
    # nasflow uses; k8s/base/mlflow.yaml turns it off too.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--backend-store-uri", backend,
        "--artifacts-destination", str(artifacts),
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )
    _booting[uri] = (process, log_path, time.monotonic() + startup_timeout_s)
    try:
        if wait:
            wait_until_healthy(uri)
        yield uri
    finally:
        _booting.pop(uri, None)
        _stop_process_group(process)


def wait_until_healthy(uri: str) -> None:
    """Block until a server started by :func:`running_mlflow_server` answers ``/health``.

    Raises:
        RuntimeError: The server exited or did not answer in time; quotes its log.
    """
    process, log_path, deadline = _booting[uri]
    while not _healthy(uri):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server on {uri} did not start (exit code {process.poll()}):\n{tail}")
        time.sleep(0.25)


def create_tagged_version(
    client, model_name: str, metric: float | None, metric_name: str = "accuracy", experiment_id: str = "0"
) -> str:
    """Register a dummy version (one small text artifact) carrying nasflow's metric tags.

    Enough for the promotion gate, which reads only tags and aliases; no model training.

    Args:
        client: An ``MlflowClient`` pointed at the server.
        model_name: Registered model (created when missing).
        metric: Value for the ``nasflow.test_metric`` tag; ``None`` leaves the tags out.
        metric_name: Value for the ``nasflow.test_metric_name`` tag.
        experiment_id: Experiment of the run that owns the artifact.

    Returns:
        The new version number as a string.
    """
    from mlflow.exceptions import MlflowException

    from nasflow.registry._mlflow import TEST_METRIC_NAME_TAG, TEST_METRIC_TAG

    run = client.create_run(experiment_id, run_name=f"dummy-{model_name}")
    client.log_text(run.info.run_id, f"dummy model, {metric_name}={metric}\n", "model/README.txt")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {} if metric is None else {TEST_METRIC_TAG: repr(float(metric)), TEST_METRIC_NAME_TAG: metric_name}
    version = client.create_model_version(
        model_name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags
    )
    return str(version.version)
