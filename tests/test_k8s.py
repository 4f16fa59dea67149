"""The cluster manifests and images, checked offline with the real tools.

Every kustomize overlay is rendered with ``kubectl kustomize``, every rendered object is
validated against the Kubernetes OpenAPI schemas with ``kubernetes-validate`` (strict), and
checkov scans the rendered manifests, the worker Job nasflow.cluster.job builds, and both
Dockerfiles (once per session); any failed check not in ``k8s/checkov-allowlist.yaml`` fails.
Nothing here needs a cluster or a Docker engine.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

import nasflow
from nasflow.cluster import job
from nasflow.config import DEFAULT_EXPERIMENT, DEFAULT_IMAGE_REGISTRY, DEFAULT_MODEL_NAME, image_reference

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("local", "gpu", "external-db", "kubeflow-profile")
#: Kubernetes version the manifests are validated against (schemas ship with kubernetes-validate).
K8S_VERSION = "1.32.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob")


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    return path


def _checkov() -> str | None:
    """checkov cannot share the project venv (it pins packaging<24; pytest 9 needs >=24)."""
    candidates = [os.environ.get("NASFLOW_CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov"), shutil.which("checkov")]
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    out: dict[str, list[dict[str, Any]]] = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, f"kustomize {overlay}: {result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _pod_specs(docs: list[dict[str, Any]]):
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc, doc["spec"]["template"]["spec"]


def _sample_worker_job(gpus: int = 1) -> dict[str, Any]:
    return job.worker_job_manifest(
        chief_ip="10.0.0.7",
        oracle_port=job.ORACLE_PORT,
        num_workers=3,
        image=image_reference(registry=DEFAULT_IMAGE_REGISTRY),
        owner_pod_name="nasflow-pipeline-x7k2-system-container-impl-123",
        owner_pod_uid="3f1c9a52-5b1e-4c1e-9a51-0c2a0d7e9b11",
        namespace="nasflow",
        command=["nasflow", "search-worker"],
        env={"MLFLOW_TRACKING_URI": "http://mlflow.nasflow.svc.cluster.local:5000"},
        cpu="1",
        memory="2Gi",
        gpus=gpus,
    )


# --- rendering and schema validation ------------------------------------------------------
def test_every_overlay_renders_the_whole_stack(rendered):
    for overlay, docs in rendered.items():
        kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for expected in [
            ("Namespace", "nasflow"),
            ("ConfigMap", "nasflow-config"),
            ("Secret", "nasflow-mlflow-credentials"),
            ("Secret", "nasflow-postgres-credentials"),
            ("ServiceAccount", "nasflow-search"),
            ("Role", "nasflow-search"),
            ("RoleBinding", "nasflow-search"),
            ("Deployment", "mlflow"),
            ("Service", "mlflow"),
            ("NetworkPolicy", "default-deny-all"),
        ]:
            assert expected in kinds, f"{overlay} lacks {expected}"
        assert all(d["metadata"].get("namespace", "nasflow") == "nasflow" for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_schema_valid(rendered, overlay):
    for doc in rendered[overlay]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_is_strict_enough_to_catch_a_typo():
    job = _sample_worker_job()
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo of "resources"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


# --- security baseline ---------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_bounded(rendered, overlay):
    for doc, pod in _pod_specs(rendered[overlay]):
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        for container in pod.get("initContainers", []) + pod["containers"]:
            ctx = container.get("securityContext", {})
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 0)) >= 10000, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container.get("resources", {}).get(bound, {})), where
            image = container["image"]
            assert re.search(r":[\w.-]+$|@sha256:", image) and not image.endswith(":latest"), where


def test_release_image_and_mlflow_server(rendered):
    deployment = _find(rendered["local"], "Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image_reference(registry=DEFAULT_IMAGE_REGISTRY)
    assert container["image"].endswith(":" + nasflow.__version__)
    assert container["command"] == ["mlflow", "server"]
    assert "--serve-artifacts" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    # $(VAR) expansion only sees variables defined earlier in the list.
    names = [e["name"] for e in container["env"]]
    for var in re.findall(r"\$\((\w+)\)", env["MLFLOW_BACKEND_STORE_URI"]["value"]):
        assert names.index(var) < names.index("MLFLOW_BACKEND_STORE_URI")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == "/data/artifacts"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "nasflow-mlflow-credentials"
    # Basic auth (MLflow 3.17) exits at start-up without a static CSRF key (found in a real
    # container, make test-containers); it is the server's secret, not the clients'.
    key_ref = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert key_ref["name"] == "nasflow-mlflow-server"
    assert key_ref["key"] in _find(rendered["local"], "Secret", "nasflow-mlflow-server")["stringData"]


def test_tracking_uri_is_served_and_host_allowed(rendered):
    docs = rendered["local"]
    uri = _find(docs, "ConfigMap", "nasflow-config")["data"]["MLFLOW_TRACKING_URI"]
    assert uri == "http://mlflow.nasflow.svc.cluster.local:5000"
    parts = urlsplit(uri)
    service = _find(docs, "Service", "mlflow")
    assert parts.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert parts.port in [p["port"] for p in service["spec"]["ports"]]
    (container,) = _find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    allowed = next(a for a in container["args"] if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert parts.netloc in allowed


def test_config_map_matches_the_package_defaults(rendered):
    data = _find(rendered["local"], "ConfigMap", "nasflow-config")["data"]
    assert data["NASFLOW_EXPERIMENT"] == DEFAULT_EXPERIMENT
    assert data["NASFLOW_MODEL_NAME"] == DEFAULT_MODEL_NAME
    assert data["KERASTUNER_ORACLE_PORT"] == str(job.ORACLE_PORT)


def test_secrets_hold_placeholders_only(rendered):
    for overlay, docs in rendered.items():
        for secret in (d for d in docs if d["kind"] == "Secret"):
            values = {**secret.get("stringData", {}), **secret.get("data", {})}
            for key, value in values.items():
                if "PASSWORD" in key or "SECRET_KEY" in key:
                    assert value.startswith("CHANGE-ME"), f"{overlay}: {secret['metadata']['name']}.{key}"
    creds = _find(rendered["local"], "Secret", "nasflow-mlflow-credentials")["stringData"]
    assert set(creds) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


def test_network_policies_default_deny_and_the_chief_ports(rendered):
    docs = rendered["local"]
    deny = _find(docs, "NetworkPolicy", "default-deny-all")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    chief = _find(docs, "NetworkPolicy", "search-chief-oracle")["spec"]
    assert chief["podSelector"]["matchLabels"] == job.CHIEF_POD_LABELS
    assert chief["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == job.WORKER_POD_LABELS
    chief_ports = [{"protocol": "TCP", "port": job.ORACLE_PORT}, {"protocol": "TCP", "port": job.BOOTSTRAP_PORT}]
    assert chief["ingress"][0]["ports"] == chief_ports
    worker = _find(docs, "NetworkPolicy", "search-worker-egress")["spec"]
    assert worker["podSelector"]["matchLabels"] == job.WORKER_POD_LABELS
    assert worker["egress"][0]["ports"] == chief_ports
    postgres = _find(docs, "NetworkPolicy", "postgres-ingress-from-mlflow")["spec"]
    assert postgres["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    # The worker Job's pods carry the labels the policies select.
    labels = _sample_worker_job()["spec"]["template"]["metadata"]["labels"]
    assert job.WORKER_POD_LABELS.items() <= labels.items()


def test_local_overlay_is_small(rendered):
    pvc = _find(rendered["local"], "PersistentVolumeClaim", "mlflow-data")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    (container,) = _find(rendered["local"], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["memory"] == "384Mi"
    assert "--workers=1" in container["args"]


def test_gpu_overlay_matches_the_worker_scheduling_constants(rendered):
    data = _find(rendered["gpu"], "ConfigMap", "nasflow-config")["data"]
    assert data["NASFLOW_ACCELERATOR"] == job.GPU_RESOURCE
    ((key, value),) = job.GPU_NODE_SELECTOR.items()
    assert data["NASFLOW_GPU_NODE_SELECTOR"] == f"{key}={value}"
    (toleration,) = job.GPU_TOLERATIONS
    assert data["NASFLOW_GPU_TOLERATION"] == f"{toleration['key']}:{toleration['operator']}:{toleration['effect']}"


def test_external_db_overlay_drops_the_bundled_postgres(rendered):
    docs = rendered["external-db"]
    assert not [d for d in docs if d["metadata"]["name"] == "postgres"]
    assert _find(docs, "ConfigMap", "nasflow-config")["data"]["NASFLOW_POSTGRES_HOST"] != "postgres.nasflow.svc.cluster.local"
    egress = _find(docs, "NetworkPolicy", "mlflow-egress-to-postgres")["spec"]["egress"][0]
    assert "ipBlock" in egress["to"][0]


def test_kubeflow_profile_overlay_lets_the_pipeline_account_launch_workers(rendered):
    binding = _find(rendered["kubeflow-profile"], "RoleBinding", "nasflow-search")
    assert binding["roleRef"]["name"] == "nasflow-search"
    assert {"kind": "ServiceAccount", "name": "default-editor", "namespace": "nasflow"} in binding["subjects"]
    assert {"kind": "ServiceAccount", "name": "nasflow-search", "namespace": "nasflow"} in binding["subjects"]
    # The base binds only nasflow's own account.
    assert len(_find(rendered["local"], "RoleBinding", "nasflow-search")["subjects"]) == 1


# --- images ---------------------------------------------------------------------------------
def _stages(dockerfile: Path) -> list[list[str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_are_multi_stage_non_root_and_pinned(name):
    deps, builder, final = _stages(ROOT / "docker" / name)
    for stage in (deps, final):
        base = stage[0].split()[1]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    # nasflow is built on the dependency stage, so its pins are the ones the image gets.
    assert deps[0].endswith(" AS deps") and builder[0] == "FROM deps AS builder"
    assert "USER 10001:10001" in final
    assert any(line.startswith("HEALTHCHECK") for line in final)
    copies = [line for line in final if line.startswith("COPY")]
    # The venv's dependencies, then nasflow laid over it as a layer of its own (a code change
    # rebuilds only that one; tests/containers/test_images.py rebuilds to check it).
    assert copies == ["COPY --from=deps /opt/venv /opt/venv", "COPY --from=builder /nasflow-layer/ /opt/venv/"]
    assert not any(re.search(r"\b(gcc|build-essential|pip install)\b", line) for line in final)
    # The one system package of the final image is Graphviz (architecture diagrams), runtime only.
    installs = [line for line in final if "apt-get install" in line]
    assert all(
        re.search(r"apt-get install -y --no-install-recommends graphviz +&&", line)
        and "rm -rf /var/lib/apt/lists/*" in line
        for line in installs
    ), installs
    assert not any(line.startswith("COPY nasflow") for line in deps), "code in the dependency layer"
    assert any("pip wheel --no-deps" in line and "pip install --no-deps --prefix /nasflow-layer" in line for line in builder)


def test_gpu_image_uses_the_gpu_extra_pin():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    (gpu_pin,) = [r.strip() for r in config["options.extras_require"]["gpu"].splitlines() if r.strip()]
    deps, _, _ = _stages(ROOT / "docker" / "Dockerfile.gpu")
    assert any(f'"{gpu_pin}"' in line for line in deps), gpu_pin


def test_make_image_tags_with_the_configured_registry():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {**os.environ, "NASFLOW_IMAGE_REGISTRY": "registry.example.com/team"}
    result = subprocess.run(
        ["make", "-n", "image", "image-gpu", "push"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    tag = f"registry.example.com/team/nasflow:{nasflow.__version__}"
    assert f"docker build -f docker/Dockerfile -t {tag} ." in result.stdout
    assert f"docker build -f docker/Dockerfile.gpu -t {tag}-gpu ." in result.stdout
    assert f"docker push {tag}" in result.stdout


# --- checkov ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkov_failures(rendered, tmp_path_factory) -> list[dict[str, str]]:
    """Failed checks of one checkov run over everything we ship to a cluster."""
    checkov = _checkov()
    if checkov is None:
        pytest.skip(
            "checkov not found (NASFLOW_CHECKOV, .venv-checkov/bin/checkov or PATH); it cannot share the "
            "project venv: checkov pins packaging<24, pytest 9 needs >=24"
        )
    scan = tmp_path_factory.mktemp("checkov")
    for overlay, docs in rendered.items():
        (scan / f"{overlay}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    (scan / "worker-job.yaml").write_text(yaml.safe_dump(_sample_worker_job(), sort_keys=False))
    (scan / "docker").mkdir()
    for name in ("Dockerfile", "Dockerfile.gpu"):
        shutil.copy(ROOT / "docker" / name, scan / "docker" / name)
    result = subprocess.run(
        [checkov, "--skip-download", "--quiet", "--compact", "--output", "json",
         "--framework", "kubernetes", "dockerfile", "-d", str(scan)],
        capture_output=True, text=True, timeout=240, cwd=scan, check=False,
    )
    assert result.returncode in (0, 1), f"checkov crashed: {result.stderr[-2000:]}"
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 0
    return [
        {"check": f["check_id"], "resource": f["resource"], "file": Path(f["file_path"]).name}
        for report in reports
        for f in report["results"]["failed_checks"]
    ]


def _allowlist() -> list[dict[str, str]]:
    return yaml.safe_load((K8S / "checkov-allowlist.yaml").read_text())


def _allowed(failure: dict[str, str], entry: dict[str, str]) -> bool:
    return (
        failure["check"] == entry["check"]
        and fnmatch.fnmatchcase(failure["resource"], entry["resource"])
        and fnmatch.fnmatchcase(failure["file"], entry.get("file", "*"))
    )


def test_allowlist_entries_are_explained():
    for entry in _allowlist():
        assert set(entry) <= {"check", "resource", "file", "reason"}, entry
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", entry["check"]), entry
        assert entry["resource"] and len(entry.get("reason", "")) > 40, entry


def test_checkov_finds_nothing_outside_the_allowlist(checkov_failures):
    allowlist = _allowlist()
    unexpected = [f for f in checkov_failures if not any(_allowed(f, e) for e in allowlist)]
    assert unexpected == [], "checkov failures not in k8s/checkov-allowlist.yaml: " + json.dumps(unexpected)


def test_every_allowlist_entry_is_still_needed(checkov_failures):
    stale = [e["check"] for e in _allowlist() if not any(_allowed(f, e) for f in checkov_failures)]
    assert stale == [], f"allow-list entries that no longer match anything: {stale}"
