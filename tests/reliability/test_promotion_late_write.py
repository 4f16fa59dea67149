"""The lease's last window: a gate's alias write that lands after its lease was broken.

Against an HTTP MLflow server the gate's exclusion is a lease (``nasflow/registry/lock.py``);
the write itself is one HTTP request, and no fence can stop a request that is already on
its way. These checks stop a gate's whole process (``SIGSTOP`` through
``NASFLOW_PROMOTION_PAUSE``) right between its first fence check and its alias write, for
longer than the lease; a second gate breaks the lease and promotes a better version; then
the stalled gate resumes and its write lands *after* the second gate's. What is guaranteed:

- the stalled gate notices at its second fence, fails with ``lost the promotion lock``, and
  under a fresh turn of the lock puts back the champion the second gate chose (not the one
  it saw when it decided, which would undo the second gate's promotion);
- should it die before that repair, the alias shows its version (the window that remains,
  one HTTP request wide), but its write is not the agreed champion: the next gate, under the
  lock, sees the alias points at a broken ticket's version while a later ticket's commit
  record names another, puts that one back and decides against it;
- a champion set by hand (a rollback) is not taken for such a late write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import create_tagged_version, running_mlflow_server

from nasflow.config import CHAMPION_ALIAS
from nasflow.registry import lock, promotion

pytestmark = pytest.mark.slow

LEASE_S = 4.0

GATE = """
import json, sys
from nasflow.errors import NasflowError
from nasflow.registry import promote
try:
    decision = promote(sys.argv[1], sys.argv[2], tracking_uri=sys.argv[3], actor="stalled")
    print(json.dumps({"promoted": decision.promoted}))
except NasflowError as error:
    print(json.dumps({"error": str(error)}))
"""


def _start_gate(model: str, version: str, uri: str, pause: str) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "NASFLOW_"))}
    env.update({lock.LEASE_ENV: str(LEASE_S), lock.PAUSE_ENV: pause})
    return subprocess.Popen(
        [sys.executable, "-c", GATE, model, version, uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_stopped(process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not Path(f"/proc/{process.pid}/stat").read_text().split(") ", 1)[1].startswith("T"):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the gate never reached its pause point"
        time.sleep(0.05)


def _champion(client: MlflowClient, model: str) -> str | None:
    version = client.get_registered_model(model).aliases.get(CHAMPION_ALIAS)
    return None if version is None else str(version)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow"), startup_timeout_s=300) as uri:
        yield uri


def _stall_then_promote_better(
    client: MlflowClient, uri: str, model: str, pause: str
) -> tuple[subprocess.Popen, dict]:
    """Champion 0.80; a gate decides 0.85 and stops before writing; a second gate promotes 0.90."""
    versions = {metric: create_tagged_version(client, model, metric) for metric in (0.80, 0.85, 0.90)}
    assert promotion.promote(model, versions[0.80], tracking_uri=uri).promoted
    stalled = _start_gate(model, versions[0.85], uri, pause)
    _wait_stopped(stalled)
    os.environ[lock.LEASE_ENV] = str(LEASE_S)
    try:
        # The second gate waits out the stalled gate's lease (by the server's clock) and breaks it.
        decision = promotion.promote(model, versions[0.90], tracking_uri=uri, actor="second")
    finally:
        os.environ.pop(lock.LEASE_ENV, None)
    assert decision.promoted and decision.champion_version == versions[0.80]
    assert _champion(client, model) == versions[0.90]
    return stalled, versions


def test_a_late_alias_write_is_undone_back_to_the_gate_that_broke_the_lease(mlflow_uri):
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    model = "late-write-undone"
    stalled, versions = _stall_then_promote_better(client, mlflow_uri, model, "fenced:stop")
    os.kill(stalled.pid, signal.SIGCONT)  # its alias write lands now, after the second gate's
    out, err = stalled.communicate(timeout=120)
    answer = json.loads(out.strip().splitlines()[-1])
    assert "lost the promotion lock" in answer.get("error", ""), (answer, err[-2000:])
    assert f"restored champion to version {versions[0.90]}" in answer["error"]
    assert _champion(client, model) == versions[0.90], "the better, properly promoted version is champion"
    audit = [
        json.loads(value)
        for key, value in client.get_registered_model(model).tags.items()
        if key.startswith("nasflow.audit.")
    ]
    lost = [record for record in audit if record["event"] == "lost"]
    assert [(record["version"], record["restored_version"]) for record in lost] == [
        (versions[0.85], versions[0.90])
    ]
    assert not client.search_model_versions(f"name = '{model}{lock.LOCK_SUFFIX}'"), "every ticket released"


def test_a_gate_that_dies_after_its_late_write_misleads_no_later_gate(mlflow_uri):
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    model = "late-write-died"
    stalled, versions = _stall_then_promote_better(client, mlflow_uri, model, "fenced:stop,written:stop")
    os.kill(stalled.pid, signal.SIGCONT)
    deadline = time.monotonic() + 120
    while _champion(client, model) != versions[0.85]:  # its late write lands...
        assert time.monotonic() < deadline and stalled.poll() is None, "the late write never landed"
        time.sleep(0.05)
    _wait_stopped(stalled)  # ...and it dies before its second fence
    stalled.kill()
    stalled.wait(timeout=30)
    assert _champion(client, model) == versions[0.85], "the late write landed (the window that remains)"
    # The next gate decides against the champion the gates agreed on (0.90), not the alias (0.85).
    third = create_tagged_version(client, model, 0.87)
    decision = promotion.promote(model, third, tracking_uri=mlflow_uri, actor="third")
    assert not decision.promoted and decision.champion_version == versions[0.90], decision
    assert _champion(client, model) == versions[0.90], "the late write was repaired under the lock"
    audit = [
        json.loads(value)
        for key, value in client.get_registered_model(model).tags.items()
        if key.startswith("nasflow.audit.")
    ]
    assert [(r["version"], r["restored_version"]) for r in audit if r["event"] == "repaired"] == [
        (versions[0.85], versions[0.90])
    ]


def test_a_champion_set_by_hand_is_not_taken_for_a_late_write(mlflow_uri):
    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    model = "rollback-by-hand"
    old, new = (create_tagged_version(client, model, metric) for metric in (0.80, 0.90))
    assert promotion.promote(model, old, tracking_uri=mlflow_uri).promoted
    assert promotion.promote(model, new, tracking_uri=mlflow_uri).promoted
    client.set_registered_model_alias(model, CHAMPION_ALIAS, old)  # an operator rolls back
    candidate = create_tagged_version(client, model, 0.85)
    decision = promotion.promote(model, candidate, tracking_uri=mlflow_uri, actor="after-rollback")
    assert decision.promoted and decision.champion_version == old, decision
