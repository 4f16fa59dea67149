"""Train the chosen architecture for real: train+val, early stopping, checkpoints, GPU if any."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasflow import faults
from nasflow.errors import SearchError

logger = logging.getLogger(__name__)

#: Share of train+val held back to decide when to stop and which epoch to keep.
EARLY_STOPPING_FRACTION = 0.1


@dataclass
class TrainResult:
    """The trained model and how it did on the untouched test split."""

    model_path: str
    test_accuracy: float
    test_loss: float
    confusion_matrix: list[list[int]]
    class_names: list[str]
    epochs_run: int
    history: dict[str, list[float]]
    device: str
    mixed_precision: bool
    params: int


def hyperparameters_from_values(space, values: Mapping[str, Any]):
    """A ``keras_tuner.HyperParameters`` for ``space`` holding the given values.

    Values for names the space does not declare (e.g. Hyperband's ``tuner/*`` keys)
    are ignored; names missing from ``values`` keep the space's defaults.
    """
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    space.declare(hp)
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        if name in hp.values or any(h.name == name for h in hp.space):
            hp.values[name] = value
    return hp


def _device_setup() -> tuple[Any, str, bool]:
    """A distribution strategy for the visible accelerators, and whether to use mixed precision."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None, "cpu", False
    # Mixed precision roughly doubles throughput on tensor-core GPUs; the softmax
    # output is kept in float32 by Keras' loss scaling and the final cast.
    keras.mixed_precision.set_global_policy("mixed_float16")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"{len(gpus)}xgpu", True
    return None, "gpu", True


def train_final_model(
    data,
    space,
    values: Mapping[str, Any],
    *,
    epochs: int,
    output_dir: str | Path,
    seed: int = 42,
    patience: int = 3,
    use_gpu: bool = True,
    epoch_callback=None,
    after_backup=None,
) -> TrainResult:
    """Train the architecture given by ``values`` and evaluate it on the test split.

    Checkpoints go to ``output_dir/checkpoints`` every epoch (``BackupAndRestore``), so
    a killed and restarted task resumes from the last finished epoch.

    Args:
        data: ``DatasetSplits``.
        space: The ``SearchSpace`` the values come from.
        values: The chosen hyperparameter values.
        epochs: Maximum epochs.
        output_dir: Where ``model.keras`` and checkpoints are written.
        seed: Random seed.
        patience: Early-stopping patience in epochs.
        use_gpu: Use a visible GPU (mixed precision, several GPUs mirrored); CPU otherwise.
        epoch_callback: Optional ``callable(epoch, logs)`` (e.g. MLflow logging).
        after_backup: Optional ``callable(backup_dir)`` run after each epoch's backup is
            written (e.g. copy it where a retried task finds it); a fresh ``output_dir``
            resumes when its ``checkpoints`` folder is restored from that copy first.

    Returns:
        The result with the path to the saved ``.keras`` model.
    """
    import keras

    if epochs < 1:
        raise SearchError(f"train epochs must be at least 1, got {epochs}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    strategy, device, mixed = _device_setup() if use_gpu else (None, "cpu", False)
    x_fit, x_stop, y_fit, y_stop = _early_stopping_split(data, seed)
    model = _build_model(space, values, data, strategy)
    callbacks = _training_callbacks(output_dir / "checkpoints", patience, epoch_callback, after_backup)
    history = model.fit(
        x_fit,
        y_fit,
        validation_data=(x_stop, y_stop),
        epochs=epochs,
        batch_size=space.batch_size(),
        callbacks=callbacks,
        verbose=0,
    )
    losses = history.history.get("loss", [])
    if any(not np.isfinite(loss) for loss in losses):
        raise SearchError("final training diverged: loss became NaN/inf")
    if mixed:
        keras.mixed_precision.set_global_policy("float32")
    return _test_and_save(model, data, output_dir, history.history, device=device, mixed_precision=mixed)


def _test_and_save(
    model, data, output_dir: Path, history: Mapping[str, list[float]], *, device: str, mixed_precision: bool
) -> TrainResult:
    """Evaluate the trained model once on the untouched test split and save it as ``model.keras``."""
    test_loss, test_accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    predictions = np.argmax(model.predict(data.x_test, verbose=0), axis=-1)
    matrix = _confusion_matrix(data.y_test, predictions, int(data.metadata.num_classes))
    model_path = output_dir / "model.keras"
    model.save(model_path)
    return TrainResult(
        model_path=str(model_path),
        test_accuracy=float(test_accuracy),
        test_loss=float(test_loss),
        confusion_matrix=matrix,
        class_names=list(data.metadata.class_names),
        epochs_run=len(history.get("loss", [])),
        history={key: [float(v) for v in vals] for key, vals in history.items()},
        device=device,
        mixed_precision=mixed_precision,
        params=int(model.count_params()),
    )


def _early_stopping_split(data, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train on train+val, holding back a stratified slice that early stopping watches.

    The test split stays untouched for the final evaluation.

    Returns:
        ``x_fit, x_stop, y_fit, y_stop``.
    """
    from sklearn.model_selection import train_test_split

    x_all = np.concatenate([data.x_train, data.x_val])
    y_all = np.concatenate([data.y_train, data.y_val])
    return train_test_split(x_all, y_all, test_size=EARLY_STOPPING_FRACTION, stratify=y_all, random_state=seed)


def _build_model(space, values: Mapping[str, Any], data, strategy):
    """Build the chosen architecture, inside the distribution strategy's scope when there is one."""
    hp = hyperparameters_from_values(space, values)
    shape, classes = list(data.metadata.input_shape), int(data.metadata.num_classes)
    if strategy is None:
        return space.build_model(hp, shape, classes)
    with strategy.scope():
        return space.build_model(hp, shape, classes)


def _training_callbacks(checkpoints: Path, patience: int, epoch_callback, after_backup) -> list[Any]:
    """Backup every epoch (a restarted task resumes), early stopping, NaN stop, the callers' hooks.

    ``after_backup`` and the fault-injection kill point run after ``BackupAndRestore``:
    Keras calls callbacks in list order, so the epoch's backup exists by then.
    """
    import keras

    callbacks: list[Any] = [
        keras.callbacks.BackupAndRestore(str(checkpoints)),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience, restore_best_weights=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if epoch_callback is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=epoch_callback))

    def backed_up(epoch, logs=None):
        if after_backup is not None:
            after_backup(checkpoints)
        faults.kill_point("train-epoch", epoch)

    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=backed_up))
    return callbacks


def _confusion_matrix(truths, predictions, classes: int) -> list[list[int]]:
    """Counts of (true class, predicted class) on the test split."""
    matrix = np.zeros((classes, classes), dtype=int)
    for truth, predicted in zip(truths, predictions, strict=True):
        matrix[int(truth), int(predicted)] += 1
    return matrix.tolist()
