"""Distributed and recycled searches: a chief oracle and worker processes on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from nasflow import tracking
from nasflow.steps import data_prep_step, search_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("digits")
    data_prep_step("digits", str(folder / "dataset"), seed=3)
    return str(folder / "dataset")


def _search(tmp_path, digits_dir, **kwargs):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent_id = tracking.start_parent_run(uri, "nasflow", f"dist-{tmp_path.name}")
    out = tmp_path / "out"
    search_step(
        digits_dir,
        parent_run_id=parent_id,
        tracking_uri=uri,
        search_space="cnn",
        strategy=kwargs.pop("strategy", "random"),
        max_trials=kwargs.pop("max_trials", 4),
        epochs=1,
        seed=5,
        best_hyperparameters_path=str(out / "best.json"),
        trial_table_path=str(out / "trials.csv"),
        report_path=str(out / "report.md"),
        state_dir=str(tmp_path / "state"),
        **kwargs,
    )
    client = tracking.make_client(uri)
    parent = client.get_run(parent_id)
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string="tags.`nasflow.role` = 'trial'", max_results=100
    )
    return parent_id, trials, out, tmp_path / "state"


def test_two_recycled_workers_share_one_search(tmp_path, digits_dir):
    # One search covers both uses of the worker machinery (fan-out and recycling): each of the two
    # worker slots exits after every trial and is started again under the same tuner id.
    parent_id, trials, out, state = _search(tmp_path, digits_dir, num_workers=2, trials_per_process=1, max_trials=4)
    finished = [run for run in trials if run.info.status in ("FINISHED", "FAILED")]
    trial_ids = [run.data.tags["nasflow.trial_id"] for run in finished]
    assert len(trial_ids) == 4
    assert len(set(trial_ids)) == 4, "no trial runs twice"
    assert all(run.data.tags["mlflow.parentRunId"] == parent_id for run in trials)
    assert {run.data.tags["nasflow.tuner_id"] for run in finished} <= {"tuner0", "tuner1"}
    assert json.loads((out / "best.json").read_text())["trial_id"] in trial_ids
    # The chief wrote its oracle and exited when the workers were done.
    assert (state / "search" / "oracle.json").exists()
    assert "Traceback" not in (state / "logs" / "chief.log").read_text()
    # One trial per process: 4 trials took at least 4 worker starts, spread over both slots,
    # plus the start of each slot that found the oracle stopped.
    starts = {slot: (state / "logs" / f"{slot}.log").read_text().count("nasflow-worker-start") for slot in ("tuner0", "tuner1")}
    assert sum(starts.values()) >= 4 + 2 and min(starts.values()) >= 2, starts
