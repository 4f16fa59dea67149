"""Shared fixtures: every test starts from the same seeds and a quiet TensorFlow."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from mlflow_stores import fresh_sqlite_uri

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A stopped server should fail a test in seconds, not after MLflow's default retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

# The container tier (tests/containers) needs podman and the built images: `make test-containers`
# runs it; plain `make test` / `pytest` does not collect it.
collect_ignore = [] if os.environ.get("NASFLOW_CONTAINER_TIER") else ["containers"]


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(1234)
    np.random.seed(1234)
    try:
        import keras
    except ImportError:  # pragma: no cover - keras is a hard dependency
        return
    keras.utils.set_random_seed(1234)


@pytest.fixture(scope="session")
def tiny_sqlite_run(tmp_path_factory):
    """One tiny pipeline run on SQLite, shared by the modules that read its results."""
    from e2e_runs import run_tiny_on_sqlite

    return run_tiny_on_sqlite(tmp_path_factory.mktemp("e2e-sqlite"))


@pytest.fixture(scope="module")
def digits():
    """``digits`` split 60/20/20 (seed 3), in memory: what search tests train on."""
    from nasflow.data import load_raw_dataset, split_dataset

    return split_dataset(load_raw_dataset("digits"), 0.2, 0.2, seed=3)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> str:
    """``digits`` through the real data-prep step: the folder a search step reads."""
    from nasflow.steps.data_prep import data_prep_step

    folder = tmp_path_factory.mktemp("digits")
    data_prep_step("digits", str(folder / "dataset"), seed=3)
    return str(folder / "dataset")


@pytest.fixture()
def parent(tmp_path):
    """A pipeline parent run on a fresh SQLite store, for searches that record trials."""
    from nasflow import tracking

    uri = fresh_sqlite_uri(tmp_path)
    return tracking.open_parent(uri, tracking.start_parent_run(uri, "nasflow", f"test-{tmp_path.name}"))
