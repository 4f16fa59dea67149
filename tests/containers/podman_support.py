"""Test support for the container tier: podman (rootful) as configured by tests/containers/tier.sh.

Everything a test starts is labelled ``nasflow.tier=<run id>`` (``NASFLOW_TIER_RUN_ID``) so
that tier.sh removes it even when a test or the whole session dies. The work-arounds for
kfp-vs-podman differences live here, not in nasflow: the product talks to a Docker API or a
Kubernetes API, and podman 4.3 is only the engine these machines can run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

RUN_ID = os.environ.get("NASFLOW_TIER_RUN_ID", f"tier-adhoc-{os.getpid()}")
STATE_DIR = Path(os.environ.get("NASFLOW_TIER_STATE", f"/tmp/nasflow-{RUN_ID}"))
LABEL = f"nasflow.tier={RUN_ID}"
#: The image's non-root user (docker/Dockerfile USER).
IMAGE_UID = 10001


def podman(*args: str, check: bool = True, timeout: float = 300, input_text: str | None = None) -> str:
    """Run one podman command; its stdout. Raises with podman's own stderr when it fails."""
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, input=input_text
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def run_container(
    image: str,
    command: Sequence[str],
    *,
    name: str,
    network: str = "host",
    env: Mapping[str, str] | None = None,
    volumes: Sequence[str] = (),
    detach: bool = True,
    extra: Sequence[str] = (),
) -> str:
    """Start ``image`` as the image's non-root user with a read-only root filesystem.

    These are the restrictions of the manifests in k8s/ (non-root, read-only root, no
    capabilities, no privilege escalation), so a container that works here works there.
    """
    args = [
        "run", "--name", name, "--label", LABEL, "--network", network,
        "--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--user", f"{IMAGE_UID}:{IMAGE_UID}",
    ]  # fmt: skip
    if detach:
        args.append("--detach")
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    for volume in volumes:
        args += ["--volume", volume]
    args += [*extra, image, *command]
    return podman(*args).strip()


def logs(name: str) -> str:
    """A container's stdout and stderr (empty when it is gone)."""
    result = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def wait_exit(name: str, timeout_s: float) -> int:
    """Wait for a container to stop; its exit code."""
    out = podman("wait", name, timeout=timeout_s)
    return int(out.strip().splitlines()[-1])


def inspect(name: str) -> dict:
    """``podman inspect`` of one container or pod."""
    return json.loads(podman("inspect", name))[0]


@contextlib.contextmanager
def docker_socket() -> Iterator[str]:
    """Serve podman's Docker-compatible API on a unix socket; yields its ``DOCKER_HOST``.

    The service is this session's: its pid file lets tier.sh stop it if the session is killed.
    """
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    socket_path = STATE_DIR / "podman.sock"
    log = (STATE_DIR / "podman-service.log").open("ab")
    process = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    pid_file = STATE_DIR / "podman-service.pid"
    pid_file.write_text(str(process.pid))
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman system service did not start: {(STATE_DIR / 'podman-service.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"unix://{socket_path}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        pid_file.unlink(missing_ok=True)


@contextlib.contextmanager
def task_containers_keep_their_exit_code() -> Iterator[None]:
    """Run kfp.local's task containers without ``auto_remove``; remove each once its exit code is read.

    kfp.local's DockerRunner (kfp 2.17) starts every task with ``auto_remove=True`` and, when
    the container is already gone before it reads the exit code, assumes success: with podman
    4.3 (which also answers ``500 no such container`` where Docker answers 404) a step that
    raised was reported SUCCESS and the pipeline failed one step later on missing outputs, and
    the logs of fast tasks were lost. Test support only: nasflow never talks to the Docker API.
    """
    import docker.errors
    from docker.models.containers import Container, ContainerCollection

    original_run, original_wait = ContainerCollection.run, Container.wait

    def run(self, image, command=None, stdout=True, stderr=False, remove=False, **kwargs):
        kwargs["auto_remove"] = False
        return original_run(self, image, command, stdout, stderr, remove, **kwargs)

    def wait(self, **kwargs):
        try:
            return original_wait(self, **kwargs)
        finally:
            with contextlib.suppress(docker.errors.APIError):
                self.remove(force=True)

    ContainerCollection.run, Container.wait = run, wait
    try:
        yield
    finally:
        ContainerCollection.run, Container.wait = original_run, original_wait
