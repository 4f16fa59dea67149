"""Parameters of the parent run: each logged once, by one helper, with clear refusals.

Every step writes the pipeline's parent run. MLflow refuses to change a logged parameter,
and did so deep inside the search step when start-tracking had logged ``dataset`` as the
user's path and the search logged it again as the short name (issue 10). Also here: how a
failing step reports itself (``user_errors``), on a real local MLflow store.
"""

from __future__ import annotations

import pytest
from mlflow_stores import fresh_sqlite_uri
from own_data_files import wine_csv

from nasflow import tracking
from nasflow.errors import ParameterConflictError, TrackingError
from nasflow.steps._common import ERROR_FILE_ENV, EXIT_DETERMINISTIC, user_errors
from nasflow.steps.tracking import start_tracking_step


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # One store for the module (a new SQLite store costs seconds of schema set-up); every
    # test opens its own parent run under its own job id.
    return fresh_sqlite_uri(tmp_path_factory.mktemp("tracking-params"))


@pytest.fixture()
def job(request) -> str:
    """A pipeline-job id of this test's own."""
    return request.node.name


def test_a_changed_parameter_is_refused_naming_key_and_both_values(store, job):
    parent_id = tracking.start_parent_run(store, "nasflow", job, params={"dataset": "/data/wines.csv"})
    parent = tracking.open_parent(store, parent_id)
    with pytest.raises(ParameterConflictError) as caught:
        parent.log_params({"dataset": "wines.csv", "search.strategy": "random"})
    message = str(caught.value)
    assert isinstance(caught.value, TrackingError)
    assert "'dataset'" in message and "'/data/wines.csv'" in message and "'wines.csv'" in message
    assert "\n" not in message
    params = parent.client.get_run(parent_id).data.params
    assert params == {"dataset": "/data/wines.csv"}, "nothing of a refused batch is logged"


def test_the_same_parameters_again_are_skipped(store, job):
    parent_id = tracking.start_parent_run(store, "nasflow", job, params={"seed": 7, "space": {"a": [1, 2]}})
    parent = tracking.open_parent(store, parent_id)
    # A retried task logs what its first attempt logged, plus what it adds.
    parent.log_params({"seed": 7, "space": {"a": [1, 2]}, "search.epochs": 1})
    parent.log_params({"seed": 7, "search.epochs": 1})
    assert parent.client.get_run(parent_id).data.params == {"seed": "7", "space": '{"a": [1, 2]}', "search.epochs": "1"}


def test_a_resumed_run_identity_refuses_changed_parameters_at_start_tracking(store, job):
    parent_id = start_tracking_step(store, "nasflow", job, {"max_trials": 5})
    assert start_tracking_step(store, "nasflow", job, {"max_trials": 5}) == parent_id
    with pytest.raises(SystemExit) as caught:
        start_tracking_step(store, "nasflow", job, {"max_trials": 9})
    assert caught.value.code == EXIT_DETERMINISTIC


def test_search_step_on_a_csv_file_after_start_tracking_logged_its_path(store, job, tmp_path):
    """The user's own CSV, as the pipeline passes it: an absolute path to start-tracking."""
    from nasflow.steps.data_prep import data_prep_step
    from nasflow.steps.search import search_step

    path, label_column = wine_csv(tmp_path)
    parent_id = start_tracking_step(store, "nasflow", job, {"dataset": str(path.resolve())})
    data_prep_step(str(path.resolve()), str(tmp_path / "prepared"), label_column=label_column, seed=3)
    out = tmp_path / "search"
    search_step(
        str(tmp_path / "prepared"), parent_run_id=parent_id, tracking_uri=store, search_space="", strategy="random",
        max_trials=1, epochs=1, seed=3, best_hyperparameters_path=str(out / "best.json"),
        trial_table_path=str(out / "trials.csv"), report_path=str(out / "report.md"),
    )  # fmt: skip
    params = tracking.make_client(store).get_run(parent_id).data.params
    assert params["dataset"] == str(path.resolve()) and params["dataset_name"] == "wines.csv"
    assert (out / "best.json").exists()


# --- a failing step: one line, the right exit code, a marker for its retries ----------------
def _step(store: str, parent_id: str, error: BaseException, calls: list[int]):
    @user_errors("search")
    def failing_step(dataset_dir: str, *, parent_run_id: str, tracking_uri: str) -> None:
        calls.append(1)
        raise error

    return lambda: failing_step("unused", parent_run_id=parent_id, tracking_uri=store)


def _mlflow_invalid_parameter():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(
        "Changing param values is not allowed. Params were already logged=\n'[{'key': 'dataset'}]'",
        error_code=INVALID_PARAMETER_VALUE,
    )


@pytest.mark.parametrize(
    "error,line",
    [
        (ParameterConflictError("parameter 'x' already logged"), "search: parameter 'x' already logged"),
        (
            _mlflow_invalid_parameter(),
            "search: MlflowException: Changing param values is not allowed. Params were already logged= "
            "'[{'key': 'dataset'}]'",
        ),
    ],
    ids=["nasflow-error", "mlflow-invalid-parameter"],
)
def test_a_deterministic_failure_exits_2_and_its_retry_fails_at_once(
    store, job, tmp_path, monkeypatch, capsys, error, line
):
    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error.txt"))
    parent_id = tracking.start_parent_run(store, "nasflow", job)
    calls: list[int] = []
    attempt = _step(store, parent_id, error, calls)
    for _ in range(2):  # the first attempt, then what KFP's retry policy starts again
        with pytest.raises(SystemExit) as caught:
            attempt()
        assert caught.value.code == EXIT_DETERMINISTIC
    assert calls == [1], "the retried attempt did not run the step's work again"
    assert (tmp_path / "error.txt").read_text().splitlines() == [line, line]
    reported = [entry for entry in capsys.readouterr().err.splitlines() if entry.startswith("nasflow:")]
    assert reported == [f"nasflow: {line}"] * 2
    # A new pipeline run on the same parent (a resumed run identity) runs the step again.
    tracking.start_parent_run(store, "nasflow", job)
    with pytest.raises(SystemExit):
        attempt()
    assert calls == [1, 1]


def test_an_unexpected_exception_is_recorded_and_left_to_the_retry(store, job, tmp_path, monkeypatch):
    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error.txt"))
    parent_id = tracking.start_parent_run(store, "nasflow", job)
    calls: list[int] = []
    attempt = _step(store, parent_id, MemoryError("failed to allocate 34359738368 bytes"), calls)
    for _ in range(2):
        with pytest.raises(MemoryError):
            attempt()
    assert calls == [1, 1], "a crash may not repeat: every attempt runs"
    expected = "search: MemoryError: failed to allocate 34359738368 bytes"
    assert (tmp_path / "error.txt").read_text().splitlines() == [expected, expected]


# --- nasflow run's last line: the failing step's own ------------------------------------------
KFP_FAILURE = "Pipeline 'nasflow-nas' finished with status FAILURE. Inner task failed: '{task}' inside 'exit-handler-1'."


@pytest.mark.parametrize(
    "recorded,task,expected",
    [
        (["search: bad space"], "search", "search: bad space"),
        # A crash that a retry got past, then the step that ended the run.
        (["search: MemoryError: oom", "register: MLflow refused"], "register-2", "register: MLflow refused"),
        (["register: MLflow refused", "search: retried line"], "register-2", "register: MLflow refused"),
        ([], "train-2", KFP_FAILURE.format(task="train-2")),
    ],
    ids=["one-line", "last-of-the-failed-task", "the-failed-task-wins", "no-line-recorded"],
)
def test_the_run_ends_with_the_failing_steps_line(tmp_path, recorded, task, expected):
    from nasflow.cli.local_run import failure_line

    error_file = tmp_path / "error.txt"
    if recorded:
        error_file.write_text("\n".join(recorded) + "\n")
    # kfp.local colours the task name in its message.
    colored = KFP_FAILURE.format(task=task).replace(f"'{task}'", f"\x1b[96m'{task}'\x1b[0m")
    assert failure_line(error_file, colored) == expected
