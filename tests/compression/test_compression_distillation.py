import keras
import numpy as np
import pytest
from digits_data import digits_splits, trained_classifier

from nasflow.compression.distillation import distill, logits_model, width_scaled_copy
from nasflow.errors import CompressionError


@pytest.fixture(scope="module")
def digits():
    return digits_splits(1400)


def _trained_teacher(x, y):
    def teacher():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    return trained_classifier(teacher, x, y)


@pytest.fixture(scope="module")
def teacher(digits):
    return _trained_teacher(digits.x_train, digits.y_train)


def test_width_scaled_copy_scales_hidden_layers_only(teacher):
    student = width_scaled_copy(teacher, 0.25)
    widths = [getattr(layer, "filters", getattr(layer, "units", None)) for layer in student.layers]
    assert widths == [8, None, None, 16, 10]
    assert student.count_params() < teacher.count_params() / 4


def test_logits_model_is_an_independent_pre_softmax_copy(teacher, digits):
    logits = logits_model(teacher)
    batch = digits.x_test[:16]
    np.testing.assert_allclose(
        keras.ops.softmax(logits.predict(batch, verbose=0)), teacher.predict(batch, verbose=0), atol=1e-5
    )
    assert not set(map(id, logits.layers)) & set(map(id, teacher.layers))


def test_distilled_student_trains_and_scratch_twin_is_reported(teacher, digits):
    trainable_before = [layer.trainable for layer in teacher.layers]
    result = distill(teacher, digits, width=0.25, epochs=4)

    assert result.student_accuracy > 0.3
    assert result.scratch_accuracy is not None and result.scratch_accuracy > 0.3
    assert result.student_params == result.student.count_params() < teacher.count_params() / 4
    assert result.student.layers[-1].get_config()["activation"] == "softmax"
    predictions = result.student.predict(digits.x_test[:8], verbose=0)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, atol=1e-5)
    assert result.to_dict()["scratch_student_accuracy"] == result.scratch_accuracy
    # Distiller freezes the teacher it is given; that must be a copy, not the caller's model.
    assert [layer.trainable for layer in teacher.layers] == trainable_before


def test_student_builder_is_used(teacher, digits):
    def builder():
        return keras.Sequential(
            [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
        )

    result = distill(teacher, digits, student=builder, epochs=5, train_scratch=False)
    assert result.student_params == 650 and result.scratch_student is None
    assert result.student_accuracy > 0.3


def test_student_without_softmax_is_rejected(teacher, digits):
    def builder():
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])

    with pytest.raises(CompressionError, match="softmax"):
        distill(teacher, digits, student=builder, epochs=1)


def test_a_pure_distillation_learns_the_teacher_not_the_labels(digits):
    # A teacher that learned a shifted labelling (digit k is called k + 1). With the label
    # loss weighted 0 only the teacher's soft labels can teach the student, so it must learn
    # the shift; its scratch twin (same start, labels only) learns the true labels instead.
    liar = _trained_teacher(digits.x_train, (digits.y_train + 1) % 10)
    result = distill(liar, digits, width=0.5, epochs=4, student_loss_weight=0.0)

    teacher_says = np.argmax(liar.predict(digits.x_test, verbose=0), axis=-1)

    def agreement(model) -> float:
        return float(np.mean(np.argmax(model.predict(digits.x_test, verbose=0), axis=-1) == teacher_says))

    assert agreement(result.student) > 0.4, "the distilled student did not learn from the teacher"
    assert agreement(result.scratch_student) < 0.2
    assert result.student_accuracy < 0.3 < result.scratch_accuracy
