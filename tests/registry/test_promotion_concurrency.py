"""The promotion gate is exclusive: separate OS processes, real MLflow, real PostgreSQL.

Each backend the gate can lock through is exercised: an HTTP ``mlflow server`` (lease
with fencing tickets), PostgreSQL as the tracking URI (advisory lock) and SQLite as the
tracking URI (exclusive transaction). The PostgreSQL server is a throw-away cluster
(``tests/postgres.py``); an ``mlflow server`` on top of it creates MLflow's schema and
lets the test watch the alias while the gates talk to the database directly.

Two properties, both of which fail with the lock disabled:

* a gate stalled (its whole process stopped) longer than the lease, with a candidate
  that is worse than the champion by the time it wakes, never makes it champion;
* four gates started at the same instant with random candidates leave the best of
  them champion, and the champion's metric only ever rises.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
import sqlalchemy.pool
from mlflow.tracking import MlflowClient
from mlflow_server import create_tagged_version, running_mlflow_server
from mlflow_stores import fresh_sqlite_uri
from postgres import postgres_unavailable_reason, running_postgres

from nasflow.config import CHAMPION_ALIAS
from nasflow.registry import lock, promotion

# Separate gate processes, real servers, real PostgreSQL and leases that must expire: the slow tier.
pytestmark = pytest.mark.slow

#: Lease of the HTTP tickets in these tests (the default is 30 s).
LEASE_S = 8.0
GATES = 4

# A long-lived promoter: reads one job per line, applies the job's environment, sleeps
# until the job's start time (the barrier), promotes, answers one JSON line. Reusing the
# process across tests pays the mlflow import once.
WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from nasflow.errors import NasflowError
    from nasflow.registry import promote

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        os.environ.update(job["env"])
        time.sleep(max(0.0, job["start_at"] - time.time()))
        try:
            decision = promote(job["model"], job["version"], tracking_uri=job["uri"], actor=job["actor"])
            answer = {"promoted": decision.promoted, "reason": decision.reason,
                      "champion_before": decision.champion_version}
        except NasflowError as error:
            answer = {"error": str(error)}
        for key in job["env"]:
            os.environ.pop(key, None)
        print(json.dumps(answer), flush=True)
    """
)


class Gate:
    """One promoter process."""

    def __init__(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "NASFLOW_"))}
        env[lock.LEASE_ENV] = str(LEASE_S)
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def wait_ready(self) -> None:
        assert self.answer() == {"ready": True}

    def send(self, model: str, version: str, uri: str, actor: str, start_at: float, **env: str) -> None:
        job = {"model": model, "version": version, "uri": uri, "actor": actor, "start_at": start_at, "env": env}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()

    def answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            raise AssertionError(f"promoter process {self.process.pid} died:\n{self.process.stderr.read()}")
        return json.loads(line)

    def has_answer(self) -> bool:
        return bool(select.select([self.process.stdout], [], [], 0)[0])

    def is_stopped(self) -> bool:
        return Path(f"/proc/{self.process.pid}/stat").read_text().split(") ", 1)[1].startswith("T")

    def wait_stopped(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_stopped():
            assert self.process.poll() is None and time.monotonic() < deadline, "the gate never paused"
            time.sleep(0.05)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def gates() -> Iterator[list[Gate]]:
    started = [Gate() for _ in range(GATES)]  # they import mlflow in parallel
    try:
        for gate in started:
            gate.wait_ready()
        yield started
    finally:
        for gate in started:
            gate.close()


@pytest.fixture(scope="module")
def http_backend(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(gate URI, watch URI): gates and the test both use an mlflow server on SQLite."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-http"), startup_timeout_s=300) as uri:
        yield uri, uri


@pytest.fixture(scope="module")
def postgres_backend(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(gate URI, watch URI): gates lock and write in PostgreSQL; the test watches through a server."""
    reason = postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with running_postgres() as dsn, running_mlflow_server(tmp_path_factory.mktemp("mlflow-pg"), dsn, startup_timeout_s=300) as uri:
        yield dsn, uri


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory) -> tuple[str, str]:
    """(gate URI, watch URI): the gates and the test all use one SQLite file directly."""
    database = fresh_sqlite_uri(tmp_path_factory.mktemp("mlflow-sqlite"))
    MlflowClient(tracking_uri=database, registry_uri=database).search_experiments()  # creates the schema
    return database, database


def _backend(request, name: str) -> tuple[str, str]:
    return request.getfixturevalue(f"{name}_backend")


class AliasWatcher:
    """Polls the champion alias in a thread and keeps every version it saw, in order."""

    def __init__(self, client: MlflowClient, model: str) -> None:
        self.client, self.model, self.seen = client, model, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            version = _champion(self.client, self.model)
            if version is not None and (not self.seen or self.seen[-1] != version):
                self.seen.append(version)
            time.sleep(0.02)

    def __enter__(self) -> AliasWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _advisory_lock_attempts(dsn: str) -> int:
    """Sessions whose latest statement tried a PostgreSQL advisory lock (the gates' lock connections)."""
    engine = sqlalchemy.create_engine(dsn, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        return int(
            connection.execute(
                sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_try_advisory_lock%'")
            ).scalar()
        )


def _champion(client: MlflowClient, model: str) -> str | None:
    version = client.get_registered_model(model).aliases.get(CHAMPION_ALIAS)
    return None if version is None else str(version)  # an int from a SQL store, a str over HTTP


def _metric(client: MlflowClient, model: str, version: str) -> float:
    return float(client.get_model_version(model, version).tags["nasflow.test_metric"])


@pytest.mark.parametrize("backend", ["http", "postgres"])
def test_a_stalled_gate_never_makes_a_worse_model_champion(request, backend, gates):
    gate_uri, watch_uri = _backend(request, backend)
    client = MlflowClient(tracking_uri=watch_uri, registry_uri=watch_uri)
    name = f"stall-{backend}"
    champion = create_tagged_version(client, name, 0.90)
    stalled_candidate = create_tagged_version(client, name, 0.93)
    better = create_tagged_version(client, name, 0.97)
    assert promotion.promote(name, champion, tracking_uri=watch_uri).promoted
    stalled, other = gates[0], gates[1]

    with AliasWatcher(client, name) as watcher:
        # The stalled gate decides 0.93 > 0.90 under the lock, then its whole process stops
        # (renewal thread included) for longer than the lease.
        stalled.send(name, stalled_candidate, gate_uri, "stalled", 0.0, **{lock.PAUSE_ENV: "decided:stop"})
        stalled.wait_stopped()
        if backend == "http":
            time.sleep(LEASE_S + 1.0)  # past the lease (a database lock never expires)
        other.send(name, better, gate_uri, "other", 0.0)
        if backend == "postgres":
            # A database lock does not expire: the second gate waits for the stalled one (seen
            # trying the advisory lock) and nobody moves champion meanwhile.
            deadline = time.monotonic() + 120
            while not (other.has_answer() or _advisory_lock_attempts(gate_uri) >= 2):
                assert time.monotonic() < deadline, "the second gate neither answered nor tried the lock"
                time.sleep(0.1)
            assert _champion(client, name) == champion
            stalled.resume()
            stalled_answer = stalled.answer()
            assert stalled_answer.get("promoted"), stalled_answer
            other_answer = other.answer()
            assert other_answer.get("promoted") and other_answer["champion_before"] == stalled_candidate
        else:
            # The lease expired by the server's clock: the second gate breaks it and promotes;
            # the stalled gate wakes up fenced out and writes nothing.
            other_answer = other.answer()
            assert other_answer.get("promoted") and other_answer["champion_before"] == champion, other_answer
            stalled.resume()
            stalled_answer = stalled.answer()
            assert "lost the promotion lock" in stalled_answer.get("error", ""), stalled_answer
        time.sleep(0.3)

    assert _champion(client, name) == better
    metrics = [_metric(client, name, version) for version in watcher.seen]
    assert metrics == sorted(metrics), f"champion went down: {list(zip(watcher.seen, metrics, strict=True))}"
    if backend == "http":
        assert stalled_candidate not in watcher.seen
        assert not client.search_model_versions(f"name = '{name}{lock.LOCK_SUFFIX}'")


@pytest.mark.parametrize("backend", ["http", "postgres", "sqlite"])
def test_b_concurrent_gates_leave_the_best_candidate_champion(request, backend, gates):
    gate_uri, watch_uri = _backend(request, backend)
    client = MlflowClient(tracking_uri=watch_uri, registry_uri=watch_uri)
    name = f"race-{backend}"
    rng = random.Random(f"race-{backend}")
    metrics = rng.sample([round(0.80 + 0.01 * step, 2) for step in range(20)], GATES)
    versions = [create_tagged_version(client, name, metric) for metric in metrics]

    start_at = time.time() + 1.0
    with AliasWatcher(client, name) as watcher:
        for index, (gate, version) in enumerate(zip(gates, versions, strict=True)):
            # A pause between deciding and writing widens the race a missing lock loses.
            gate.send(name, version, gate_uri, f"gate{index}", start_at, **{lock.PAUSE_ENV: "decided:0.3"})
        answers = [gate.answer() for gate in gates]
        time.sleep(0.2)

    assert all("error" not in answer for answer in answers), answers
    best = versions[metrics.index(max(metrics))]
    assert _champion(client, name) == best, list(zip(versions, metrics, strict=True))
    seen = [_metric(client, name, version) for version in watcher.seen]
    assert seen == sorted(seen), f"champion went down: {list(zip(watcher.seen, seen, strict=True))}"
    # Serialized: each gate decided against the champion every earlier gate left.
    audit = [
        json.loads(value)
        for key, value in sorted(client.get_registered_model(name).tags.items())
        if key.startswith(promotion.AUDIT_TAG_PREFIX)
    ]
    assert sorted(record["by"] for record in audit) == [f"gate{index}" for index in range(GATES)]
    running_best = None
    for record in sorted(audit, key=lambda record: record["at"]):
        assert record["champion_metric"] == running_best, audit
        if record["event"] == "promoted":
            running_best = record["candidate_metric"]
