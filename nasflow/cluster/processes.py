"""Chief and worker processes: start them, wait for them, stop them, read why they stopped."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from nasflow.errors import SearchCrashedError, meaningful_lines

logger = logging.getLogger(__name__)


#: PID of the process that started a chief or worker process, which must die with it
#: (:func:`die_with_parent`); unset: the process outlives whoever started it.
PARENT_PID_ENV = "NASFLOW_PARENT_PID"

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the one named by ``NASFLOW_PARENT_PID`` dies.

    Chief and worker processes run in sessions of their own (so that :func:`stop` can end
    each one's process group), so nothing ends them when the search step that started them
    is SIGKILLed: a retried step would find the first attempt's oracle still writing the
    state and its workers still ending trial runs the retry has closed. ``PR_SET_PDEATHSIG``
    ends them with the step, as a pod's containers end with the pod. The signal follows the
    *thread* that started the child, so they are started from the step's own thread.
    Outside Linux this does nothing.
    """
    import ctypes
    import signal

    expected = os.environ.get(PARENT_PID_ENV, "")
    if not expected or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        logger.warning("could not tie this process to its parent: errno %d", ctypes.get_errno())
        return
    if os.getppid() != int(expected):  # the parent died before the call above
        os.kill(os.getpid(), signal.SIGKILL)


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def stop(process: subprocess.Popen, timeout_s: float = 15) -> None:
    """Stop a process group: SIGTERM, then SIGKILL after ``timeout_s``."""
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


def tail(path: Path, lines: int = 3) -> str:
    """The last meaningful lines of a log, joined on one line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(meaningful_lines(text)[-lines:])


def chief_exit(chief: subprocess.Popen, log: Path) -> str:
    """One line on a chief that has exited: its code and the last lines of its log."""
    return f"the chief oracle exited with code {chief.returncode}: {tail(log)}"


def launch(
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
    """Start one chief or worker process of ``spec_path`` as ``tuner_id``; its log goes to ``log_dir``."""
    env = dict(os.environ)
    env.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=oracle_ip, KERASTUNER_ORACLE_PORT=str(port))
    env[PARENT_PID_ENV] = str(os.getpid())
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if one_thread:
        # One thread per worker: on a small machine, N workers x all cores oversubscribes.
        env.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        env.setdefault("TF_NUM_INTEROP_THREADS", "1")
    command = [sys.executable, "-m", "nasflow.cluster.worker", "--spec", str(spec_path), "--role", role]
    if quota:
        command += ["--trials-per-process", str(quota)]
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{tuner_id}.log").open("a") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_chief_end(chief: subprocess.Popen, log: Path, grace_s: float = 3) -> None:
    """After the workers: stop the chief, whose oracle has nothing left to hand out.

    Every worker that exited 0 was told STOPPED by the oracle (or ran out of wall-clock
    budget), and each trial's result was saved by the chief before its EndTrial call
    returned, so nothing is lost by stopping it. Waiting for it instead costs up to 20 s:
    Keras Tuner's chief polls for the end of the search in 20 s sleeps.
    """
    try:
        chief.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        stop(chief)
        return
    if chief.returncode != 0:
        raise SearchCrashedError(chief_exit(chief, log))


def wait_for_oracle(
    chief: subprocess.Popen, host: str, port: int, log: Path, timeout_s: float = 600
) -> None:
    """Block until the chief serves its oracle; fail with its log if it dies first."""
    deadline = time.monotonic() + timeout_s
    while not port_open(host, port):
        if chief.poll() is not None:
            raise SearchCrashedError(chief_exit(chief, log))
        if time.monotonic() > deadline:
            raise SearchCrashedError(
                f"the chief oracle did not open port {port} within {timeout_s:.0f}s: {tail(log)}"
            )
        time.sleep(0.3)
