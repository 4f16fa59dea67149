"""Every pipeline step in the real image: kfp.local's DockerRunner over podman's Docker API.

The same pipeline object and the same checks as tests/e2e/test_e2e_local.py, but each task runs
in the CPU image built from docker/Dockerfile, as its non-root user on a read-only root
filesystem, and tracks to a real `mlflow server` on the host (host network).
"""

from __future__ import annotations

from pathlib import Path

from e2e_runs import check_run as _check_run
from e2e_runs import tiny_params as _params
from mlflow_server import running_mlflow_server
from podman_support import IMAGE_UID, RUN_ID

from nasflow.cli.local_run import run_pipeline_locally


def docker_runner(image_env: dict[str, str]):
    """A factory of kfp.local DockerRunners with the k8s manifests' container restrictions."""
    from kfp import local

    def make(run_dir: Path, task_env: dict[str, str]):
        # The image's user is not root: it must be able to write the pipeline root that kfp
        # bind-mounts at the same path (STACK.md: a root-owned root fails the next task).
        run_dir.chmod(0o777)
        return local.DockerRunner(
            network_mode="host",
            user=f"{IMAGE_UID}:{IMAGE_UID}",
            read_only=True,
            tmpfs={"/tmp": "rw,exec,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            labels={"nasflow.tier": RUN_ID},
            environment={**task_env, **image_env},
        )

    return make


def test_every_step_runs_in_the_image_and_tracks_to_mlflow(tmp_path, docker_host, cpu_image):
    import os

    os.umask(0o000)  # kfp creates task folders on the host that the image's user writes into
    # A generous start-up wait: the tier shares 2 cores with image builds and other engineers.
    with running_mlflow_server(tmp_path / "server", startup_timeout_s=300) as uri:
        result = run_pipeline_locally(
            _params(strategy="random", tracking_uri=uri, model_name="digits-in-image"),
            tmp_path / "runs",
            stream=None,
            runner=docker_runner({}),
        )
        _check_run(result, uri, expected_trials=2, model_name="digits-in-image")
        assert result.summary["aliases"] == ["challenger", "champion"]
        log = result.log_path.read_text()
        assert f"Found image '{cpu_image}'" in log, "the tasks ran in the built image"
