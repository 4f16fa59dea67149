"""Model families a search space can name: what each needs, how it is checked and built.

A family is data plus three pure functions: ``needs`` lists the hyperparameters its
builder reads (``nasflow.spaces`` checks a space against it), ``check`` rejects
architectures that cannot exist for an input shape before any layer is made, and
``build`` makes the Keras functional model. ``describe`` renders one short line for
logs and the MLflow run name.

Every function here receives ``values``: the *active* hyperparameter values of one
trial, with the defaults of optional needs filled in (see :func:`with_defaults`).
Per-unit names are ``<name>_<i>`` with ``i`` counted from 0 (``filters_0`` is block 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import keras
from keras import layers

from nasflow.errors import InvalidArchitectureError

Values = Mapping[str, object]


@dataclass(frozen=True)
class Need:
    """One hyperparameter a family's builder reads.

    Attributes:
        name: Hyperparameter name; for per-unit needs the prefix of ``<name>_<i>``.
        kind: Value kind: ``int``, ``float``, ``bool`` or ``str``.
        low: Smallest allowed value (``int``/``float``).
        high: Largest allowed value (``int``/``float``).
        allowed: Allowed values (``str``).
        per_unit: Whether one hyperparameter is needed per unit (block, layer, stage).
        gate: For per-unit needs read only for some units: ``(name, values)`` such that
            ``<name>_<i>`` must take one of ``values`` (e.g. expansion only for
            ``inverted_residual`` blocks).
        default: Value used when the space does not declare it; ``None`` = required.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    allowed: tuple[str, ...] = ()
    per_unit: bool = False
    gate: tuple[str, tuple[str, ...]] | None = None
    default: object = None


class SpaceProblem(ValueError):
    """What a graph family finds wrong with a declared space, before any model exists.

    Attributes:
        field: The hyperparameter at fault, or ``None`` for the space as a whole; the
            schema turns it into the file and field of a ``SearchSpaceError``.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class GraphNeeds:
    """Needs named by the graph a space declares (a cell's ``edge_<i>_<j>``), not by a unit count.

    Attributes:
        names: How those hyperparameters are named, for messages (``edge_<i>_<j>``).
        expand: Given every declared hyperparameter's possible values (``None`` when too
            many to list), returns the needs of that graph; raises :class:`SpaceProblem`
            for a graph that cannot exist (malformed edge names, a disconnected cell).
    """

    names: tuple[str, ...]
    expand: Callable[[Mapping[str, tuple | None]], tuple[Need, ...]]


@dataclass(frozen=True)
class Family:
    """A builder family and the hyperparameters it needs.

    Attributes:
        name: Value of ``family`` in a search-space file.
        modality: ``image`` or ``tabular``.
        unit: What one repetition is called in messages (``block``, ``layer``, ``stage``).
        count: Name of the hyperparameter holding the number of units.
        needs: Everything the builder reads, the count included.
        check: Raises ``InvalidArchitectureError`` for impossible architectures.
        build: Builds the uncompiled model (softmax output).
        describe: One short line naming the architecture.
        graph: For graph families (``cell``): the needs that depend on the declared
            space itself, one per edge of the cell.
    """

    name: str
    modality: str
    unit: str
    count: str
    needs: tuple[Need, ...]
    check: Callable[[Values, Sequence[int]], None]
    build: Callable[[Values, Sequence[int], int], keras.Model]
    describe: Callable[[Values], str]
    graph: GraphNeeds | None = None


#: Keras' default BN momentum (0.99) needs hundreds of steps before the moving statistics
#: used at evaluation time catch up; a trial of 1-3 epochs on a few thousand images never
#: gets there and every candidate with batch norm evaluates at chance. 0.9 warms up in tens.
BATCH_NORM_MOMENTUM = 0.9


def _batch_norm(name: str | None = None):
    return layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=name)

def with_defaults(family: Family, values: Values) -> dict[str, object]:
    """Adds the defaults of optional needs the space does not declare.

    Args:
        family: The family whose needs apply.
        values: Active hyperparameter values; must contain the unit count.

    Returns:
        A new dict with every value the family's functions read.
    """
    completed = dict(values)
    units = int(completed[family.count])  # type: ignore[arg-type]
    for need in family.needs:
        if need.default is None:
            continue
        if need.per_unit:
            for i in range(units):
                completed.setdefault(f"{need.name}_{i}", need.default)
        else:
            completed.setdefault(need.name, need.default)
    return completed


# --- shared pieces ---------------------------------------------------------------------

_POOLING = ("flatten", "global_avg", "global_max")
_POOLING_SHORT = {"flatten": "flat", "global_avg": "gap", "global_max": "gmp"}
_LEARNING_RATE = Need("learning_rate", "float", low=1e-7, high=10.0)
_DROPOUT = Need("dropout", "float", low=0.0, high=0.95, default=0.0)


def _image_size(input_shape: Sequence[int]) -> tuple[int, int]:
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise InvalidArchitectureError(
            f"input shape {tuple(input_shape)} is not an image shape (height, width, channels)"
        )
    return int(input_shape[0]), int(input_shape[1])


def _image_head(x: keras.KerasTensor, values: Values, num_classes: int) -> keras.KerasTensor:
    """The end both image families share: the chosen pooling, an optional dense layer and dropout, softmax."""
    pooling = str(values["pooling"])
    if pooling == "global_avg":
        x = layers.GlobalAveragePooling2D()(x)
    elif pooling == "global_max":
        x = layers.GlobalMaxPooling2D()(x)
    else:
        x = layers.Flatten()(x)
    dense_units, dropout = int(values["dense_units"]), float(values["dropout"])  # type: ignore[arg-type]
    if dense_units > 0:
        x = layers.Dense(dense_units, activation="relu")(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def _short_float(value: object) -> str:
    """``0.0012`` -> ``1.2e-3``: short enough for a run name, exact enough to tell apart."""
    mantissa, exponent = f"{float(value):.1e}".split("e")  # type: ignore[arg-type]
    return f"{mantissa}e{int(exponent)}"


def _image_head_text(values: Values) -> str:
    """:func:`_image_head` and the learning rate in a run name, e.g. ``gap | dense64 drop0.2 | lr 1.0e-3``."""
    pooling = _POOLING_SHORT.get(str(values["pooling"]), str(values["pooling"]))
    dense = int(values.get("dense_units", 0))  # type: ignore[arg-type]
    dropout = float(values.get("dropout", 0.0))  # type: ignore[arg-type]
    parts = ([f"dense{dense}"] if dense else []) + ([f"drop{dropout:g}"] if dropout else [])
    return f"{pooling} | {' '.join(parts) or 'linear'} | lr {_short_float(values['learning_rate'])}"


# --- cnn -------------------------------------------------------------------------------


def _check_cnn(values: Values, input_shape: Sequence[int]) -> None:
    height, width = _image_size(input_shape)
    for i in range(int(values["num_blocks"])):  # type: ignore[arg-type]
        # Each block ends in a 2x2 max-pool with 'valid' padding, which halves (floor).
        if height < 2 or width < 2:
            raise InvalidArchitectureError(
                f"block {i}: spatial size {height}x{width} would become "
                f"{height // 2}x{width // 2} after 2x2 max-pool"
            )
        height, width = height // 2, width // 2


def _build_cnn(values: Values, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    for i in range(int(values["num_blocks"])):  # type: ignore[arg-type]
        batch_norm = bool(values[f"batch_norm_{i}"])
        # BatchNorm's beta makes the conv bias redundant.
        x = layers.Conv2D(
            int(values[f"filters_{i}"]),  # type: ignore[arg-type]
            int(values[f"kernel_size_{i}"]),  # type: ignore[arg-type]
            padding="same",
            use_bias=not batch_norm,
        )(x)
        if batch_norm:
            x = _batch_norm()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    return keras.Model(inputs, _image_head(x, values, num_classes), name="cnn")


def _describe_cnn(values: Values) -> str:
    blocks = []
    for i in range(int(values["num_blocks"])):  # type: ignore[arg-type]
        batch_norm = "bn" if values.get(f"batch_norm_{i}") else ""
        blocks.append(f"conv{values[f'filters_{i}']}k{values[f'kernel_size_{i}']}{batch_norm}")
    return f"{'-'.join(blocks)} | {_image_head_text(values)}"


CNN = Family(
    name="cnn",
    modality="image",
    unit="block",
    count="num_blocks",
    needs=(
        Need("num_blocks", "int", low=1, high=5),
        Need("filters", "int", low=1, high=1024, per_unit=True),
        Need("kernel_size", "int", low=1, high=15, per_unit=True),
        Need("batch_norm", "bool", per_unit=True, default=False),
        Need("pooling", "str", allowed=_POOLING),
        Need("dense_units", "int", low=0, high=4096),
        _DROPOUT,
        _LEARNING_RATE,
    ),
    check=_check_cnn,
    build=_build_cnn,
    describe=_describe_cnn,
)


# --- mlp -------------------------------------------------------------------------------

_MLP_ACTIVATIONS = ("relu", "tanh", "elu", "selu", "gelu", "swish", "sigmoid")


def _check_mlp(values: Values, input_shape: Sequence[int]) -> None:
    if len(input_shape) < 1 or any(int(d) < 1 for d in input_shape):
        raise InvalidArchitectureError(f"input shape {tuple(input_shape)} has no features")


def _build_mlp(values: Values, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=tuple(input_shape))
    # Images given to an MLP are read as flat feature vectors.
    x = layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    batch_norm = bool(values["batch_norm"])
    for i in range(int(values["num_layers"])):  # type: ignore[arg-type]
        x = layers.Dense(int(values[f"units_{i}"]), use_bias=not batch_norm)(x)  # type: ignore[arg-type]
        if batch_norm:
            x = _batch_norm()(x)
        x = layers.Activation(str(values["activation"]))(x)
        dropout = float(values[f"dropout_{i}"])  # type: ignore[arg-type]
        if dropout > 0:
            x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mlp")


def _describe_mlp(values: Values) -> str:
    hidden = []
    for i in range(int(values["num_layers"])):  # type: ignore[arg-type]
        dropout = float(values.get(f"dropout_{i}", 0.0))  # type: ignore[arg-type]
        hidden.append(f"dense{values[f'units_{i}']}" + (f" drop{dropout:g}" if dropout else ""))
    batch_norm = " bn" if values.get("batch_norm") else ""
    return f"{'-'.join(hidden)} | {values['activation']}{batch_norm} | lr {_short_float(values['learning_rate'])}"


MLP = Family(
    name="mlp",
    modality="tabular",
    unit="layer",
    count="num_layers",
    needs=(
        Need("num_layers", "int", low=1, high=5),
        Need("units", "int", low=1, high=8192, per_unit=True),
        Need("dropout", "float", low=0.0, high=0.95, per_unit=True, default=0.0),
        Need("activation", "str", allowed=_MLP_ACTIVATIONS),
        Need("batch_norm", "bool", default=False),
        _LEARNING_RATE,
    ),
    check=_check_mlp,
    build=_build_mlp,
    describe=_describe_mlp,
)


# --- mobile_cnn ------------------------------------------------------------------------

_BLOCK_TYPES = ("conv", "depthwise_separable", "inverted_residual")
_BLOCK_SHORT = {"conv": "conv", "depthwise_separable": "dw", "inverted_residual": "ir"}


def _check_mobile(values: Values, input_shape: Sequence[int]) -> None:
    height, width = _image_size(input_shape)
    for i in range(int(values["num_stages"])):  # type: ignore[arg-type]
        stride = int(values[f"stride_{i}"])  # type: ignore[arg-type]
        # 'same' padding would round 1x1 up to 1x1 again; a stride larger than the map
        # only throws work away, so it counts as a collapse (floor division reaches 0).
        if stride > 1 and (height // stride == 0 or width // stride == 0):
            raise InvalidArchitectureError(
                f"stage {i}: spatial size {height}x{width} would become "
                f"{height // stride}x{width // stride} after stride {stride}"
            )
        height, width = math.ceil(height / stride), math.ceil(width / stride)


def _squeeze_excite(x: keras.KerasTensor, channels: int) -> keras.KerasTensor:
    scale = layers.GlobalAveragePooling2D(keepdims=True)(x)
    scale = layers.Conv2D(max(1, channels // 4), 1, activation="relu")(scale)
    scale = layers.Conv2D(channels, 1, activation="sigmoid")(scale)
    return layers.Multiply()([x, scale])


def _mobile_block(
    x: keras.KerasTensor,
    block_type: str,
    filters: int,
    kernel_size: int,
    stride: int,
    expansion: int,
    squeeze_excite: bool,
    activation: str,
) -> keras.KerasTensor:
    in_channels = int(x.shape[-1])
    shortcut = x
    if block_type == "conv":
        x = layers.Conv2D(filters, kernel_size, strides=stride, padding="same", use_bias=False)(x)
        x = layers.Activation(activation)(_batch_norm()(x))
        return _squeeze_excite(x, filters) if squeeze_excite else x
    if block_type == "inverted_residual" and expansion > 1:
        x = layers.Conv2D(in_channels * expansion, 1, use_bias=False)(x)
        x = layers.Activation(activation)(_batch_norm()(x))
    x = layers.DepthwiseConv2D(kernel_size, strides=stride, padding="same", use_bias=False)(x)
    x = layers.Activation(activation)(_batch_norm()(x))
    if squeeze_excite:
        x = _squeeze_excite(x, int(x.shape[-1]))
    x = layers.Conv2D(filters, 1, use_bias=False)(x)
    x = _batch_norm()(x)
    if block_type == "depthwise_separable":
        return layers.Activation(activation)(x)
    # MobileNetV2: the projection stays linear; the shortcut only fits when shapes match.
    if stride == 1 and in_channels == filters:
        x = layers.Add()([shortcut, x])
    return x


def _build_mobile(values: Values, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=tuple(input_shape))
    # Stride 1 in the stem: inputs here are small (8x8 digits, 28x28 MNIST).
    x = layers.Conv2D(int(values["stem_filters"]), 3, padding="same", use_bias=False)(inputs)  # type: ignore[arg-type]
    x = layers.ReLU()(_batch_norm()(x))
    for i in range(int(values["num_stages"])):  # type: ignore[arg-type]
        block_type = str(values[f"block_type_{i}"])
        for repeat in range(int(values[f"repeats_{i}"])):  # type: ignore[arg-type]
            x = _mobile_block(
                x,
                block_type=block_type,
                filters=int(values[f"filters_{i}"]),  # type: ignore[arg-type]
                kernel_size=int(values[f"kernel_size_{i}"]),  # type: ignore[arg-type]
                stride=int(values[f"stride_{i}"]) if repeat == 0 else 1,  # type: ignore[arg-type]
                expansion=int(values.get(f"expansion_{i}", 1)),  # type: ignore[arg-type]
                squeeze_excite=bool(values[f"squeeze_excite_{i}"]),
                activation=str(values[f"activation_{i}"]),
            )
    return keras.Model(inputs, _image_head(x, values, num_classes), name="mobile_cnn")


def _describe_mobile(values: Values) -> str:
    stages = []
    for i in range(int(values["num_stages"])):  # type: ignore[arg-type]
        block_type = str(values[f"block_type_{i}"])
        text = _BLOCK_SHORT.get(block_type, block_type)
        if block_type == "inverted_residual":
            text += str(values.get(f"expansion_{i}", 1))
        text += f"k{values[f'kernel_size_{i}']}c{values[f'filters_{i}']}s{values[f'stride_{i}']}"
        text += f"x{values.get(f'repeats_{i}', 1)}"
        text += "se" if values.get(f"squeeze_excite_{i}") else ""
        activation = str(values.get(f"activation_{i}", "relu"))
        text += "" if activation == "relu" else activation
        stages.append(text)
    return f"stem{values['stem_filters']} | {'-'.join(stages)} | {_image_head_text(values)}"


MOBILE_CNN = Family(
    name="mobile_cnn",
    modality="image",
    unit="stage",
    count="num_stages",
    needs=(
        Need("stem_filters", "int", low=1, high=512),
        Need("num_stages", "int", low=1, high=7),
        Need("block_type", "str", allowed=_BLOCK_TYPES, per_unit=True),
        Need("expansion", "int", low=1, high=8, per_unit=True, gate=("block_type", ("inverted_residual",))),
        Need("kernel_size", "int", low=1, high=9, per_unit=True),
        Need("filters", "int", low=1, high=1024, per_unit=True),
        Need("repeats", "int", low=1, high=4, per_unit=True, default=1),
        Need("stride", "int", low=1, high=2, per_unit=True),
        Need("squeeze_excite", "bool", per_unit=True, default=False),
        Need("activation", "str", allowed=("relu", "relu6", "swish"), per_unit=True, default="relu"),
        Need("pooling", "str", allowed=_POOLING),
        Need("dense_units", "int", low=0, high=4096, default=0),
        _DROPOUT,
        _LEARNING_RATE,
    ),
    check=_check_mobile,
    build=_build_mobile,
    describe=_describe_mobile,
)

#: The chain families; ``nasflow.spaces.catalog.FAMILIES`` adds the graph family (``cell``).
CHAIN_FAMILIES: tuple[Family, ...] = (CNN, MLP, MOBILE_CNN)
