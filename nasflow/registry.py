"""Register the chosen model in the MLflow Model Registry and promote it safely.

Registration
    :func:`register_model` logs a pyfunc model from code (``nasflow/serving.py``) that
    serves either the float ``.keras`` model or the int8 ``.tflite`` file through the
    LiteRT interpreter. Both files are always artifacts of the version, the version is
    tagged with its test metric and gets the ``challenger`` alias.

Promotion gate
    :func:`promote` moves the ``champion`` alias to a candidate only when
    :func:`decide_promotion` says the candidate's test metric beats the champion's by at
    least ``min_improvement`` (higher is better). Every decision is recorded as tags on
    the candidate version (``nasflow.promotion.*``) and as one audit tag on the
    registered model (``nasflow.audit.<time_ns>.<token>``, a JSON record of who, when,
    which run, the old and the new champion and their metrics).

Concurrency protocol
    MLflow has no compare-and-set on aliases, so two gates running at once could each
    read the old champion and the slower one could overwrite a better model. The gate
    therefore serializes promotions of one registered model:

    1. **Lock.** It creates a registered model named ``<model>.nasflow-promotion-lock``
       whose tags hold a random token, the owner and a lease expiry. Creating a
       registered model is atomic in every SQL backend (the name is a primary key), so
       exactly one gate wins; the others get ``RESOURCE_ALREADY_EXISTS`` and retry with
       jittered exponential backoff. A lock whose lease has expired (its holder died) is
       deleted by the next gate after re-reading that the token is still the stale one.
       If the create request reached the server but its answer was lost, the gate
       recognises its own token and proceeds.
    2. **Decide under the lock.** It re-reads the champion alias and the champion's
       metric tag, decides, and checks that it still holds an unexpired lease just
       before moving the alias.
    3. **Verify.** After moving the alias it waits briefly, re-reads the alias and, if
       a *worse* version displaced the candidate (which only a broken lock or a client
       that bypasses the gate can cause), restores the candidate and audits that.
    4. **Release.** It deletes the lock model if the token is still its own.

    Promoting the version that already is champion writes nothing (not even a lock).
    The transient lock model is visible to ``search_registered_models`` while a
    promotion runs; its name ends in ``.nasflow-promotion-lock``.

Errors
    An unreachable server, a missing model, version or alias, and a version without
    the metric tag raise :class:`~nasflow.errors.TrackingError` with one line that names
    the tracking URI. A refusal is not an error: the returned decision says so.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nasflow.config import CHALLENGER_ALIAS, CHAMPION_ALIAS
from nasflow.errors import PromotionRefused, TrackingError

logger = logging.getLogger(__name__)

#: Version tags written at registration.
TEST_METRIC_TAG = "nasflow.test_metric"
TEST_METRIC_NAME_TAG = "nasflow.test_metric_name"
SERVED_FORMAT_TAG = "nasflow.served_format"
#: Prefix of the version tags that record a promotion decision.
PROMOTION_TAG_PREFIX = "nasflow.promotion."
#: Prefix of the audit tags on the registered model.
AUDIT_TAG_PREFIX = "nasflow.audit."

#: Suffix of the transient registered model that serves as the promotion lock.
LOCK_SUFFIX = ".nasflow-promotion-lock"
LOCK_TOKEN_TAG = "nasflow.lock.token"
LOCK_OWNER_TAG = "nasflow.lock.owner"
LOCK_EXPIRES_TAG = "nasflow.lock.expires_at"
#: A lock older than this is considered abandoned (the gate itself needs about a second).
LOCK_LEASE_S = 30.0
#: How long a gate waits for another gate's lock before giving up.
LOCK_TIMEOUT_S = 120.0
#: Pause between moving the alias and re-reading it.
VERIFY_DELAY_S = 0.2

#: Metric differences below this count as equal (0.95 - 0.90 is 0.04999999999999993).
METRIC_TOLERANCE = 1e-9

SERVING_CODE_PATH = Path(__file__).with_name("serving.py")
# The artifact keys are defined in serving.py; it is not imported here because importing
# it registers its model object with mlflow.models.set_model.
KERAS_ARTIFACT = "keras_model"
TFLITE_ARTIFACT = "tflite_model"

_TENSORFLOW_PINS = [
    'tensorflow-cpu==2.21.0; platform_machine == "x86_64"',
    'tensorflow==2.21.0; platform_machine != "x86_64"',
    "keras==3.15.1",
]
_COMMON_PINS = ["mlflow==3.17.2", "ai-edge-litert==2.3.0", "numpy==2.4.6"]
#: Explicit requirements per served format (explicit lists skip MLflow's slow inference).
SERVING_REQUIREMENTS: dict[str, list[str]] = {
    "keras": _COMMON_PINS + _TENSORFLOW_PINS,
    "tflite": list(_COMMON_PINS),
}


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version created by :func:`register_model`."""

    name: str
    version: str
    run_id: str
    alias: str
    uri: str


@dataclass(frozen=True)
class PromotionDecision:
    """What the promotion gate decided for one candidate version."""

    promoted: bool
    reason: str
    model_name: str
    version: str
    candidate_metric: float
    champion_version: str | None
    champion_metric: float | None
    min_improvement: float


# --------------------------------------------------------------------------- helpers


def _resolve_uri(tracking_uri: str | None) -> str:
    return tracking_uri or mlflow.get_tracking_uri()


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# Connection-level failures only: "Max retries exceeded" alone also means repeated 5xx answers.
_UNREACHABLE_MARKERS = (
    "Failed to establish a new connection",
    "Connection refused",
    "NewConnectionError",
    "ConnectTimeout",
    "Read timed out",
    "RemoteDisconnected",
    "Name or service not known",
)


@contextlib.contextmanager
def _tracking_errors(uri: str, action: str) -> Iterator[None]:
    """Turn MLflow and network failures into one-line TrackingErrors naming ``uri``."""
    try:
        yield
    except MlflowException as error:
        message = error.message if hasattr(error, "message") else str(error)
        if any(marker in message for marker in _UNREACHABLE_MARKERS):
            raise TrackingError(f"cannot reach MLflow tracking server at {uri} ({action})") from error
        raise TrackingError(_one_line(f"MLflow at {uri}: {action} failed: {message}")) from error
    except OSError as error:  # requests' ConnectionError is an OSError
        raise TrackingError(
            _one_line(f"cannot reach MLflow tracking server at {uri} ({action}): {error}")
        ) from error


def _is_error_code(error: MlflowException, *codes: str) -> bool:
    return getattr(error, "error_code", None) in codes


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def _use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore what was there."""
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


@contextlib.contextmanager
def _run(run_id: str | None, model_name: str) -> Iterator[str]:
    """The run to log into: the given one (resumed if not already active) or a new one."""
    active = mlflow.active_run()
    if run_id is not None and active is not None and active.info.run_id == run_id:
        yield run_id
        return
    nested = active is not None
    kwargs = {"run_id": run_id} if run_id is not None else {"run_name": f"register-{model_name}"}
    with mlflow.start_run(nested=nested, **kwargs) as run:
        yield run.info.run_id


def _output_kind(scores: np.ndarray) -> Literal["probabilities", "logits"]:
    """Whether a network's outputs already are probabilities (rows of a softmax)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid, e.g. in some containers
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------- registration


def register_model(
    *,
    keras_model_path: str,
    tflite_path: str | None,
    serve: Literal["keras", "tflite"],
    model_name: str,
    test_metric_name: str,
    test_metric_value: float,
    input_example: np.ndarray,
    run_id: str | None = None,
    extra_artifacts: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
) -> RegisteredVersion:
    """Log a serving pyfunc for a trained model, register it and make it ``challenger``.

    Args:
        keras_model_path: The float ``.keras`` model (always attached to the version).
        tflite_path: The int8 ``.tflite`` file (attached when given; required to serve it).
        serve: Which of the two answers ``predict``.
        model_name: Registered model name.
        test_metric_name: Name of the held-out metric the gate compares (higher is better).
        test_metric_value: Its value for this model.
        input_example: A few float inputs shaped like the model's input, batch first.
        run_id: Run to log the model into; a new run (nested under an active run, if any)
            when omitted.
        extra_artifacts: More files to attach to the version, keyed by artifact name.
        tags: More version tags.
        tracking_uri: Tracking (and registry) URI; MLflow's current one when omitted.

    Returns:
        The new version, already behind the ``challenger`` alias.

    Raises:
        TrackingError: A file is missing, the arguments do not fit, or MLflow fails.
    """
    uri = _resolve_uri(tracking_uri)
    if serve not in SERVING_REQUIREMENTS:
        raise TrackingError(f"cannot register {model_name}: serve must be 'keras' or 'tflite', got {serve!r}")
    if serve == "tflite" and not tflite_path:
        raise TrackingError(f"cannot register {model_name}: serve='tflite' needs tflite_path")
    artifacts = {KERAS_ARTIFACT: keras_model_path}
    if tflite_path:
        artifacts[TFLITE_ARTIFACT] = tflite_path
    for key, path in (extra_artifacts or {}).items():
        if key in artifacts:
            raise TrackingError(f"cannot register {model_name}: extra artifact name {key!r} is reserved")
        artifacts[key] = path
    for key, path in artifacts.items():
        if not Path(path).is_file():
            raise TrackingError(f"cannot register {model_name}: artifact {key} file {path} does not exist")
    metric_value = float(test_metric_value)
    if not math.isfinite(metric_value):
        raise TrackingError(
            f"cannot register {model_name}: {test_metric_name} is {metric_value}, not a finite number"
        )

    import keras
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    example = np.asarray(input_example[:5], dtype=np.float32)
    keras_model = keras.saving.load_model(keras_model_path, safe_mode=True, compile=False)
    scores = np.asarray(keras_model.predict(example, verbose=0))
    outputs = _output_kind(scores)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(scores.shape[-1])))]),
    )
    version_tags = dict(tags or {})
    version_tags.update(
        {
            TEST_METRIC_TAG: repr(metric_value),
            TEST_METRIC_NAME_TAG: test_metric_name,
            SERVED_FORMAT_TAG: serve,
            "nasflow.keras_artifact": f"artifacts/{Path(keras_model_path).name}",
        }
    )
    if tflite_path:
        version_tags["nasflow.tflite_artifact"] = f"artifacts/{Path(tflite_path).name}"

    with (
        _tracking_errors(uri, f"register {model_name}"),
        _use_tracking_uri(uri),
        _run(run_id, model_name) as used_run,
    ):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_CODE_PATH),
            artifacts=artifacts,
            model_config={"serve": serve, "outputs": outputs},
            signature=signature,
            input_example=example,
            pip_requirements=SERVING_REQUIREMENTS[serve],
        )
        client = _client(uri)
        try:
            client.create_registered_model(model_name)
        except MlflowException as error:
            if not _is_error_code(error, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        created = client.create_model_version(
            name=model_name, source=info.model_uri, run_id=used_run, tags=version_tags, model_id=info.model_id
        )
        client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, created.version)
        client.set_tag(used_run, "nasflow.registered_version", f"{model_name}/{created.version}")
    logger.info("registered %s version %s (%s) as %s", model_name, created.version, serve, CHALLENGER_ALIAS)
    return RegisteredVersion(
        name=model_name,
        version=str(created.version),
        run_id=used_run,
        alias=CHALLENGER_ALIAS,
        uri=f"models:/{model_name}/{created.version}",
    )


# ------------------------------------------------------------------------- promotion


def decide_promotion(
    candidate_metric: float, champion_metric: float | None, min_improvement: float
) -> tuple[bool, str]:
    """The gate's rule: promote when the candidate beats the champion by ``min_improvement``.

    Higher metrics are better; the improvement is absolute (``0.01`` is one accuracy
    point). Differences within :data:`METRIC_TOLERANCE` of the threshold count as meeting
    it, so ``0.95`` does beat ``0.90`` by ``0.05``.

    Args:
        candidate_metric: The candidate version's test metric.
        champion_metric: The current champion's, or ``None`` when there is no champion.
        min_improvement: Required absolute improvement, ``>= 0``.

    Returns:
        ``(promote, reason)`` with a one-line reason.

    Raises:
        PromotionRefused: ``min_improvement`` is negative or not finite.
    """
    if not math.isfinite(min_improvement) or min_improvement < 0:
        raise PromotionRefused(f"min_improvement must be a finite number >= 0, got {min_improvement}")
    if not math.isfinite(candidate_metric):
        return False, f"candidate metric {candidate_metric} is not a finite number"
    if champion_metric is None:
        return True, f"no champion yet; candidate {candidate_metric:.6g} becomes champion"
    if not math.isfinite(champion_metric):
        return (
            True,
            f"champion metric {champion_metric} is not a finite number; candidate {candidate_metric:.6g} replaces it",
        )
    difference = candidate_metric - champion_metric
    if difference >= min_improvement - METRIC_TOLERANCE:
        return True, (
            f"candidate {candidate_metric:.6g} beats champion {champion_metric:.6g} "
            f"by {difference:+.6g} (required >= {min_improvement:g})"
        )
    return False, (
        f"candidate {candidate_metric:.6g} does not beat champion {champion_metric:.6g} "
        f"by >= {min_improvement:g} (difference {difference:+.6g})"
    )


def _registered_model(client: MlflowClient, uri: str, model_name: str):
    try:
        return client.get_registered_model(model_name)
    except MlflowException as error:
        if _is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise TrackingError(f"registered model {model_name!r} does not exist at {uri}") from error
        raise


def _model_version(client: MlflowClient, uri: str, model_name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(model_name, version)
    except MlflowException as error:
        if _is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(
                f"version {version} of registered model {model_name!r} does not exist at {uri}"
            ) from error
        raise


def _version_metric(version: ModelVersion, uri: str, expected_name: str | None) -> tuple[float, str]:
    """The test metric and its name from a version's tags."""
    label = f"version {version.version} of {version.name!r} at {uri}"
    raw = version.tags.get(TEST_METRIC_TAG)
    if raw is None:
        raise TrackingError(f"{label} has no {TEST_METRIC_TAG} tag; register it with nasflow or set the tag")
    try:
        value = float(raw)
    except ValueError as error:
        raise TrackingError(f"{label} has a non-numeric {TEST_METRIC_TAG} tag {raw!r}") from error
    name = version.tags.get(TEST_METRIC_NAME_TAG, "")
    if expected_name is not None and name != expected_name:
        raise TrackingError(
            f"{label} records metric {name!r}, not {expected_name!r}; the gate cannot compare them"
        )
    return value, name


def _champion(client: MlflowClient, uri: str, model_name: str) -> ModelVersion | None:
    aliases = _registered_model(client, uri, model_name).aliases or {}
    version = aliases.get(CHAMPION_ALIAS)
    return None if version is None else _model_version(client, uri, model_name, str(version))


def _lock_name(model_name: str) -> str:
    return f"{model_name}{LOCK_SUFFIX}"


def _read_lock(client: MlflowClient, lock_name: str) -> dict[str, str] | None:
    try:
        return dict(client.get_registered_model(lock_name).tags or {})
    except MlflowException as error:
        if _is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
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
        if not _is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise


@contextlib.contextmanager
def _promotion_lock(client: MlflowClient, uri: str, model_name: str, owner: str) -> Iterator[str]:
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
            if not _is_error_code(error, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
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
                "could not release promotion lock %s at %s: %s", lock_name, uri, _one_line(str(error))
            )


def _assert_lock_held(client: MlflowClient, uri: str, model_name: str, token: str) -> None:
    holder = _read_lock(client, _lock_name(model_name))
    if holder is None or holder.get(LOCK_TOKEN_TAG) != token or _lock_expired(holder):
        raise TrackingError(
            f"lost the promotion lock of {model_name!r} at {uri} before moving {CHAMPION_ALIAS}"
        )


def _audit(client: MlflowClient, model_name: str, token: str, record: dict) -> None:
    key = f"{AUDIT_TAG_PREFIX}{time.time_ns()}.{token[:8]}"
    client.set_registered_model_tag(model_name, key, json.dumps(record, sort_keys=True))


def _record_decision(
    client: MlflowClient,
    decision: PromotionDecision,
    candidate: ModelVersion,
    metric_name: str,
    by: str,
    token: str,
) -> None:
    at = _now_iso()
    tags = {
        "decision": "promoted" if decision.promoted else "refused",
        "reason": decision.reason,
        "champion_version": decision.champion_version or "none",
        "champion_metric": "none" if decision.champion_metric is None else repr(decision.champion_metric),
        "min_improvement": repr(decision.min_improvement),
        "at": at,
        "by": by,
    }
    for key, value in tags.items():
        client.set_model_version_tag(
            decision.model_name, decision.version, f"{PROMOTION_TAG_PREFIX}{key}", value
        )
    record = asdict(decision) | {
        "event": tags["decision"],
        "metric_name": metric_name,
        "run_id": candidate.run_id,
        "champion_version_after": decision.version if decision.promoted else decision.champion_version,
        "at": at,
        "by": by,
    }
    _audit(client, decision.model_name, token, record)


def _verify_champion(
    client: MlflowClient, uri: str, decision: PromotionDecision, metric_name: str, by: str, token: str
) -> None:
    """Re-read the alias after the switch and restore the candidate if a worse version displaced it."""
    time.sleep(VERIFY_DELAY_S)
    current = _champion(client, uri, decision.model_name)
    if current is None or current.version == decision.version:
        return  # still ours, or someone deliberately removed the alias: not ours to undo
    current_metric, _ = _version_metric(current, uri, None)
    if current_metric >= decision.candidate_metric:
        return  # a version at least as good moved in after us: leave it
    client.set_registered_model_alias(decision.model_name, CHAMPION_ALIAS, decision.version)
    logger.warning(
        "restored %s of %s to version %s after worse version %s displaced it",
        CHAMPION_ALIAS, decision.model_name, decision.version, current.version,
    )  # fmt: skip
    _audit(
        client,
        decision.model_name,
        token,
        {
            "event": "restored",
            "version": decision.version,
            "candidate_metric": decision.candidate_metric,
            "displaced_by_version": current.version,
            "displaced_by_metric": current_metric,
            "metric_name": metric_name,
            "at": _now_iso(),
            "by": by,
        },
    )


def promote(
    model_name: str,
    version: str | None = None,
    *,
    min_improvement: float = 0.0,
    metric_name: str | None = None,
    tracking_uri: str | None = None,
    actor: str | None = None,
) -> PromotionDecision:
    """Run the promotion gate for one version and move ``champion`` if it passes.

    Safe to run from several processes at once and idempotent (see the module
    docstring for the protocol).

    Args:
        model_name: Registered model name.
        version: Candidate version; the one behind ``challenger`` when omitted.
        min_improvement: Absolute improvement over the champion's metric required.
        metric_name: When given, both the candidate and the champion must record this
            metric name in their ``nasflow.test_metric_name`` tags.
        tracking_uri: Tracking (and registry) URI; MLflow's current one when omitted.
        actor: Who is promoting, for the audit trail; ``user@host:pid`` when omitted.

    Returns:
        The decision. ``promoted`` is true when the candidate is champion afterwards
        (including when it already was); a refusal leaves ``champion`` unchanged.

    Raises:
        TrackingError: The server is unreachable; the model, version or ``challenger``
            alias does not exist; a version lacks the metric tag or records another metric.
        PromotionRefused: ``min_improvement`` is negative or not finite.
    """
    uri = _resolve_uri(tracking_uri)
    if not math.isfinite(min_improvement) or min_improvement < 0:
        raise PromotionRefused(f"min_improvement must be a finite number >= 0, got {min_improvement}")
    client = _client(uri)
    by = actor or _default_actor()
    with _tracking_errors(uri, f"promote {model_name}"):
        if version is None:
            aliases = _registered_model(client, uri, model_name).aliases or {}
            if CHALLENGER_ALIAS not in aliases:
                raise TrackingError(
                    f"registered model {model_name!r} at {uri} has no {CHALLENGER_ALIAS!r} alias"
                )
            version = str(aliases[CHALLENGER_ALIAS])
        candidate = _model_version(client, uri, model_name, str(version))
        candidate_metric, candidate_metric_name = _version_metric(candidate, uri, metric_name)

        def already_champion() -> PromotionDecision:
            return PromotionDecision(
                promoted=True,
                reason=f"version {candidate.version} already is {CHAMPION_ALIAS}; nothing changed",
                model_name=model_name,
                version=str(candidate.version),
                candidate_metric=candidate_metric,
                champion_version=str(candidate.version),
                champion_metric=candidate_metric,
                min_improvement=min_improvement,
            )

        champion = _champion(client, uri, model_name)
        if champion is not None and champion.version == candidate.version:
            return already_champion()
        with _promotion_lock(client, uri, model_name, by) as token:
            champion = _champion(client, uri, model_name)
            if champion is not None and champion.version == candidate.version:
                return already_champion()
            champion_metric = (
                None if champion is None else _version_metric(champion, uri, candidate_metric_name)[0]
            )
            promoted, reason = decide_promotion(candidate_metric, champion_metric, min_improvement)
            decision = PromotionDecision(
                promoted=promoted,
                reason=reason,
                model_name=model_name,
                version=str(candidate.version),
                candidate_metric=candidate_metric,
                champion_version=None if champion is None else str(champion.version),
                champion_metric=champion_metric,
                min_improvement=min_improvement,
            )
            if promoted:
                _assert_lock_held(client, uri, model_name, token)
                client.set_registered_model_alias(model_name, CHAMPION_ALIAS, decision.version)
            _record_decision(client, decision, candidate, candidate_metric_name, by, token)
            if promoted:
                _verify_champion(client, uri, decision, candidate_metric_name, by, token)
    logger.info("promotion of %s version %s: %s", model_name, decision.version, decision.reason)
    return decision
