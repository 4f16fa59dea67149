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
from nasflow.registry.lock import BROKEN_TICKET_TAG_PREFIX, PromotionLock, pause_point, promotion_lock

logger = logging.getLogger(__name__)


#: Prefix of the version tags that record a promotion decision.
PROMOTION_TAG_PREFIX = "nasflow.promotion."


#: Prefix of the audit tags on the registered model.
AUDIT_TAG_PREFIX = "nasflow.audit."


#: Prefix of the registered-model tags a lease holder writes, before it moves ``champion``,
#: naming the version it makes champion: ``<prefix><ticket, 12 digits> = <version>``. The
#: record of the largest ticket is the champion the gates last agreed on; a late write of a
#: former holder carries a smaller ticket, so it cannot displace a later holder's record.
COMMIT_TAG_PREFIX = "nasflow.champion.ticket."


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


class _LostAfterWrite(TrackingError):
    """The lease was lost between the two fence checks around this gate's alias write."""

    def __init__(self, lost: TrackingError, decision: PromotionDecision):
        super().__init__(str(lost))
        self.lost, self.decision = lost, decision


def _commit_records(tags: dict[str, str]) -> dict[int, str]:
    """Ticket -> version of the commit records among a registered model's tags."""
    return {
        int(key[len(COMMIT_TAG_PREFIX) :]): value
        for key, value in tags.items()
        if key.startswith(COMMIT_TAG_PREFIX)
    }


def _committed_champion(client: MlflowClient, uri: str, model_name: str) -> str | None:
    """The version named by the commit record of the largest ticket (None: no record yet)."""
    records = _commit_records(_registered_model(client, uri, model_name).tags or {})
    return records[max(records)] if records else None


def _agreed_champion(
    client: MlflowClient, uri: str, model_name: str, lock: PromotionLock, by: str
) -> ModelVersion | None:
    """The champion to decide against, under the lock: the alias, unless a broken holder's late write moved it.

    With a lease, a holder whose lease was broken may have moved the alias after the
    holder that broke it (see :func:`_repair_after_loss`) and died before repairing it.
    Such an alias points at a version whose commit record carries a broken ticket while a
    later ticket's record names another version: the alias goes back to that version first
    (fenced, audited as ``repaired``). An alias set by hand (a rollback) is never a broken
    ticket's and is left as it is.
    """
    model = _registered_model(client, uri, model_name)
    alias = (model.aliases or {}).get(CHAMPION_ALIAS)
    if lock.fencing_token is None or alias is None:
        return None if alias is None else _model_version(client, uri, model_name, str(alias))
    tags = model.tags or {}
    records = _commit_records(tags)
    broken = {
        int(key[len(BROKEN_TICKET_TAG_PREFIX) :]) for key in tags if key.startswith(BROKEN_TICKET_TAG_PREFIX)
    }
    alias_tickets = [ticket for ticket, version in records.items() if version == str(alias)]
    latest = max(records, default=None)
    if (
        alias_tickets
        and max(alias_tickets) in broken
        and latest is not None
        and records[latest] != str(alias)
    ):
        logger.warning(
            "champion of %s points at version %s, moved by a gate whose lease was broken; back to version %s",
            model_name, alias, records[latest],
        )  # fmt: skip
        lock.fence("before repairing champion")
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, records[latest])
        lock.fence("after repairing champion")
        _audit(
            client,
            model_name,
            lock.token,
            {
                "event": "repaired",
                "version": str(alias),
                "restored_version": records[latest],
                "at": now_iso(),
                "by": by,
            },
        )
        alias = records[latest]
    return _model_version(client, uri, model_name, str(alias))


def _move_champion(client: MlflowClient, lock: PromotionLock, decision: PromotionDecision) -> None:
    """Move ``champion`` to the candidate between two fence checks.

    A lease holder first writes its commit record (:data:`COMMIT_TAG_PREFIX`), so that a
    gate repairing a late write knows which champion the last holder chose.

    Raises:
        TrackingError: The lock was lost before the write (nothing written).
        _LostAfterWrite: The lock was lost between the checks: the write may have landed
            after another holder's; :func:`_repair_after_loss` puts the agreed champion back.
    """
    lock.fence("before moving champion")
    if lock.fencing_token is not None:
        key = f"{COMMIT_TAG_PREFIX}{lock.fencing_token:012d}"
        client.set_registered_model_tag(decision.model_name, key, decision.version)
    pause_point("fenced")
    client.set_registered_model_alias(decision.model_name, CHAMPION_ALIAS, decision.version)
    pause_point("written")
    try:
        lock.fence("after moving champion")
    except TrackingError as lost:
        raise _LostAfterWrite(lost, decision) from lost


def _repair_after_loss(client: MlflowClient, uri: str, lost: _LostAfterWrite, by: str) -> TrackingError:
    """Under a fresh turn of the lock, undo this gate's late alias write; returns the error to raise.

    The write may have landed after the holder that broke this gate's lease moved
    ``champion``. Putting back the champion this gate saw when it decided would undo that
    holder's promotion too, so the alias goes to the champion of the latest commit record
    instead (this gate's own when no later holder promoted: then its decision still stands).
    """
    decision = lost.decision
    with promotion_lock(client, uri, decision.model_name, by) as lock:
        current = (_registered_model(client, uri, decision.model_name).aliases or {}).get(CHAMPION_ALIAS)
        agreed = _committed_champion(client, uri, decision.model_name) or decision.champion_version
        restored = None
        if current is not None and str(current) == decision.version and agreed != decision.version:
            lock.fence("before repairing champion")
            if agreed is None:
                client.delete_registered_model_alias(decision.model_name, CHAMPION_ALIAS)
            else:
                client.set_registered_model_alias(decision.model_name, CHAMPION_ALIAS, agreed)
            lock.fence("after repairing champion")
            restored = agreed or "none"
        record = {
            "event": "lost",
            "version": decision.version,
            "candidate_metric": decision.candidate_metric,
            "restored_version": restored,
            "reason": str(lost.lost),
            "at": now_iso(),
            "by": by,
        }
        _audit(client, decision.model_name, lock.token, record)
    outcome = (
        f"restored {CHAMPION_ALIAS} to version {restored}"
        if restored
        else f"left {CHAMPION_ALIAS} as the gates agreed"
    )
    return TrackingError(f"{lost.lost}; {outcome}")


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
        candidate = _candidate_version(client, uri, model_name, version)
        candidate_metric, candidate_metric_name = _version_metric(candidate, uri, metric_name)
        champion = _champion(client, uri, model_name)
        if champion is not None and champion.version == candidate.version:
            return _already_champion(model_name, candidate, candidate_metric, min_improvement)
        with promotion_lock(client, uri, model_name, by) as lock:
            champion = _agreed_champion(client, uri, model_name, lock, by)
            if champion is not None and champion.version == candidate.version:
                return _already_champion(model_name, candidate, candidate_metric, min_improvement)
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
            try:
                if promoted:
                    _move_champion(client, lock, decision)
                _record_decision(client, decision, candidate, candidate_metric_name, by, lock.token)
            except _LostAfterWrite as lost:
                lost_after_write = lost
            else:
                lost_after_write = None
        if lost_after_write is not None:
            raise _repair_after_loss(client, uri, lost_after_write, by) from lost_after_write.lost
    logger.info("promotion of %s version %s: %s", model_name, decision.version, decision.reason)
    return decision


def _candidate_version(client, uri: str, model_name: str, version: str | None):
    """The version to judge: the one named, else the one behind ``challenger``.

    Raises:
        TrackingError: The model has no ``challenger`` alias, or the version does not exist.
    """
    if version is None:
        aliases = _registered_model(client, uri, model_name).aliases or {}
        if CHALLENGER_ALIAS not in aliases:
            raise TrackingError(f"registered model {model_name!r} at {uri} has no {CHALLENGER_ALIAS!r} alias")
        version = str(aliases[CHALLENGER_ALIAS])
    return _model_version(client, uri, model_name, str(version))


def _already_champion(model_name: str, candidate, candidate_metric: float, min_improvement: float) -> PromotionDecision:
    """The decision for a candidate that already is champion: promoted, nothing to change."""
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
