"""MLflow + PostgreSQL started from k8s/overlays/local with `podman kube play`.

The Deployment and the StatefulSet run as rendered by `kubectl kustomize`, with their own
security settings (UID 10001, read-only root filesystem, all capabilities dropped, no
privilege escalation) and MLflow's basic auth; tests/containers/kube_play.py lists the few
conversions kube play needs. Then the registry steps run against that server with the
credentials from the environment, and so does the promotion-concurrency test.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_play import (
    by_kind,
    convert_volumes,
    create_secrets,
    down,
    drop_http_probes,
    expand_dependent_env,
    play,
    remove_secrets,
    render,
    statefulset_as_deployment,
)
from mlflow.tracking import MlflowClient
from mlflow_server import create_tagged_version
from podman_support import IMAGE_UID, LABEL, RUN_ID, inspect, podman

from nasflow.config import CHAMPION_ALIAS, MLFLOW_CREDENTIAL_KEYS
from nasflow.registry import promotion

POSTGRES_IMAGE_CONTEXT = Path(__file__).parent / "postgres"
#: Containers of the Deployments as kube play names them (<deployment>-pod-0-<container>).
MLFLOW_CONTAINER = "mlflow-pod-0-mlflow"
POSTGRES_CONTAINER = "postgres-pod-0-postgres"


def _postgres_image(objects) -> str:
    """The image the StatefulSet names; built from Debian's PostgreSQL when it cannot be pulled."""
    (image,) = {c["image"] for c in by_kind(objects, "StatefulSet")["postgres"]["spec"]["template"]["spec"]["containers"]}
    full = image if "/" in image else f"docker.io/library/{image}"
    if subprocess.run(["podman", "image", "exists", full]).returncode == 0 and not _is_stand_in(full):
        return full  # the real image (pulled on a machine that can)
    podman("build", "--pull=never", "--network=host", "--label", "nasflow.stand-in=postgres", "-t", full,
           str(POSTGRES_IMAGE_CONTEXT), timeout=900)  # fmt: skip
    return full


def _is_stand_in(image: str) -> bool:
    return "nasflow.stand-in" in podman("image", "inspect", "--format", "{{json .Labels}}", image)


def _wait(check, what: str, timeout_s: float, logs_of: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout_s} s:\n{podman('logs', logs_of, check=False)[-3000:]}")
        time.sleep(1)


def _http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError) as error:
        print(f"GET {url}: {error!r}")  # shown when a test fails
        return 0


def _labelled(deployment: dict) -> dict:
    deployment["spec"]["template"]["metadata"].setdefault("labels", {})["nasflow.tier"] = RUN_ID
    return deployment


@pytest.fixture(scope="module")
def manifest_mlflow(tmp_path_factory, cpu_image) -> Iterator[tuple[str, dict[str, str]]]:
    """(tracking URI, credentials) of the MLflow Deployment on the PostgreSQL StatefulSet."""
    root = tmp_path_factory.mktemp("kube-play")
    objects = render()
    _postgres_image(objects)
    octet = 20 + (os.getpid() + 100) % 200
    network = f"{RUN_ID}-k8s"
    podman("network", "create", "--label", LABEL, "--subnet", f"10.89.{octet}.0/24", network)
    postgres_ip, mlflow_ip = f"10.89.{octet}.20", f"10.89.{octet}.21"
    secrets = create_secrets(objects)
    played: list[Path] = []
    try:
        configs = by_kind(objects, "ConfigMap")
        # No cluster DNS: the database host is the database pod's address on this network.
        configs["nasflow-config"]["data"]["NASFLOW_POSTGRES_HOST"] = postgres_ip
        secrets_by_name = by_kind(objects, "Secret")
        database, _claims = statefulset_as_deployment(by_kind(objects, "StatefulSet")["postgres"])
        database_files = convert_volumes(_labelled(database), secrets_by_name, root / "volumes")
        played.append(root / "postgres.yaml")
        play([*database_files, database], played[-1], network=network, ip=postgres_ip)
        # initdb on first start: it took over 3 minutes with the 2 cores busy (make test beside it).
        _wait(
            lambda: podman("exec", POSTGRES_CONTAINER, "pg_isready", "-h", "127.0.0.1", check=False).find("accepting") >= 0,
            "PostgreSQL", 600, POSTGRES_CONTAINER,
        )  # fmt: skip
        server = _labelled(by_kind(objects, "Deployment")["mlflow"])
        assert server["spec"]["template"]["spec"]["containers"][0]["image"] == cpu_image
        server_files = convert_volumes(server, secrets_by_name, root / "volumes")
        expand_dependent_env(server, configs, secrets_by_name)
        drop_http_probes(server)
        played.append(root / "mlflow.yaml")
        play([configs["nasflow-config"], configs["mlflow-auth-config"], *server_files, server], played[-1],
             network=network, ip=mlflow_ip)  # fmt: skip
        uri = f"http://{mlflow_ip}:5000"
        # MLflow creates its schema in PostgreSQL on first start: minutes on a busy 2-core machine.
        _wait(lambda: _http_status(f"{uri}/health") == 200, "MLflow", 600, MLFLOW_CONTAINER)
        secret = by_kind(objects, "Secret")["nasflow-mlflow-credentials"]["stringData"]
        yield uri, {key: secret[key] for key in MLFLOW_CREDENTIAL_KEYS}
    finally:
        for path in reversed(played):
            down(path)
        remove_secrets(secrets)
        podman("network", "rm", "-f", network, check=False)


def test_the_manifests_run_with_their_own_security_settings(manifest_mlflow):
    uri, credentials = manifest_mlflow
    for container in (MLFLOW_CONTAINER, POSTGRES_CONTAINER):
        config = inspect(container)
        assert config["Config"]["User"].split(":")[0] == str(IMAGE_UID), container
        assert config["HostConfig"]["ReadonlyRootfs"] is True, container
        assert config["EffectiveCaps"] in (None, []), container
        assert "no-new-privileges" in " ".join(config["HostConfig"]["SecurityOpt"] or []), container
    # Basic auth: nothing without credentials, everything with the Secret's.
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _http_status(search) == 401, (
        podman("ps", "-a", "--format", "{{.Names}} {{.Status}} {{.Ports}}", check=False)
        + podman("inspect", "--format", "{{json .State}} {{.RestartCount}}", MLFLOW_CONTAINER, check=False)
        + podman("logs", MLFLOW_CONTAINER, check=False)[-3000:]
    )
    assert _http_status(search, ("admin", "wrong")) == 401
    assert _http_status(search, (credentials["MLFLOW_TRACKING_USERNAME"], credentials["MLFLOW_TRACKING_PASSWORD"])) == 200


def test_register_and_promote_against_the_manifests_server(manifest_mlflow, monkeypatch):
    uri, credentials = manifest_mlflow
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = f"manifests-{RUN_ID}"
    first = create_tagged_version(client, name, 0.90)
    assert promotion.promote(name, first, tracking_uri=uri).promoted
    worse = create_tagged_version(client, name, 0.80)
    assert not promotion.promote(name, worse, tracking_uri=uri).promoted
    better = create_tagged_version(client, name, 0.95)
    assert promotion.promote(name, better, tracking_uri=uri).promoted
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == better
    # The versions live in PostgreSQL: the server's backend store is the StatefulSet's database.
    environment = inspect(MLFLOW_CONTAINER)["Config"]["Env"]
    assert any(item.startswith("MLFLOW_BACKEND_STORE_URI=postgresql://") for item in environment)


def test_the_server_stays_up_within_its_memory_limit(manifest_mlflow):
    """The server is never restarted, and runs no GenAI job runner (whose processes OOMed it)."""
    uri, _credentials = manifest_mlflow
    assert _http_status(f"{uri}/health") == 200
    state = inspect(MLFLOW_CONTAINER)
    assert state["RestartCount"] == 0 and not state["State"]["OOMKilled"], podman("logs", MLFLOW_CONTAINER, check=False)[-3000:]
    processes = podman("top", MLFLOW_CONTAINER, "args")
    assert "huey" not in processes, processes
