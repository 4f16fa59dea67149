"""The compress step: produce, measure and select compressed variants."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasflow import progress, tracking
from nasflow.steps._common import user_errors

if TYPE_CHECKING:  # the compression modules import TensorFlow; the step imports them when it runs
    from nasflow.compression.pipeline import CompressionReport

logger = logging.getLogger(__name__)


@user_errors("compress")
def compress_step(
    dataset_dir: str,
    model_dir: str,
    *,
    parent_run_id: str,
    tracking_uri: str,
    variants: Sequence[str],
    max_accuracy_drop: float,
    prefer: str,
    output_dir: str,
    seed: int = 42,
    fine_tune_epochs: int = 2,
) -> dict[str, Any]:
    """Produce, measure and select compressed variants; one MLflow child run each.

    The choice is made on validation accuracy; each variant's test accuracy is logged
    for the report and the chosen one's becomes the promotion metric (register step).

    Returns:
        ``{"selected": name, "reason": str, "markdown": table, "metrics": {...}}``.
    """
    import keras

    from nasflow.compression import compress_model
    from nasflow.compression.pipeline import REPORT_FILES
    from nasflow.data import load_prepared

    data = load_prepared(dataset_dir)
    model = keras.saving.load_model(Path(model_dir) / "model.keras", safe_mode=True)
    parent = tracking.open_parent(tracking_uri, parent_run_id)
    report = compress_model(
        model,
        data,
        output_dir,
        variants=list(variants),
        max_accuracy_drop=max_accuracy_drop,
        prefer=prefer,
        fine_tune_epochs=fine_tune_epochs,
        seed=seed,
        on_variant=_show_variant,
    )
    _log_variant_runs(parent, report)
    for file_name in REPORT_FILES:
        parent.log_artifact(Path(output_dir) / file_name, "compression")
    parent.set_tags({"nasflow.compression.selected": report.selected, "nasflow.compression.reason": report.reason})
    return {
        "selected": report.selected,
        "reason": report.reason,
        "markdown": report.to_markdown(),
        "metrics": _step_metrics(report),
    }


def _log_variant_runs(parent: tracking.RunHandle, report: CompressionReport) -> None:
    """One child run per model, so each variant is compared with the others in MLflow.

    The baseline and each measured variant get their numbers and their ``.tflite`` file; a
    skipped variant gets a run marked SKIPPED with its reason, so the run shows what was
    asked for and not produced.
    """
    for variant in report.rows:
        with tracking.child_run(
            parent, f"compress-{variant.name}", tags={tracking.ROLE_TAG: "compression", "nasflow.variant": variant.name}
        ) as run:
            run.log_params({"variant": variant.name, "technique": variant.technique})
            run.log_metrics(
                {
                    "val_accuracy": variant.val_accuracy,
                    "test_accuracy": variant.accuracy,
                    "size_bytes": variant.size_bytes,
                    "gzip_bytes": variant.gzip_bytes,
                    "latency_p50_ms": variant.latency_p50_ms,
                    "latency_p95_ms": variant.latency_p95_ms,
                    "params": variant.params,
                    "sparsity": variant.sparsity,
                }
            )
            run.set_tags({"nasflow.selected": str(variant.name == report.selected).lower()})
            run.log_artifact(variant.path, "model")
    for name, reason in report.skipped.items():
        with tracking.child_run(
            parent, f"compress-{name}", tags={tracking.ROLE_TAG: "compression", "nasflow.variant": name}
        ) as run:
            run.set_tags({"nasflow.variant_status": "SKIPPED", "nasflow.skip_reason": reason[:5000]})


def _step_metrics(report: CompressionReport) -> dict[str, float]:
    """The baseline's and the selected variant's numbers for the KFP ``Metrics`` artifact."""
    selected = next((v for v in report.rows if v.name == report.selected), report.baseline)
    return {
        "baseline_accuracy": report.baseline.accuracy,
        "baseline_size_bytes": float(report.baseline.size_bytes),
        "selected_val_accuracy": selected.val_accuracy,
        "selected_accuracy": selected.accuracy,
        "selected_size_bytes": float(selected.size_bytes),
        "selected_latency_p50_ms": selected.latency_p50_ms,
    }


def _show_variant(done: int, total: int, name: str, result, reason: str) -> None:
    """One progress line per measured (or skipped) compression variant."""
    if result is None:
        progress.emit(f"variant {done}/{total}  {name}  skipped - {' '.join(reason.split())[:80]}")
        return
    progress.emit(
        progress.variant_line(done, total, name, result.accuracy, result.size_bytes, result.latency_p50_ms)
    )
