"""Two OS processes run the promotion gate at the same moment against PostgreSQL-backed MLflow.

The champion must end on the better version every round, whichever process starts
first, and the audit trail must hold both attempts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_server import create_tagged_version, running_mlflow_server
from postgres import postgres_unavailable_reason, running_postgres

from nasflow.config import CHAMPION_ALIAS
from nasflow.errors import TrackingError
from nasflow.registry import lock, promotion

ROUNDS = 5
#: Head start of the first process of a round (seconds); 0 means the same instant.
HEAD_STARTS = [0.0, 0.0, 0.01, 0.01, 0.03]

# A long-lived promoter: reads one job per line, sleeps until the job's start time
# (the barrier), promotes, answers one JSON line. Reusing the process across rounds
# pays the mlflow import once.
WORKER = textwrap.dedent(
    """
    import json, sys, time
    from nasflow.registry import promote

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        time.sleep(max(0.0, job["start_at"] - time.time()))
        started = time.time()
        decision = promote(job["model"], job["version"], tracking_uri=job["uri"], actor=job["actor"])
        print(json.dumps({"started": started, "promoted": decision.promoted, "reason": decision.reason,
                          "champion_before": decision.champion_version}), flush=True)
    """
)


@pytest.fixture(scope="module")
def pg_server_uri(tmp_path_factory):
    reason = postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with running_postgres() as dsn, running_mlflow_server(tmp_path_factory.mktemp("mlflow-pg"), dsn) as uri:
        yield uri


@pytest.fixture(scope="module")
def client(pg_server_uri):
    return MlflowClient(tracking_uri=pg_server_uri, registry_uri=pg_server_uri)


def _start_worker() -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert json.loads(_read_answer(process)) == {"ready": True}
    return process


def _read_answer(process: subprocess.Popen) -> str:
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=10)
        raise AssertionError(f"promoter process {process.pid} died:\n{process.stderr.read()}")
    return line


def test_simultaneous_promotions_leave_the_better_version_champion(pg_server_uri, client):
    name = "race"
    v90 = create_tagged_version(client, name, 0.90)
    v95 = create_tagged_version(client, name, 0.95)
    workers = {"p90": _start_worker(), "p95": _start_worker()}
    versions = {"p90": v90, "p95": v95}
    try:
        for round_index in range(ROUNDS):
            if CHAMPION_ALIAS in client.get_registered_model(name).aliases:
                client.delete_registered_model_alias(name, CHAMPION_ALIAS)
            order = ["p90", "p95"] if round_index % 2 == 0 else ["p95", "p90"]
            start_at = time.time() + 0.5
            for position, key in enumerate(order):
                job = {
                    "model": name,
                    "version": versions[key],
                    "uri": pg_server_uri,
                    "actor": f"{key}-round{round_index}",
                    "start_at": start_at + (HEAD_STARTS[round_index] if position else 0.0),
                }
                workers[key].stdin.write(json.dumps(job) + "\n")
                workers[key].stdin.flush()
            answers = {key: json.loads(_read_answer(workers[key])) for key in order}

            assert abs(answers["p90"]["started"] - answers["p95"]["started"]) < 0.25, (
                "the race did not happen"
            )
            assert answers["p95"]["promoted"], answers["p95"]["reason"]
            assert client.get_registered_model(name).aliases[CHAMPION_ALIAS] == v95, f"round {round_index}"
            # Serialized: 0.90 went either first (no champion) or second (refused against 0.95).
            p90 = answers["p90"]
            assert p90["promoted"] == (p90["champion_before"] is None), p90
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait(timeout=30)

    tags = client.get_registered_model(name).tags
    audit = [json.loads(value) for key, value in tags.items() if key.startswith(promotion.AUDIT_TAG_PREFIX)]
    attempts = {
        (record["by"], record["version"]) for record in audit if record["event"] in ("promoted", "refused")
    }
    expected = {(f"{key}-round{r}", versions[key]) for r in range(ROUNDS) for key in versions}
    assert attempts == expected
    assert not client.search_registered_models(f"name LIKE '%{lock.LOCK_SUFFIX}'")


def _hold_lock(client, name: str, expires_in_s: float) -> None:
    client.create_registered_model(
        f"{name}{lock.LOCK_SUFFIX}",
        tags={
            lock.LOCK_TOKEN_TAG: "someone-else",
            lock.LOCK_OWNER_TAG: "crashed-gate",
            lock.LOCK_EXPIRES_TAG: f"{time.time() + expires_in_s:.3f}",
        },
    )


def test_expired_lock_is_broken_and_live_lock_is_waited_for(pg_server_uri, client, monkeypatch):
    name = "locks"
    version = create_tagged_version(client, name, 0.8)

    _hold_lock(client, name, expires_in_s=-1.0)
    decision = promotion.promote(name, version, tracking_uri=pg_server_uri)
    assert decision.promoted
    with pytest.raises(MlflowException):
        client.get_registered_model(f"{name}{lock.LOCK_SUFFIX}")

    other = create_tagged_version(client, name, 0.9)
    _hold_lock(client, name, expires_in_s=60.0)
    monkeypatch.setattr(lock, "LOCK_TIMEOUT_S", 1.0)
    with pytest.raises(TrackingError, match="held by crashed-gate") as error:
        promotion.promote(name, other, tracking_uri=pg_server_uri)
    assert pg_server_uri in str(error.value)
    assert client.get_registered_model(name).aliases[CHAMPION_ALIAS] == version
