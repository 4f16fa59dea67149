"""Post-training quantization of Keras 3 models to TFLite, evaluated on LiteRT.

Only post-training quantization is offered: quantization-aware training needs fake-quant
wrappers around Conv2D, which Keras 3.15 does not provide (see :data:`QAT_UNAVAILABLE_REASON`).
"""

from __future__ import annotations

import numpy as np

from nasflow.errors import CompressionError
from nasflow.litert import QUANTIZATION_MODES, convert_keras_model

#: Post-training quantization modes offered as compression variants: every mode of
#: :func:`nasflow.litert.convert_keras_model` that quantizes.
PTQ_MODES = tuple(mode for mode in QUANTIZATION_MODES if mode != "float32")

#: Why no quantization-aware-training variant is produced; recorded in every quantized result.
QAT_UNAVAILABLE_REASON = (
    "quantization-aware training not available: Keras 3.15 Model.quantize covers only "
    "Dense/EinsumDense/Embedding (Conv2D is skipped) and tensorflow-model-optimization needs tf_keras (Keras 2)"
)


def representative_sample(x_train: np.ndarray, count: int = 200, seed: int = 42) -> np.ndarray:
    """A random subset of the training inputs for int8 calibration.

    A random subset rather than the first rows, so that a split sorted by class still
    calibrates the ranges on every class.

    Args:
        x_train: Training-split inputs.
        count: How many samples to draw (fewer if the split is smaller).
        seed: Seed of the draw.

    Returns:
        ``min(count, len(x_train))`` float32 inputs.
    """
    x_train = np.asarray(x_train, dtype=np.float32)
    rows = np.random.default_rng(seed).permutation(len(x_train))[:count]
    return x_train[np.sort(rows)]


def quantize(model, mode: str, x_train: np.ndarray | None = None, *, num_calibration: int = 200, seed: int = 42) -> bytes:
    """Convert a Keras model to a post-training-quantized TFLite flatbuffer.

    Args:
        model: A built Keras model.
        mode: ``"dynamic"`` (int8 weights, float activations), ``"float16"`` (float16
            weights) or ``"int8"`` (full integer, int8 input and output).
        x_train: Training-split inputs; required for ``int8`` calibration.
        num_calibration: Calibration samples for ``int8``.
        seed: Seed used to draw the calibration samples.

    Returns:
        The TFLite model bytes.

    Raises:
        CompressionError: For an unknown mode, missing calibration data or a converter failure.
    """
    if mode not in PTQ_MODES:
        raise CompressionError(f"unknown post-training quantization mode {mode!r}; expected one of {', '.join(PTQ_MODES)}")
    # Without inputs the converter refuses int8 itself, with the same one line.
    has_inputs = mode == "int8" and x_train is not None and len(x_train) > 0
    representative = representative_sample(x_train, num_calibration, seed) if has_inputs else None
    return convert_keras_model(model, mode, representative, num_representative_samples=num_calibration)
