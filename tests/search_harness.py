"""A cheap search that a test can SIGKILL: nasflow's real tuner, oracle state and MLflow records, a synthetic trial.

Every attempt runs in a process of its own, forked from a server process that imported
TensorFlow, Keras Tuner, MLflow and nasflow once (``multiprocessing``'s forkserver), so an
attempt costs well under a second of start-up instead of a 5-8 s import. The trial does
not train: it opens the trial's real :class:`~nasflow.search.records.TrialRecord`, scores
the values with a fixed function and finishes the record. Everything else is the product
path: :func:`nasflow.search.state.prepare_state` (the state copy in the parent run, or a
``state_dir``), :func:`nasflow.search.tuner.run_search` with the registry's oracle, the
fault points of :mod:`nasflow.faults`, :func:`collect_trials` and :func:`choose_best`.

Each attempt gets a fresh local folder (``ROOT/attempt-<n>``), as a retried pod does.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path
from types import SimpleNamespace

from nasflow import faults, tracking
from nasflow.search.records import TrialRecord, collect_trials
from nasflow.search.selection import choose_best
from nasflow.search.settings import COMPLETED, OBJECTIVE_NAME, PROJECT_NAME, SearchSettings
from nasflow.search.state import prepare_state
from nasflow.search.trial import TrialContext
from nasflow.search.tuner import run_search
from nasflow.spaces.schema import load_search_space, resolve_search_space

#: What the synthetic trials pretend to be: 8x8 grey images of 10 classes (the digits shape).
DATA = SimpleNamespace(metadata=SimpleNamespace(input_shape=(8, 8, 1), num_classes=10, name="synthetic"))


def synthetic_score(values: dict) -> float:
    """A fixed score in [0.1, 0.99) for a set of hyperparameter values."""
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).digest()
    return 0.1 + 0.89 * int.from_bytes(digest[:4], "big") / 2**32


def _synthetic_run_trial(self: TrialContext, tuner, trial, epoch_logger_cls) -> dict[str, float]:
    values = dict(trial.hyperparameters.values)
    record = TrialRecord.open(
        self.parent,
        trial.trial_id,
        tags={"nasflow.strategy": self.settings.strategy},
        params=values,
        interrupted_runs=self.interrupted_runs,
    )
    score = synthetic_score(values)
    record.finish(COMPLETED, {OBJECTIVE_NAME: score, "final_val_accuracy": score}, duration_s=0.0, feasible=True)
    return {OBJECTIVE_NAME: score, "val_accuracy": score}


def _search(root: str, uri: str, strategy: str, max_trials: int, fault: str, state_dir: str, minutes: float) -> None:
    root_path = Path(root)
    attempt = len(list(root_path.glob("attempt-*")))
    os.environ[faults.FAULT_ENV] = fault
    os.environ[faults.FAULT_ONCE_ENV] = str(root_path / "faults-fired")
    TrialContext.run_trial = _synthetic_run_trial
    parent = tracking.open_parent(uri, tracking.start_parent_run(uri, "nasflow", f"harness-{root_path.name}"))
    place = prepare_state(
        parent, state_dir=state_dir, default_dir=root_path / f"attempt-{attempt}", project_name=PROJECT_NAME
    )
    space = load_search_space(resolve_search_space("cnn", "image"))
    settings = SearchSettings(strategy, max_trials=max_trials, epochs=2, seed=5, max_search_minutes=minutes)
    run_search(
        DATA, space, settings, parent=parent, work_dir=place.work_dir, overwrite=not place.resume, state_sync=place.sync
    )
    best = choose_best(collect_trials(parent))
    (root_path / "best.json").write_text(json.dumps({"trial_id": best.best_trial_id, "score": best.best_row["score"]}))


def run_attempt(
    root: Path,
    uri: str,
    strategy: str,
    max_trials: int,
    *,
    fault: str = "",
    state_dir: str = "",
    max_search_minutes: float = 0.0,
    timeout_s: float = 600.0,
) -> int:
    """Run one attempt of the search of ``root`` in a fresh process; returns its exit code (-9: SIGKILL)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    process = context.Process(
        target=_search, args=(str(root), uri, strategy, max_trials, fault, state_dir, max_search_minutes)
    )
    process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join()
        raise AssertionError(f"attempt of {root.name} did not end within {timeout_s} s")
    return int(process.exitcode)


def trial_runs(uri: str, root: Path) -> list:
    """Every trial run (any status) under the parent run of ``root``'s search."""
    client = tracking.make_client(uri)
    experiment = client.get_experiment_by_name("nasflow")
    parent_id = tracking.find_parent_run(client, experiment.experiment_id, f"harness-{root.name}")
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`nasflow.role` = 'trial'",
    )
