"""The tiny end-to-end pipeline run several test modules read (run once per session)."""

from __future__ import annotations

from pathlib import Path

TINY = {
    "dataset": "digits",
    "max_trials": 2,
    "epochs": 1,
    "train_epochs": 2,
    "seed": 7,
    "compression_variants": ["float16", "int8"],
}

#: Registered model name of the shared SQLite run.
SQLITE_MODEL = "digits-e2e"


def tiny_params(**overrides):
    """``nasflow run``'s defaults with the tiny budget and ``overrides``."""
    from nasflow.cli.main import build_parser, pipeline_parameters

    params = pipeline_parameters(build_parser().parse_args(["run"]))
    params.update(TINY)
    params.update(overrides)
    return params


def run_tiny_on_sqlite(root: Path):
    """Run the tiny pipeline on a fresh SQLite store under ``root``; returns ``(LocalRun, uri)``."""
    from nasflow.cli.local_run import run_pipeline_locally

    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_pipeline_locally(
        tiny_params(strategy="random", tracking_uri=uri, model_name=SQLITE_MODEL), root / "runs", stream=None
    )
    return result, uri
