"""Run `search_step` in a child process that a test can kill (a plain module on sys.path).

    python tests/search_process.py ROOT TRACKING_URI STRATEGY MAX_TRIALS EPOCHS

ROOT holds the prepared `digits` data (`ROOT/dataset`), the tuner state
(`ROOT/state`) and the outputs (`ROOT/out`). The parent run is keyed by ROOT, so a
second start resumes the same run, as `nasflow run --run-identity` does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from nasflow import tracking


def start(root: Path, uri: str, strategy: str = "random", max_trials: int = 3, epochs: int = 1) -> subprocess.Popen:
    """Start the search in a child process; its log is ROOT/search-<n>.log."""
    log = root / f"search-{len(list(root.glob('search-*.log')))}.log"
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, __file__, str(root), uri, strategy, str(max_trials), str(epochs)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def trial_runs(uri: str, root: Path) -> list:
    """All trial runs under the parent of ROOT (any status)."""
    client = tracking.make_client(uri)
    experiment = client.get_experiment_by_name("nasflow")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string="tags.`nasflow.role` = 'trial'")


def wait_for(predicate, timeout_s: float = 240.0, process: subprocess.Popen | None = None) -> None:
    """Poll until ``predicate()`` is true; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the search ended (exit {process.returncode}) before the kill point")
        if time.monotonic() > deadline:
            raise AssertionError("kill point not reached in time")
        time.sleep(0.2)


def main(argv: list[str]) -> None:
    from nasflow.steps.data_prep import data_prep_step
    from nasflow.steps.search import search_step

    root, uri, strategy, max_trials, epochs = Path(argv[0]), argv[1], argv[2], int(argv[3]), int(argv[4])
    if not (root / "dataset" / "metadata.json").exists():
        data_prep_step("digits", str(root / "dataset"), seed=3)
    parent_id = tracking.start_parent_run(uri, "nasflow", f"search-process-{root.name}")
    search_step(
        str(root / "dataset"),
        parent_run_id=parent_id,
        tracking_uri=uri,
        search_space="cnn",
        strategy=strategy,
        max_trials=max_trials,
        epochs=epochs,
        seed=5,
        best_hyperparameters_path=str(root / "out" / "best.json"),
        trial_table_path=str(root / "out" / "trials.csv"),
        report_path=str(root / "out" / "report.md"),
        state_dir=str(root / "state"),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
