"""A kubelet for tests/fake_kube_api.py that runs a Job's pods as podman containers.

The fake API server stays the stand-in for Kubernetes (no real one can run here); the pods
are real containers of the worker image, started the way a kubelet would start them: the
manifest's image, command and resolved env, its securityContext (user, read-only root,
dropped capabilities, no privilege escalation), an emptyDir /tmp, on one podman network with
the chief. imagePullPolicy Always becomes --pull=never: no registry can be reached here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from fake_kube_api import FakeKubelet, _Pod
from podman_support import LABEL, podman


class PodmanKubelet(FakeKubelet):
    """Starts each pod as ``podman run`` in the foreground: the process's exit is the pod's."""

    def __init__(self, pods_dir: Path, *, network: str, **kwargs: Any) -> None:
        super().__init__(pods_dir, **kwargs)
        self.network = network
        self.images: list[str] = []

    def start_pod(self, job: dict[str, Any], index: int) -> _Pod:
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        pod = _Pod(job["metadata"]["name"], index)
        args = [
            "podman", "run", "--name", pod.name, "--hostname", pod.name, "--label", LABEL,
            "--network", self.network, "--pull=never",
            "--user", f"{context['runAsUser']}:{context.get('runAsGroup', context['runAsUser'])}",
        ]  # fmt: skip
        if context.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if context.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for capability in context.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", capability]
        empty_dirs = {volume["name"] for volume in spec.get("volumes", []) if "emptyDir" in volume}
        for mount in container.get("volumeMounts", []):
            if mount["name"] in empty_dirs:
                args += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777"]
        for key, value in self.environment(container, index).items():
            args += ["--env", f"{key}={value}"]
        args += [container["image"], *container["command"]]
        self.images.append(container["image"])
        pod_dir = self.pods_dir / pod.name
        pod_dir.mkdir(parents=True)
        pod.log = pod_dir / "log.txt"
        with pod.log.open("w") as out:
            pod.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pods.append(pod)
        return pod

    def kill_pods(self, job_name: str) -> None:
        for pod in self.pods:
            if pod.job == job_name and pod.observe() is None:
                self.kill(pod)

    def kill(self, pod: _Pod) -> None:
        """SIGKILL the pod's container, as a node losing it would."""
        podman("kill", "--signal", "KILL", pod.name, check=False)
        pod.process.wait(timeout=60)
        pod.observe()
