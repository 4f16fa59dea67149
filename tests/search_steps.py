"""The real search step on the prepared ``digits`` folder with a tiny budget, and its processes, for cluster tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def tiny_search_step(tmp_path: Path, digits_dir: str, uri: str, parent_id: str, **overrides: Any) -> dict[str, float]:
    """Run ``search_step`` (cnn space, random, 1 epoch, state under ``tmp_path``); returns its metrics."""
    from nasflow.steps.search import search_step

    out = tmp_path / "out"
    settings: dict[str, Any] = {"strategy": "random", "max_trials": 3, "state_dir": str(tmp_path / "state")}
    settings.update(overrides)
    return search_step(
        digits_dir,
        parent_run_id=parent_id,
        tracking_uri=uri,
        search_space="cnn",
        epochs=1,
        seed=5,
        best_hyperparameters_path=str(out / "best.json"),
        trial_table_path=str(out / "trials.csv"),
        report_path=str(out / "report.md"),
        **settings,
    )


def search_processes(under: Path) -> list[int]:
    """PIDs of live chief/worker processes started for this test (command line or cwd under ``under``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "nasflow.cluster.worker" in cmdline and state != "Z" and (str(under) in cmdline or cwd.startswith(str(under))):
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def assert_killed_trial_was_rerun(trials: list, finished: list, killed: list[str], tuner_id: str) -> None:
    """The one killed trial run is closed KILLED and re-run, linked to it, by the same worker slot.

    Args:
        trials: Every trial run of the search (MLflow ``Run`` objects).
        finished: The trial runs that ended FINISHED or FAILED.
        killed: The MLflow run ids of the trial runs the test killed (exactly one).
        tuner_id: The worker slot (``nasflow.tuner_id``) whose process or container was killed.
    """
    (killed_run,) = killed
    (stale,) = [run for run in trials if run.info.run_id == killed_run]
    assert stale.info.status == "KILLED"
    (rerun,) = [run for run in finished if run.data.tags.get("nasflow.resumed_from_run") == killed_run]
    assert rerun.data.tags["nasflow.trial_id"] == stale.data.tags["nasflow.trial_id"]
    assert rerun.data.tags["nasflow.tuner_id"] == tuner_id
