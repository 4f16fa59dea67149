"""The promotion gate: move ``champion`` to a candidate only when it beats the champion."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nasflow.config import CHALLENGER_ALIAS, CHAMPION_ALIAS
from nasflow.errors import PromotionRefused, TrackingError
from nasflow.registry._mlflow import (
    TEST_METRIC_NAME_TAG,
    TEST_METRIC_TAG,
    client_for,
    default_actor,
    is_error_code,
    now_iso,
    resolve_uri,
    tracking_errors,
)
from nasflow.registry.lock import PromotionLock, pause_point, promotion_lock

logger = logging.getLogger(__name__)


#: Prefix of the version tags that record a promotion decision.
PROMOTION_TAG_PREFIX = "nasflow.promotion."


#: Prefix of the audit tags on the registered model.
AUDIT_TAG_PREFIX = "nasflow.audit."


#: Metric differences below this count as equal (0.95 - 0.90 is 0.04999999999999993).
METRIC_TOLERANCE = 1e-9


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
        if is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise TrackingError(f"registered model {model_name!r} does not exist at {uri}") from error
        raise


def _model_version(client: MlflowClient, uri: str, model_name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(model_name, version)
    except MlflowException as error:
        if is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
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
    at = now_iso()
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


def _move_champion(
    client: MlflowClient,
    uri: str,
    lock: PromotionLock,
    decision: PromotionDecision,
    champion: ModelVersion | None,
    by: str,
) -> None:
    """Move ``champion`` to the candidate between two fence checks; undo the move if the lock was lost."""
    lock.fence("before moving champion")
    client.set_registered_model_alias(decision.model_name, CHAMPION_ALIAS, decision.version)
    try:
        lock.fence("after moving champion")
    except TrackingError as lost:
        current = (_registered_model(client, uri, decision.model_name).aliases or {}).get(CHAMPION_ALIAS)
        restored = current is not None and str(current) == decision.version
        if restored:
            if champion is None:
                client.delete_registered_model_alias(decision.model_name, CHAMPION_ALIAS)
            else:
                client.set_registered_model_alias(decision.model_name, CHAMPION_ALIAS, champion.version)
        record = {
            "event": "lost",
            "version": decision.version,
            "candidate_metric": decision.candidate_metric,
            "restored_version": (decision.champion_version or "none") if restored else None,
            "reason": str(lost),
            "at": now_iso(),
            "by": by,
        }
        _audit(client, decision.model_name, lock.token, record)
        raise TrackingError(
            f"{lost}; {'restored' if restored else 'left'} {CHAMPION_ALIAS} "
            f"{'to version ' + str(decision.champion_version) if restored else 'as another gate set it'}"
        ) from lost


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
    uri = resolve_uri(tracking_uri)
    if not math.isfinite(min_improvement) or min_improvement < 0:
        raise PromotionRefused(f"min_improvement must be a finite number >= 0, got {min_improvement}")
    client = client_for(uri)
    by = actor or default_actor()
    with tracking_errors(uri, f"promote {model_name}"):
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
        with promotion_lock(client, uri, model_name, by) as lock:
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
            pause_point("decided")
            if promoted:
                _move_champion(client, uri, lock, decision, champion, by)
            _record_decision(client, decision, candidate, candidate_metric_name, by, lock.token)
    logger.info("promotion of %s version %s: %s", model_name, decision.version, decision.reason)
    return decision
