"""The promotion lock: one gate at a time moves a registered model's ``champion`` alias."""

from __future__ import annotations

import contextlib
import logging
import random
import time
import uuid
from collections.abc import Iterator

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nasflow.config import CHAMPION_ALIAS
from nasflow.errors import TrackingError
from nasflow.registry._mlflow import is_error_code, one_line

logger = logging.getLogger(__name__)


#: Suffix of the transient registered model that serves as the promotion lock.
LOCK_SUFFIX = ".nasflow-promotion-lock"


LOCK_TOKEN_TAG = "nasflow.lock.token"


LOCK_OWNER_TAG = "nasflow.lock.owner"


LOCK_EXPIRES_TAG = "nasflow.lock.expires_at"


#: A lock older than this is considered abandoned (the gate itself needs about a second).
LOCK_LEASE_S = 30.0


#: How long a gate waits for another gate's lock before giving up.
LOCK_TIMEOUT_S = 120.0


def _lock_name(model_name: str) -> str:
    return f"{model_name}{LOCK_SUFFIX}"


def _read_lock(client: MlflowClient, lock_name: str) -> dict[str, str] | None:
    try:
        return dict(client.get_registered_model(lock_name).tags or {})
    except MlflowException as error:
        if is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise


def _lock_expired(lock_tags: dict[str, str]) -> bool:
    try:
        return float(lock_tags.get(LOCK_EXPIRES_TAG, "0")) < time.time()
    except ValueError:
        return True


def _delete_lock_if(client: MlflowClient, lock_name: str, token: str) -> None:
    """Delete the lock model if it still carries ``token`` (re-read right before deleting)."""
    current = _read_lock(client, lock_name)
    if current is None or current.get(LOCK_TOKEN_TAG) != token:
        return
    try:
        client.delete_registered_model(lock_name)
    except MlflowException as error:
        if not is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise


@contextlib.contextmanager
def promotion_lock(client: MlflowClient, uri: str, model_name: str, owner: str) -> Iterator[str]:
    """Hold the registry-level promotion lock of ``model_name`` (see the module docstring)."""
    lock_name = _lock_name(model_name)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    backoff = 0.05
    while True:
        lock_tags = {
            LOCK_TOKEN_TAG: token,
            LOCK_OWNER_TAG: owner,
            LOCK_EXPIRES_TAG: f"{time.time() + LOCK_LEASE_S:.3f}",
            "nasflow.lock.model": model_name,
        }
        try:
            client.create_registered_model(
                lock_name,
                tags=lock_tags,
                description=f"Transient nasflow promotion lock of {model_name}; do not use.",
            )
            break
        except MlflowException as error:
            if not is_error_code(error, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        holder = _read_lock(client, lock_name)
        if holder is None:
            continue  # released between our create and our read: try again at once
        if holder.get(LOCK_TOKEN_TAG) == token:
            break  # our create succeeded but its answer was lost and retried
        if _lock_expired(holder):
            logger.warning(
                "breaking expired promotion lock of %s held by %s", model_name, holder.get(LOCK_OWNER_TAG)
            )
            _delete_lock_if(client, lock_name, holder.get(LOCK_TOKEN_TAG, ""))
            continue
        if time.monotonic() > deadline:
            raise TrackingError(
                f"promotion lock {lock_name!r} at {uri} is held by {holder.get(LOCK_OWNER_TAG)} "
                f"(lease until {holder.get(LOCK_EXPIRES_TAG)}); gave up after {LOCK_TIMEOUT_S:g} s"
            )
        time.sleep(backoff * random.uniform(0.5, 1.5))
        backoff = min(backoff * 2, 1.0)
    try:
        yield token
    finally:
        try:
            _delete_lock_if(client, lock_name, token)
        except (MlflowException, OSError) as error:
            # Do not mask the error that may be in flight; the lease expires on its own.
            logger.warning(
                "could not release promotion lock %s at %s: %s", lock_name, uri, one_line(str(error))
            )


def assert_lock_held(client: MlflowClient, uri: str, model_name: str, token: str) -> None:
    """Raise ``TrackingError`` unless ``token`` still holds an unexpired lock of ``model_name``."""
    holder = _read_lock(client, _lock_name(model_name))
    if holder is None or holder.get(LOCK_TOKEN_TAG) != token or _lock_expired(holder):
        raise TrackingError(
            f"lost the promotion lock of {model_name!r} at {uri} before moving {CHAMPION_ALIAS}"
        )
