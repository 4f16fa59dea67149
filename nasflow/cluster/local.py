"""Run a search as Keras Tuner's chief oracle plus worker processes on this machine.

Two needs share this machinery:

* **Fan-out** (``num_workers`` > 1): N workers pull trials from one chief oracle over
  gRPC (``KERASTUNER_TUNER_ID``/``KERASTUNER_ORACLE_IP``/``KERASTUNER_ORACLE_PORT``).
  Locally they are processes on 127.0.0.1; on a cluster an indexed Kubernetes Job
  (:mod:`nasflow.cluster.chief`).
* **Flat per-trial cost** (``trials_per_process`` > 0): Keras 3 / TF 2.21 leak objects on
  every build + fit, so a long-lived trial process gets slower with every trial. A
  worker exits after N trials and is started again under the same tuner id; the chief
  keeps the oracle, so nothing is lost and resume keeps working.

The chief is a process of its own too, so a worker failing for good can stop it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nasflow import tracking
from nasflow.cluster.processes import chief_exit, launch, stop, tail, wait_for_chief_end, wait_for_oracle
from nasflow.cluster.spec import RECYCLE_EXIT_CODE, WorkerSpec
from nasflow.errors import SearchCrashedError, SearchError

logger = logging.getLogger(__name__)


#: A worker slot that fails this many times in a row fails the search.
MAX_CONSECUTIVE_WORKER_FAILURES = 3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
                    raise SearchCrashedError(
                        f"could not start a local MLflow server for the workers (log: {log_path})"
                    ) from error
                time.sleep(0.5)
        yield uri
    finally:
        stop(server)


def retire_idle_workers(workers: dict[str, subprocess.Popen], grace_s: float = 10) -> None:
    """After the chief ended the search: let the workers exit, then stop the ones that do not.

    Keras Tuner's chief exits once no trial is running and every worker it knows has been told
    STOPPED, so a process still alive then holds no trial: it is finishing its exit, or it
    started too late to ever ask for a trial and would wait for the gone oracle until
    ``NASFLOW_ORACLE_TIMEOUT_S`` and fail the slot.
    """
    deadline = time.monotonic() + grace_s
    for tuner_id, process in workers.items():
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.info("worker %s had no trial when the search ended; stopping it", tuner_id)
            stop(process)


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
    chief = launch(spec_path, "chief", "chief", port, 0, log_dir)
    workers: dict[str, subprocess.Popen] = {}
    processes_per_slot = {f"tuner{k}": 0 for k in range(num_workers)}
    failures = dict.fromkeys(processes_per_slot, 0)
    done: set[str] = set()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    try:
        wait_for_oracle(chief, "127.0.0.1", port, log_dir / "chief.log")
        for tuner_id in processes_per_slot:
            workers[tuner_id] = launch(spec_path, "worker", tuner_id, port, trials_per_process, log_dir)
            processes_per_slot[tuner_id] += 1
        while len(done) < num_workers:
            if deadline is not None and time.monotonic() > deadline:
                raise SearchError(f"the distributed search did not finish within {timeout_s:.0f}s")
            if chief.poll() is not None:
                if chief.returncode != 0:
                    raise SearchCrashedError(chief_exit(chief, log_dir / "chief.log"))
                retire_idle_workers({k: p for k, p in workers.items() if k not in done})
                break
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
                        tail(log_dir / f"{tuner_id}.log"),
                    )
                    if failures[tuner_id] >= MAX_CONSECUTIVE_WORKER_FAILURES:
                        raise SearchCrashedError(
                            f"worker {tuner_id} failed {failures[tuner_id]} times in a row (exit code {code}): "
                            f"{tail(log_dir / f'{tuner_id}.log')}"
                        )
                workers[tuner_id] = launch(spec_path, "worker", tuner_id, port, trials_per_process, log_dir)
                processes_per_slot[tuner_id] += 1
            time.sleep(0.5)
        wait_for_chief_end(chief, log_dir / "chief.log")
    finally:
        for process in workers.values():
            stop(process)
        stop(chief)
    return processes_per_slot
