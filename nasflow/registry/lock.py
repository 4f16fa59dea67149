"""The promotion lock: one gate at a time decides and moves a registered model's ``champion``.

MLflow has no compare-and-set on aliases, so the gate serializes its read-decide-write
per registered model. What serializes it depends on what the tracking URI reaches:

Database lock (``postgresql://`` and ``sqlite:///`` tracking URIs)
    The gate talks to MLflow's own backend database, so it locks there:

    * PostgreSQL: a session-level ``pg_advisory_lock`` on a key derived from the model
      name, taken on a connection of its own and held for the whole
      decide + write + verify. PostgreSQL releases it only when the gate unlocks or
      its connection ends (a crashed gate's socket closes), never because time passed,
      so a stalled holder keeps it and nobody else writes meanwhile. Just before and
      just after the alias write the gate checks in ``pg_locks`` that its connection
      still holds the key (a dropped connection loses the lock without the process
      noticing otherwise).
    * SQLite: an exclusive transaction (``BEGIN EXCLUSIVE``) on a lock database next to
      MLflow's file (``<file>.nasflow-promotion-lock``); SQLite locks a whole database
      file, so holding it in MLflow's own file would block MLflow's writes, including
      the gate's. The operating system drops the lock when the process dies.

    Waiting for the lock respects ``NASFLOW_PROMOTION_LOCK_TIMEOUT_S``; no clock is
    compared at all.

Lease with fencing tokens (``http(s)://`` MLflow servers and other stores)
    Only MLflow's REST API is reachable, and its one atomic counter is the version
    number of a registered model: ``create_model_version`` assigns ``max + 1`` in one
    transaction and never reuses a number (deleted versions stay in the table). So:

    1. **Ticket.** The gate makes sure the registered model
       ``<model>.nasflow-promotion-lock`` exists (it is never deleted) and creates a
       version of it: the version number is the gate's *fencing token*, strictly
       larger than every earlier gate's. A background thread renews the ticket every
       ``lease / 4`` by updating its description, which makes the *server* stamp the
       ticket's ``last_updated_timestamp``.
    2. **Turn.** The gate holds the lock when every ticket with a smaller number is
       finished: deleted (released) or tagged ``nasflow.lock.broken_by``. Tickets
       are served in number order, so at most one live ticket is first.
    3. **Expiry, against the server's clock only.** A smaller ticket whose
       ``last_updated_timestamp`` is more than the lease older than the waiting gate's
       own ticket's (both stamped by the server; the waiter's own is at most
       ``lease / 4`` old) has not been renewed for a lease: its holder died or
       stalled. The waiter tags it ``nasflow.lock.broken_by=<own token>`` and goes
       on. Breaking never deletes anything, so two breakers of the same stale ticket
       both write the same kind of tag and cannot remove each other's fresh ticket;
       they are then served in their own number order.
    4. **Fence.** Immediately before and immediately after the alias write, the
       holder re-reads its own ticket: if it is gone or carries ``broken_by`` (or the
       renewal thread has not succeeded for a lease by the local monotonic clock),
       the lock was lost. Before the write that means: do not write. Between the checks
       the holder first records, under its ticket number, the champion it chooses
       (``nasflow.champion.ticket.<ticket>`` on the promoted model, see
       ``promotion.py``), then moves the alias. Lost after the write (the window between
       the two checks, one HTTP request) means the write may have landed after the next
       holder's: the gate takes a fresh turn of the lock and, if the alias still points
       at its own version, puts back the champion of the latest ticket's record (not the
       one it saw when it decided, which would undo the next holder's promotion), records
       ``lost`` and fails. A breaker writes ``broken_by`` (and
       ``nasflow.lock.broken.<ticket>`` on the promoted model, kept after tickets are
       deleted) *before* it acts as holder, so a holder that reads its ticket unbroken
       knows nobody else holds the lock at that moment.
    5. **Release.** The holder deletes its own ticket (only a ticket's owner deletes
       it, so deleting is not a read-then-delete race) and the broken tickets below
       it, whose owners will find them gone and know they lost.

    Residual risk: only a gate stalled for longer than a lease *between* its two
    fence checks can move the alias while another gate holds the lock (no fence can
    stop a request already in flight, and MLflow has no compare-and-set on aliases);
    it notices at its second check and repairs its write, but the alias shows its
    version until then. Should it die first, the next gate repairs it under the lock
    before deciding: an alias on a broken ticket's version while a later ticket's
    record names another is a late write (a champion set by hand is neither).

Fault injection
    ``NASFLOW_PROMOTION_PAUSE=<point>:<seconds|stop>[,<point>:...]`` makes the gate
    sleep, or stop its whole process with ``SIGSTOP`` (a frozen VM, a stop-the-world
    pause: the renewal thread stops too), when it reaches ``<point>`` (``decided``:
    after the decision, before the first fence; ``fenced``: after the first fence and
    the commit record, before the alias write; ``written``: after the alias write,
    before the second fence). Tests and drills use it; unset it does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.pool
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nasflow.errors import TrackingError
from nasflow.registry._mlflow import is_error_code, one_line

logger = logging.getLogger(__name__)


#: Suffix of the registered model whose versions are the lease tickets (HTTP servers).
LOCK_SUFFIX = ".nasflow-promotion-lock"


LOCK_OWNER_TAG = "nasflow.lock.owner"


LOCK_BROKEN_BY_TAG = "nasflow.lock.broken_by"


#: Prefix of the tag a breaker leaves on the *promoted* model for each ticket it broke,
#: ``<prefix><ticket, 12 digits> = <breaker's ticket>``; kept after the tickets are deleted,
#: so that a later gate can tell a late write of a broken holder from a champion set by hand.
BROKEN_TICKET_TAG_PREFIX = "nasflow.lock.broken."


#: Source URI recorded on ticket versions (they carry no model).
TICKET_SOURCE = "nasflow:/promotion-lock-ticket"


#: Default lease of a ticket; ``NASFLOW_PROMOTION_LEASE_S`` overrides it.
LOCK_LEASE_S = 30.0


#: Default wait for another gate's lock; ``NASFLOW_PROMOTION_LOCK_TIMEOUT_S`` overrides it.
LOCK_TIMEOUT_S = 120.0


LEASE_ENV = "NASFLOW_PROMOTION_LEASE_S"


TIMEOUT_ENV = "NASFLOW_PROMOTION_LOCK_TIMEOUT_S"


PAUSE_ENV = "NASFLOW_PROMOTION_PAUSE"


#: Namespace half of the PostgreSQL advisory key ("nas" in ASCII); the other half hashes the name.
PG_KEY_NAMESPACE = 0x6E6173


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as error:
        raise TrackingError(f"{name}={raw!r} is not a number of seconds") from error
    if value <= 0:
        raise TrackingError(f"{name}={raw!r} must be above 0 seconds")
    return value


def lease_seconds() -> float:
    """The ticket lease in seconds (``NASFLOW_PROMOTION_LEASE_S``, default 30)."""
    return _seconds_from_env(LEASE_ENV, LOCK_LEASE_S)


def timeout_seconds() -> float:
    """How long a gate waits for the lock (``NASFLOW_PROMOTION_LOCK_TIMEOUT_S``, default 120)."""
    return _seconds_from_env(TIMEOUT_ENV, LOCK_TIMEOUT_S)


def pause_point(point: str) -> None:
    """The fault-injection hook (see the module docstring); a no-op unless the env var names ``point``."""
    wanted = dict(item.partition(":")[::2] for item in os.environ.get(PAUSE_ENV, "").split(",") if item)
    if point not in wanted:
        return
    how = wanted[point]
    if how == "stop":
        logger.warning("%s: stopping process %d at %r", PAUSE_ENV, os.getpid(), point)
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    time.sleep(float(how or 0))


def _jittered_sleep(backoff: float, deadline: float) -> float:
    """Sleep ``backoff`` +-50 % but not past ``deadline``; return the next backoff."""
    time.sleep(max(0.0, min(backoff * random.uniform(0.5, 1.5), deadline - time.monotonic())))
    return min(backoff * 2, 1.0)


def _lost(model_name: str, uri: str, when: str, why: str) -> TrackingError:
    return TrackingError(f"lost the promotion lock of {model_name!r} at {uri} {when}: {why}")


class PromotionLock:
    """A held promotion lock; :meth:`fence` raises ``TrackingError`` once it is no longer held."""

    #: Unique id of this holding, for audit keys.
    token: str
    #: What serializes the gate: ``postgresql``, ``sqlite`` or ``lease``.
    kind: str
    #: The lease's fencing token (its ticket number, larger for every later holder); None
    #: for the database locks, under which no write of a former holder can land late.
    fencing_token: int | None = None

    def fence(self, when: str) -> None:  # pragma: no cover - interface
        """Raise ``TrackingError`` naming ``when`` unless this gate still holds the lock."""
        raise NotImplementedError

    def release(self) -> None:  # pragma: no cover - interface
        """Give the lock up (idempotent enough to call from ``finally``)."""
        raise NotImplementedError


def _pg_key(model_name: str) -> int:
    return int.from_bytes(hashlib.sha256(model_name.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class _PostgresLock(PromotionLock):
    uri: str
    model_name: str
    connection: object = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    kind: str = "postgresql"

    def acquire(self, timeout_s: float) -> None:
        engine = sqlalchemy.create_engine(self.uri, poolclass=sqlalchemy.pool.NullPool)
        try:
            self.connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise TrackingError(
                f"cannot open the promotion lock connection to {self.uri}: {one_line(str(error))}"
            ) from error
        key = {"namespace": PG_KEY_NAMESPACE, "key": _pg_key(self.model_name)}
        deadline, backoff = time.monotonic() + timeout_s, 0.05
        while not self.connection.execute(
            sqlalchemy.text("SELECT pg_try_advisory_lock(:namespace, :key)"), key
        ).scalar():
            if time.monotonic() > deadline:
                self.connection.close()
                raise TrackingError(
                    f"promotion lock of {self.model_name!r} at {self.uri} (PostgreSQL advisory lock "
                    f"{PG_KEY_NAMESPACE},{key['key']}) is held by another gate; gave up after {timeout_s:g} s"
                )
            backoff = _jittered_sleep(backoff, deadline)

    def fence(self, when: str) -> None:
        try:
            held = self.connection.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid() AND classid = :namespace AND objid = :key AND objsubid = 2"
                ),
                {"namespace": PG_KEY_NAMESPACE, "key": _pg_key(self.model_name)},
            ).scalar()
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise _lost(self.model_name, self.uri, when, one_line(str(error))) from error
        if not held:
            raise _lost(self.model_name, self.uri, when, "the advisory lock is no longer held")

    def release(self) -> None:
        try:
            self.connection.execute(
                sqlalchemy.text("SELECT pg_advisory_unlock(:namespace, :key)"),
                {"namespace": PG_KEY_NAMESPACE, "key": _pg_key(self.model_name)},
            )
        finally:
            self.connection.close()  # ending the session releases the lock in any case


@dataclass
class _SqliteLock(PromotionLock):
    uri: str
    model_name: str
    path: Path
    connection: sqlite3.Connection | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    kind: str = "sqlite"

    def acquire(self, timeout_s: float) -> None:
        # SQLite's busy handler waits up to ``timeout`` for the exclusive lock.
        self.connection = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        try:
            self.connection.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as error:
            self.connection.close()
            raise TrackingError(
                f"promotion lock of {self.model_name!r} at {self.uri} ({self.path}) is held by another "
                f"gate; gave up after {timeout_s:g} s ({error})"
            ) from error

    def fence(self, when: str) -> None:
        if self.connection is None or not self.connection.in_transaction:
            raise _lost(self.model_name, self.uri, when, f"the exclusive transaction on {self.path} ended")

    def release(self) -> None:
        try:
            self.connection.execute("ROLLBACK")
        finally:
            self.connection.close()


def _sqlite_lock_path(uri: str) -> Path | None:
    path = uri[len("sqlite:///") :].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    return Path(f"{path}.nasflow-promotion-lock") if path and path != ":memory:" else None


class _LeaseLock(PromotionLock):
    """The ticket protocol of the module docstring, over MLflow's REST API."""

    kind = "lease"

    def __init__(self, client: MlflowClient, uri: str, model_name: str, owner: str, lease_s: float):
        self.client, self.uri, self.model_name, self.owner = client, uri, model_name, owner
        self.lock_name = f"{model_name}{LOCK_SUFFIX}"
        self.lease_s = lease_s
        self.ticket: int | None = None
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._last_renewed = time.monotonic()

    @property
    def fencing_token(self) -> int | None:
        """This gate's ticket number."""
        return self.ticket

    def _tickets(self) -> dict[int, ModelVersion]:
        found = self.client.search_model_versions(f"name = '{self.lock_name}'")
        return {int(version.version): version for version in found}

    def _renew_forever(self) -> None:
        renewals = 0
        while not self._stop.wait(self.lease_s / 4):
            started = time.monotonic()
            renewals += 1
            try:
                self.client.update_model_version(
                    self.lock_name, str(self.ticket), f"lease renewal {renewals}"
                )
                self._last_renewed = started
            except (MlflowException, OSError) as error:
                logger.warning(
                    "could not renew promotion lock ticket %s: %s", self.ticket, one_line(str(error))
                )

    def acquire(self, timeout_s: float) -> None:
        try:
            self.client.create_registered_model(
                self.lock_name,
                description=f"Promotion lock of {self.model_name}: each version is a gate's ticket; do not use.",
            )
        except MlflowException as error:
            if not is_error_code(error, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        created = self.client.create_model_version(
            self.lock_name,
            source=TICKET_SOURCE,
            tags={LOCK_OWNER_TAG: self.owner},
            description="lease renewal 0",
            await_creation_for=0,
        )
        self.ticket = int(created.version)
        self._last_renewed = time.monotonic()
        self._renewer = threading.Thread(target=self._renew_forever, name="promotion-lease", daemon=True)
        self._renewer.start()
        deadline, backoff = time.monotonic() + timeout_s, 0.05
        try:
            while not self._my_turn():
                if time.monotonic() > deadline:
                    raise TrackingError(
                        f"promotion lock of {self.model_name!r} at {self.uri} is held by "
                        f"{self._holder_description()}; gave up after {timeout_s:g} s"
                    )
                backoff = _jittered_sleep(backoff, deadline)
        except BaseException:
            self.release()
            raise

    def _my_turn(self) -> bool:
        tickets = self._tickets()
        mine = tickets.get(self.ticket)
        if mine is None or LOCK_BROKEN_BY_TAG in mine.tags:
            raise _lost(
                self.model_name, self.uri, "while waiting", f"ticket {self.ticket} was broken by another gate"
            )
        earlier = [
            t
            for number, t in sorted(tickets.items())
            if number < self.ticket and LOCK_BROKEN_BY_TAG not in t.tags
        ]
        for ticket in earlier:
            silent_ms = mine.last_updated_timestamp - ticket.last_updated_timestamp
            if silent_ms > self.lease_s * 1000:
                logger.warning(
                    "breaking promotion lock ticket %s of %s held by %s (not renewed for %.1f s by the server's clock)",
                    ticket.version, self.model_name, ticket.tags.get(LOCK_OWNER_TAG), silent_ms / 1000,
                )  # fmt: skip
                self.client.set_registered_model_tag(
                    self.model_name, f"{BROKEN_TICKET_TAG_PREFIX}{int(ticket.version):012d}", str(self.ticket)
                )
                self.client.set_model_version_tag(
                    self.lock_name, ticket.version, LOCK_BROKEN_BY_TAG, str(self.ticket)
                )
        return not earlier

    def _holder_description(self) -> str:
        live = [
            t
            for n, t in sorted(self._tickets().items())
            if n < self.ticket and LOCK_BROKEN_BY_TAG not in t.tags
        ]
        return ", ".join(f"{t.tags.get(LOCK_OWNER_TAG)} (ticket {t.version})" for t in live) or "nobody now"

    def fence(self, when: str) -> None:
        if time.monotonic() - self._last_renewed > self.lease_s:
            raise _lost(self.model_name, self.uri, when, f"ticket {self.ticket} was not renewed for a lease")
        try:
            mine = self.client.get_model_version(self.lock_name, str(self.ticket))
        except MlflowException as error:
            raise _lost(self.model_name, self.uri, when, f"ticket {self.ticket} is gone") from error
        if LOCK_BROKEN_BY_TAG in mine.tags:
            raise _lost(
                self.model_name, self.uri, when,
                f"ticket {self.ticket} was broken by ticket {mine.tags[LOCK_BROKEN_BY_TAG]}",
            )  # fmt: skip

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.lease_s)
        if self.ticket is None:
            return
        broken_below = [
            n for n, t in self._tickets().items() if n < self.ticket and LOCK_BROKEN_BY_TAG in t.tags
        ]
        for number in [self.ticket, *broken_below]:
            try:
                self.client.delete_model_version(self.lock_name, str(number))
            except MlflowException as error:
                if not is_error_code(error, "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise


def _make_lock(client: MlflowClient, uri: str, model_name: str, owner: str) -> PromotionLock:
    if uri.startswith(("postgresql:", "postgresql+", "postgres:")):
        return _PostgresLock(uri=uri, model_name=model_name)
    sqlite_path = _sqlite_lock_path(uri)
    if sqlite_path is not None:
        return _SqliteLock(uri=uri, model_name=model_name, path=sqlite_path)
    return _LeaseLock(client, uri, model_name, owner, lease_seconds())


@contextlib.contextmanager
def promotion_lock(client: MlflowClient, uri: str, model_name: str, owner: str) -> Iterator[PromotionLock]:
    """Hold the promotion lock of ``model_name`` for the block (see the module docstring).

    Raises:
        TrackingError: The lock stayed held by another gate for the whole timeout, or
            (lease) this gate's ticket was broken while it waited.
    """
    lock = _make_lock(client, uri, model_name, owner)
    lock.acquire(timeout_seconds())
    try:
        yield lock
    finally:
        try:
            lock.release()
        except (MlflowException, OSError, sqlite3.Error, sqlalchemy.exc.SQLAlchemyError) as error:
            # Do not mask the error that may be in flight; a lease expires on its own and a
            # database lock ends with its connection.
            logger.warning(
                "could not release the promotion lock of %s at %s: %s", model_name, uri, one_line(str(error))
            )
