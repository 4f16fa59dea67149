"""Convert Keras models to TFLite and run them on the LiteRT CPU interpreter.

Cost measurements and compressed-variant evaluation both go through here so that a
latency in the search and a latency in the compression table mean the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from nasflow.errors import CompressionError

#: Post-training quantization modes understood by :func:`convert_keras_model`.
QUANTIZATION_MODES = ("float32", "dynamic", "float16", "int8")


def convert_keras_model(
    model,
    mode: str = "float32",
    representative_data: np.ndarray | None = None,
    num_representative_samples: int = 200,
) -> bytes:
    """Convert a Keras 3 model to a TFLite flatbuffer.

    Args:
        model: A built ``keras.Model``.
        mode: One of :data:`QUANTIZATION_MODES`. ``int8`` is full-integer quantization with
            int8 input and output tensors and needs ``representative_data``.
        representative_data: Training-split inputs used to calibrate int8 ranges.
        num_representative_samples: How many of them to use.

    Returns:
        The serialized TFLite model.

    Raises:
        CompressionError: For an unknown mode, missing calibration data or a converter failure.
    """
    import tensorflow as tf

    if mode not in QUANTIZATION_MODES:
        raise CompressionError(f"unknown quantization mode {mode!r}; expected one of {', '.join(QUANTIZATION_MODES)}")
    if mode == "int8" and (representative_data is None or len(representative_data) == 0):
        raise CompressionError("int8 quantization needs training-split inputs for calibration")
    try:
        converter = _converter_for(model)
    except Exception as error:  # tracing runs the model's own code, which may raise anything
        raise CompressionError(f"TFLite conversion ({mode}) failed: {type(error).__name__}: {error}") from error
    if mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        samples = np.asarray(representative_data[:num_representative_samples], dtype=np.float32)

        def representative_dataset() -> Iterable[list[np.ndarray]]:
            for sample in samples:
                yield [sample[np.newaxis, ...]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except Exception as error:  # the converter raises many unrelated types
        raise CompressionError(f"TFLite conversion ({mode}) failed: {type(error).__name__}: {error}") from error


def _converter_for(model):
    """A TFLite converter for the model's inference function, traced once.

    ``TFLiteConverter.from_keras_model`` has Keras export a whole SavedModel first (its
    export archive traces about 16 functions, writes them to disk and prints "Saved
    artifact at ..."): about 0.8 s of a 1 s conversion of a small CNN, paid on every
    trial that measures a size or a latency. Tracing the one serving function, with the
    model's variables as the trackable object the converter saves, gives the same ops and
    outputs in a third of the time. Models without symbolic inputs (subclassed models
    never called on an ``Input``) have no signature to trace and keep the Keras export.
    """
    import tensorflow as tf

    inputs = getattr(model, "inputs", None)
    if not inputs:
        return tf.lite.TFLiteConverter.from_keras_model(model)
    specs = [tf.TensorSpec(tensor.shape, tensor.dtype, name=f"input_{i}") for i, tensor in enumerate(inputs)]

    def serve(*tensors):
        return model(tensors[0] if len(tensors) == 1 else list(tensors), training=False)

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    variables = tf.Module()
    # Keras 3 variables wrap tf.Variables; the converter saves what this module tracks.
    variables.tracked = [variable.value for variable in model.variables]
    return tf.lite.TFLiteConverter.from_concrete_functions([function], variables)


class LiteRTModel:
    """A TFLite flatbuffer loaded into the LiteRT CPU interpreter, with Keras-like predict."""

    def __init__(self, model_content: bytes, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.model_content = model_content
        self._interpreter = Interpreter(model_content=model_content, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    @property
    def input_dtype(self) -> np.dtype:
        """Dtype of the input tensor (int8 for full-integer models)."""
        return np.dtype(self._input["dtype"])

    @property
    def output_dtype(self) -> np.dtype:
        """Dtype of the output tensor."""
        return np.dtype(self._output["dtype"])

    def _quantize_input(self, batch: np.ndarray) -> np.ndarray:
        dtype = self.input_dtype
        if dtype in (np.int8, np.uint8):
            scale, zero_point = self._input["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(batch / scale + zero_point), info.min, info.max).astype(dtype)
        return batch.astype(dtype)

    def _dequantize_output(self, values: np.ndarray) -> np.ndarray:
        if self.output_dtype in (np.int8, np.uint8):
            scale, zero_point = self._output["quantization"]
            return (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32)

    def _invoke_one(self, sample: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], sample)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Class scores for a batch of float inputs (run one sample at a time, as served).

        Args:
            inputs: Float array shaped like the Keras model's input, batch first.

        Returns:
            Float32 scores of shape ``(batch, num_classes)``.
        """
        inputs = np.asarray(inputs, dtype=np.float32)
        quantized = self._quantize_input(inputs)
        outputs = [self._invoke_one(quantized[i : i + 1]) for i in range(len(quantized))]
        return self._dequantize_output(np.concatenate(outputs, axis=0))

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Top-1 accuracy on labelled data."""
        return float(np.mean(np.argmax(self.predict(x), axis=-1) == np.asarray(y)))


@dataclass(frozen=True)
class LatencyStats:
    """Batch-1 latency in milliseconds."""

    p50_ms: float
    p95_ms: float
    repeats: int


def measure_latency(
    model_content: bytes,
    sample: np.ndarray,
    warmup: int = 20,
    repeats: int = 200,
    min_seconds: float = 0.2,
) -> LatencyStats:
    """Batch-1 latency of a TFLite model on the single-threaded LiteRT CPU interpreter.

    Warm-up runs and many repeats (at least ``repeats`` and at least ``min_seconds`` of
    work) keep two measurements of the same model within a few percent of each other.

    Args:
        model_content: A TFLite flatbuffer.
        sample: One input (without or with a batch axis of 1), float.
        warmup: Untimed invocations first.
        repeats: Minimum number of timed invocations.
        min_seconds: Minimum total timed duration.

    Returns:
        The median and 95th percentile.
    """
    model = LiteRTModel(model_content, num_threads=1)
    sample = np.asarray(sample, dtype=np.float32)
    if sample.ndim == len(model._input["shape"]) - 1:
        sample = sample[np.newaxis, ...]
    quantized = model._quantize_input(sample[:1])
    for _ in range(warmup):
        model._invoke_one(quantized)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < repeats or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter_ns()
        model._invoke_one(quantized)
        timings.append((time.perf_counter_ns() - begin) / 1e6)
        if len(timings) >= 20 * repeats:
            break
    return LatencyStats(
        p50_ms=float(np.percentile(timings, 50)), p95_ms=float(np.percentile(timings, 95)), repeats=len(timings)
    )
