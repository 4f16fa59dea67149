"""Register the chosen model: a pyfunc from code serving the float Keras model or a LiteRT file."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from nasflow.config import CHALLENGER_ALIAS
from nasflow.errors import TrackingError
from nasflow.registry._mlflow import (
    SERVED_FORMAT_TAG,
    TEST_METRIC_NAME_TAG,
    TEST_METRIC_TAG,
    client_for,
    is_error_code,
    resolve_uri,
    tracking_errors,
    use_tracking_uri,
)

logger = logging.getLogger(__name__)


#: Tag on the run a version was registered from: ``<model name>/<version>`` (``nasflow submit
#: --wait`` reads it from the pipeline's parent run to name the version its run registered).
REGISTERED_VERSION_TAG = "nasflow.registered_version"


SERVING_CODE_PATH = Path(__file__).with_name("serving.py")


# The artifact keys are defined in serving.py; it is not imported here because importing
# it registers its model object with mlflow.models.set_model.
KERAS_ARTIFACT = "keras_model"


TFLITE_ARTIFACT = "tflite_model"


_TENSORFLOW_PINS = [
    'tensorflow-cpu==2.21.0; platform_machine == "x86_64"',
    'tensorflow==2.21.0; platform_machine != "x86_64"',
    "keras==3.15.1",
]


_COMMON_PINS = ["mlflow==3.17.2", "ai-edge-litert==2.3.0", "numpy==2.4.6"]


#: Explicit requirements per served format (explicit lists skip MLflow's slow inference).
SERVING_REQUIREMENTS: dict[str, list[str]] = {
    "keras": _COMMON_PINS + _TENSORFLOW_PINS,
    "tflite": list(_COMMON_PINS),
}


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version created by :func:`register_model`."""

    name: str
    version: str
    run_id: str
    alias: str
    uri: str


@contextlib.contextmanager
def _run(run_id: str | None, model_name: str) -> Iterator[str]:
    """The run to log into: the given one (resumed if not already active) or a new one."""
    active = mlflow.active_run()
    if run_id is not None and active is not None and active.info.run_id == run_id:
        yield run_id
        return
    nested = active is not None
    kwargs = {"run_id": run_id} if run_id is not None else {"run_name": f"register-{model_name}"}
    with mlflow.start_run(nested=nested, **kwargs) as run:
        yield run.info.run_id


def _output_kind(scores: np.ndarray) -> Literal["probabilities", "logits"]:
    """Whether a network's outputs already are probabilities (rows of a softmax)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=-1), 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


def register_model(
    *,
    keras_model_path: str,
    tflite_path: str | None,
    serve: Literal["keras", "tflite"],
    model_name: str,
    test_metric_name: str,
    test_metric_value: float,
    input_example: np.ndarray,
    run_id: str | None = None,
    extra_artifacts: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
) -> RegisteredVersion:
    """Log a serving pyfunc for a trained model, register it and make it ``challenger``.

    Args:
        keras_model_path: The float ``.keras`` model (always attached to the version).
        tflite_path: The int8 ``.tflite`` file (attached when given; required to serve it).
        serve: Which of the two answers ``predict``.
        model_name: Registered model name.
        test_metric_name: Name of the held-out metric the gate compares (higher is better).
        test_metric_value: Its value for this model.
        input_example: A few float inputs shaped like the model's input, batch first.
        run_id: Run to log the model into; a new run (nested under an active run, if any)
            when omitted.
        extra_artifacts: More files to attach to the version, keyed by artifact name.
        tags: More version tags.
        tracking_uri: Tracking (and registry) URI; MLflow's current one when omitted.

    Returns:
        The new version, already behind the ``challenger`` alias.

    Raises:
        TrackingError: A file is missing, the arguments do not fit, or MLflow fails.
    """
    uri = resolve_uri(tracking_uri)
    artifacts = _checked_artifacts(model_name, serve, keras_model_path, tflite_path, extra_artifacts)
    metric_value = float(test_metric_value)
    if not math.isfinite(metric_value):
        raise TrackingError(
            f"cannot register {model_name}: {test_metric_name} is {metric_value}, not a finite number"
        )
    example = np.asarray(input_example[:5], dtype=np.float32)
    signature, outputs = _signature(keras_model_path, example)
    version_tags = _version_tags(tags, test_metric_name, metric_value, serve, keras_model_path, tflite_path)

    with (
        tracking_errors(uri, f"register {model_name}"),
        use_tracking_uri(uri),
        _run(run_id, model_name) as used_run,
    ):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_CODE_PATH),
            artifacts=artifacts,
            model_config={"serve": serve, "outputs": outputs},
            signature=signature,
            input_example=example,
            pip_requirements=SERVING_REQUIREMENTS[serve],
        )
        client = client_for(uri)
        _create_registered_model(client, model_name)
        created = client.create_model_version(
            name=model_name, source=info.model_uri, run_id=used_run, tags=version_tags, model_id=info.model_id
        )
        client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, created.version)
        client.set_tag(used_run, REGISTERED_VERSION_TAG, f"{model_name}/{created.version}")
    logger.info("registered %s version %s (%s) as %s", model_name, created.version, serve, CHALLENGER_ALIAS)
    return RegisteredVersion(
        name=model_name,
        version=str(created.version),
        run_id=used_run,
        alias=CHALLENGER_ALIAS,
        uri=f"models:/{model_name}/{created.version}",
    )


def _version_tags(
    tags: dict[str, str] | None,
    test_metric_name: str,
    metric_value: float,
    serve: str,
    keras_model_path: str,
    tflite_path: str | None,
) -> dict[str, str]:
    """The caller's tags plus what the promotion gate and serving read: the metric, the format, the files."""
    version_tags = {
        **(tags or {}),
        TEST_METRIC_TAG: repr(metric_value),
        TEST_METRIC_NAME_TAG: test_metric_name,
        SERVED_FORMAT_TAG: serve,
        "nasflow.keras_artifact": f"artifacts/{Path(keras_model_path).name}",
    }
    if tflite_path:
        version_tags["nasflow.tflite_artifact"] = f"artifacts/{Path(tflite_path).name}"
    return version_tags


def _create_registered_model(client, model_name: str) -> None:
    """Create the registered model unless it exists (the first registration, or a concurrent one, made it)."""
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if not is_error_code(error, "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _checked_artifacts(
    model_name: str,
    serve: str,
    keras_model_path: str,
    tflite_path: str | None,
    extra_artifacts: dict[str, str] | None,
) -> dict[str, str]:
    """The version's files by artifact name, every one of them present.

    Raises:
        TrackingError: A bad ``serve``, a reserved name, or a missing file.
    """
    if serve not in SERVING_REQUIREMENTS:
        raise TrackingError(f"cannot register {model_name}: serve must be 'keras' or 'tflite', got {serve!r}")
    if serve == "tflite" and not tflite_path:
        raise TrackingError(f"cannot register {model_name}: serve='tflite' needs tflite_path")
    artifacts = {KERAS_ARTIFACT: keras_model_path}
    if tflite_path:
        artifacts[TFLITE_ARTIFACT] = tflite_path
    for key, path in (extra_artifacts or {}).items():
        if key in artifacts:
            raise TrackingError(f"cannot register {model_name}: extra artifact name {key!r} is reserved")
        artifacts[key] = path
    for key, path in artifacts.items():
        if not Path(path).is_file():
            raise TrackingError(f"cannot register {model_name}: artifact {key} file {path} does not exist")
    return artifacts


def _signature(keras_model_path: str, example: np.ndarray):
    """The pyfunc's tensor signature and whether the model outputs probabilities or logits."""
    import keras
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    keras_model = keras.saving.load_model(keras_model_path, safe_mode=True, compile=False)
    scores = np.asarray(keras_model.predict(example, verbose=0))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(scores.shape[-1])))]),
    )
    return signature, _output_kind(scores)
