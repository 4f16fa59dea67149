"""The pipeline compiles, the committed YAML is current, and its cluster wiring is right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from nasflow.cli.main import DEFAULT_PACKAGE, compile_pipeline
from nasflow.cluster import job
from nasflow.config import image_reference, repo_root
from nasflow.search.settings import DEFAULT_STRATEGY


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    saved = os.environ.pop("NASFLOW_IMAGE_REGISTRY", None)
    try:
        path = compile_pipeline(tmp_path_factory.mktemp("compiled") / "nas_pipeline.yaml")
    finally:
        if saved is not None:
            os.environ["NASFLOW_IMAGE_REGISTRY"] = saved
    text = path.read_text()
    documents = list(yaml.safe_load_all(text))
    return {"text": text, "spec": documents[0], "platform": documents[1] if len(documents) > 1 else {}}


def test_committed_pipeline_yaml_is_current(compiled):
    committed = repo_root() / DEFAULT_PACKAGE
    assert committed.exists(), f"run `nasflow compile` and commit {DEFAULT_PACKAGE}"
    assert committed.read_text() == compiled["text"], f"{DEFAULT_PACKAGE} is stale: run `nasflow compile`"


def _images(spec: dict) -> dict[str, set[str]]:
    """Executor labels by image, and the labels of executors that request an accelerator."""
    executors = spec["deploymentSpec"]["executors"]
    by_image: dict[str, set[str]] = {}
    for label, executor in executors.items():
        by_image.setdefault(executor["container"]["image"], set()).add(label)
    by_image["accelerator"] = {
        label for label, executor in executors.items() if "accelerator" in executor["container"].get("resources", {})
    }
    return by_image


def _worker_image(spec: dict) -> str:
    """The constant the pipeline passes the search step as its workers' image."""
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    return tasks["search"]["inputs"]["parameters"]["worker_image"]["runtimeValue"]["constant"]


def test_gpu_training_runs_the_gpu_image_every_other_step_the_cpu_image(compiled):
    images = _images(compiled["spec"])
    accelerated = images.pop("accelerator")
    assert set(images) == {image_reference(), image_reference(gpu=True)}
    assert images[image_reference(gpu=True)] == accelerated, "only the GPU training step, which asks for a GPU"
    assert len(accelerated) == 1
    assert _worker_image(compiled["spec"]) == image_reference(), "the worker Job runs the search's image"


def test_images_follow_the_registry_setting_at_compile_time(tmp_path):
    """NASFLOW_IMAGE_REGISTRY at compile time names every image, the GPU one and the workers' too."""
    registry = "registry.example.com/team"
    env = {**os.environ, "NASFLOW_IMAGE_REGISTRY": registry}
    output = tmp_path / "nas_pipeline.yaml"
    # A fresh process: components name their images when they are imported.
    command = f"from nasflow.cli import main; raise SystemExit(main(['compile', '--output', {str(output)!r}]))"
    subprocess.run([sys.executable, "-c", command], env=env, check=True, capture_output=True, cwd=repo_root())
    spec = next(yaml.safe_load_all(output.read_text()))
    images = _images(spec)
    images.pop("accelerator")
    assert set(images) == {image_reference(registry), image_reference(registry, gpu=True)}
    assert _worker_image(spec) == image_reference(registry)


def test_pipeline_parameters_are_typed_with_defaults(compiled):
    parameters = compiled["spec"]["root"]["inputDefinitions"]["parameters"]
    assert parameters["max_trials"]["parameterType"] == "NUMBER_INTEGER"
    assert parameters["max_trials"]["defaultValue"] == 8
    assert parameters["use_gpu"]["parameterType"] == "BOOLEAN"
    assert parameters["compression_variants"]["parameterType"] == "LIST"
    assert parameters["strategy"]["defaultValue"] == DEFAULT_STRATEGY


def test_gpu_training_requests_an_accelerator(compiled):
    executors = compiled["spec"]["deploymentSpec"]["executors"]
    accelerators = [
        executor["container"]["resources"]["accelerator"]
        for executor in executors.values()
        if "accelerator" in executor["container"].get("resources", {})
    ]
    assert len(accelerators) == 1
    accelerator = accelerators[0]
    assert accelerator.get("resourceType", accelerator.get("type")) == "nvidia.com/gpu"
    assert str(accelerator.get("resourceCount", accelerator.get("count"))) == "1"


def test_cluster_settings_come_from_configmap_and_secret(compiled):
    executors = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = [config for config in executors.values() if config.get("tolerations")]
    assert len(gpu) == 1 and gpu[0]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu[0]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    for name, config in executors.items():
        if "tracking" in name or "search" in name or "train" in name or "register" in name or "compress" in name:
            assert config["configMapAsEnv"][0]["configMapName"] == "nasflow-config", name
            assert config["secretAsEnv"][0]["secretName"] == "nasflow-mlflow-credentials", name
    # No tracking server address is baked into the compiled pipeline.
    assert "http://" not in compiled["text"].replace("http://www.apache.org", "")


def _strict(message, document):
    json_format.ParseDict(document, message, ignore_unknown_fields=False)
    return message


def test_compiled_yaml_is_what_the_kfp_backend_deserializes(compiled):
    """Strictly the protos a KFP v2 backend reads: the pipeline spec, and per executor the
    kfp-kubernetes config its driver turns into the pod (unknown or misspelt fields fail)."""
    spec = _strict(pipeline_spec_pb2.PipelineSpec(), compiled["spec"])
    assert spec.pipeline_info.name == "nasflow-nas" and spec.schema_version == "2.1.0"
    platform = _strict(pipeline_spec_pb2.PlatformSpec(), compiled["platform"])
    executors = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) <= set(spec.deployment_spec["executors"].keys()) and "kubernetes" in platform.platforms
    for config in executors.values():
        _strict(kubernetes_executor_config_pb2.KubernetesExecutorConfig(), config)
    broken = dict(executors["exec-search"], fieldPathAsEnvs=[])
    with pytest.raises(json_format.ParseError):
        _strict(kubernetes_executor_config_pb2.KubernetesExecutorConfig(), broken)


def test_search_task_knows_what_the_chief_needs_in_its_pod(compiled):
    """run_search_on_cluster reads these from the downward API and the NetworkPolicy selects the label."""
    executors = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    search = executors["exec-search"]
    fields = {env["name"]: env["fieldPath"] for env in search["fieldPathAsEnv"]}
    assert fields == {"NASFLOW_POD_UID": "metadata.uid", "NASFLOW_NAMESPACE": "metadata.namespace", "NASFLOW_POD_IP": "status.podIP"}
    assert search["podMetadata"]["labels"] == job.CHIEF_POD_LABELS


def test_search_task_retries(compiled):
    tasks = compiled["spec"]["root"]["dag"]["tasks"]
    inner = compiled["spec"]["components"]["comp-exit-handler-1"]["dag"]["tasks"] if "comp-exit-handler-1" in compiled["spec"]["components"] else tasks
    search = next(task for name, task in inner.items() if name == "search")
    assert search["retryPolicy"]["maxRetryCount"] == 2


def test_image_registry_is_one_setting(monkeypatch):
    monkeypatch.setenv("NASFLOW_IMAGE_REGISTRY", "registry.example.com/team")
    assert image_reference().startswith("registry.example.com/team/nasflow:")
    assert Path(repo_root() / "components" / "_image.py").read_text().count("image_reference") >= 1
