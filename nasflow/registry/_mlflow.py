"""MLflow plumbing the registry modules share: one client per URI, one-line errors."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nasflow import tracking
from nasflow.errors import TrackingError, TrackingUnavailableError

logger = logging.getLogger(__name__)


#: Version tags written at registration.
TEST_METRIC_TAG = "nasflow.test_metric"


TEST_METRIC_NAME_TAG = "nasflow.test_metric_name"


SERVED_FORMAT_TAG = "nasflow.served_format"


def resolve_uri(tracking_uri: str | None) -> str:
    return tracking_uri or mlflow.get_tracking_uri()


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# Connection-level failures only: "Max retries exceeded" alone also means repeated 5xx answers.
UNREACHABLE_MARKERS = (
    "Failed to establish a new connection",
    "Connection refused",
    "NewConnectionError",
    "ConnectTimeout",
    "Read timed out",
    "RemoteDisconnected",
    "Name or service not known",
)


@contextlib.contextmanager
def tracking_errors(uri: str, action: str) -> Iterator[None]:
    """Turn MLflow and network failures into one-line TrackingErrors naming ``uri``."""
    try:
        yield
    except MlflowException as error:
        message = error.message if hasattr(error, "message") else str(error)
        if any(marker in message for marker in UNREACHABLE_MARKERS):
            raise TrackingUnavailableError(f"cannot reach MLflow tracking server at {uri} ({action})") from error
        # A 4xx answer is about the request (deterministic); a 5xx one about the server.
        kind = TrackingUnavailableError if error.get_http_status_code() >= 500 else TrackingError
        raise kind(one_line(f"MLflow at {uri}: {action} failed: {message}")) from error
    except OSError as error:  # requests' ConnectionError is an OSError
        raise TrackingUnavailableError(
            one_line(f"cannot reach MLflow tracking server at {uri} ({action}): {error}")
        ) from error


def is_error_code(error: MlflowException, *codes: str) -> bool:
    return getattr(error, "error_code", None) in codes


def client_for(uri: str) -> MlflowClient:
    return tracking.make_client(uri)


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore what was there."""
    tracking.tune_local_store(uri)
    if uri == mlflow.get_tracking_uri():
        yield  # already there: do not pin the resolved default as an explicit setting
        return
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid, e.g. in some containers
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
