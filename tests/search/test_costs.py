"""Parameter, FLOP, size and latency costs of small Keras models."""

from __future__ import annotations

import math

import keras
import keras_tuner
import numpy as np
import pytest

from nasflow.errors import InvalidArchitectureError
from nasflow.litert import convert_keras_model, measure_latency
from nasflow.search.costs import (
    CandidateCosts,
    cheap_constraint_check,
    count_flops,
    count_params,
    measure_candidate_costs,
)
from nasflow.search.objectives import ObjectiveConfig

layers = keras.layers


def mixed_model() -> keras.Model:
    """Conv, batch norm, squeeze-and-excitation, depthwise, separable, a nested model, dense."""
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    squeeze = layers.GlobalAveragePooling2D()(x)
    squeeze = layers.Dense(4, activation="sigmoid")(squeeze)
    squeeze = layers.Reshape((1, 1, 4))(squeeze)
    x = layers.Multiply()([x, squeeze])
    x = layers.DepthwiseConv2D(3)(x)
    x = layers.SeparableConv2D(6, 3, padding="same")(x)
    inner = keras.Sequential([keras.Input((6, 6, 6)), layers.Conv2D(2, 1)])
    x = inner(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(10)(x)
    return keras.Model(inputs, outputs)


def test_flops_of_a_mixed_model_by_hand():
    expected = (
        8 * 8 * 3 * 3 * 1 * 4  # Conv2D 3x3, 1 -> 4, same: 2304
        + 0  # batch norm (folded into the conv by the converter), ReLU
        + 8 * 8 * 4  # global average pooling reads every element: 256
        + 4 * 4  # Dense 4 -> 4: 16
        + 8 * 8 * 4  # Multiply (SE scaling), one per output element: 256
        + 6 * 6 * 3 * 3 * 4  # DepthwiseConv2D 3x3 valid -> 6x6x4: 1296
        + 6 * 6 * 3 * 3 * 4  # SeparableConv2D: depthwise part, same: 1296
        + 6 * 6 * 4 * 6  # SeparableConv2D: pointwise part 4 -> 6: 864
        + 6 * 6 * 1 * 1 * 6 * 2  # nested Sequential's Conv2D 1x1, 6 -> 2: 432
        + 72 * 10  # Dense on the flattened 6*6*2 = 72: 720
    )
    assert expected == 7440
    assert count_flops(mixed_model()) == expected


def _seq(*stack):
    return keras.Sequential(list(stack))


def _shared_dense_model():
    inputs = keras.Input((3,))
    shared = layers.Dense(3)
    return keras.Model(inputs, shared(shared(inputs)))


def _add_of_three_model():
    inputs = keras.Input((4, 5))
    return keras.Model(inputs, layers.Add()([inputs, inputs, inputs]))


@pytest.mark.parametrize(
    "build,expected",
    [
        # 30*30 positions (valid) * 3*3 kernel * 3 in * 8 out
        (lambda: _seq(keras.Input((32, 32, 3)), layers.Conv2D(8, 3)), 30 * 30 * 3 * 3 * 3 * 8),
        # stride 2, same: 16*16 positions
        (
            lambda: _seq(keras.Input((32, 32, 3)), layers.Conv2D(8, 3, strides=2, padding="same")),
            16 * 16 * 9 * 3 * 8,
        ),
        # groups=2: each output channel sees 4/2 input channels
        (lambda: _seq(keras.Input((10, 10, 4)), layers.Conv2D(6, 1, groups=2)), 10 * 10 * 1 * 2 * 6),
        # Dense per position for a 3-D input: 5 positions * 7 * 3
        (lambda: _seq(keras.Input((5, 7)), layers.Dense(3)), 5 * 7 * 3),
        # Conv1D: 8 positions * 3 kernel * 2 in * 4 out
        (lambda: _seq(keras.Input((10, 2)), layers.Conv1D(4, 3)), 8 * 3 * 2 * 4),
        # average pooling 2x2 -> 4x4x3 outputs, 4 reads each; max pooling and flatten are free
        (
            lambda: _seq(keras.Input((8, 8, 3)), layers.AveragePooling2D(2), layers.MaxPooling2D(2)),
            4 * 4 * 3 * 4,
        ),
        # depth multiplier 2: 6*6 positions * 9 * (3*2) outputs
        (lambda: _seq(keras.Input((8, 8, 3)), layers.DepthwiseConv2D(3, depth_multiplier=2)), 6 * 6 * 9 * 6),
        # a layer called twice counts twice: 2 * 3 * 3
        (_shared_dense_model, 2 * 3 * 3),
        # Add of three tensors: two additions per output element
        (_add_of_three_model, 2 * 4 * 5),
    ],
)
def test_flops_per_layer_kind(build, expected):
    assert count_flops(build()) == expected


def test_params_match_keras():
    model = mixed_model()
    assert count_params(model) == model.count_params()


def test_subclassed_models_have_no_graph_to_count():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(InvalidArchitectureError, match="Functional or Sequential"):
        count_flops(model)


def test_unknown_spatial_size_is_an_error():
    model = _seq(keras.Input((None, None, 3)), layers.Conv2D(2, 3))
    with pytest.raises(InvalidArchitectureError, match="unknown shape"):
        count_flops(model)


def conv_model() -> keras.Model:
    return _seq(
        keras.Input((28, 28, 1)),
        layers.Conv2D(16, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(10),
    )


def test_measure_candidate_costs_on_litert():
    model = conv_model()
    sample = np.random.default_rng(0).random((28, 28, 1), dtype=np.float32)
    costs = measure_candidate_costs(model, sample)
    assert costs.latency_runtime == "litert"
    assert costs.params == model.count_params() == 160 + 4640 + 330
    assert costs.flops == 26 * 26 * 9 * 16 + 11 * 11 * 9 * 16 * 32 + 11 * 11 * 32 + 32 * 10
    # The flatbuffer holds every float32 weight plus the graph.
    assert costs.params * 4 < costs.size_bytes < costs.params * 4 + 20_000
    assert 0 < costs.latency_p50_ms <= costs.latency_p95_ms
    assert costs.to_dict() == {
        "params": costs.params,
        "flops": costs.flops,
        "size_bytes": costs.size_bytes,
        "size_kb": costs.size_bytes / 1024,
        "latency_p50_ms": costs.latency_p50_ms,
        "latency_p95_ms": costs.latency_p95_ms,
        "latency_runtime": "litert",
    }


def test_costs_without_latency():
    costs = measure_candidate_costs(conv_model(), np.zeros((1, 28, 28, 1), np.float32), measure_latency=False)
    assert costs.latency_runtime == "not_measured"
    assert math.isnan(costs.latency_p50_ms) and math.isnan(costs.latency_p95_ms)
    assert costs.size_bytes > 0


def test_latency_times_the_requested_invocations():
    """How many runs are timed follows the settings (how long they take is a benchmark's business)."""
    flatbuffer = convert_keras_model(conv_model(), "float32")
    sample = np.random.default_rng(1).random((28, 28, 1), dtype=np.float32)
    exact = measure_latency(flatbuffer, sample, warmup=1, repeats=7, min_seconds=0)
    assert exact.repeats == 7 and 0 < exact.p50_ms <= exact.p95_ms
    # A batch axis of 1 is accepted; a duration floor no tiny model reaches stops at 20x repeats.
    capped = measure_latency(flatbuffer, sample[np.newaxis], warmup=0, repeats=3, min_seconds=3600)
    assert capped.repeats == 60 and 0 < capped.p50_ms <= capped.p95_ms


def test_candidate_costs_are_frozen():
    costs = CandidateCosts(1, 2, 4, 0.1, 0.2, "litert")
    with pytest.raises(AttributeError):
        costs.params = 3  # type: ignore[misc]
    assert costs.size_kb == pytest.approx(4 / 1024)


@pytest.mark.parametrize(
    "units,config,expected",
    [
        # Dense 4 -> units -> 2: params 5*units + (units+1)*2
        (8, ObjectiveConfig(max_params=100), []),  # 40 + 18 = 58
        (32, ObjectiveConfig(max_params=100), ["params 226 > max_params 100"]),  # 160 + 66
        # flops 4*units + units*2
        (32, ObjectiveConfig(max_flops=150), ["flops 192 > max_flops 150"]),
        (32, ObjectiveConfig(max_latency_ms=0.001), []),  # not a cheap constraint: not checked
    ],
)
def test_cheap_constraint_check_builds_and_counts(units, config, expected):
    space = keras_tuner.HyperParameters()
    space.Int("units", 8, 32, step=8)

    def build(hp):
        return _seq(keras.Input((4,)), layers.Dense(hp.get("units")), layers.Dense(2))

    check = cheap_constraint_check(build, space, config)
    assert check({"units": units}) == expected


def test_conversion_traces_the_serving_function_instead_of_exporting_the_keras_model(capfd):
    """Each trial that measures a size or latency converts its model: no Keras export, same outputs.

    The Keras export route printed "Saved artifact at ..." and its endpoint signatures on
    every trial (and spent most of the conversion writing them); the traced route must give
    a flatbuffer with the model's batch-agnostic input and the model's own predictions.
    """
    from nasflow.litert import LiteRTModel

    model = mixed_model()
    capfd.readouterr()
    flatbuffer = convert_keras_model(model, "float32")
    printed = capfd.readouterr()
    assert "Saved artifact" not in printed.out + printed.err
    interpreter = LiteRTModel(flatbuffer)
    assert list(interpreter._input["shape_signature"]) == [-1, 8, 8, 1]
    inputs = np.random.default_rng(3).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(interpreter.predict(inputs), model.predict(inputs, verbose=0), atol=1e-5)
