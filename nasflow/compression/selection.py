"""Measured compression variants and the policy that picks one to ship."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from nasflow.errors import CompressionError

#: ``prefer`` values: the VariantResult field minimised and how the reason names it.
PREFERENCES = {
    "size": ("size_bytes", "smallest .tflite"),
    "gzip_size": ("gzip_bytes", "smallest gzipped .tflite"),
    "latency": ("latency_p50_ms", "lowest p50 latency"),
}


@dataclass
class VariantResult:
    """One TFLite model measured on the LiteRT CPU interpreter.

    Attributes:
        name: Variant name (``"float32"`` for the baseline, e.g. ``"magnitude_prune+int8"``).
        technique: What produced it, e.g. ``"quantization"`` or ``"magnitude_pruning+quantization"``.
        path: The ``.tflite`` file written for it.
        accuracy: Test accuracy through LiteRT, in [0, 1]: reported, never used to choose.
        size_bytes: Size of the flatbuffer.
        gzip_bytes: Size after ``gzip.compress(..., 9)``.
        latency_p50_ms: Median batch-1 latency, one thread.
        latency_p95_ms: 95th-percentile batch-1 latency, one thread.
        params: Parameter count of the Keras model that was converted.
        sparsity: Fraction of exactly-zero weights in its Conv/Dense kernels.
        details: Technique-specific facts (per-layer sparsity, scratch-student accuracy, QAT reason, ...).
        val_accuracy: Validation accuracy through LiteRT: what :func:`select_variant` decides on.
    """

    name: str
    technique: str
    path: str
    accuracy: float
    size_bytes: int
    gzip_bytes: int
    latency_p50_ms: float
    latency_p95_ms: float
    params: int
    sparsity: float
    details: dict = field(default_factory=dict)
    val_accuracy: float = float("nan")

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serializable when ``details`` is)."""
        return asdict(self)


def accuracy_drop_points(baseline: VariantResult, variant: VariantResult) -> float:
    """Test accuracy lost by ``variant`` relative to ``baseline``, in percentage points (reported only)."""
    return baseline.accuracy * 100 - variant.accuracy * 100


def validation_drop_points(baseline: VariantResult, variant: VariantResult) -> float:
    """Validation accuracy lost by ``variant`` relative to ``baseline``, in percentage points.

    Raises:
        CompressionError: A result has no validation accuracy (``nan``).
    """
    for result in (baseline, variant):
        if not math.isfinite(result.val_accuracy):
            raise CompressionError(f"variant {result.name} has no validation accuracy; selection needs one")
    return baseline.val_accuracy * 100 - variant.val_accuracy * 100


def check_preference(prefer: str) -> str:
    """Return ``prefer`` if it is a known preference, else raise CompressionError."""
    if prefer not in PREFERENCES:
        raise CompressionError(f"unknown preference {prefer!r}; expected one of {', '.join(PREFERENCES)}")
    return prefer


def select_variant(
    baseline: VariantResult,
    variants: list[VariantResult],
    max_accuracy_drop: float = 1.0,
    prefer: str = "size",
) -> tuple[str, str]:
    """Pick the variant to ship: the best on ``prefer`` among those accurate enough on validation data.

    Only validation accuracy decides (the test set stays untouched by the choice, so the
    chosen variant's test accuracy is an unbiased estimate). A variant qualifies when
    ``baseline.val_accuracy*100 - variant.val_accuracy*100 <= max_accuracy_drop``
    (compared after rounding to 1e-6 points, so a drop of exactly the threshold qualifies
    despite float error). Among qualifying variants the one with the lowest ``prefer``
    metric wins (ties: smaller file, then lower latency, then name). The float32 baseline
    is kept when nothing qualifies or when it is itself at least as good on that metric.

    Args:
        baseline: The float32 TFLite model.
        variants: Compressed variants measured the same way.
        max_accuracy_drop: Largest acceptable validation-accuracy loss in percentage points.
        prefer: ``"size"``, ``"gzip_size"`` or ``"latency"``.

    Returns:
        ``(name, reason)``: the chosen variant's name and a one-line explanation with numbers.

    Raises:
        CompressionError: For an unknown preference or a negative threshold.
    """
    metric, label = PREFERENCES[check_preference(prefer)]
    if max_accuracy_drop < 0:
        raise CompressionError(f"max_accuracy_drop must be >= 0 points, got {max_accuracy_drop}")
    if not variants:
        return baseline.name, f"no compressed variants were measured; keeping {baseline.name}"
    qualifying = [v for v in variants if round(validation_drop_points(baseline, v), 6) <= max_accuracy_drop]
    if not qualifying:
        closest = min(variants, key=lambda v: validation_drop_points(baseline, v))
        return baseline.name, (
            f"none of {len(variants)} variants is within a {max_accuracy_drop:g}-point drop of {baseline.name} "
            f"validation accuracy {baseline.val_accuracy:.2%} (closest: {closest.name} drops "
            f"{validation_drop_points(baseline, closest):.2f} points); keeping {baseline.name}"
        )
    best = min(qualifying, key=lambda v: (getattr(v, metric), v.size_bytes, v.latency_p50_ms, v.name))
    best_value, baseline_value = getattr(best, metric), getattr(baseline, metric)
    unit = "ms" if metric == "latency_p50_ms" else "bytes"
    if baseline_value <= best_value:
        return baseline.name, (
            f"{baseline.name} kept: {len(qualifying)} of {len(variants)} variants are within a {max_accuracy_drop:g}-point drop "
            f"but the best, {best.name}, is not better on {metric} ({best_value:.4g} {unit} vs {baseline_value:.4g} {unit})"
        )
    return best.name, (
        f"{best.name}: {label} among {len(qualifying)} of {len(variants)} variants within a {max_accuracy_drop:g}-point drop "
        f"({best_value:.4g} {unit} vs {baseline_value:.4g} {unit} for {baseline.name}, {baseline_value / best_value:.2f}x); "
        f"validation accuracy {best.val_accuracy:.2%} vs {baseline.val_accuracy:.2%} "
        f"(drop {validation_drop_points(baseline, best):.2f} points)"
    )
