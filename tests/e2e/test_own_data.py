"""A user's own data through ``nasflow run``, end to end: every file kind nasflow reads (issue 10).

Each kind is written from scikit-learn's bundled data (``own_data_files``) and given to the
real ``nasflow`` command, which runs the real pipeline through ``kfp.local``; each run ends
with a registered model whose pyfunc, loaded back from the registry, predicts on that data.
Half the kinds are given by a relative path (from the working directory), half by an
absolute one; the fast test at the end checks both forms of every kind against each other.

What keeps it affordable (tiny budgets as in ``tests/e2e/test_e2e_local.py``, plus sharing):
one ``mlflow server`` for the module, 1 trial x 1 epoch, 1 training epoch, one compression
variant; and two runs at a time, since most of a tiny run is single-threaded process
start-up (every task imports TensorFlow). A deliberately failing run goes alongside: it
mostly waits out KFP's retry backoff.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from e2e_runs import runs_of as _runs
from mlflow_server import running_mlflow_server
from own_data_files import KINDS

from nasflow import tracking
from nasflow.data import load_prepared, load_raw_dataset

#: The smallest budget that still runs every step.
BUDGET = (
    "--strategy", "random", "--max-trials", "1", "--epochs", "1", "--train-epochs", "1",
    "--compression-variants", "float16", "--seed", "7",
)  # fmt: skip
#: How each kind's path reaches ``nasflow run``: relative to the working directory, or absolute.
PATH_FORMS = {
    "csv-string-labels": "relative",
    "csv-integer-labels": "absolute",
    "parquet": "relative",
    "npz": "absolute",
    "image-folder-rgb": "relative",
    "image-folder-gray": "absolute",
}
#: Pipelines running at once (2 cores; a tiny run is mostly start-up, one core per process).
PARALLEL_RUNS = 2
FAILING = "deliberately-failing"


@dataclass
class CliRun:
    """One ``nasflow run`` process and what it left behind."""

    name: str
    argv: list[str]
    cwd: Path
    output_dir: Path
    dataset: Path
    model_name: str
    returncode: int | None = None
    stderr: str = ""
    seconds: float = 0.0
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _started: float = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self._stderr_file = (self.output_dir.parent / f"{self.name}.stderr").open("w+")
        self._process = subprocess.Popen(
            self.argv, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=self._stderr_file, text=True
        )

    def poll(self) -> bool:
        """Whether the process has ended (collects its result when it has)."""
        if self._process is None or self._process.poll() is None:
            return False
        if self.returncode is None:
            self.returncode = self._process.returncode
            self.seconds = time.monotonic() - self._started
            self._stderr_file.seek(0)
            self.stderr = self._stderr_file.read()
            self._stderr_file.close()
        return True

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def nasflow_lines(self) -> list[str]:
        return [line.strip() for line in self.stderr.splitlines() if line.strip().startswith("nasflow:")]

    def prepared(self):
        (dataset_dir,) = self.output_dir.glob("run-*/*/data-prep/dataset")
        return load_prepared(dataset_dir)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _nasflow() -> str:
    """The console script installed beside this interpreter: what a user types."""
    return str(Path(sys.executable).with_name("nasflow"))


def _run_all(runs: list[CliRun], parallel: int, alongside: list[CliRun], timeout_s: float = 2200) -> None:
    """Run ``runs`` ``parallel`` at a time, with ``alongside`` started first and not counted."""
    waiting = list(runs)
    for run in alongside:
        run.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            active = [run for run in runs if run._process is not None and not run.poll()]
            while waiting and len(active) < parallel:
                waiting[0].start()
                active.append(waiting.pop(0))
            ended = [run.poll() for run in runs + alongside]  # every one, so each records its own end
            if not waiting and all(ended):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"runs still going after {timeout_s:.0f} s: {[r.name for r in active]}")
            time.sleep(0.5)
    finally:
        for run in runs + alongside:
            run.stop()


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> tuple[Path, dict[str, tuple[Path, str | None]]]:
    root = tmp_path_factory.mktemp("own-data")
    folder = root / "data"
    folder.mkdir()
    return root, {kind: write(folder) for kind, write in KINDS.items()}


@pytest.fixture(scope="module")
def cli_runs(own_data, tmp_path_factory):
    root, files = own_data
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    # A generous start-up deadline: on a machine shared with other jobs the server is slow to boot.
    with running_mlflow_server(root / "server", startup_timeout_s=300) as uri:
        runs = []
        for kind, (path, label_column) in files.items():
            relative = PATH_FORMS[kind] == "relative"
            given = str(path.relative_to(root)) if relative else str(path)
            output_dir = root / "runs" / kind
            argv = [_nasflow(), "run", "--dataset", given, *BUDGET, "--tracking-uri", uri,
                    "--model-name", f"own-{kind}", "--output-dir", str(output_dir), "--quiet"]  # fmt: skip
            if label_column:
                argv += ["--label-column", label_column]
            runs.append(CliRun(kind, argv, root if relative else elsewhere, output_dir, path, f"own-{kind}"))
        # A constraint no model meets: only the search can tell, and it fails the same way every time.
        npz = files["npz"][0]
        failing = CliRun(
            FAILING,
            [_nasflow(), "run", "--dataset", str(npz), "--max-params", "1", *BUDGET, "--tracking-uri", uri,
             "--experiment", "own-data-failing", "--model-name", "own-failing", "--output-dir",
             str(root / "runs" / FAILING)],
            elsewhere, root / "runs" / FAILING, npz, "own-failing",
        )  # fmt: skip
        started, cpu_before = time.monotonic(), _children_cpu_s()
        _run_all(runs, PARALLEL_RUNS, alongside=[failing])
        # Not asserted (timings never are); `pytest -s` shows where the time went. CPU seconds
        # say what the runs cost whatever else shares the machine.
        print(
            f"\nown-data matrix: {time.monotonic() - started:.0f} s wall, {_children_cpu_s() - cpu_before:.0f} s CPU"
            f" for {len(runs)} runs + 1 failing run"
        )
        for run in [*runs, failing]:
            print(f"  {run.name:<20} {run.seconds:6.1f} s  exit {run.returncode}")
        yield uri, {run.name: run for run in [*runs, failing]}


#: The first test also waits for the module's runs (pytest-timeout counts fixture set-up):
#: about 3 minutes on 2 quiet cores, far more on a machine shared with other jobs.
MATRIX_TIMEOUT_S = 2400


@pytest.mark.slow
@pytest.mark.timeout(MATRIX_TIMEOUT_S)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_own_data_runs_end_to_end_and_its_registered_model_predicts(kind, cli_runs):
    import mlflow

    uri, runs = cli_runs
    run = runs[kind]
    assert run.returncode == 0, run.stderr[-3000:]
    client = tracking.make_client(uri)
    version = client.get_model_version_by_alias(run.model_name, "challenger")
    parent = client.get_run(version.run_id)
    assert parent.info.status == "FINISHED"
    # Whichever form the user typed, every task got the same absolute path.
    assert parent.data.params["dataset"] == str(run.dataset.resolve())
    assert parent.data.params["dataset_name"] == run.dataset.name
    assert len(_runs(client, parent.info.run_id, "trial")) == 1

    data = run.prepared()
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"models:/{run.model_name}/{version.version}")
    sample = data.x_test[:16].astype(np.float32)
    scores = np.asarray(served.predict(sample))
    assert scores.shape == (len(sample), data.metadata.num_classes) and np.isfinite(scores).all()
    # The registered model is the one the pipeline evaluated: same accuracy on the same test split.
    served_accuracy = float(np.mean(np.argmax(served.predict(data.x_test.astype(np.float32)), axis=-1) == data.y_test))
    assert abs(served_accuracy - float(version.tags["nasflow.test_metric"])) <= 0.02 + 1e-9


@pytest.mark.slow
@pytest.mark.timeout(MATRIX_TIMEOUT_S)
def test_a_deterministic_failure_shows_its_reason_and_is_not_retried(cli_runs):
    uri, runs = cli_runs
    run = runs[FAILING]
    assert run.returncode == 2, run.stderr[-3000:]
    lines = run.nasflow_lines()
    # While the run goes on, the step's own line reaches the terminal...
    assert any(line.startswith("nasflow: search: no trial completed") for line in lines[:-1]), run.stderr[-3000:]
    # ...and the run ends with it and the path of the full log, not KFP's "Inner task failed".
    final = lines[-1]
    assert final.startswith("nasflow: run: search: no trial completed within the constraints"), final
    assert "max_params" in final, final
    step_line, log_path = final[len("nasflow: run: ") :].rsplit(" (full log: ", 1)
    log = re.sub(r"\x1b\[[0-9;]*m", "", Path(log_path.rstrip(")")).read_text())
    # KFP's retries (the policy is for crashes) each stopped at the failure marker, doing nothing.
    attempts = log.count("Executing task 'search'")
    assert attempts >= 2 and log.count("an earlier attempt failed deterministically") == attempts - 1, log[-3000:]
    client = tracking.make_client(uri)
    experiment = client.get_experiment_by_name("own-data-failing")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`nasflow.role` = 'pipeline'")
    assert parent.info.status == "FAILED"
    assert parent.data.tags[tracking.DETERMINISTIC_FAILURE_TAG + "search"] == step_line
    assert len(_runs(client, parent.info.run_id, "trial")) == 1, "the retried attempts trained nothing"
    assert not client.search_model_versions("name = 'own-failing'")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_relative_and_an_absolute_path_are_the_same_pipeline_argument_and_data(kind, tmp_path, monkeypatch):
    from nasflow.cli.main import build_parser, pipeline_parameters

    path, label_column = KINDS[kind](_folder(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(path, tmp_path)
    assert not Path(relative).is_absolute()
    arguments = {
        form: pipeline_parameters(build_parser().parse_args(["run", "--dataset", given]))["dataset"]
        for form, given in (("relative", relative), ("absolute", str(path)))
    }
    assert arguments["relative"] == arguments["absolute"] == str(path.resolve())
    monkeypatch.chdir(tmp_path / "data")  # a task process's working directory is not the user's
    from_relative = load_raw_dataset(arguments["relative"], label_column or "label")
    from_absolute = load_raw_dataset(str(path), label_column or "label")
    np.testing.assert_array_equal(from_relative.x, from_absolute.x)
    np.testing.assert_array_equal(from_relative.y, from_absolute.y)
    assert from_relative.class_names == from_absolute.class_names and from_relative.name == path.name


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
