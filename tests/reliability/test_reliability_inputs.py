"""Bad input never gets past the first step: one readable line, a non-zero exit, no registry change.

The whole corpus runs through the same entry points a user hits: the data-prep step
(what `nasflow run` runs first) for datasets, `nasflow validate` for search spaces; a
few go through the real `nasflow run` command end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow_stores import fresh_sqlite_uri

from nasflow import tracking
from nasflow.cli.main import main as cli_main
from nasflow.steps.data_prep import data_prep_step

CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"
DATASETS = yaml.safe_load((CORPUS / "datasets" / "expected.yaml").read_text())
SPACES = yaml.safe_load((CORPUS / "search_spaces" / "expected.yaml").read_text())


def test_corpus_is_large_enough():
    assert len(DATASETS) >= 10 and len(SPACES) >= 20


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bad_dataset_fails_data_prep_with_one_line(name, tmp_path, capsys):
    output = tmp_path / "dataset"
    with pytest.raises(SystemExit) as caught:
        data_prep_step(str(CORPUS / "datasets" / name), str(output))
    assert caught.value.code == 2, "bad data is deterministic: not retried"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nasflow:")]
    assert len(lines) == 1, lines
    assert name.rstrip("/") in lines[0] and str(DATASETS[name]) in lines[0]
    assert not output.exists(), "nothing is written for bad data"


@pytest.mark.parametrize("name", sorted(SPACES))
def test_bad_search_space_fails_validate_with_one_line(name, capsys):
    assert cli_main(["validate", str(CORPUS / "search_spaces" / name)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasflow: validate:"), captured.err
    assert name in lines[0] and str(SPACES[name]) in lines[0]
    assert not captured.out


@pytest.mark.slow
@pytest.mark.parametrize(
    "option,value",
    [
        ("--dataset", "datasets/single_class.csv"),
        ("--search-space", "search_spaces/unknown_family.yaml"),
    ],
)
def test_nasflow_run_refuses_bad_input_without_touching_the_registry(option, value, tmp_path):
    path = CORPUS / value
    if not path.exists():
        pytest.skip(f"corpus entry {value} was renamed")
    uri = fresh_sqlite_uri(tmp_path)
    dataset = [] if option == "--dataset" else ["--dataset", "digits"]
    process = subprocess.run(
        [sys.executable, "-m", "nasflow.cli", "run", option, str(path), *dataset, "--max-trials", "1",
         "--epochs", "1", "--train-epochs", "1", "--tracking-uri", uri, "--output-dir", str(tmp_path / "runs"),
         "--quiet"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )  # fmt: skip
    assert process.returncode == 2
    lines = [line for line in process.stderr.splitlines() if line.startswith("nasflow:")]
    assert len(lines) == 1 and path.name in lines[0], process.stderr[-2000:]
    assert tracking.make_client(uri).search_registered_models() == []
    assert not list((tmp_path / "runs").glob("*/*/search*")), "nothing downstream ran"
