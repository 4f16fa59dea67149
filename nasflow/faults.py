"""Fault injection for the reliability tests: SIGKILL this process at a named point, once.

The kill tests need a *real* kill at a precise moment (inside a state write, between two
trials) of a process they do not control directly, such as a kfp.local task. Production
code calls :func:`kill_point` at a few such moments; it does nothing unless
``NASFLOW_FAULT`` names that point::

    NASFLOW_FAULT="trial@2,train-epoch@1"   # point@key, comma-separated
    NASFLOW_FAULT_ONCE=/tmp/markers         # a folder: each fault fires once, ever

When a named point is reached with its key and its marker file does not exist yet, the
process creates the marker and sends itself SIGKILL: no ``finally``, no ``atexit``, no
flush, exactly what an OOM kill or a node loss does. The marker makes the retried
attempt (same environment) run through.

Points:

- ``trial`` (key: trial id): the trial's MLflow run has just been opened.
- ``state-write`` (key: trial id): half of ``oracle.json`` is written at the end of that
  trial, after its ``trial.json``.
- ``state-copy`` (key: trial id): the copy to the parent run after that trial's end has
  uploaded its ``trial.json``, not yet ``oracle.json``.
- ``between-trials`` (key: trials ended so far): the state is saved and synced.
- ``train-epoch`` (key: epoch): its backup is saved and synced.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULT_ENV = "NASFLOW_FAULT"
FAULT_ONCE_ENV = "NASFLOW_FAULT_ONCE"


def kill_point(point: str, key: object = "") -> None:
    """SIGKILL this process if ``NASFLOW_FAULT`` names ``point@key`` and it has not fired yet."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    wanted = f"{point}@{key}"
    if wanted not in {item.strip() for item in spec.split(",")}:
        return
    marker_dir = os.environ.get(FAULT_ONCE_ENV, "")
    if marker_dir:
        marker = Path(marker_dir) / wanted.replace("/", "_")
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: of two processes reaching the point, exactly one is killed.
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
