"""The pyfunc model that serves a registered nasflow version (MLflow models-from-code).

:func:`nasflow.registry.register_model` logs *this file* as the model's code, so MLflow
never pickles a model object: at load time it runs this module and calls
:meth:`NasflowServingModel.load_context`, which opens the artifact named by the model
config (``serve``: ``"keras"`` or ``"tflite"``). Holding a LiteRT interpreter in
pickled state fails (``cannot pickle ... InterpreterWrapper``); loading it here does not.

The module is deliberately self-contained (numpy, mlflow and, lazily, keras or
ai-edge-litert): a serving image needs neither nasflow nor TensorFlow to run the
int8 TFLite variant.

Model config keys (set by the registry, read here):
    serve: ``"keras"`` or ``"tflite"``: which artifact answers ``predict``.
    outputs: ``"probabilities"`` when the network ends in a softmax, else ``"logits"``;
        either way ``predict`` returns probabilities.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext

#: Artifact keys under which the registry stores the two model files.
KERAS_ARTIFACT = "keras_model"
TFLITE_ARTIFACT = "tflite_model"


def to_probabilities(scores: np.ndarray, outputs: str) -> np.ndarray:
    """Turn raw network outputs into rows of class probabilities.

    Args:
        scores: Float array ``(batch, num_classes)``.
        outputs: ``"logits"`` (apply a softmax) or ``"probabilities"`` (clip and
            renormalize, which removes int8 quantization error from a softmax output).

    Returns:
        Float32 array of the same shape whose rows are non-negative and sum to 1.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if outputs == "logits":
        shifted = scores - scores.max(axis=-1, keepdims=True)
        exp = np.exp(shifted)
        return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    clipped = np.clip(scores, 0.0, None)
    totals = clipped.sum(axis=-1, keepdims=True)
    uniform = np.full_like(clipped, 1.0 / clipped.shape[-1])
    return np.where(totals > 0, clipped / np.where(totals > 0, totals, 1.0), uniform).astype(np.float32)


class _TFLiteRunner:
    """A TFLite flatbuffer on the LiteRT CPU interpreter, one sample per invoke."""

    def __init__(self, path: str):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=path, num_threads=1)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"][1:])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        in_dtype = np.dtype(self._input["dtype"])
        if in_dtype in (np.int8, np.uint8):
            scale, zero_point = self._input["quantization"]
            info = np.iinfo(in_dtype)
            batch = np.clip(np.round(batch / scale + zero_point), info.min, info.max)
        batch = batch.astype(in_dtype)
        rows = []
        for i in range(len(batch)):
            self._interpreter.set_tensor(self._input["index"], batch[i : i + 1])
            self._interpreter.invoke()
            rows.append(self._interpreter.get_tensor(self._output["index"]))
        scores = np.concatenate(rows, axis=0)
        if np.dtype(self._output["dtype"]) in (np.int8, np.uint8):
            scale, zero_point = self._output["quantization"]
            return (scores.astype(np.float32) - zero_point) * scale
        return scores.astype(np.float32)


class _KerasRunner:
    """A ``.keras`` file loaded with ``safe_mode=True`` (no arbitrary code in lambdas)."""

    def __init__(self, path: str):
        import keras

        self._model = keras.saving.load_model(path, safe_mode=True, compile=False)
        self.input_shape = tuple(int(d) for d in self._model.input_shape[1:])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.predict(batch, batch_size=256, verbose=0), dtype=np.float32)


class NasflowServingModel(PythonModel):
    """Class probabilities from the Keras or the int8 TFLite model of a registered version."""

    def __init__(self) -> None:
        self._runner: _KerasRunner | _TFLiteRunner | None = None
        self._outputs = "probabilities"

    def load_context(self, context: PythonModelContext) -> None:
        """Open the artifact selected by ``context.model_config["serve"]``."""
        config = context.model_config or {}
        serve = config.get("serve", "keras")
        self._outputs = config.get("outputs", "probabilities")
        if serve == "tflite":
            self._runner = _TFLiteRunner(context.artifacts[TFLITE_ARTIFACT])
        elif serve == "keras":
            self._runner = _KerasRunner(context.artifacts[KERAS_ARTIFACT])
        else:
            raise ValueError(f"model config 'serve' must be 'keras' or 'tflite', got {serve!r}")

    # ``model_input`` is left unannotated on purpose: MLflow 3 derives a schema from a
    # predict type hint and warns about anything but list[...]; the logged tensor
    # signature is the contract instead.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """Class probabilities, float32 ``(N, num_classes)``, for float inputs ``(N, *input_shape)``.

        A 2-D table (e.g. a DataFrame of flattened pixels from a REST call) is reshaped
        to the model's input shape.
        """
        if self._runner is None:
            raise RuntimeError("NasflowServingModel.predict called before load_context")
        batch = np.asarray(model_input, dtype=np.float32)
        if batch.shape[1:] != self._runner.input_shape:
            batch = batch.reshape((-1, *self._runner.input_shape))
        return to_probabilities(self._runner.predict(batch), self._outputs)


mlflow.models.set_model(NasflowServingModel())
