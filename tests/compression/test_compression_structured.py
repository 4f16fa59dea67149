import keras
import numpy as np
import pytest
from digits_data import digits_splits, trained_classifier

from nasflow.compression.structured import linear_chain, mask_model, shrink_model, structured_prune
from nasflow.errors import CompressionError

layers = keras.layers



@pytest.fixture(scope="module")
def digits():
    return digits_splits(1400)


def _mixed_cnn():
    """Every supported layer kind, with a sigmoid so a removed channel is not simply zero downstream."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(8, 3, padding="same", name="conv_a"),
            layers.BatchNormalization(name="bn_a"),
            layers.Activation("relu"),
            layers.SeparableConv2D(12, 3, padding="same", depth_multiplier=2, name="sep_b"),
            layers.BatchNormalization(name="bn_b"),
            layers.Activation("sigmoid"),
            layers.MaxPooling2D(),
            layers.DepthwiseConv2D(3, padding="same", name="dw_c"),
            layers.Conv2D(16, 1, activation="relu", name="conv_d"),
            layers.Flatten(),
            layers.Dense(32, activation="tanh", name="dense_e"),
            layers.Dropout(0.2),
            layers.Dense(10, activation="softmax", name="classifier"),
        ]
    )


def _gap_cnn():
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def trained_mixed(digits):
    return trained_classifier(_mixed_cnn, digits.x_train, digits.y_train)


def test_shrunk_model_is_smaller_and_matches_masked_model(trained_mixed, digits):
    small, kept = shrink_model(trained_mixed, ratio=0.5)

    assert {name: len(indices) for name, indices in kept.items()} == {
        "conv_a": 4,
        "sep_b": 6,
        "conv_d": 8,
        "dense_e": 16,
    }
    widths = {layer.name: getattr(layer, "filters", getattr(layer, "units", None)) for layer in small.layers}
    assert widths["conv_a"] == 4 and widths["sep_b"] == 6 and widths["classifier"] == 10
    assert small.count_params() < trained_mixed.count_params() / 2.5
    masked = mask_model(trained_mixed, kept)
    batch = digits.x_test[:64]
    np.testing.assert_allclose(small.predict(batch, verbose=0), masked.predict(batch, verbose=0), atol=1e-4)
    # Masking really changed the function (else the comparison above would prove nothing).
    assert np.abs(masked.predict(batch, verbose=0) - trained_mixed.predict(batch, verbose=0)).max() > 1e-2


def test_kept_filters_are_the_largest_l1_norms(trained_mixed):
    _, kept = shrink_model(trained_mixed, ratio=0.5, norm="l1")
    norms = np.abs(trained_mixed.get_layer("conv_a").kernel.numpy()).sum(axis=(0, 1, 2))
    np.testing.assert_array_equal(kept["conv_a"], np.sort(np.argsort(-norms)[:4]))


def test_functional_gap_model_shrinks_and_matches(digits):
    model = _gap_cnn()
    small, kept = shrink_model(model, ratio=0.25, norm="l2")
    assert [len(kept[name]) for name in sorted(kept)] == [12, 24]
    masked = mask_model(model, kept)
    np.testing.assert_allclose(
        small.predict(digits.x_test[:32], verbose=0), masked.predict(digits.x_test[:32], verbose=0), atol=1e-4
    )


def test_structured_prune_fine_tunes_a_smaller_model(trained_mixed, digits):
    teacher_accuracy = np.mean(np.argmax(trained_mixed.predict(digits.x_test, verbose=0), -1) == digits.y_test)
    small = structured_prune(trained_mixed, digits, ratio=0.5, fine_tune_epochs=3)
    assert small.count_params() < trained_mixed.count_params()
    accuracy = np.mean(np.argmax(small.predict(digits.x_test, verbose=0), -1) == digits.y_test)
    assert teacher_accuracy > 0.8 and accuracy > 0.7


def test_branching_model_is_rejected():
    inputs = keras.Input((8, 8, 1))
    a = layers.Conv2D(4, 3, padding="same")(inputs)
    b = layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = layers.Dense(10, activation="softmax")(layers.Flatten()(layers.Add()([a, b])))
    with pytest.raises(CompressionError, match="linear chain"):
        linear_chain(keras.Model(inputs, outputs))


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_invalid_ratio_is_rejected(trained_mixed, ratio):
    with pytest.raises(CompressionError, match="ratio"):
        shrink_model(trained_mixed, ratio)


def test_unsupported_layer_is_named():
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), layers.Conv2D(4, 3), layers.Reshape((-1,)), layers.Dense(3)]
    )
    with pytest.raises(CompressionError, match="Reshape"):
        shrink_model(model, 0.5)
