"""A distributed search across containers: a chief container and two worker containers.

The chief container runs the search step as it runs in its pod (KUBERNETES_SERVICE_HOST set,
a kubeconfig for the API): it starts the oracle, serves the spec and dataset, and creates the
worker Job. The API server is tests/fake_kube_api.py (no Kubernetes can run here); its kubelet
runs the Job's pods as containers of the image the Job names (PodmanKubelet). All containers
share one podman network and no volume; MLflow is a real server the containers reach through
the network's gateway. One worker container is SIGKILLed mid-trial: the Job controller
replaces the pod, and the replacement (same tuner id) gets the interrupted trial back.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from fake_kube_api import FakeKubeApi
from mlflow_server import running_mlflow_server
from podman_kubelet import PodmanKubelet
from podman_support import LABEL, RUN_ID, logs, podman, run_container, wait_exit
from search_steps import assert_killed_trial_was_rerun

from nasflow import tracking
from nasflow.config import CLUSTER_CREDENTIALS_SECRET

MAX_TRIALS = 4
CHIEF_UID = "5d0c6c1e-7d0b-4b5e-9d1f-2a3b4c5d6e7f"


def _network(image: str) -> tuple[str, str, str]:
    """A podman network of this run: its name, the gateway (the host) and the chief's address.

    netavark creates the bridge (and the gateway address the host's servers bind) only when a
    first container joins, so a placeholder container holds it up for the test.
    """
    octet = 20 + os.getpid() % 200
    name = f"{RUN_ID}-net"
    podman("network", "create", "--label", LABEL, "--subnet", f"10.89.{octet}.0/24", name)
    run_container(image, ["sleep", "infinity"], name=f"{RUN_ID}-net-holder", network=name)
    return name, f"10.89.{octet}.1", f"10.89.{octet}.10"


def _kill_mid_trial(uri: str, kubelet: PodmanKubelet, stop: threading.Event, killed: list[str]) -> None:
    """SIGKILL the container of worker tuner1 once, while one of its trial runs is RUNNING."""
    client = tracking.make_client(uri)
    query = "tags.`nasflow.tuner_id` = 'tuner1' and attributes.status = 'RUNNING'"
    while not stop.is_set():
        experiment = client.get_experiment_by_name("nasflow")
        running = client.search_runs([experiment.experiment_id], query) if experiment else []
        pods = [pod for pod in kubelet.pods if pod.index == 1 and pod.observe() is None]
        if running and pods:
            kubelet.kill(pods[0])
            killed.append(running[0].info.run_id)
            return
        time.sleep(0.3)


def test_chief_and_two_worker_containers_share_one_search(tmp_path: Path, cpu_image: str):
    network, gateway, chief_ip = _network(cpu_image)
    kubelet = PodmanKubelet(
        tmp_path / "pods", network=network, secrets_data={CLUSTER_CREDENTIALS_SECRET: {}}
    )
    kube = FakeKubeApi(kubelet, host=gateway)
    kube_dir = tmp_path / "kube"
    kube_dir.mkdir()
    kube.kubeconfig(kube_dir / "config").chmod(0o644)
    kube_dir.chmod(0o755)
    stop, killed = threading.Event(), []
    try:
        with running_mlflow_server(tmp_path / "mlflow", host=gateway, startup_timeout_s=300) as uri:
            parent_id = tracking.start_parent_run(uri, "nasflow", f"containers-{RUN_ID}")
            chief = f"{RUN_ID}-chief"
            killer = threading.Thread(target=_kill_mid_trial, args=(uri, kubelet, stop, killed), daemon=True)
            killer.start()
            run_container(
                cpu_image,
                ["python", "/support/chief_pod.py"],
                name=chief,
                network=network,
                env={
                    # What the pipeline gives the search pod (downward API, ConfigMap).
                    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
                    "KUBECONFIG": "/kube/config",
                    "HOSTNAME": chief,
                    "NASFLOW_POD_UID": CHIEF_UID,
                    "NASFLOW_NAMESPACE": "nasflow",
                    "NASFLOW_POD_IP": chief_ip,
                    "MLFLOW_TRACKING_URI": uri,
                    "PARENT_RUN_ID": parent_id,
                    "MAX_TRIALS": str(MAX_TRIALS),
                    "WORKER_IMAGE": cpu_image,
                },
                volumes=[f"{Path(__file__).parent}:/support:ro", f"{kube_dir}:/kube:ro"],
                extra=["--ip", chief_ip, "--hostname", chief],
            )
            code = wait_exit(chief, timeout_s=900)
            chief_log = logs(chief)
            stop.set()
            killer.join()
            assert code == 0, chief_log[-4000:]

            client = tracking.make_client(uri)
            experiment = client.get_experiment_by_name("nasflow").experiment_id
            trials = client.search_runs(
                [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`nasflow.role` = 'trial'"
            )
    finally:
        stop.set()
        kube.close()
        for pod in kubelet.pods:
            podman("rm", "-f", pod.name, check=False)
        podman("rm", "-f", f"{RUN_ID}-chief", f"{RUN_ID}-net-holder", check=False)
        podman("network", "rm", "-f", network, check=False)

    finished = [run for run in trials if run.info.status in ("FINISHED", "FAILED")]
    trial_ids = [run.data.tags["nasflow.trial_id"] for run in finished]
    assert len(trial_ids) == MAX_TRIALS, chief_log[-3000:]
    assert len(set(trial_ids)) == MAX_TRIALS, "no trial runs twice"
    assert {run.data.tags["nasflow.tuner_id"] for run in finished} <= {"tuner0", "tuner1"}
    result = json.loads(chief_log.split("chief-result ", 1)[1].splitlines()[0])
    assert result["best_trial"] in trial_ids

    # The Job named the compiled image; every pod ran it and fetched the spec + dataset from the chief.
    (job,) = kube.jobs.values()
    assert job["status"]["conditions"][0]["type"] == "Complete"
    assert set(kubelet.images) == {cpu_image}
    for pod in kubelet.pods:
        text = pod.log.read_text(errors="replace")
        assert f"nasflow-worker-bootstrap from=http://{chief_ip}:" in text, text[-2000:]

    # The killed container's pod was replaced under the same tuner id and re-ran its trial.
    assert_killed_trial_was_rerun(trials, finished, killed, "tuner1")
    assert len([pod for pod in kubelet.pods if pod.index == 1]) >= 2, "the Job replaced the killed pod"
