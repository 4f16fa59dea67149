"""A search SIGKILLed at any moment resumes: every registered strategy x three kill points.

One search per strategy is killed three times, each time by a real SIGKILL of its own
process (:mod:`nasflow.faults`), and each attempt starts in a fresh folder, as a retried
pod does, restoring the state from the parent run's artifacts:

1. during trial 1 (its MLflow run is open, nothing of it is saved);
2. inside the end-of-trial state write of trial 2 (``trial.json`` says COMPLETED, half of
   the new ``oracle.json`` is written);
3. between trials, after trial 2's end is saved and copied, before trial 3 starts.

After the fourth attempt: exactly ``max_trials`` trials, each with one finished run, the
two interrupted runs KILLED and each linked from its re-run, nothing RUNNING, nothing of
the between-trials kill left behind. The trials are synthetic (no training) so that the
matrix costs seconds; tuner, oracle, state and MLflow records are the product's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow_stores import fresh_sqlite_uri
from search_harness import run_attempt, trial_runs

from nasflow import tracking
from nasflow.search.state import STATE_ARTIFACT_PATH
from nasflow.search.strategies import STRATEGIES, missing_requirement

pytestmark = pytest.mark.slow

KILLS = "trial@1,state-write@2,between-trials@3"
MAX_TRIALS = 4


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return fresh_sqlite_uri(tmp_path_factory.mktemp("resume-store"))


def _runs_by_status(uri: str, root: Path) -> list[tuple[str, str]]:
    runs = sorted(trial_runs(uri, root), key=lambda run: run.info.start_time)
    return [(run.data.tags["nasflow.trial_id"], run.info.status) for run in runs]


def _kill_three_times_and_finish(uri: str, root: Path, strategy: str, state_dir: str = "") -> dict[str, str]:
    """Run the four attempts, checking what each kill left; returns the run ids ended before the last."""
    assert run_attempt(root, uri, strategy, MAX_TRIALS, fault=KILLS, state_dir=state_dir) == -9
    assert _runs_by_status(uri, root) == [("0", "FINISHED"), ("1", "RUNNING")], "killed during trial 1"

    assert run_attempt(root, uri, strategy, MAX_TRIALS, fault=KILLS, state_dir=state_dir) == -9
    project = Path(state_dir or root / "attempt-1") / "search"
    oracle = json.loads((project / "oracle.json").read_text())  # intact: the version before the kill
    assert "2" not in oracle["end_order"], "trial 2's end was never committed"
    assert json.loads((project / "trial_2" / "trial.json").read_text())["status"] == "COMPLETED"
    assert list(project.glob(".oracle.json.*.tmp")), "the half-written oracle.json is a temp file"

    assert run_attempt(root, uri, strategy, MAX_TRIALS, fault=KILLS, state_dir=state_dir) == -9
    before_last = {
        run.data.tags["nasflow.trial_id"]: run.info.run_id
        for run in trial_runs(uri, root)
        if run.info.status == "FINISHED"
    }
    assert sorted(before_last) == ["0", "1", "2"], "killed after trial 2 ended, before trial 3 started"
    assert ("3", "RUNNING") not in _runs_by_status(uri, root)

    assert run_attempt(root, uri, strategy, MAX_TRIALS, fault=KILLS, state_dir=state_dir) == 0
    return before_last


def _check_final_state(uri: str, root: Path, before_last: dict[str, str]) -> None:
    runs = trial_runs(uri, root)
    ended = [run for run in runs if run.info.status in ("FINISHED", "FAILED")]
    ended_ids = sorted(run.data.tags["nasflow.trial_id"] for run in ended)
    assert ended_ids == [str(n) for n in range(MAX_TRIALS)], "each trial ended exactly once"
    assert not [run for run in runs if run.info.status == "RUNNING"], "nothing is left RUNNING"
    killed = {run.data.tags["nasflow.trial_id"]: run.info.run_id for run in runs if run.info.status == "KILLED"}
    assert sorted(killed) == ["1", "2"], "the two interrupted attempts, and only they, are KILLED"
    links = {
        run.data.tags["nasflow.trial_id"]: run.data.tags["nasflow.resumed_from_run"]
        for run in ended
        if "nasflow.resumed_from_run" in run.data.tags
    }
    assert links == killed, "each re-run trial links to the attempt it replaces"
    # The between-trials kill lost nothing and repeated nothing: trials 0-2 kept their runs.
    assert {run.data.tags["nasflow.trial_id"]: run.info.run_id for run in ended if run.data.tags["nasflow.trial_id"] in before_last} == before_last
    best = json.loads((root / "best.json").read_text())
    assert best["score"] == pytest.approx(max(run.data.metrics["score"] for run in ended)), "the best finished trial"


@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param(name, marks=pytest.mark.skipif(bool(missing_requirement(name)), reason=f"needs {missing_requirement(name)}"))
        for name in STRATEGIES
    ],
)
def test_every_strategy_resumes_after_sigkill_at_each_point(uri, tmp_path, strategy):
    root = tmp_path / strategy
    root.mkdir()
    before_last = _kill_three_times_and_finish(uri, root, strategy)
    _check_final_state(uri, root, before_last)
    oracle = json.loads((root / "attempt-3" / "search" / "oracle.json").read_text())
    assert sorted(oracle["end_order"]) == [str(n) for n in range(MAX_TRIALS)]
    if "reinforce" in oracle:
        # The policy learned from each ended trial exactly once, re-runs included.
        assert oracle["reinforce"]["updates"] == MAX_TRIALS and oracle["reinforce"]["learned"] == MAX_TRIALS


def test_a_search_resumes_from_a_state_dir(uri, tmp_path):
    root = tmp_path / "pvc-search"
    root.mkdir()
    state_dir = tmp_path / "pvc"
    before_last = _kill_three_times_and_finish(uri, root, "random", state_dir=str(state_dir))
    _check_final_state(uri, root, before_last)
    assert not list(root.glob("attempt-*/search/oracle.json")), "nothing but the state_dir held the state"


def test_the_search_budget_counts_every_attempt(uri, tmp_path):
    root = tmp_path / "budget"
    root.mkdir()
    assert run_attempt(root, uri, "random", 2) == 0
    elapsed_s = json.loads((root / "attempt-0" / "search" / "oracle.json").read_text())["nasflow_search"]["elapsed_s"]
    assert elapsed_s > 0
    # A budget the first attempt already used up: the resumed search starts no trial.
    assert run_attempt(root, uri, "random", 4, max_search_minutes=elapsed_s / 60) == 0
    assert len(trial_runs(uri, root)) == 2
    # With budget left it goes on from there.
    assert run_attempt(root, uri, "random", 4, max_search_minutes=60) == 0
    assert sorted(run.data.tags["nasflow.trial_id"] for run in trial_runs(uri, root)) == ["0", "1", "2", "3"]


def test_the_trial_table_has_one_row_per_trial_id_whatever_mlflow_holds(uri):
    from nasflow import tracking
    from nasflow.search.records import collect_trials

    parent = tracking.open_parent(uri, tracking.start_parent_run(uri, "nasflow", "two-finished-runs"))
    run_ids = []
    for attempt in range(2):  # e.g. a state lost with its trial already logged: the trial ran twice
        run = tracking.start_child_run(
            parent, "trial-0", tags={tracking.ROLE_TAG: "trial", "nasflow.trial_id": "0", "nasflow.trial_status": "COMPLETED"}
        )
        run.log_metrics({"score": 0.5 + attempt / 10})
        run.terminate("FINISHED")
        run_ids.append(run.run_id)
    rows = collect_trials(parent)
    assert [(row["trial_id"], row["mlflow_run_id"]) for row in rows] == [("0", run_ids[1])], "the run started last"


def test_the_state_copy_uploads_only_what_changed_and_restores_it(uri, tmp_path):
    from nasflow import tracking
    from nasflow.search.state import MlflowStateCopy

    parent = tracking.open_parent(uri, tracking.start_parent_run(uri, "nasflow", "state-copy"))
    project = tmp_path / "search"
    (project / "trial_0").mkdir(parents=True)
    (project / "oracle.json").write_text('{"end_order": ["0"]}')
    (project / "tuner0.json").write_text("{}")
    (project / "trial_0" / "trial.json").write_text('{"status": "COMPLETED"}')
    (project / "trial_0" / "checkpoint.weights.h5").write_bytes(b"weights")
    (project / ".oracle.json.abc.tmp").write_text('{"end_or')
    copy = MlflowStateCopy(parent, project)
    assert copy.sync() == ["trial_0/trial.json", "tuner0.json", "oracle.json"], "checkpoints and temp files stay"
    assert copy.sync() == []
    # One more trial: its trial.json and oracle.json, nothing else (2 uploads per trial).
    (project / "trial_1").mkdir()
    (project / "trial_1" / "trial.json").write_text('{"status": "COMPLETED"}')
    (project / "oracle.json").write_text('{"end_order": ["0", "1"]}')
    (project / "tuner0.json").write_text("{}")  # rewritten, same content
    assert copy.sync() == ["trial_1/trial.json", "oracle.json"]

    fresh = tmp_path / "retried-pod" / "search"
    assert MlflowStateCopy(parent, fresh).restore()
    restored = sorted(path.relative_to(fresh).as_posix() for path in fresh.rglob("*") if path.is_file())
    assert restored == ["oracle.json", "trial_0/trial.json", "trial_1/trial.json", "tuner0.json"]
    assert (fresh / "oracle.json").read_text() == '{"end_order": ["0", "1"]}'
    assert not MlflowStateCopy(tracking.open_parent(uri, tracking.start_parent_run(uri, "nasflow", "other")), fresh).restore()


def test_a_kill_inside_the_state_copy_runs_the_uncommitted_trial_again(uri, tmp_path):
    # SIGKILL while the state is copied to the parent run after trial 1: its COMPLETED trial.json
    # is uploaded, the oracle.json that commits its end is not. The retry restores that copy,
    # sees trial 1 uncommitted, closes its finished run KILLED and runs it again.
    root = tmp_path / "copy"
    root.mkdir()
    assert run_attempt(root, uri, "random", MAX_TRIALS, fault="state-copy@1") == -9
    client = tracking.make_client(uri)
    parent_id = trial_runs(uri, root)[0].data.tags["mlflow.parentRunId"]
    copy = Path(client.download_artifacts(parent_id, STATE_ARTIFACT_PATH, str(tmp_path / "copy-after-kill")))
    assert json.loads((copy / "trial_1" / "trial.json").read_text())["status"] == "COMPLETED"
    assert json.loads((copy / "oracle.json").read_text())["end_order"] == ["0"], "trial 1's end was not copied"

    assert run_attempt(root, uri, "random", MAX_TRIALS, fault="state-copy@1") == 0
    runs = trial_runs(uri, root)
    ended = sorted(run.data.tags["nasflow.trial_id"] for run in runs if run.info.status == "FINISHED")
    assert ended == [str(n) for n in range(MAX_TRIALS)], "each trial ended exactly once"
    assert not [run for run in runs if run.info.status == "RUNNING"]
    killed = {run.data.tags["nasflow.trial_id"]: run.info.run_id for run in runs if run.info.status == "KILLED"}
    assert list(killed) == ["1"]
    rerun = next(run for run in runs if run.info.status == "FINISHED" and run.data.tags["nasflow.trial_id"] == "1")
    assert rerun.data.tags["nasflow.resumed_from_run"] == killed["1"]
