"""Crash-safe search state: atomic writes, a resumable budget, and a copy a retried task finds.

Keras Tuner keeps a search's state in its project folder: ``oracle.json`` (the oracle: trial
order, what has ended, strategy state), ``trial_*/trial.json`` (one per trial) and the tuner's
own ``<tuner id>.json``. Three things make that state survive a SIGKILL at any moment:

- every state file is written to a temporary file, flushed and renamed over the old one
  (:func:`write_atomic`), so a kill mid-write leaves the previous version, never a truncated one;
- ``oracle.json`` is the commit point: a trial has ended only when ``oracle.json`` says so
  (its ``end_order``). A ``trial.json`` that already says COMPLETED for a trial ``oracle.json``
  still lists as running is an uncommitted result; on reload the trial is run again afresh,
  and a ``trial.json`` of a trial ``oracle.json`` never started is dropped
  (:class:`CrashSafeOracle`);
- the search time spent so far is part of the oracle state, so ``max_search_minutes`` is a
  budget for the whole search, not for each attempt.

Where the state lives: a folder the caller names (``state_dir``: a PVC or a mounted bucket),
or by default the pipeline run's own MLflow parent run (:class:`MlflowStateCopy`): after every
trial the state files that changed are uploaded as artifacts under ``search_state/``, and a
retried task downloads them before it starts. Model checkpoints are not copied: Hyperband
trains a promoted trial from scratch when its lower rung's checkpoint is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasflow import faults, tracking

logger = logging.getLogger(__name__)

#: Artifact folder of the parent run holding the search state.
STATE_ARTIFACT_PATH = "search_state"

ORACLE_FILE = "oracle.json"
TRIAL_FILE = "trial.json"


def write_atomic(path: str | Path, data: bytes, *, fault_key: str | None = None) -> None:
    """Replace ``path`` by ``data`` all at once: temp file in the same folder, fsync, rename.

    Args:
        path: The file to write.
        data: Its new content.
        fault_key: Trial id for the ``state-write`` fault point (:mod:`nasflow.faults`),
            reached with half of ``data`` written; None: no fault point.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if fault_key is None:
                handle.write(data)
            else:
                handle.write(data[: len(data) // 2])
                handle.flush()
                faults.kill_point("state-write", fault_key)
                handle.write(data[len(data) // 2 :])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # the rename is durable once the folder is synced
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_json_atomic(path: str | Path, value: Any, *, fault_key: str | None = None) -> str:
    """:func:`write_atomic` of ``value`` as JSON; returns the JSON text (as Keras Tuner's ``save_json``)."""
    text = json.dumps(value)
    write_atomic(path, text.encode("utf-8"), fault_key=fault_key)
    return text


class CrashSafeOracle:
    """Mixed into the class of every oracle a search uses (see :func:`make_crash_safe`).

    Overrides only how Keras Tuner's ``Oracle`` writes and reloads its files, and adds the
    search time spent so far to the saved state; what a strategy proposes is untouched.
    """

    _nasflow_elapsed_before = 0.0
    _nasflow_session_started = 0.0
    _nasflow_ending: str | None = None
    #: Called after each trial's end is saved (the chief of a distributed search copies its
    #: state with it, since its tuner never ends a trial itself); None: nothing.
    nas_after_end_trial = None

    def search_elapsed_s(self) -> float:
        """Search time spent by this search in every attempt, up to now."""
        return self._nasflow_elapsed_before + (time.monotonic() - self._nasflow_session_started)

    def search_deadline(self, max_search_minutes: float) -> float | None:
        """``time.monotonic()`` value at which the budget is used up (None: no budget)."""
        if not max_search_minutes:
            return None
        return self._nasflow_session_started + max_search_minutes * 60 - self._nasflow_elapsed_before

    def save(self):
        """Write ``oracle.json`` atomically (the commit point of every state change)."""
        return write_json_atomic(self._get_oracle_fname(), self.get_state(), fault_key=self._nasflow_ending)

    def _save_trial(self, trial):
        write_json_atomic(os.path.join(self._get_trial_dir(trial.trial_id), TRIAL_FILE), trial.get_state())

    def end_trial(self, trial):
        """End the trial as the strategy does; its state writes carry the ``state-write`` fault point."""
        # Only the fault point reads this: a chief ending two trials at once may mislabel one write.
        self._nasflow_ending = trial.trial_id
        try:
            ended = super().end_trial(trial)
        finally:
            self._nasflow_ending = None
        if self.nas_after_end_trial is not None:
            self.nas_after_end_trial()
        return ended

    def get_state(self):
        """The strategy's state plus the search time spent so far."""
        state = super().get_state()
        state["nasflow_search"] = {"elapsed_s": self.search_elapsed_s()}
        return state

    def set_state(self, state):
        """Restore the strategy's state and the search time spent before this attempt."""
        super().set_state(state)
        self._nasflow_elapsed_before = float(state.get("nasflow_search", {}).get("elapsed_s", 0.0))

    def reload(self):
        """Reload, keeping only what ``oracle.json`` committed.

        A ``trial.json`` of a trial ``oracle.json`` never started (killed between the two
        writes of ``create_trial``) is dropped, so that trial id and the trial count are
        reused; a trial that was running has its uncommitted result cleared before it is
        run again (killed between the trial's ``trial.json`` and ``oracle.json``).
        """
        from keras_tuner.src.engine import metrics_tracking
        from keras_tuner.src.engine import trial as trial_module

        super().reload()
        started = set(self.start_order)
        for trial_id in [trial_id for trial_id in self.trials if trial_id not in started]:
            del self.trials[trial_id]
        ended = set(self.end_order)
        # Keras Tuner saves before it pops an ended trial from ``ongoing_trials``, and reload
        # sends every ongoing trial for retry: an ended trial must never run again.
        self._retry_queue = [trial_id for trial_id in self._retry_queue if trial_id not in ended]
        for trial_id in self._retry_queue:
            trial = self.trials[trial_id]
            if trial_id not in ended and trial.status != trial_module.TrialStatus.RUNNING:
                trial.status = trial_module.TrialStatus.RUNNING
                trial.score, trial.best_step = None, 0
                trial.metrics = metrics_tracking.MetricsTracker()


_CRASH_SAFE_CLASSES: dict[type, type] = {}


def make_crash_safe(oracle):
    """Give ``oracle`` (any registered strategy's) crash-safe state writes; returns it.

    The oracle's class is swapped for a subclass with :class:`CrashSafeOracle` mixed in, so
    every strategy, built-in or added later, gets the same guarantees without knowing of them.
    Call it before the tuner is built (the tuner reloads the state when it is built).
    """
    if not isinstance(oracle, CrashSafeOracle):
        cls = type(oracle)
        if cls not in _CRASH_SAFE_CLASSES:
            _CRASH_SAFE_CLASSES[cls] = type(f"CrashSafe{cls.__name__}", (CrashSafeOracle, cls), {})
        oracle.__class__ = _CRASH_SAFE_CLASSES[cls]
    oracle._nasflow_session_started = time.monotonic()
    return oracle


def state_files(project_dir: str | Path, commit_file: str = ORACLE_FILE) -> list[Path]:
    """The files a search needs to resume: the project folder's own files and every ``trial.json``.

    Checkpoints (``trial_*/checkpoint*``) and temporary files are left out. ``commit_file``
    (``oracle.json``) comes last, so a copy made in this order never commits a trial whose
    file is missing.
    """
    root = Path(project_dir)
    if not root.is_dir():
        return []
    files = [path for path in root.iterdir() if path.is_file() and not path.name.startswith(".")]
    files += [path for path in root.glob(f"trial_*/{TRIAL_FILE}") if path.is_file()]
    return sorted(files, key=lambda path: (path.name == commit_file, str(path)))


class MlflowStateCopy:
    """The search state kept as artifacts of the pipeline's parent run, so a retried task resumes.

    :meth:`sync` uploads only the files that changed since the last upload (stat, then a
    content hash): after a trial that is its ``trial.json`` and ``oracle.json`` (plus an
    Optuna journal for the Optuna strategies), i.e. 2 requests per trial beside the 5 of
    its :class:`~nasflow.search.records.TrialRecord`. :meth:`restore` replaces the local
    project folder by the copy: 1 listing request and one download per file, once per attempt.

    The final training keeps its ``BackupAndRestore`` folder the same way (``commit_file``:
    Keras' ``training_metadata.json``, written after the weights).
    """

    def __init__(
        self,
        parent: tracking.RunHandle,
        project_dir: str | Path,
        artifact_path: str = STATE_ARTIFACT_PATH,
        commit_file: str = ORACLE_FILE,
    ):
        self.parent = parent
        self.project_dir = Path(project_dir)
        self.artifact_path = artifact_path
        self.commit_file = commit_file
        #: relative path -> (stat signature, sha256) of the version the copy holds.
        self._copied: dict[str, tuple[tuple[int, int], str]] = {}
        self.uploads = 0

    def restore(self) -> bool:
        """Replace the local project folder by the run's copy; whether there was one."""
        client = self.parent.client
        listed = tracking.with_retry(
            lambda: client.list_artifacts(self.parent.run_id, self.artifact_path), "list the search state"
        )
        if not listed:
            return False
        with tempfile.TemporaryDirectory() as download:
            tracking.with_retry(
                lambda: client.download_artifacts(self.parent.run_id, self.artifact_path, download),
                "download the search state",
            )
            copy = Path(download) / self.artifact_path
            if not (copy / self.commit_file).exists():
                return False
            shutil.rmtree(self.project_dir, ignore_errors=True)
            self.project_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(copy, self.project_dir)
        for path in state_files(self.project_dir, self.commit_file):
            self._copied[self._relative(path)] = (_signature(path), _digest(path))
        logger.info("search state restored from run %s (%d files)", self.parent.run_id, len(self._copied))
        return True

    def sync(self) -> list[str]:
        """Upload the state files that changed since the last sync; returns their relative paths."""
        uploaded = []
        for path in state_files(self.project_dir, self.commit_file):
            relative = self._relative(path)
            if path.name == self.commit_file:
                for trial_id in _trials_of(uploaded):
                    faults.kill_point("state-copy", trial_id)
            signature = _signature(path)
            known = self._copied.get(relative)
            if known is not None and known[0] == signature:
                continue
            digest = _digest(path)
            if known is not None and known[1] == digest:
                self._copied[relative] = (signature, digest)
                continue
            folder = str(Path(self.artifact_path, relative).parent)
            tracking.log_artifact(self.parent.client, self.parent.run_id, path, folder)
            self._copied[relative] = (signature, digest)
            uploaded.append(relative)
        self.uploads += len(uploaded)
        return uploaded

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.project_dir).as_posix()


def _trials_of(relative_paths: list[str]) -> list[str]:
    """Trial ids whose ``trial_<id>/trial.json`` is among ``relative_paths``."""
    return [
        path.split("/", 1)[0].removeprefix("trial_")
        for path in relative_paths
        if path.startswith("trial_") and path.endswith(f"/{TRIAL_FILE}")
    ]


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class SearchStatePlace:
    """Where a search keeps its state, whether it resumes, and what to call after each trial."""

    work_dir: Path
    resume: bool
    copy: MlflowStateCopy | None = None

    @property
    def sync(self) -> Callable[[], object] | None:
        """The after-trial hook for :func:`nasflow.search.tuner.run_search` (None: nothing to copy)."""
        return self.copy.sync if self.copy is not None else None


def prepare_state(
    parent: tracking.RunHandle, *, state_dir: str, default_dir: str | Path, project_name: str, copy_to_parent: bool = True
) -> SearchStatePlace:
    """Find the state of an earlier attempt of this search, so a retried task resumes.

    Args:
        parent: The pipeline's parent run.
        state_dir: A persistent folder (PVC, mounted bucket) holding the state; empty: the
            state lives in ``default_dir`` and is copied to the parent run's artifacts.
        default_dir: The task's own (not persistent) folder for the state.
        project_name: Keras Tuner's project folder name.
        copy_to_parent: Keep the copy in the parent run (False: none; a retry then resumes
            only from ``state_dir``). In a chief/worker search the chief process uploads it.

    Returns:
        The work folder for the tuner, whether it holds a state to resume, and the copy.
    """
    work_dir = Path(state_dir) if state_dir else Path(default_dir)
    copy = None
    if not state_dir and copy_to_parent:
        copy = MlflowStateCopy(parent, work_dir / project_name)
        copy.restore()
    return SearchStatePlace(work_dir, (work_dir / project_name / ORACLE_FILE).exists(), copy)
