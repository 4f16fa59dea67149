"""Hardware-aware costs of a candidate architecture: parameters, FLOPs, size and latency.

FLOPs here are multiply-accumulates (MACs) of one batch-1 forward pass, counted by
walking the functional graph of a Keras 3 model (Sequential and nested models
included). Size and latency come from the float32 TFLite flatbuffer on the LiteRT
interpreter (:mod:`nasflow.litert`), the same runtime the compression step reports, so
costs logged during the search are comparable with costs logged after compression.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nasflow import litert
from nasflow.errors import CompressionError, InvalidArchitectureError, SearchError

#: Runtimes a latency can come from.
LATENCY_RUNTIMES = ("litert", "keras", "not_measured")


@dataclass(frozen=True)
class CandidateCosts:
    """What one candidate costs to store and to run.

    Attributes:
        params: Total number of weights (trainable and not).
        flops: Multiply-accumulates of one batch-1 forward pass.
        size_bytes: Float32 TFLite flatbuffer size; ``params * 4`` when conversion fails.
        latency_p50_ms: Median batch-1 latency in milliseconds (NaN when not measured).
        latency_p95_ms: 95th-percentile batch-1 latency in milliseconds (NaN when not measured).
        latency_runtime: ``"litert"``, ``"keras"`` (fallback when TFLite conversion or the
            interpreter fails) or ``"not_measured"``.
    """

    params: int
    flops: int
    size_bytes: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_runtime: str

    @property
    def size_kb(self) -> float:
        """Size in kibibytes."""
        return self.size_bytes / 1024.0

    def to_dict(self) -> dict:
        """Flat dict for metrics logging and objective rows.

        Returns:
            Keys ``params, flops, size_bytes, size_kb, latency_p50_ms, latency_p95_ms,
            latency_runtime``.
        """
        return {
            "params": int(self.params),
            "flops": int(self.flops),
            "size_bytes": int(self.size_bytes),
            "size_kb": float(self.size_kb),
            "latency_p50_ms": float(self.latency_p50_ms),
            "latency_p95_ms": float(self.latency_p95_ms),
            "latency_runtime": self.latency_runtime,
        }


def count_params(model) -> int:
    """Total number of weights of a built Keras model.

    Args:
        model: A built ``keras.Model``.

    Returns:
        Trainable plus non-trainable parameter count.
    """
    return int(sum(math.prod(weight.shape) for weight in model.weights))


def _per_sample(shape: Sequence[int | None]) -> list[int]:
    """Drop the batch axis; unknown dims are an error (costs need a fixed input size)."""
    dims = list(shape[1:])
    if any(dim is None for dim in dims):
        raise InvalidArchitectureError(f"cannot count FLOPs for a tensor of unknown shape {tuple(shape)}")
    return [int(dim) for dim in dims]


def _elements(shape: Sequence[int | None]) -> int:
    return math.prod(_per_sample(shape))


def _channels_and_spatial(shape: Sequence[int | None], data_format: str) -> tuple[int, list[int]]:
    dims = _per_sample(shape)
    if data_format == "channels_first":
        return dims[0], dims[1:]
    return dims[-1], dims[:-1]


def _layer_flops(layer, input_shapes: list, output_shapes: list) -> int:
    """MACs of one call of one (non-model) layer, given its input and output shapes."""
    from keras import layers

    out_shape = output_shapes[0]
    if isinstance(layer, layers.SeparableConv2D | layers.SeparableConv1D):
        in_c, _ = _channels_and_spatial(input_shapes[0], layer.data_format)
        out_c, out_spatial = _channels_and_spatial(out_shape, layer.data_format)
        positions = math.prod(out_spatial)
        depthwise = positions * math.prod(layer.kernel_size) * in_c * layer.depth_multiplier
        pointwise = positions * in_c * layer.depth_multiplier * out_c
        return depthwise + pointwise
    if isinstance(layer, layers.DepthwiseConv2D | layers.DepthwiseConv1D):
        out_c, out_spatial = _channels_and_spatial(out_shape, layer.data_format)
        return math.prod(out_spatial) * math.prod(layer.kernel_size) * out_c
    if isinstance(layer, layers.Conv2DTranspose | layers.Conv1DTranspose | layers.Conv3DTranspose):
        in_c, in_spatial = _channels_and_spatial(input_shapes[0], layer.data_format)
        out_c, _ = _channels_and_spatial(out_shape, layer.data_format)
        return math.prod(in_spatial) * math.prod(layer.kernel_size) * in_c * out_c
    if isinstance(layer, layers.Conv1D | layers.Conv2D | layers.Conv3D):
        in_c, _ = _channels_and_spatial(input_shapes[0], layer.data_format)
        out_c, out_spatial = _channels_and_spatial(out_shape, layer.data_format)
        groups = getattr(layer, "groups", 1) or 1
        return math.prod(out_spatial) * math.prod(layer.kernel_size) * (in_c // groups) * out_c
    if isinstance(layer, layers.Dense):
        in_dims = _per_sample(input_shapes[0])
        positions = math.prod(in_dims[:-1])
        return positions * in_dims[-1] * int(layer.units)
    if isinstance(
        layer,
        layers.Add | layers.Subtract | layers.Multiply | layers.Average | layers.Maximum | layers.Minimum,
    ):
        return max(len(input_shapes) - 1, 1) * _elements(out_shape)
    if isinstance(layer, layers.AveragePooling1D | layers.AveragePooling2D | layers.AveragePooling3D):
        return _elements(out_shape) * math.prod(layer.pool_size)
    if isinstance(
        layer,
        layers.GlobalAveragePooling1D | layers.GlobalAveragePooling2D | layers.GlobalAveragePooling3D,
    ):
        return _elements(input_shapes[0])
    # Activations, max pooling, reshapes, dropout and batch normalization (folded into the
    # preceding convolution by the TFLite converter) cost no multiply-accumulates here.
    return 0


def _graph_of(model):
    """The Functional graph behind a Functional or Sequential model, or None."""
    from keras.src.models.functional import Functional

    if isinstance(model, Functional):
        return model
    functional = getattr(model, "_functional", None)
    if isinstance(functional, Functional):
        return functional
    return None


def count_flops(model) -> int:
    """Multiply-accumulates (MACs) of one batch-1 forward pass of a Keras model.

    The model's functional graph is walked node by node, so shared layers count once per
    call and nested Functional/Sequential models are counted recursively. Convolutions
    count ``out_h * out_w * k_h * k_w * (in_c / groups) * out_c``; depthwise and separable
    convolutions their depthwise and pointwise parts; Dense ``in * out`` per position for
    inputs with more than two axes; element-wise merges (Add, Multiply as in
    squeeze-and-excitation, ...) one per output element and extra input; average pooling
    one per pooled input element. Activations, max pooling, reshapes, dropout and batch
    normalization count zero.

    Args:
        model: A built Functional or Sequential ``keras.Model`` with fixed input shape.

    Returns:
        The MAC count.

    Raises:
        InvalidArchitectureError: For a subclassed (non-graph) model or unknown shapes.
    """
    graph = _graph_of(model)
    if graph is None:
        raise InvalidArchitectureError(
            f"cannot count FLOPs of model {model.name!r}: only built Functional or Sequential models have a graph"
        )
    total = 0
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            operation = node.operation
            if operation is None or node.is_input:
                continue
            if _graph_of(operation) is not None:
                total += count_flops(operation)
                continue
            input_shapes = [tensor.shape for tensor in node.input_tensors]
            output_shapes = [tensor.shape for tensor in node.outputs]
            if not input_shapes or not output_shapes:
                continue
            total += _layer_flops(operation, input_shapes, output_shapes)
    return int(total)


def _batch_of_one(model, sample: np.ndarray) -> np.ndarray:
    sample = np.asarray(sample, dtype=np.float32)
    input_rank = len(model.inputs[0].shape)
    if sample.ndim == input_rank - 1:
        sample = sample[np.newaxis, ...]
    return sample[:1]


def _keras_latency(model, sample: np.ndarray, warmup: int = 5, repeats: int = 50, min_seconds: float = 0.2):
    """Batch-1 eager Keras latency, the fallback when the model cannot run on LiteRT."""
    for _ in range(warmup):
        model(sample, training=False)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < repeats or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter_ns()
        model(sample, training=False)
        timings.append((time.perf_counter_ns() - begin) / 1e6)
        if len(timings) >= 20 * repeats:
            break
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 95))


def measure_candidate_costs(
    model, sample: np.ndarray, *, measure_latency: bool = True, measure_size: bool = True
) -> CandidateCosts:
    """Params, FLOPs, TFLite size and batch-1 latency of one candidate.

    The model is converted to a float32 TFLite flatbuffer and timed single-threaded on
    LiteRT. If conversion or the interpreter fails, size falls back to ``params * 4`` and
    latency to eager Keras (``latency_runtime="keras"``): such latencies are not
    comparable with LiteRT ones, which is why the runtime is reported.

    Args:
        model: A built Keras model.
        sample: One input, with or without a batch axis of 1.
        measure_latency: False skips timing (latencies NaN, runtime ``"not_measured"``).
        measure_size: False with ``measure_latency`` False skips the TFLite conversion
            too (size 0: not measured); the costs are then only params and FLOPs.

    Returns:
        The candidate's costs.
    """
    params = count_params(model)
    flops = count_flops(model)
    batch = _batch_of_one(model, sample)
    if not measure_latency and not measure_size:
        return CandidateCosts(params, flops, 0, math.nan, math.nan, "not_measured")
    try:
        flatbuffer = litert.convert_keras_model(model, "float32")
    except CompressionError:
        flatbuffer = None
    size_bytes = len(flatbuffer) if flatbuffer is not None else params * 4
    if not measure_latency:
        return CandidateCosts(params, flops, size_bytes, math.nan, math.nan, "not_measured")
    stats = None
    if flatbuffer is not None:
        try:
            stats = litert.measure_latency(flatbuffer, batch)
        except (RuntimeError, ValueError):
            stats = None  # the interpreter rejected the flatbuffer: time the Keras model instead
    if stats is not None:
        return CandidateCosts(params, flops, size_bytes, stats.p50_ms, stats.p95_ms, "litert")
    p50, p95 = _keras_latency(model, batch)
    return CandidateCosts(params, flops, size_bytes, p50, p95, "keras")


def costs_to_measure(objective, measure_costs: str) -> tuple[bool, bool]:
    """Whether each trial measures the TFLite size and the LiteRT latency.

    Params and FLOPs are always counted (milliseconds). The flatbuffer conversion (a
    SavedModel export and an MLIR conversion) and the latency timing (>= 0.2 s) are the
    expensive part of a trial outside ``fit``, so ``"auto"`` does them only when the
    objective's cost or a constraint uses them.

    Args:
        objective: The search's ``ObjectiveConfig``.
        measure_costs: ``"auto"``, ``"all"`` or ``"none"``.

    Returns:
        ``(measure_size, measure_latency)``.

    Raises:
        SearchError: ``"none"`` while the objective or a constraint needs size or latency.
    """
    uses_cost = objective.mode != "accuracy"
    size = (uses_cost and objective.cost_metric == "size_kb") or objective.max_size_kb is not None
    latency = (uses_cost and objective.cost_metric == "latency_ms") or objective.max_latency_ms is not None
    if measure_costs == "all":
        return True, True
    if measure_costs == "none":
        if size or latency:
            needed = " and ".join(name for name, used in (("size_kb", size), ("latency_ms", latency)) if used)
            raise SearchError(
                f"measure_costs 'none' cannot score this objective: it uses {needed} (use 'auto' or 'all')"
            )
        return False, False
    return size, latency


def cheap_constraint_check(build_model, space, config) -> Callable[[dict], list[str]]:
    """A ``constraint_check`` for the oracles: build the model, check params and FLOPs.

    Only the limits checkable without training (``config.cheap_constraints()``) are
    applied, so a rejected candidate costs one model build instead of a trial.

    Args:
        build_model: The hypermodel's build function (``HyperParameters -> keras.Model``).
        space: The search space (``keras_tuner.HyperParameters``) the values belong to.
        config: A :class:`nasflow.search.objectives.ObjectiveConfig`.

    Returns:
        A function from hyperparameter values to violation messages (empty when acceptable,
        always empty when the config has no cheap limit).
    """
    from nasflow.search.objectives import constraint_violations

    cheap = config.cheap_constraints()

    def check(values: dict) -> list[str]:
        if cheap.max_params is None and cheap.max_flops is None:
            return []
        hps = space.copy()
        hps.values = dict(values)
        try:
            model = build_model(hps)
        except InvalidArchitectureError as error:
            return [f"cannot build: {error}"]
        costs = {"params": count_params(model)}
        if cheap.max_flops is not None:
            costs["flops"] = count_flops(model)
        return constraint_violations(costs, cheap)

    return check
