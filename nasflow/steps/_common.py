"""What every step shares: one line and a non-zero exit for a user's error, artifact helpers."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nasflow import tracking
from nasflow.errors import NasflowError, SearchError

logger = logging.getLogger(__name__)


F = TypeVar("F", bound=Callable[..., Any])


ERROR_FILE_ENV = "NASFLOW_ERROR_FILE"


def user_errors(step_name: str) -> Callable[[F], F]:
    """Turn a ``NasflowError`` into one printed line and exit code 1."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except NasflowError as error:
                message = f"{step_name}: {error}"
                print(f"nasflow: {message}", file=sys.stderr, flush=True)
                error_file = os.environ.get(ERROR_FILE_ENV)
                if error_file:
                    with open(error_file, "a", encoding="utf-8") as handle:
                        handle.write(message.replace("\n", " ") + "\n")
                raise SystemExit(1) from error

        return wrapper  # type: ignore[return-value]

    return decorate


def log_named(run: tracking.RunHandle, path: str, file_name: str, artifact_dir: str) -> None:
    """Log a KFP artifact file (which has no extension) under a name a person can open."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        named = Path(folder) / file_name
        shutil.copyfile(path, named)
        run.log_artifact(named, artifact_dir or None)


def read_json(path: str, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SearchError(f"{path}: cannot read {what}: {error}") from error
