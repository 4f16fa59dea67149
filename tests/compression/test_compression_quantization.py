import keras
import numpy as np
import pytest
from digits_data import digits_splits, trained_classifier

from nasflow.compression.quantization import QAT_UNAVAILABLE_REASON, quantize, representative_sample
from nasflow.errors import CompressionError
from nasflow.litert import LiteRTModel, convert_keras_model


@pytest.fixture(scope="module")
def digits_and_model():
    digits = digits_splits(1400)

    def classifier():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    model = trained_classifier(classifier, digits.x_train, digits.y_train, epochs=5)
    return (digits.x_train, digits.x_test, digits.y_test), model


def test_int8_has_int8_io_and_keeps_accuracy(digits_and_model):
    (x_train, x_test, y_test), model = digits_and_model
    float_model = LiteRTModel(convert_keras_model(model, "float32"))
    int8_bytes = quantize(model, "int8", x_train)
    int8_model = LiteRTModel(int8_bytes)

    assert int8_model.input_dtype == np.int8 and int8_model.output_dtype == np.int8
    assert float_model.accuracy(x_test, y_test) > 0.85
    assert int8_model.accuracy(x_test, y_test) >= float_model.accuracy(x_test, y_test) - 0.03
    assert len(int8_bytes) < len(float_model.model_content) / 2.5


@pytest.mark.parametrize("mode,min_ratio", [("dynamic", 2.5), ("float16", 1.6)])
def test_weight_quantization_shrinks_and_keeps_float_io(digits_and_model, mode, min_ratio):
    (x_train, x_test, y_test), model = digits_and_model
    float_bytes = convert_keras_model(model, "float32")
    quantized = LiteRTModel(quantize(model, mode))
    assert quantized.input_dtype == np.float32
    assert len(float_bytes) / len(quantized.model_content) > min_ratio
    assert quantized.accuracy(x_test, y_test) >= LiteRTModel(float_bytes).accuracy(x_test, y_test) - 0.02


def test_int8_needs_calibration_data(digits_and_model):
    _, model = digits_and_model
    with pytest.raises(CompressionError, match="calibration"):
        quantize(model, "int8", None)


def test_unknown_mode_lists_valid_ones(digits_and_model):
    _, model = digits_and_model
    with pytest.raises(CompressionError, match="dynamic, float16, int8"):
        quantize(model, "int4")


def test_representative_sample_draws_from_the_whole_split():
    x = np.arange(1000, dtype=np.float32)[:, None]
    sample = representative_sample(x, 100, seed=1)
    assert len(sample) == 100 and sample.max() > 900 and sample.min() < 100
    assert "Conv2D" in QAT_UNAVAILABLE_REASON
