"""Start k8s/ manifests with ``podman kube play``: convert only what podman 4.3 cannot read.

``kubectl kustomize k8s/overlays/local`` renders the manifests; the objects kube play reads
(ConfigMap, PersistentVolumeClaim, Deployment) are passed on unchanged, with these conversions,
each for something kube play (or a machine without a cluster) cannot do:

* **Secret**: kube play resolves ``secretKeyRef`` from *podman secrets* holding the Secret's
  ``data`` as a JSON map (key: base64 value), not from a Secret in the same file; each Secret
  becomes ``podman secret create <name>``. Secret *volumes* are worse in podman 4.3: without
  an explicit ``optional`` it crashes (nil pointer in ``VolumeFromSecret``), with one it mounts
  an empty folder; a secret volume becomes a ConfigMap volume of the same keys (same mode).
* **emptyDir / PersistentVolumeClaim**: podman 4.3 turns an emptyDir into a named volume
  called after the volume (``tmp``), shared by every pod that has one, and copies the image
  folder's owner and mode over any fresh volume; neither honours ``fsGroup``. Each becomes a
  folder of its own, owned as the kubelet would make it (hostPath).
* **StatefulSet**: not a kind kube play knows; its pod template runs as a Deployment of one
  replica, its ``volumeClaimTemplates`` as PersistentVolumeClaims named as the StatefulSet
  controller names them (``<claim>-<set>-0``).
* **Service DNS**: no cluster DNS here; the ConfigMap's database host is set to the database
  pod's address on the podman network.
* **$(VAR) in env values**: Kubernetes expands a reference to an earlier variable of the
  container; kube play passes ``$(VAR)`` on literally. Such values are expanded here from the
  ConfigMaps and Secrets the earlier variables read.
* **httpGet probes**: the kubelet makes the request; podman 4.3 turns the probe into ``curl``
  run *inside* the container (not in the image) and restarts the container when it fails.
  They are left out (the tests wait on the same endpoint from outside).
* Namespace, ServiceAccount, Role(Binding), NetworkPolicy, Service: API objects with no
  container to run; left out (what they express is not exercised here).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from podman_support import STATE_DIR, podman

from nasflow.config import repo_root

#: Kinds kube play starts or reads, passed on as they are (after the conversions above).
PLAYED_KINDS = ("ConfigMap", "PersistentVolumeClaim", "Deployment")
SECRETS_FILE = STATE_DIR / "podman-secrets"
#: kube play makes a named volume per ConfigMap, unlabelled: tier.sh removes those listed here.
VOLUMES_FILE = STATE_DIR / "podman-volumes"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def render(overlay: str = "k8s/overlays/local") -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay, as a list of objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is needed to render k8s/ (kubectl kustomize)")
    out = subprocess.run([kubectl, "kustomize", str(repo_root() / overlay)], check=True, capture_output=True, text=True)
    return [document for document in yaml.safe_load_all(out.stdout) if document]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Objects of one kind by name."""
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def create_secrets(objects: list[dict[str, Any]]) -> list[str]:
    """Every Secret as a podman secret of the same name (its data as JSON)."""
    names = []
    for name, secret in by_kind(objects, "Secret").items():
        data = {key: base64.b64encode(str(value).encode()).decode() for key, value in secret.get("stringData", {}).items()}
        data.update(secret.get("data", {}))
        podman("secret", "rm", name, check=False)
        podman("secret", "create", name, "-", input_text=json.dumps(data))
        names.append(name)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with SECRETS_FILE.open("a") as record:  # tier.sh removes them if this session cannot
            record.write(name + "\n")
    return names


def remove_secrets(names: list[str]) -> None:
    for name in names:
        podman("secret", "rm", name, check=False)


def statefulset_as_deployment(statefulset: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The StatefulSet's pod template as a one-replica Deployment, and its claims as PVCs."""
    name = statefulset["metadata"]["name"]
    template = copy.deepcopy(statefulset["spec"]["template"])
    claims = []
    for claim in statefulset["spec"].get("volumeClaimTemplates", []):
        claim_name = f"{claim['metadata']['name']}-{name}-0"
        claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim_name}, "spec": claim["spec"]})
        template["spec"].setdefault("volumes", []).append(
            {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}}
        )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": statefulset["metadata"].get("labels", {})},
        "spec": {"replicas": 1, "selector": statefulset["spec"]["selector"], "template": template},
    }
    return deployment, claims


def convert_volumes(deployment: dict[str, Any], secrets: dict[str, dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """Convert the pod's volumes to what podman 4.3 runs faithfully (see the module docstring).

    Secret volumes become ConfigMap volumes; emptyDir and PersistentVolumeClaim volumes become
    folders of their own under ``root`` (hostPath), owned by the pod's ``runAsUser`` and
    ``fsGroup`` as the kubelet makes them. Named podman volumes would not do: podman copies the
    image folder's owner and mode over a fresh volume on first use, which the kubelet never does.

    Returns:
        The ConfigMaps the secret volumes now read, to play with the Deployment.
    """
    pod = deployment["spec"]["template"]["spec"]
    context = pod.get("securityContext", {})
    user, group = context.get("runAsUser", 0), context.get("fsGroup", context.get("runAsGroup", 0))
    config_maps = []
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            source = volume.pop("secret")
            secret = secrets[source["secretName"]]
            data = {key: str(value) for key, value in secret.get("stringData", {}).items()}
            data.update({key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()})
            config_maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": source["secretName"]}, "data": data})
            volume["configMap"] = {"name": source["secretName"], **({"defaultMode": source["defaultMode"]} if "defaultMode" in source else {})}
        elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
            volume.pop("emptyDir", None)
            volume.pop("persistentVolumeClaim", None)
            folder = root / deployment["metadata"]["name"] / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, user, group)
            folder.chmod(0o2770)
            volume["hostPath"] = {"path": str(folder), "type": "Directory"}
    return config_maps


def drop_http_probes(deployment: dict[str, Any]) -> None:
    """Remove httpGet probes, which kube play would run as curl inside the container."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if "httpGet" in container.get(probe, {}):
                container.pop(probe)


def expand_dependent_env(
    deployment: dict[str, Any], config_maps: dict[str, dict[str, Any]], secrets: dict[str, dict[str, Any]]
) -> None:
    """Expand ``$(VAR)`` in env values as Kubernetes does (kube play does not)."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        known: dict[str, str] = {}
        for entry in container.get("env", []):
            source = entry.get("valueFrom", {})
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                known[entry["name"]] = str(config_maps[ref["name"]]["data"][ref["key"]])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = secrets[ref["name"]]
                value = secret.get("stringData", {}).get(ref["key"])
                known[entry["name"]] = str(value) if value is not None else base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "value" in entry:
                entry["value"] = _VAR.sub(lambda match, seen=known: seen.get(match.group(1), match.group(0)), str(entry["value"]))
                known[entry["name"]] = entry["value"]


def play(documents: list[dict[str, Any]], path: Path, *, network: str, ip: str) -> str:
    """``podman kube play`` one Deployment (with its ConfigMaps/PVCs) at a fixed address."""
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with VOLUMES_FILE.open("a") as record:  # tier.sh removes them if this session cannot
        record.writelines(f"{d['metadata']['name']}\n" for d in documents if d.get("kind") == "ConfigMap")
    return podman("kube", "play", "--network", network, "--ip", ip, str(path), timeout=600)


def down(path: Path) -> None:
    """``podman kube down``, and the volumes kube play made for the file's ConfigMaps (it leaves them)."""
    podman("kube", "down", str(path), check=False, timeout=120)
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "ConfigMap":
            podman("volume", "rm", "-f", document["metadata"]["name"], check=False)
