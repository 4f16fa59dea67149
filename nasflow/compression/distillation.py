"""Knowledge distillation into a smaller student with ``keras.distillation``.

``keras.distillation.LogitsDistillation`` divides both models' *outputs* by the
temperature and applies softmax itself, and the ``Distiller`` feeds the student's output
to the supervised loss too, so both models must output logits. Our classifiers end in a
softmax; the teacher is therefore distilled through a logits copy of itself, and the
student is trained as a logits model whose layers are then shared with a softmax head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from nasflow.compression.structured import WIDTH_LAYERS, classifier_layer, linear_chain, rebuild_chain
from nasflow.errors import CompressionError

StudentSpec = keras.Model | Callable[[], keras.Model] | None


def width_scaled_copy(model, factor: float, min_width: int = 1):
    """A freshly initialised copy of ``model`` with every hidden layer ``factor`` times as wide.

    Conv2D/SeparableConv2D filters and hidden Dense units are scaled (rounded, at least
    ``min_width``); the classifier keeps its number of classes.

    Args:
        model: A Keras classifier made of a chain of layers.
        factor: Width multiplier, > 0.
        min_width: Smallest width a scaled layer may get.

    Returns:
        A new, uncompiled, untrained ``keras.Sequential``.

    Raises:
        CompressionError: For a non-positive factor or a model that is not a chain.
    """
    if factor <= 0:
        raise CompressionError(f"student width factor must be > 0, got {factor}")
    layers = linear_chain(model)
    classifier = classifier_layer(layers)
    new_layers = []
    for layer in layers:
        config = layer.get_config()
        if type(layer).__name__ in WIDTH_LAYERS and layer is not classifier:
            key = "units" if "units" in config else "filters"
            config[key] = max(min_width, int(round(config[key] * factor)))
        config["name"] = f"{config['name']}_student"
        new_layers.append(type(layer).from_config(config))
    return rebuild_chain(model, new_layers, f"{model.name}_x{factor:g}")


def _split_softmax_head(model) -> tuple[list, object | None]:
    """Split a chain into ``(body, head)`` where ``body + [head]`` outputs logits.

    ``head`` is a linear copy of a final Dense/Conv with softmax activation (weights copied
    when built), or ``None`` when the softmax is a separate final layer that is dropped.
    """
    layers = linear_chain(model)
    last = layers[-1]
    config = last.get_config()
    if type(last).__name__ == "Softmax" or (type(last).__name__ == "Activation" and config.get("activation") == "softmax"):
        return layers[:-1], None
    if type(last).__name__ in WIDTH_LAYERS and config.get("activation") == "softmax":
        config["activation"] = "linear"
        config["name"] = f"{config['name']}_logits"
        head = type(last).from_config(config)
        if last.built:
            head.build(last.input.shape)
            head.set_weights(last.get_weights())
        return layers[:-1], head
    raise CompressionError(f"model {model.name!r} must end in a softmax to be distilled; last layer is {last.name!r}")


def logits_model(model):
    """An independent copy of a softmax classifier that outputs its pre-softmax logits.

    A copy, not shared layers: ``Distiller`` freezes the teacher it is given, which must
    not change the caller's model.

    Args:
        model: A built Keras classifier ending in a softmax.

    Returns:
        A ``keras.Sequential`` whose softmax equals ``model``'s output.
    """
    body, head = _split_softmax_head(model)
    layers = [type(layer).from_config(layer.get_config()) for layer in body] + ([head] if head is not None else [])
    logits = rebuild_chain(model, layers, f"{model.name}_logits")
    for new, old in zip(layers, body, strict=False):
        new.set_weights(old.get_weights())
    return logits


def _student_models(model):
    """``(logits_student, softmax_student)`` sharing every layer of a fresh student."""
    body, head = _split_softmax_head(model)
    layers = body + ([head] if head is not None else [])
    logits = rebuild_chain(model, layers, f"{model.name}_logits")
    softmax = rebuild_chain(model, [*layers, keras.layers.Activation("softmax", name="softmax")], model.name)
    return logits, softmax


def _make_student(teacher, student: StudentSpec, width: float):
    if student is None:
        return width_scaled_copy(teacher, width)
    if isinstance(student, keras.Model):
        # A given instance is copied so the scratch run starts from the same initial weights.
        copy = keras.models.clone_model(student)
        copy.set_weights(student.get_weights())
        return copy
    if callable(student):
        return student()
    raise CompressionError(f"student must be a keras.Model, a builder function or None, got {type(student).__name__}")


@dataclass
class DistillationResult:
    """A distilled student and its from-scratch twin.

    Attributes:
        student: The distilled softmax classifier (compiled).
        scratch_student: The same architecture trained on labels only with the same budget.
        teacher_accuracy: Test accuracy of the teacher (Keras).
        student_accuracy: Test accuracy of the distilled student (Keras).
        scratch_accuracy: Test accuracy of the scratch student (Keras), or ``None``.
        teacher_params: Parameter count of the teacher.
        student_params: Parameter count of the student.
        settings: Temperature, loss weight, epochs and other knobs used.
    """

    student: object
    scratch_student: object | None
    teacher_accuracy: float
    student_accuracy: float
    scratch_accuracy: float | None
    teacher_params: int
    student_params: int
    settings: dict = field(default_factory=dict)

    @property
    def gap_closed(self) -> float | None:
        """Share of the teacher−scratch accuracy gap the distilled student closes (None if no gap)."""
        if self.scratch_accuracy is None or self.teacher_accuracy <= self.scratch_accuracy:
            return None
        return (self.student_accuracy - self.scratch_accuracy) / (self.teacher_accuracy - self.scratch_accuracy)

    def to_dict(self) -> dict:
        """Scalar summary (no models) for logging."""
        return {
            "teacher_accuracy": self.teacher_accuracy,
            "student_accuracy": self.student_accuracy,
            "scratch_student_accuracy": self.scratch_accuracy,
            "teacher_params": self.teacher_params,
            "student_params": self.student_params,
            "gap_closed": self.gap_closed,
            **self.settings,
        }


def _test_accuracy(model, data) -> float:
    predictions = model.predict(data.x_test, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(data.y_test)))


def distill(
    teacher,
    data,
    student: StudentSpec = None,
    *,
    width: float = 0.5,
    epochs: int = 5,
    temperature: float = 4.0,
    student_loss_weight: float = 0.5,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    train_scratch: bool = True,
    seed: int = 42,
) -> DistillationResult:
    """Distill a trained classifier into a smaller student, and train the student from scratch too.

    Args:
        teacher: The trained Keras classifier (softmax output); it is not modified.
        data: Object with ``x_train, y_train, x_test, y_test``.
        student: A student model (copied), a function building one, or ``None`` for
            :func:`width_scaled_copy` of the teacher at ``width``. It must be a chain of
            layers ending in a softmax, with the teacher's input and output shapes.
        width: Width factor of the default student.
        epochs: Training epochs for the distilled and for the scratch student.
        temperature: Softening temperature of the logits distillation loss.
        student_loss_weight: Weight of the label loss; ``1 - weight`` goes to the teacher's logits.
        batch_size: Batch size of both runs.
        learning_rate: Adam learning rate of both runs.
        train_scratch: Whether to train the scratch twin for comparison.
        seed: Seed for initialisation, shuffling and dropout (the same for both runs).

    Returns:
        The distilled student, the scratch student and their test accuracies.

    Raises:
        CompressionError: For an invalid student or incompatible shapes.
    """
    if epochs < 1:
        raise CompressionError(f"distillation needs at least one epoch, got {epochs}")
    keras.utils.set_random_seed(seed)
    template = _make_student(teacher, student, width)
    initial_weights = template.get_weights()
    student_logits, student_softmax = _student_models(template)
    distiller = _distiller(teacher, student_logits, template.name, temperature, student_loss_weight)
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    keras.utils.set_random_seed(seed)
    distiller.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    student_softmax.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    scratch, scratch_accuracy = None, None
    if train_scratch:
        scratch = _train_from_scratch(template, initial_weights, data, epochs, batch_size, learning_rate, seed)
        scratch_accuracy = _test_accuracy(scratch, data)
    return DistillationResult(
        student=student_softmax,
        scratch_student=scratch,
        teacher_accuracy=_test_accuracy(teacher, data),
        student_accuracy=_test_accuracy(student_softmax, data),
        scratch_accuracy=scratch_accuracy,
        teacher_params=int(teacher.count_params()),
        student_params=int(student_softmax.count_params()),
        settings={
            "temperature": temperature,
            "student_loss_weight": student_loss_weight,
            "epochs": epochs,
            "student_width": width if student is None else None,
        },
    )


def _distiller(teacher, student_logits, student_name: str, temperature: float, student_loss_weight: float):
    """A Keras ``Distiller`` matching the student's logits to the teacher's, softened by ``temperature``.

    Raises:
        CompressionError: The student's shapes do not fit the teacher's.
    """
    try:
        return keras.distillation.Distiller(
            teacher=logits_model(teacher),
            student=student_logits,
            distillation_losses=keras.distillation.LogitsDistillation(
                temperature=temperature,
                # The default "kl_divergence" string resolves to a plain function, which (Keras 3.15.1)
                # skips the softmax and applies KL to raw logits; only a KLDivergence instance is softened.
                loss=keras.losses.KLDivergence(),
            ),
            student_loss_weight=student_loss_weight,
        )
    except ValueError as error:
        raise CompressionError(f"cannot distill {teacher.name!r} into {student_name!r}: {error}") from error


def _train_from_scratch(template, initial_weights, data, epochs: int, batch_size: int, learning_rate: float, seed: int):
    """The student's twin trained on the labels alone: same start weights, seed and budget.

    It is the control that shows what the teacher's logits added.
    """
    keras.utils.set_random_seed(seed)
    twin = keras.models.clone_model(template)
    twin.set_weights(initial_weights)
    _, scratch = _student_models(twin)
    scratch.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    keras.utils.set_random_seed(seed)
    scratch.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    return scratch
