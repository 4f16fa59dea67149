"""The images built from docker/ unchanged: who they run as, what they hold."""

from __future__ import annotations

import json
import subprocess

from podman_support import IMAGE_UID, RUN_ID, inspect, run_container

PROBE = (
    "import json, os, sys, tensorflow as tf, keras_tuner, kfp, mlflow, nasflow; "
    "from nasflow.config import search_spaces_dirs; "
    "open('/probe', 'w') if os.environ.get('TRY_WRITE') else None; "
    "print(json.dumps({'uid': os.getuid(), 'python': sys.version.split()[0], 'tf': tf.__version__, "
    "'cuda': tf.test.is_built_with_cuda(), 'gpus': len(tf.config.list_physical_devices('GPU')), "
    "'spaces': [p.name for d in search_spaces_dirs() for p in d.glob('*.yaml')]}))"
)


def _probe(image: str, name: str) -> dict:
    out = run_container(image, ["python", "-c", PROBE], name=f"{RUN_ID}-{name}", detach=False, extra=["--rm"])
    return json.loads(out.strip().splitlines()[-1])


def test_cpu_image_runs_nasflow_as_non_root_on_a_read_only_root(cpu_image):
    image = inspect(cpu_image)
    assert image["Config"]["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert "import nasflow" in " ".join(image["Healthcheck"]["Test"]), "HEALTHCHECK kept (--format docker)"
    probe = _probe(cpu_image, "cpu-probe")
    assert probe["uid"] == IMAGE_UID
    assert probe["python"].startswith("3.11")
    assert probe["cuda"] is False, "the CPU image has tensorflow-cpu"
    assert "cnn.yaml" in probe["spaces"], "the bundled search spaces are in the image"
    # The read-only root filesystem is real: even root cannot write outside /tmp.
    result = subprocess.run(
        ["podman", "run", "--rm", "--label", f"nasflow.tier={RUN_ID}", "--read-only", "--user", "0",
         "--env", "TRY_WRITE=1", cpu_image, "python", "-c", PROBE],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result.stderr[-2000:]
    help_text = run_container(cpu_image, ["nasflow", "--help"], name=f"{RUN_ID}-help", detach=False, extra=["--rm"])
    assert "run" in help_text and "compile" in help_text


def test_gpu_image_has_tensorflow_built_with_cuda(gpu_image):
    config = inspect(gpu_image)["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert "NVIDIA_VISIBLE_DEVICES=all" in config["Env"]
    probe = _probe(gpu_image, "gpu-probe")
    assert probe["uid"] == IMAGE_UID
    assert probe["cuda"] is True, "the GPU image has tensorflow with CUDA, not tensorflow-cpu"
    # No GPU on this machine: TensorFlow sees none and still imports (bench/gpu_check.sh uses one).
    assert probe["gpus"] == 0
    packages = run_container(gpu_image, ["pip", "list", "--format=json"], name=f"{RUN_ID}-gpu-pip", detach=False, extra=["--rm"])
    names = {item["name"].lower() for item in json.loads(packages)}
    assert "tensorflow" in names and "tensorflow-cpu" not in names
    assert any(name.startswith("nvidia-cudnn") for name in names)
