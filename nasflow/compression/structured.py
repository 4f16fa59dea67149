"""Structured pruning: remove whole conv filters and dense units, rebuild a smaller model.

Unlike magnitude pruning, the result is genuinely smaller (fewer channels in every
tensor), so it is faster on any runtime, not only on ones that exploit sparsity. The
rebuild walks the model as a chain of layers and tracks which channels of the current
tensor survive, so a removed filter also disappears from the following BatchNorm, the
next conv's input, and a Flatten→Dense input.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from nasflow.compression.pruning import compile_for_fine_tuning, copy_model
from nasflow.errors import CompressionError

#: Layers whose output channels (filters or units) structured pruning removes.
WIDTH_LAYERS = ("Conv2D", "SeparableConv2D", "Dense")
#: Layers that act on each channel independently and so pass channel removal through.
CHANNELWISE_LAYERS = (
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softmax",
)
_NORMS = ("l1", "l2")


def linear_chain(model) -> list:
    """The model's layers in order, checked to form a single-input, single-output chain.

    Args:
        model: A ``keras.Sequential`` or functional model.

    Returns:
        The layers without the ``InputLayer``.

    Raises:
        CompressionError: If the model has branches, several inputs or several outputs.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise CompressionError(
            f"model {model.name!r} must have one input and one output, has {len(model.inputs)} and {len(model.outputs)}"
        )
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if not isinstance(model, keras.Sequential):
        previous = model.inputs[0]
        for layer in layers:
            if layer.input is not previous:
                raise CompressionError(
                    f"layer {layer.name!r} of model {model.name!r} is not fed by the layer before it; only linear chains are supported"
                )
            previous = layer.output
        if previous is not model.outputs[0]:
            raise CompressionError(f"model {model.name!r} does not end with its last layer; only linear chains are supported")
    return layers


def classifier_layer(layers: list):
    """The last Conv2D/SeparableConv2D/Dense layer: its outputs are the classes, never pruned.

    Raises:
        CompressionError: If there is no such layer.
    """
    for layer in reversed(layers):
        if type(layer).__name__ in WIDTH_LAYERS:
            return layer
    raise CompressionError("model has no Conv2D/SeparableConv2D/Dense layer to prune")


def rebuild_chain(model, layers: list, name: str):
    """A new ``keras.Sequential`` with the given (fresh) layers on the model's input shape."""
    return keras.Sequential([keras.Input(shape=model.input_shape[1:]), *layers], name=name)


def _check_channels_last(layer) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise CompressionError(f"layer {layer.name!r} uses {layer.data_format}; structured pruning needs channels_last")
    axis = getattr(layer, "axis", -1)
    if type(layer).__name__ == "BatchNormalization" and axis not in (-1, len(layer.input.shape) - 1):
        raise CompressionError(f"BatchNormalization {layer.name!r} normalizes axis {axis}; only the channel axis is supported")


def _depthwise_channels(live: np.ndarray, multiplier: int) -> np.ndarray:
    # TF orders depthwise outputs input-channel-major: channel c, multiplier j -> c * m + j.
    return (live[:, np.newaxis] * multiplier + np.arange(multiplier)[np.newaxis, :]).ravel()


def _filter_norms(kernel: np.ndarray, norm: str) -> np.ndarray:
    axes = tuple(range(kernel.ndim - 1))
    if norm == "l1":
        return np.sum(np.abs(kernel), axis=axes)
    return np.sqrt(np.sum(np.square(kernel), axis=axes))


def _keep_strongest(norms: np.ndarray, ratio: float) -> np.ndarray:
    count = len(norms)
    keep = max(1, count - int(round(count * ratio)))
    # A stable sort makes ties (e.g. all-zero filters) resolve the same way every run.
    return np.sort(np.argsort(-norms, kind="stable")[:keep])


def _propagate(layer, in_shape: tuple, live: np.ndarray, kept: dict[str, np.ndarray]) -> np.ndarray:
    """Live channels of ``layer``'s output given the live channels of its input."""
    kind = type(layer).__name__
    if kind in WIDTH_LAYERS:
        width = layer.units if kind == "Dense" else layer.filters
        return kept.get(layer.name, np.arange(width))
    if kind == "DepthwiseConv2D":
        return _depthwise_channels(live, layer.depth_multiplier)
    if kind == "Flatten":
        _check_channels_last(layer)
        spatial = math.prod(in_shape[1:-1])
        return (np.arange(spatial)[:, np.newaxis] * in_shape[-1] + live[np.newaxis, :]).ravel()
    if kind == "BatchNormalization" or kind in CHANNELWISE_LAYERS:
        return live
    raise CompressionError(
        f"layer {layer.name!r} ({kind}) is not supported by structured pruning; supported: "
        f"{', '.join((*WIDTH_LAYERS, 'DepthwiseConv2D', 'BatchNormalization', 'Flatten', *CHANNELWISE_LAYERS))}"
    )


def shrink_model(model, ratio: float, norm: str = "l1"):
    """Remove the lowest-norm filters/units of every width layer except the classifier.

    Each Conv2D/SeparableConv2D keeps its ``1 - ratio`` filters with the largest kernel
    norm (over the input channels that survive), each hidden Dense its strongest units;
    the removal is propagated into the layers that consume those channels. Surviving
    weights are copied, so before any fine-tuning the small model computes exactly what
    :func:`mask_model` computes.

    Args:
        model: A built Keras classifier made of a chain of supported layers.
        ratio: Fraction of filters/units to remove per layer, in [0, 1).
        norm: ``"l1"`` or ``"l2"`` norm used to rank filters.

    Returns:
        ``(small_model, kept_indices)``: a new uncompiled ``keras.Sequential`` and, per pruned
        layer name, the sorted indices of the original filters/units it kept.

    Raises:
        CompressionError: For an invalid ratio or norm, or an unsupported layer.
    """
    if not 0.0 <= ratio < 1.0:
        raise CompressionError(f"structured pruning ratio must be in [0, 1), got {ratio}")
    if norm not in _NORMS:
        raise CompressionError(f"unknown filter norm {norm!r}; expected one of {', '.join(_NORMS)}")
    layers = linear_chain(model)
    classifier = classifier_layer(layers)
    shape = tuple(model.input_shape)
    live = np.arange(shape[-1])
    kept: dict[str, np.ndarray] = {}
    new_layers, new_weights = [], []
    for layer in layers:
        kind = type(layer).__name__
        _check_channels_last(layer)
        config = layer.get_config()
        weights = layer.get_weights()
        if kind in ("Conv2D", "Dense"):
            kernel = weights[0][live] if kind == "Dense" else weights[0][:, :, live, :]
            out = np.arange(kernel.shape[-1]) if layer is classifier else _keep_strongest(_filter_norms(kernel, norm), ratio)
            config["units" if kind == "Dense" else "filters"] = len(out)
            weights = [kernel[..., out]] + ([weights[1][out]] if layer.use_bias else [])
        elif kind == "SeparableConv2D":
            depthwise = weights[0][:, :, live, :]
            pointwise = weights[1][:, :, _depthwise_channels(live, layer.depth_multiplier), :]
            out = np.arange(pointwise.shape[-1]) if layer is classifier else _keep_strongest(_filter_norms(pointwise, norm), ratio)
            config["filters"] = len(out)
            weights = [depthwise, pointwise[..., out]] + ([weights[2][out]] if layer.use_bias else [])
        elif kind == "DepthwiseConv2D":
            weights = [weights[0][:, :, live, :]] + (
                [weights[1][_depthwise_channels(live, layer.depth_multiplier)]] if layer.use_bias else []
            )
        elif kind == "BatchNormalization":
            weights = [values[live] for values in weights]
        if kind in WIDTH_LAYERS and layer is not classifier:
            kept[layer.name] = out
        next_live = _propagate(layer, shape, live, kept)
        new_layers.append(type(layer).from_config(config))
        new_weights.append(weights)
        shape = tuple(layer.compute_output_shape(shape))
        live = next_live
    small = rebuild_chain(model, new_layers, f"{model.name}_shrunk")
    for layer, weights in zip(new_layers, new_weights, strict=True):
        if weights:
            layer.set_weights(weights)
    return small, kept


def mask_model(model, kept_indices: dict[str, np.ndarray]):
    """A copy of ``model`` in which the channels ``shrink_model`` removed are zeroed.

    Removed filters get zero kernel columns and bias, their BatchNorm scale and offset are
    zeroed, and (what makes the outputs identical to the shrunk model whatever the
    activation) the weights that consume a removed channel in the next width layer are
    zeroed too.

    Args:
        model: The model given to :func:`shrink_model`.
        kept_indices: Its second return value.

    Returns:
        An uncompiled copy of ``model`` with the same architecture.
    """
    masked = copy_model(model)
    shape = tuple(masked.input_shape)
    live = np.arange(shape[-1])
    for layer in linear_chain(masked):
        kind = type(layer).__name__
        weights = layer.get_weights()
        dead_in = np.setdiff1d(np.arange(shape[-1]), live)
        next_live = _propagate(layer, shape, live, kept_indices)
        if kind in ("Conv2D", "Dense", "SeparableConv2D"):
            kernel_index = 1 if kind == "SeparableConv2D" else 0
            kernel = weights[kernel_index]
            if kind == "SeparableConv2D":
                weights[0][:, :, dead_in, :] = 0.0
                dead_mid = np.setdiff1d(np.arange(kernel.shape[-2]), _depthwise_channels(live, layer.depth_multiplier))
                kernel[..., dead_mid, :] = 0.0
            else:
                kernel[..., dead_in, :] = 0.0
            dead_out = np.setdiff1d(np.arange(kernel.shape[-1]), next_live)
            kernel[..., dead_out] = 0.0
            if layer.use_bias:
                weights[-1][dead_out] = 0.0
        elif kind == "DepthwiseConv2D":
            weights[0][:, :, dead_in, :] = 0.0
            if layer.use_bias:
                weights[1][np.setdiff1d(np.arange(weights[1].shape[0]), next_live)] = 0.0
        elif kind == "BatchNormalization":
            if layer.scale:
                weights[0][dead_in] = 0.0
            if layer.center:
                weights[1 if layer.scale else 0][dead_in] = 0.0
        if weights:
            layer.set_weights(weights)
        shape = tuple(layer.compute_output_shape(shape))
        live = next_live
    return masked


def structured_prune(
    model,
    data,
    ratio: float = 0.5,
    fine_tune_epochs: int = 2,
    *,
    norm: str = "l1",
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 42,
):
    """Shrink the model by ``ratio`` of its filters/units and fine-tune it on the training split.

    Args:
        model: A trained Keras classifier; it is not modified.
        data: Object with ``x_train`` and ``y_train``.
        ratio: Fraction of filters/units removed per layer (classifier excluded).
        fine_tune_epochs: Epochs of fine-tuning after the cut (0 skips it).
        norm: ``"l1"`` or ``"l2"`` filter ranking.
        batch_size: Fine-tuning batch size.
        learning_rate: Adam learning rate for fine-tuning.
        seed: Seed for shuffling and dropout.

    Returns:
        The smaller, compiled Keras model.
    """
    keras.utils.set_random_seed(seed)
    small, _ = shrink_model(model, ratio, norm)
    compile_for_fine_tuning(small, model, learning_rate)
    if fine_tune_epochs > 0:
        small.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=fine_tune_epochs, shuffle=True, verbose=0)
    return small
