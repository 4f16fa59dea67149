"""Produce compression variants of a trained model, measure them on LiteRT, pick one.

Every variant, and the float32 baseline, is converted to TFLite and measured the same
way (validation and test accuracy, file and gzipped size, single-thread batch-1 latency)
on the runtime that serves it, so the numbers in one report are comparable with each
other. The choice uses validation accuracy only; test accuracy is reported for every
variant and decides nothing, so the chosen variant's test accuracy (the promotion
metric) is not biased by the choice.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nasflow.compression.distillation import distill
from nasflow.compression.pruning import magnitude_prune, measure_sparsity
from nasflow.compression.quantization import PTQ_MODES, QAT_UNAVAILABLE_REASON, quantize
from nasflow.compression.selection import (
    VariantResult,
    accuracy_drop_points,
    check_preference,
    select_variant,
    validation_drop_points,
)
from nasflow.compression.structured import structured_prune
from nasflow.errors import CompressionError
from nasflow.litert import LiteRTModel, convert_keras_model, measure_latency

logger = logging.getLogger(__name__)

#: Model-changing steps a variant may start with, and the technique name each reports.
MODEL_STEPS = {
    "magnitude_prune": "magnitude_pruning",
    "structured_prune": "structured_pruning",
    "distill": "distillation",
}

#: Every variant name :func:`compress_model` understands.
VARIANTS = (
    "float16",
    "dynamic",
    "int8",
    "magnitude_prune",
    "structured_prune",
    "distill",
    "magnitude_prune+int8",
    "structured_prune+int8",
    "distill+int8",
)

#: Files :func:`compress_model` writes next to the ``.tflite`` files.
REPORT_FILES = ("compression_report.csv", "compression_report.md", "compression_report.json")

_CSV_FIELDS = (
    "name",
    "technique",
    "path",
    "val_accuracy",
    "accuracy",
    "size_bytes",
    "gzip_bytes",
    "latency_p50_ms",
    "latency_p95_ms",
    "params",
    "sparsity",
    "selected",
    "details",
)


def parse_variant(name: str) -> tuple[str | None, str]:
    """Split a variant name into its model step and its TFLite conversion mode.

    Args:
        name: One of :data:`VARIANTS`.

    Returns:
        ``(model_step or None, mode)`` with mode ``"float32"`` when no quantization is applied.

    Raises:
        CompressionError: For a name not in :data:`VARIANTS`.
    """
    if name not in VARIANTS:
        raise CompressionError(f"unknown compression variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    if name in PTQ_MODES:
        return None, name
    step, _, mode = name.partition("+")
    return step, mode or "float32"


def technique_of(name: str) -> str:
    """The technique label of a variant, e.g. ``"magnitude_pruning+quantization"``."""
    step, mode = parse_variant(name)
    parts = ([MODEL_STEPS[step]] if step else []) + (["quantization"] if mode != "float32" else [])
    return "+".join(parts)


@dataclass
class CompressionReport:
    """Baseline, measured variants and the selected one.

    Attributes:
        baseline: The float32 TFLite model (name ``"float32"``).
        variants: The compressed variants, in the order requested.
        selected: Name of the chosen variant (``"float32"`` if none qualifies).
        reason: One line explaining the choice with numbers.
    """

    baseline: VariantResult
    variants: list[VariantResult]
    selected: str
    reason: str
    #: Variants that could not be produced for this model, with the reason
    #: (e.g. structured pruning of a model with skip connections).
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> list[VariantResult]:
        """Baseline first, then the variants."""
        return [self.baseline, *self.variants]

    def result(self, name: str) -> VariantResult:
        """The measured result called ``name``.

        Raises:
            CompressionError: If there is none.
        """
        for row in self.rows:
            if row.name == name:
                return row
        raise CompressionError(f"no variant named {name!r} in this report; have {', '.join(r.name for r in self.rows)}")

    def to_dict(self) -> dict:
        """Plain-dict form, JSON-serializable."""
        return {
            "baseline": self.baseline.to_dict(),
            "variants": [v.to_dict() for v in self.variants],
            "selected": self.selected,
            "reason": self.reason,
            "skipped": dict(self.skipped),
        }

    def to_csv(self, path) -> None:
        """Write one row per model (baseline first); ``details`` is a JSON column."""
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=_CSV_FIELDS)
            writer.writeheader()
            for row in self.rows:
                record = row.to_dict()
                record["details"] = json.dumps(row.details, sort_keys=True, default=str)
                record["selected"] = row.name == self.selected
                writer.writerow(record)

    def to_markdown(self) -> str:
        """A Markdown table with ratios against the baseline and the selection."""
        base = self.baseline
        lines = [
            "| variant | technique | val accuracy | val drop (pts) | test accuracy | test drop (pts) | size KiB | size × | gzip KiB | gzip × | p50 ms | p95 ms | speed-up | params | sparsity |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows:
            marker = " **(selected)**" if row.name == self.selected else ""
            lines.append(
                f"| {row.name}{marker} | {row.technique} | {row.val_accuracy:.2%} | {validation_drop_points(base, row):.2f} "
                f"| {row.accuracy:.2%} | {accuracy_drop_points(base, row):.2f} "
                f"| {row.size_bytes / 1024:.1f} | {base.size_bytes / row.size_bytes:.2f} "
                f"| {row.gzip_bytes / 1024:.1f} | {base.gzip_bytes / row.gzip_bytes:.2f} "
                f"| {row.latency_p50_ms:.3f} | {row.latency_p95_ms:.3f} | {base.latency_p50_ms / row.latency_p50_ms:.2f} "
                f"| {row.params:,} | {row.sparsity:.1%} |"
            )
        lines += ["", f"**Selected** (on validation accuracy; test accuracy decides nothing): {self.reason}"]
        notes = sorted({row.details["qat"] for row in self.rows if "qat" in row.details})
        lines += [f"\nNote: {note}." for note in notes]
        return "\n".join(lines) + "\n"


def measure_tflite(
    name: str,
    technique: str,
    model_content: bytes,
    keras_model,
    data,
    output_dir: Path,
    details: dict | None = None,
) -> VariantResult:
    """Write a TFLite model to ``output_dir`` and measure it on LiteRT.

    Args:
        name: Variant name; the file is ``<name with + as ->.tflite``.
        technique: Technique label.
        model_content: The flatbuffer.
        keras_model: The Keras model it was converted from (for params and sparsity).
        data: Object with ``x_val, y_val, x_test, y_test``.
        output_dir: Folder for the file.
        details: Technique-specific facts to keep.

    Returns:
        The measured result.
    """
    path = Path(output_dir) / f"{name.replace('+', '-')}.tflite"
    path.write_bytes(model_content)
    latency = measure_latency(model_content, np.asarray(data.x_test[:1], dtype=np.float32))
    interpreter = LiteRTModel(model_content)
    return VariantResult(
        name=name,
        technique=technique,
        path=str(path),
        accuracy=interpreter.accuracy(data.x_test, data.y_test),
        val_accuracy=interpreter.accuracy(data.x_val, data.y_val),
        size_bytes=len(model_content),
        gzip_bytes=len(gzip.compress(model_content, 9)),
        latency_p50_ms=latency.p50_ms,
        latency_p95_ms=latency.p95_ms,
        params=int(keras_model.count_params()),
        sparsity=float(measure_sparsity(keras_model)[1]),
        details=dict(details or {}),
    )


def _run_model_step(step: str, model, data, settings: dict) -> tuple[object, dict]:
    started = time.perf_counter()
    if step == "magnitude_prune":
        result, report = magnitude_prune(
            model, data, settings["target_sparsity"], settings["fine_tune_epochs"], seed=settings["seed"]
        )
        details = report.to_dict()
    elif step == "structured_prune":
        result = structured_prune(
            model, data, settings["prune_ratio"], settings["fine_tune_epochs"], seed=settings["seed"]
        )
        details = {"prune_ratio": settings["prune_ratio"], "fine_tune_epochs": settings["fine_tune_epochs"]}
    else:
        distilled = distill(
            model, data, width=settings["student_width"], epochs=settings["distill_epochs"], seed=settings["seed"]
        )
        result, details = distilled.student, distilled.to_dict()
    details["seconds"] = round(time.perf_counter() - started, 2)
    return result, details


def compress_model(
    model,
    data,
    output_dir,
    variants: Iterable[str] = ("float16", "int8"),
    *,
    max_accuracy_drop: float = 1.0,
    prefer: str = "size",
    fine_tune_epochs: int = 2,
    target_sparsity: float = 0.8,
    prune_ratio: float = 0.5,
    student_width: float = 0.5,
    distill_epochs: int | None = None,
    seed: int = 42,
    on_variant: Callable[[int, int, str, VariantResult | None, str], None] | None = None,
) -> CompressionReport:
    """Build the requested variants, measure each and the float32 baseline on LiteRT, select one.

    A model step shared by several variants (``magnitude_prune`` and ``magnitude_prune+int8``)
    runs once. Writes ``<variant>.tflite`` for each model (``+`` becomes ``-``) and the
    :data:`REPORT_FILES` into ``output_dir``.

    Args:
        model: The trained Keras classifier (softmax output); it is not modified.
        data: Object with ``x_train, y_train, x_val, y_val, x_test, y_test``; the choice
            uses only ``x_val``/``y_val``.
        output_dir: Folder for the files (created if missing).
        variants: Names from :data:`VARIANTS`.
        max_accuracy_drop: Largest acceptable validation-accuracy loss, in percentage points.
        prefer: ``"size"``, ``"gzip_size"`` or ``"latency"``.
        fine_tune_epochs: Fine-tuning epochs of magnitude and structured pruning.
        target_sparsity: Final sparsity of magnitude pruning.
        prune_ratio: Fraction of filters/units structured pruning removes.
        student_width: Width factor of the distillation student.
        distill_epochs: Epochs of the distilled and the scratch student; default
            ``3 * fine_tune_epochs``.
        seed: Seed of every training run and of the int8 calibration draw.
        on_variant: Called as each model is measured or skipped, with
            ``(done, total, name, result or None, skip reason)`` (live progress).

    Returns:
        The report; also written to ``output_dir``.

    Raises:
        CompressionError: For an unknown variant or preference (before any work), or a
            variant that cannot be produced.
    """
    # Every name is checked before any work, so a typo costs no training.
    plans = {name: parse_variant(name) for name in dict.fromkeys(variants)}
    check_preference(prefer)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "fine_tune_epochs": fine_tune_epochs,
        "target_sparsity": target_sparsity,
        "prune_ratio": prune_ratio,
        "student_width": student_width,
        "distill_epochs": distill_epochs if distill_epochs is not None else 3 * fine_tune_epochs,
        "seed": seed,
    }
    baseline, results, skipped = _measure_variants(plans, model, data, settings, output_dir, on_variant)
    selected, reason = select_variant(baseline, results, max_accuracy_drop, prefer)
    report = CompressionReport(baseline=baseline, variants=results, selected=selected, reason=reason, skipped=skipped)
    _write_report(report, output_dir)
    return report


def _measure_variants(
    plans: dict[str, tuple[str | None, str]],
    model,
    data,
    settings: dict,
    output_dir: Path,
    on_variant: Callable[[int, int, str, VariantResult | None, str], None] | None,
) -> tuple[VariantResult, list[VariantResult], dict[str, str]]:
    """Measure the float32 baseline, then produce and measure each planned variant in turn.

    A variant whose technique does not apply to this architecture is skipped with its
    reason instead of failing the others.

    Returns:
        The baseline, the measured variants in plan order and the skipped ones with reasons.
    """
    total = 1 + len(plans)
    results: list[VariantResult] = []
    skipped: dict[str, str] = {}

    def report_progress(name: str, result: VariantResult | None, reason: str = "") -> None:
        if on_variant is not None:
            on_variant(1 + len(results) + len(skipped), total, name, result, reason)

    baseline = measure_tflite("float32", "baseline", convert_keras_model(model, "float32"), model, data, output_dir)
    report_progress("float32", baseline)
    derived: dict[str, tuple[object, dict] | CompressionError] = {}
    for name, plan in plans.items():
        try:
            content, source, details = _variant_tflite(plan, model, data, settings, derived)
        except CompressionError as error:
            logger.warning("variant %s skipped: %s", name, error)
            skipped[name] = str(error)
            report_progress(name, None, str(error))
            continue
        results.append(measure_tflite(name, technique_of(name), content, source, data, output_dir, details))
        report_progress(name, results[-1])
    return baseline, results, skipped


def _variant_tflite(
    plan: tuple[str | None, str], model, data, settings: dict, derived: dict[str, tuple[object, dict] | CompressionError]
) -> tuple[bytes, object, dict]:
    """One variant's TFLite model: its model step (if any) applied, then converted or quantized.

    ``derived`` caches each model step's result, or the error it raised, so a step shared by
    several variants runs (or fails) once.

    Returns:
        The TFLite content, the Keras model it was made from and the variant's details.

    Raises:
        CompressionError: The step or the quantization does not apply to this model.
    """
    step, mode = plan
    source, details = model, {}
    if step is not None:
        if step not in derived:
            try:
                derived[step] = _run_model_step(step, model, data, settings)
            except CompressionError as error:
                derived[step] = error
        if isinstance(derived[step], CompressionError):
            raise derived[step]
        source, details = derived[step][0], dict(derived[step][1])
    if mode == "float32":
        return convert_keras_model(source, "float32"), source, details
    content = quantize(source, mode, data.x_train, seed=settings["seed"])
    details.update(quantization=mode, qat=QAT_UNAVAILABLE_REASON)
    return content, source, details


def _write_report(report: CompressionReport, output_dir: Path) -> None:
    """Write the report as the :data:`REPORT_FILES` (CSV, Markdown, JSON)."""
    csv_name, markdown_name, json_name = REPORT_FILES
    report.to_csv(output_dir / csv_name)
    (output_dir / markdown_name).write_text(report.to_markdown(), encoding="utf-8")
    (output_dir / json_name).write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
