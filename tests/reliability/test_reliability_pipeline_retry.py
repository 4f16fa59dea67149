"""A KFP retry resumes where it stopped, with no volume set up: the real pipeline through kfp.local.

The search task is SIGKILLed during trial 1 and the train task after its epoch 1, each on
its first attempt only (:mod:`nasflow.faults`); kfp.local retries both as the pipeline's
retry policy says. Each retry finds the state of the attempt before in the parent run's
artifacts: the search ends with exactly ``max_trials`` trials, one FINISHED run each,
the interrupted run KILLED and linked from its re-run; the training goes on from epoch 2.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kfp.local.orchestrator import task_executor
from mlflow_stores import fresh_sqlite_uri

from nasflow import faults, tracking
from nasflow.cli.local_run import run_pipeline_locally

pytestmark = pytest.mark.slow

MAX_TRIALS = 3


def _params(**overrides):
    from nasflow.cli.main import build_parser, pipeline_parameters

    params = pipeline_parameters(build_parser().parse_args(["run"]))
    params.update(overrides)
    return params


def _children(client, parent_id: str, role: str) -> list:
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`nasflow.role` = '{role}'",
    )


def test_a_retried_pipeline_resumes_its_search_and_its_training(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "trial@1,train-epoch@1")
    monkeypatch.setenv(faults.FAULT_ONCE_ENV, str(tmp_path / "faults-fired"))
    # kfp.local waits out the retry backoff for real; record it instead of sleeping 2 x 30 s.
    backoffs: list[float] = []
    monkeypatch.setattr(task_executor, "time", SimpleNamespace(sleep=backoffs.append))
    uri = fresh_sqlite_uri(tmp_path)
    result = run_pipeline_locally(
        _params(
            dataset="digits",
            strategy="random",
            max_trials=MAX_TRIALS,
            epochs=1,
            train_epochs=3,
            seed=7,
            compression_variants=["float16"],
            tracking_uri=uri,
            model_name="digits-retry",
        ),
        tmp_path / "runs",
        stream=None,
    )
    assert sorted(path.name for path in (tmp_path / "faults-fired").iterdir()) == ["train-epoch@1", "trial@1"]
    assert backoffs == [30, 30], "one retry of the search task, one of the train task"
    client = tracking.make_client(uri)
    parent_id = result.summary["parent_run_id"]

    trials = _children(client, parent_id, "trial")
    finished = [run for run in trials if run.info.status == "FINISHED"]
    assert sorted(run.data.tags["nasflow.trial_id"] for run in finished) == [str(n) for n in range(MAX_TRIALS)]
    assert not [run for run in trials if run.info.status == "RUNNING"]
    killed = [run for run in trials if run.info.status == "KILLED"]
    assert [run.data.tags["nasflow.trial_id"] for run in killed] == ["1"], "the retry did not start over"
    rerun = next(run for run in finished if run.data.tags["nasflow.trial_id"] == "1")
    assert rerun.data.tags["nasflow.resumed_from_run"] == killed[0].info.run_id
    assert client.list_artifacts(parent_id, "search_state"), "the state the retry resumed from"

    train_runs = {run.info.status: run for run in _children(client, parent_id, "train")}
    assert sorted(train_runs) == ["FINISHED", "KILLED"]
    resumed = train_runs["FINISHED"]
    assert resumed.data.tags["nasflow.resumed_from_run"] == train_runs["KILLED"].info.run_id
    steps = sorted(metric.step for metric in client.get_metric_history(resumed.info.run_id, "loss"))
    assert steps == [2], "the retried training ran only the epoch the first attempt had not finished"
    assert result.summary["test_accuracy"] > 0.3
