import keras
import numpy as np
import pytest
from digits_data import digits_splits, trained_classifier

from nasflow.compression.pruning import (
    MagnitudePruningCallback,
    compile_for_fine_tuning,
    copy_model,
    magnitude_mask,
    magnitude_prune,
    measure_sparsity,
    polynomial_decay_sparsity,
    prunable_kernels,
)
from nasflow.errors import CompressionError


@pytest.fixture(scope="module")
def digits():
    return digits_splits(1400, 100)


@pytest.fixture(scope="module")
def trained_cnn(digits):
    layers = keras.layers

    def cnn():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                layers.Conv2D(16, 3, padding="same"),
                layers.BatchNormalization(),
                layers.Activation("relu"),
                layers.SeparableConv2D(16, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(),
                layers.Flatten(),
                layers.Dense(64, activation="relu"),
                layers.Dense(10, activation="softmax"),
            ]
        )

    return trained_classifier(cnn, digits.x_train, digits.y_train)


@pytest.mark.parametrize(
    "step,begin,end,initial,final,power,expected",
    [
        (0, 0, 100, 0.0, 0.8, 3, 0.0),
        (25, 0, 100, 0.0, 0.8, 3, 0.8 - 0.8 * 0.75**3),  # 0.4625
        (50, 0, 100, 0.0, 0.8, 3, 0.7),
        (100, 0, 100, 0.0, 0.8, 3, 0.8),
        (500, 0, 100, 0.0, 0.8, 3, 0.8),  # held after end_step
        (5, 10, 20, 0.2, 0.6, 3, 0.2),  # before begin_step: the initial sparsity
        (15, 10, 20, 0.2, 0.6, 3, 0.55),
        (15, 10, 20, 0.2, 0.6, 1, 0.4),  # power 1 is linear
    ],
)
def test_polynomial_decay_matches_hand_computed_values(step, begin, end, initial, final, power, expected):
    assert polynomial_decay_sparsity(step, begin, end, initial, final, power) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"begin_step": 10, "end_step": 10, "initial_sparsity": 0.0, "final_sparsity": 0.5},
        {"begin_step": 0, "end_step": 10, "initial_sparsity": 0.0, "final_sparsity": 1.0},
        {"begin_step": 0, "end_step": 10, "initial_sparsity": -0.1, "final_sparsity": 0.5},
    ],
)
def test_invalid_schedule_raises(kwargs):
    with pytest.raises(CompressionError):
        polynomial_decay_sparsity(step=0, **kwargs)


def test_magnitude_mask_removes_exactly_the_smallest_weights():
    weights = np.array([[0.5, -0.1], [0.0, 2.0], [-3.0, 0.2]], dtype=np.float32)
    mask = magnitude_mask(weights, 0.5)
    np.testing.assert_array_equal(mask, [[1, 0], [0, 1], [1, 0]])
    assert magnitude_mask(weights, 0.0).all()


def test_pruned_weights_stay_exactly_zero_after_every_batch(trained_cnn, digits):
    model = copy_model(trained_cnn)
    compile_for_fine_tuning(model, trained_cnn, 1e-3)
    pruning = MagnitudePruningCallback(begin_step=0, end_step=30, final_sparsity=0.8, frequency=5)
    seen = {"batches": 0, "sparsities": set()}

    class CheckMasks(keras.callbacks.Callback):
        """Runs after the pruning callback on every batch: masked weights must be exactly zero."""

        def on_train_batch_end(self, batch, logs=None):
            masks = pruning.masks
            for _, variable in prunable_kernels(self.model):
                assert np.all(variable.numpy()[masks[variable.path] == 0] == 0.0)
            seen["batches"] += 1
            seen["sparsities"].add(round(pruning.current_sparsity, 4))

    model.fit(
        digits.x_train, digits.y_train, batch_size=64, epochs=2, verbose=0, callbacks=[pruning, CheckMasks()]
    )
    assert seen["batches"] == 2 * 22
    assert len(seen["sparsities"]) == 7  # steps 0, 5, ..., 30: the mask followed the schedule
    assert pruning.current_sparsity == pytest.approx(0.8)
    assert measure_sparsity(model)[1] == pytest.approx(0.8, abs=0.01)


def test_magnitude_prune_reaches_target_and_returns_a_plain_model(trained_cnn, digits):
    original_weights = [w.copy() for w in trained_cnn.get_weights()]
    pruned, report = magnitude_prune(trained_cnn, digits, final_sparsity=0.8, epochs=4)

    assert report.overall_sparsity == pytest.approx(0.8, abs=0.01)
    for name, sparsity in report.per_layer_sparsity.items():
        assert sparsity == pytest.approx(0.8, abs=0.01), name
    assert measure_sparsity(pruned)[1] == pytest.approx(report.overall_sparsity)
    assert report.mask_updates > 3
    # A plain Keras model (no wrappers); the input model is untouched; biases are never pruned.
    assert [type(layer) for layer in pruned.layers] == [type(layer) for layer in trained_cnn.layers]
    for before, after in zip(original_weights, trained_cnn.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert np.count_nonzero(pruned.layers[-1].bias.numpy()) == 10
    accuracy = np.mean(np.argmax(pruned.predict(digits.x_test, verbose=0), -1) == digits.y_test)
    assert accuracy > 0.8
