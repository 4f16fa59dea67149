"""Fixtures of the container tier (run it with `make test-containers`, which builds the images)."""

from __future__ import annotations

import os
import shutil

import pytest
from podman_support import docker_socket, task_containers_keep_their_exit_code


def _required_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value or not shutil.which("podman") or not os.environ.get("CONTAINERS_CONF"):
        pytest.exit(f"nasflow: the container tier needs {name} and a configured podman: run `make test-containers`", 2)
    return value


@pytest.fixture(scope="session")
def cpu_image() -> str:
    """The CPU image built from docker/Dockerfile (the tag `make image` gives)."""
    return _required_env("NASFLOW_TIER_IMAGE")


@pytest.fixture(scope="session")
def gpu_image() -> str:
    """The CUDA image built from docker/Dockerfile.gpu (tier.sh skips it with NASFLOW_TIER_GPU_IMAGE=0)."""
    if os.environ.get("NASFLOW_TIER_GPU_IMAGE", "1") == "0":
        reason = os.environ.get("NASFLOW_TIER_GPU_SKIPPED", "NASFLOW_TIER_GPU_IMAGE=0")
        pytest.skip(f"docker/Dockerfile.gpu was not built ({reason})")
    return _required_env("NASFLOW_TIER_IMAGE_GPU")


@pytest.fixture(scope="session")
def docker_host(cpu_image):
    """podman's Docker-compatible API for kfp.local's DockerRunner, as ``DOCKER_HOST``."""
    with docker_socket() as host, task_containers_keep_their_exit_code():
        previous = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = host
        try:
            yield host
        finally:
            if previous is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = previous
