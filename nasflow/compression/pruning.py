"""Magnitude (unstructured) pruning for Keras 3 models.

Keras 3 has no pruning API and ``tensorflow-model-optimization`` only wraps ``tf_keras``
layers, so the schedule and masking are reimplemented here as a plain callback: the model
being trained stays an ordinary Keras model, and "stripping" the pruning at the end is a
no-op (the zeros are already in the weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np

from nasflow.errors import CompressionError

#: Layer class names whose kernels are pruned (biases and BatchNorm parameters never are).
PRUNABLE_LAYERS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")


def polynomial_decay_sparsity(
    step: int,
    begin_step: int,
    end_step: int,
    initial_sparsity: float,
    final_sparsity: float,
    power: float = 3,
) -> float:
    """Target sparsity at a training step (the TF-MOT ``PolynomialDecay`` formula).

    ``s(t) = s_f + (s_i - s_f) * (1 - p)^power`` with ``p = clip((t - begin) / (end - begin), 0, 1)``.

    Args:
        step: Current optimizer step.
        begin_step: Step at which pruning starts (sparsity ``initial_sparsity``).
        end_step: Step at which ``final_sparsity`` is reached and then held.
        initial_sparsity: Sparsity at ``begin_step``, in [0, 1).
        final_sparsity: Sparsity from ``end_step`` on, in [0, 1).
        power: Exponent of the decay; 3 prunes fast early and slowly near the end.

    Returns:
        The scheduled fraction of weights to set to zero.

    Raises:
        CompressionError: If the steps or sparsities are out of range.
    """
    if end_step <= begin_step:
        raise CompressionError(f"pruning end_step ({end_step}) must be greater than begin_step ({begin_step})")
    for name, value in (("initial_sparsity", initial_sparsity), ("final_sparsity", final_sparsity)):
        if not 0.0 <= value < 1.0:
            raise CompressionError(f"{name} must be in [0, 1), got {value}")
    progress = min(1.0, max(0.0, (step - begin_step) / (end_step - begin_step)))
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power


def prunable_kernels(model) -> list[tuple[str, object]]:
    """The kernels magnitude pruning acts on, as ``(name, variable)`` pairs.

    Args:
        model: A Keras model.

    Returns:
        One entry per kernel of every Conv2D/DepthwiseConv2D/SeparableConv2D/Dense layer;
        SeparableConv2D contributes its depthwise and pointwise kernels.
    """
    kernels: list[tuple[str, object]] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "SeparableConv2D":
            kernels.append((f"{layer.name}/depthwise_kernel", layer.depthwise_kernel))
            kernels.append((f"{layer.name}/pointwise_kernel", layer.pointwise_kernel))
        elif kind in PRUNABLE_LAYERS:
            kernels.append((f"{layer.name}/kernel", layer.kernel))
    return kernels


def measure_sparsity(model) -> tuple[dict[str, float], float]:
    """Fraction of exactly-zero weights in the prunable kernels.

    Args:
        model: A Keras model.

    Returns:
        ``(per_kernel_sparsity, overall_sparsity)``; the overall value weights each kernel
        by its size. Zero for a model without prunable kernels.
    """
    per_layer: dict[str, float] = {}
    zeros = total = 0
    for name, variable in prunable_kernels(model):
        values = np.asarray(variable.numpy())
        layer_zeros = int(np.count_nonzero(values == 0))
        per_layer[name] = layer_zeros / values.size
        zeros += layer_zeros
        total += values.size
    return per_layer, (zeros / total if total else 0.0)


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """A 0/1 mask that zeroes the ``round(sparsity * size)`` smallest-magnitude weights.

    Args:
        weights: One kernel.
        sparsity: Fraction to remove, in [0, 1).

    Returns:
        A float32 mask of the kernel's shape.
    """
    flat = np.abs(np.asarray(weights, dtype=np.float32)).ravel()
    num_pruned = int(round(sparsity * flat.size))
    mask = np.ones(flat.size, dtype=np.float32)
    if num_pruned > 0:
        # argpartition removes exactly num_pruned weights even when many magnitudes tie (e.g. zeros).
        mask[np.argpartition(flat, num_pruned - 1)[:num_pruned]] = 0.0
    return mask.reshape(np.shape(weights))


class MagnitudePruningCallback(keras.callbacks.Callback):
    """Builds and applies magnitude-pruning masks during ``fit``.

    Every ``frequency`` steps from ``begin_step`` to ``end_step`` (and at ``end_step``)
    the masks are recomputed from the current weights at the scheduled sparsity; after every
    training batch the masks are multiplied into the kernels, so pruned weights are exactly
    zero whenever a batch ends, whatever the optimizer did to them. After ``end_step`` the
    masks stay fixed.

    Args:
        begin_step: First step at which masks are computed.
        end_step: Step at which ``final_sparsity`` is reached.
        final_sparsity: Target fraction of zero weights per kernel.
        initial_sparsity: Sparsity at ``begin_step``.
        frequency: Steps between mask updates.
        power: Exponent of the schedule.

    Raises:
        CompressionError: For an invalid schedule (at construction) or a model without
            prunable kernels (when training starts).
    """

    def __init__(
        self,
        begin_step: int,
        end_step: int,
        final_sparsity: float,
        initial_sparsity: float = 0.0,
        frequency: int = 10,
        power: float = 3,
    ) -> None:
        super().__init__()
        if frequency < 1:
            raise CompressionError(f"pruning frequency must be >= 1 step, got {frequency}")
        # Validates the schedule up front rather than in the middle of training.
        polynomial_decay_sparsity(begin_step, begin_step, end_step, initial_sparsity, final_sparsity, power)
        self.begin_step = begin_step
        self.end_step = end_step
        self.final_sparsity = final_sparsity
        self.initial_sparsity = initial_sparsity
        self.frequency = frequency
        self.power = power
        self.step = 0
        self.current_sparsity = 0.0
        self.mask_updates = 0
        self._masks: list[tuple[object, object]] = []

    @property
    def masks(self) -> dict[str, np.ndarray]:
        """The current 0/1 mask of every pruned kernel, keyed by variable path."""
        return {variable.path: np.asarray(mask) for variable, mask in self._masks}

    def is_update_step(self, step: int) -> bool:
        """Whether masks are recomputed before training step ``step``."""
        if step < self.begin_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.begin_step) % self.frequency == 0

    def update_masks(self, sparsity: float) -> None:
        """Recompute every kernel's mask at ``sparsity`` and apply it."""
        self._masks = [
            (variable, keras.ops.convert_to_tensor(magnitude_mask(variable.numpy(), sparsity)))
            for _, variable in prunable_kernels(self.model)
        ]
        self.current_sparsity = sparsity
        self.mask_updates += 1
        self.apply_masks()

    def apply_masks(self) -> None:
        """Multiply the current masks into the kernels."""
        for variable, mask in self._masks:
            variable.assign(variable * mask)

    def on_train_begin(self, logs=None) -> None:  # noqa: D102
        if not prunable_kernels(self.model):
            raise CompressionError("magnitude pruning found no Conv2D/DepthwiseConv2D/SeparableConv2D/Dense kernels")

    def on_train_batch_begin(self, batch, logs=None) -> None:  # noqa: D102
        if self.is_update_step(self.step):
            self.update_masks(
                polynomial_decay_sparsity(
                    self.step, self.begin_step, self.end_step, self.initial_sparsity, self.final_sparsity, self.power
                )
            )

    def on_train_batch_end(self, batch, logs=None) -> None:  # noqa: D102
        self.apply_masks()
        self.step += 1


@dataclass
class PruningReport:
    """What magnitude pruning achieved, measured on the final weights.

    Attributes:
        per_layer_sparsity: Fraction of zero weights per pruned kernel (``layer/kernel``).
        overall_sparsity: Fraction of zeros over all pruned kernels together.
        target_sparsity: The requested final sparsity.
        mask_updates: How many times the masks were recomputed.
    """

    per_layer_sparsity: dict[str, float] = field(default_factory=dict)
    overall_sparsity: float = 0.0
    target_sparsity: float = 0.0
    mask_updates: int = 0

    def to_dict(self) -> dict:
        """Plain-dict form for logging."""
        return {
            "per_layer_sparsity": dict(self.per_layer_sparsity),
            "overall_sparsity": self.overall_sparsity,
            "target_sparsity": self.target_sparsity,
            "mask_updates": self.mask_updates,
        }


def copy_model(model):
    """An independent copy of a Keras model with the same weights (not compiled).

    Args:
        model: A built Keras model.

    Returns:
        The copy.
    """
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def compile_for_fine_tuning(model, reference, learning_rate: float) -> None:
    """Compile ``model`` with the reference model's loss (sparse CE by default) and Adam.

    A fresh optimizer is used on purpose: the original optimizer's slots belong to the
    original variables.

    Args:
        model: Model to compile.
        reference: The model it was derived from (its ``loss`` is reused when set).
        learning_rate: Adam learning rate.
    """
    loss = getattr(reference, "loss", None) or "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])


def magnitude_prune(
    model,
    data,
    final_sparsity: float = 0.8,
    epochs: int = 2,
    *,
    initial_sparsity: float = 0.0,
    frequency: int | None = None,
    end_fraction: float = 0.7,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 42,
    callbacks: list | None = None,
):
    """Prune the smallest-magnitude kernel weights while fine-tuning on the training split.

    Sparsity ramps from ``initial_sparsity`` to ``final_sparsity`` over the first
    ``end_fraction`` of the steps (polynomial decay, power 3) and is then held while the
    remaining steps recover accuracy.

    Args:
        model: A trained Keras classifier; it is not modified.
        data: Object with ``x_train`` and ``y_train``.
        final_sparsity: Fraction of each kernel's weights set to zero.
        epochs: Fine-tuning epochs.
        initial_sparsity: Sparsity of the first mask.
        frequency: Steps between mask updates; default one tenth of the pruning ramp.
        end_fraction: Share of the training steps over which sparsity ramps up.
        batch_size: Fine-tuning batch size.
        learning_rate: Adam learning rate for fine-tuning.
        seed: Seed for shuffling and dropout.
        callbacks: Extra Keras callbacks, run after the pruning callback on every batch.

    Returns:
        ``(pruned_model, PruningReport)``: a plain Keras model whose pruned weights are zero.

    Raises:
        CompressionError: For invalid arguments or a model without prunable layers.
    """
    if epochs < 1:
        raise CompressionError(f"magnitude pruning needs at least one epoch, got {epochs}")
    if not 0.0 < end_fraction <= 1.0:
        raise CompressionError(f"end_fraction must be in (0, 1], got {end_fraction}")
    keras.utils.set_random_seed(seed)
    pruned = copy_model(model)
    compile_for_fine_tuning(pruned, model, learning_rate)
    steps_per_epoch = math.ceil(len(data.x_train) / batch_size)
    end_step = max(1, int(steps_per_epoch * epochs * end_fraction) - 1)
    pruning = MagnitudePruningCallback(
        begin_step=0,
        end_step=end_step,
        final_sparsity=final_sparsity,
        initial_sparsity=initial_sparsity,
        frequency=frequency or max(1, end_step // 10),
    )
    pruned.fit(
        data.x_train,
        data.y_train,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[pruning, *(callbacks or [])],
    )
    if pruning.current_sparsity < final_sparsity:
        # Only reached when training ended before end_step (e.g. a caller's callback stopped it).
        pruning.update_masks(final_sparsity)
    per_layer, overall = measure_sparsity(pruned)
    return pruned, PruningReport(per_layer, overall, final_sparsity, pruning.mask_updates)
