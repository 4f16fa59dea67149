"""What every step shares: one line and a non-zero exit for a failure, artifact helpers."""

from __future__ import annotations

import functools
import inspect
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

#: Exit code of a step that failed deterministically: the same inputs fail the same way.
EXIT_DETERMINISTIC = 2
#: Exit code of a step that failed with a transient nasflow error (a retry may succeed).
EXIT_TRANSIENT = 1


def user_errors(step_name: str) -> Callable[[F], F]:
    """Report a step's failure as one ``nasflow: <step>: ...`` line and fail the step.

    The line goes to stderr and, when ``NASFLOW_ERROR_FILE`` is set, to that file (where
    ``nasflow run`` reads it). A deterministic failure (a non-transient ``NasflowError``,
    or an MLflow 4xx answer such as an invalid parameter) exits with code 2 and leaves the
    line on the parent run, so that a retried attempt of the step fails at once with it
    instead of doing the work again. A transient ``NasflowError`` exits with code 1; any
    other exception is re-raised after its line is recorded (a crash: the retry is for it).
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            parent = _parent_run(signature, args, kwargs)
            if parent is not None:
                earlier = tracking.failure_marker(*parent, step_name)
                if earlier:
                    # The same line again, so the run's last error is this step's own.
                    _report(earlier)
                    print(f"{step_name}: an earlier attempt failed deterministically; not repeating it", file=sys.stderr)
                    raise SystemExit(EXIT_DETERMINISTIC)
            try:
                return func(*args, **kwargs)
            except Exception as error:
                line = f"{step_name}: {one_line(error)}"
                _report(line)
                if not is_deterministic(error):
                    if isinstance(error, NasflowError):
                        raise SystemExit(EXIT_TRANSIENT) from error
                    raise
                if parent is not None:
                    tracking.mark_deterministic_failure(*parent, step_name, line)
                raise SystemExit(EXIT_DETERMINISTIC) from error

        return wrapper  # type: ignore[return-value]

    return decorate


def is_deterministic(error: BaseException) -> bool:
    """Whether running the step again with the same inputs would fail the same way."""
    if isinstance(error, NasflowError):
        return not error.transient
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a hard dependency
        return False
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        # 4xx: the request itself is wrong (invalid parameter, missing run); not a timeout
        # or a rate limit, which a later attempt may get past.
        return 400 <= status < 500 and status not in (408, 429)
    return False


def one_line(error: BaseException) -> str:
    """A failure as one line: a nasflow error's own message, else ``Type: message``."""
    text = " ".join(str(error).split())
    if isinstance(error, NasflowError):
        return text
    return f"{type(error).__name__}: {text}"[:2000] if text else type(error).__name__


def _report(line: str) -> None:
    print(f"nasflow: {line}", file=sys.stderr, flush=True)
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        with open(error_file, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def _parent_run(signature: inspect.Signature, args, kwargs) -> tuple[str, str] | None:
    """``(tracking_uri, parent_run_id)`` when the step writes to a pipeline's parent run."""
    if "parent_run_id" not in signature.parameters:
        return None
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None  # the call itself is wrong; let the step raise its own TypeError
    parent_run_id = bound.arguments.get("parent_run_id")
    if not parent_run_id:
        return None
    return str(bound.arguments.get("tracking_uri") or ""), str(parent_run_id)


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
