"""A search killed with SIGKILL at any moment resumes under the same run identity.

Kill points: during the first trial, between trials, during the last trial (random
search), and during a Hyperband trial. After the restart: every requested trial ran
exactly once to the end, the interrupted attempt is KILLED (not RUNNING) and linked
to its re-run, and the choice is the best of the finished trials.
"""

from __future__ import annotations

import json
import signal

import pytest
from search_process import start, trial_runs, wait_for

pytestmark = pytest.mark.slow


def _status(uri, root):
    return [(run.data.tags.get("nasflow.trial_id"), run.info.status) for run in trial_runs(uri, root)]


KILL_POINTS = {
    # (strategy, max_trials, epochs, predicate over [(trial_id, status)])
    "during-first-trial": ("random", 3, 1, lambda runs: ("0", "RUNNING") in runs),
    "between-trials": ("random", 3, 1, lambda runs: ("0", "FINISHED") in runs or ("0", "FAILED") in runs),
    "during-last-trial": ("random", 3, 1, lambda runs: ("2", "RUNNING") in runs),
    "hyperband-during-a-trial": ("hyperband", 4, 3, lambda runs: ("1", "RUNNING") in runs),
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_search_resumes_after_sigkill(tmp_path, kill_point):
    strategy, max_trials, epochs, reached = KILL_POINTS[kill_point]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = start(tmp_path, uri, strategy, max_trials, epochs)
    try:
        wait_for(lambda: reached(_status(uri, tmp_path)), process=first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    second = start(tmp_path, uri, strategy, max_trials, epochs)
    assert second.wait(timeout=300) == 0, (tmp_path / "search-1.log").read_text()[-2000:]

    runs = trial_runs(uri, tmp_path)
    ended = [run for run in runs if run.info.status in ("FINISHED", "FAILED")]
    ended_ids = [run.data.tags["nasflow.trial_id"] for run in ended]
    assert sorted(ended_ids) == sorted({*ended_ids}), "no trial has two finished runs"
    assert len(ended_ids) == max_trials, "the total equals the requested count"
    assert not [run for run in runs if run.info.status == "RUNNING"], "nothing is left RUNNING"
    killed = {run.info.run_id for run in runs if run.info.status == "KILLED"}
    links = {run.data.tags.get("nasflow.resumed_from_run") for run in ended} - {None}
    assert links <= killed
    if kill_point != "between-trials":
        assert killed, "the interrupted attempt is closed as KILLED"
        assert links == killed, "each re-run trial links to the attempt it replaces"

    best = json.loads((tmp_path / "out" / "best.json").read_text())
    accuracies = [
        run.data.metrics["final_val_accuracy"]
        for run in ended
        if run.data.tags["nasflow.trial_status"] == "COMPLETED"
    ]
    assert best["val_accuracy"] == pytest.approx(max(accuracies)), "the choice is the best finished trial"
