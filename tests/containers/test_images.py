"""The images built from docker/ unchanged: who they run as, what they hold."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from podman_support import IMAGE_UID, RUN_ID, inspect, podman, run_container

REPO = Path(__file__).resolve().parents[2]
#: What .dockerignore lets into the build context.
CONTEXT_FILES = ("setup.cfg", "pyproject.toml", "README.md")
CONTEXT_FOLDERS = ("nasflow", "components", "pipelines", "search_spaces")

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


def _layers(image: str) -> list[tuple[str, int]]:
    """``(layer digest, bytes)`` of the image's filesystem layers, the base first.

    ``RootFS.Layers`` names them; ``podman history`` (newest first) sizes them, and its
    entries of size 0 are instructions that add no layer (ENV, USER, CMD...).
    """
    digests = json.loads(podman("image", "inspect", "--format", "{{json .RootFS.Layers}}", image))
    history = json.loads(podman("history", "--no-trunc", "--format", "json", image))
    sizes = [int(entry["size"]) for entry in reversed(history) if int(entry["size"]) > 0]
    assert len(sizes) == len(digests), (digests, history)
    return list(zip(digests, sizes, strict=True))


def test_a_change_to_nasflow_code_rebuilds_only_a_small_layer(cpu_image, tmp_path):
    """Rebuilding docker/Dockerfile after a code change reuses the dependency layer.

    The build context of the tier's image plus one new module, built after the
    ``podman image prune`` every tier run starts with (it removed the untagged cache of the
    dependency stage until engine.sh tagged it): every layer up to and including the venv's
    dependencies (gigabytes) must come from the cache, and the layers that differ must hold
    only nasflow (a few MB), which the new image imports.
    """
    podman("image", "prune", "--force")
    tagged = subprocess.run(["podman", "image", "exists", f"{cpu_image}-deps"], timeout=60).returncode == 0
    assert tagged, "tests/containers/engine.sh tags the dependency stage so that prune keeps its cache"
    context = tmp_path / "context"
    context.mkdir()
    for name in CONTEXT_FILES:
        shutil.copy2(REPO / name, context / name)
    for name in CONTEXT_FOLDERS:
        shutil.copytree(REPO / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    (context / "nasflow" / "_tier_rebuild_probe.py").write_text(f"RUN_ID = {RUN_ID!r}\n")
    tag = f"localhost/nasflow-tier-rebuild:{RUN_ID}"
    podman(
        "build", "--pull=never", "--format", "docker", "--network=host", "--layers",
        "-f", str(REPO / "docker" / "Dockerfile"), "-t", tag, str(context), timeout=1200,
    )  # fmt: skip
    try:
        before, after = _layers(cpu_image), _layers(tag)
        shared = 0
        while shared < min(len(before), len(after)) and before[shared][0] == after[shared][0]:
            shared += 1
        reused = sum(size for _, size in after[:shared])
        rebuilt = sum(size for _, size in after[shared:])
        assert reused > 1_000_000_000, f"the dependency layer was rebuilt: {before} -> {after}"
        assert 0 < rebuilt < 20_000_000, f"{rebuilt} bytes rebuilt for a code change: {after[shared:]}"
        out = run_container(
            tag, ["python", "-c", "import nasflow._tier_rebuild_probe as probe; print(probe.RUN_ID)"],
            name=f"{RUN_ID}-rebuild-probe", detach=False, extra=["--rm"],
        )  # fmt: skip
        assert out.strip().splitlines()[-1] == RUN_ID
    finally:
        podman("rmi", "--force", tag, check=False)
