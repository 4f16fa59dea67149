"""The register step: register the selected variant and run the promotion gate."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from nasflow import tracking
from nasflow.steps._common import log_named, read_json, user_errors

logger = logging.getLogger(__name__)


@user_errors("register")
def register_step(
    dataset_dir: str,
    model_dir: str,
    compressed_dir: str,
    *,
    parent_run_id: str,
    tracking_uri: str,
    model_name: str,
    min_improvement: float,
    summary_path: str,
) -> dict[str, Any]:
    """Register the selected variant, set ``challenger``, run the promotion gate; write the summary."""
    from nasflow.data import load_prepared
    from nasflow.registry.promotion import promote

    data = load_prepared(dataset_dir)
    from nasflow.compression.pipeline import REPORT_FILES

    report = read_json(str(Path(compressed_dir) / REPORT_FILES[2]), "compression report")
    training = read_json(str(Path(model_dir) / "training.json"), "training record")
    int8 = next((v for v in report["variants"] if v["name"] == "int8"), None)
    selected_name = report["selected"]
    candidates = [report["baseline"], *report["variants"]]
    selected = next(v for v in candidates if v["name"] == selected_name)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    version = _register_selected(selected, int8, model_dir, data, training, model_name, parent_run_id, uri)
    decision = promote(model_name, version.version, min_improvement=min_improvement, tracking_uri=uri)
    summary = _summary(training, report, candidates, version, decision)
    summary.update(tracking_uri=uri, parent_run_id=parent_run_id)
    parent = tracking.open_parent(uri, parent_run_id)
    # The links of the summary need the experiment; the headline metrics of the parent run
    # (beside test_accuracy) are what the registered variant costs.
    summary["experiment_id"] = parent.cached_run().info.experiment_id
    parent.log_metrics(
        {
            "selected.test_accuracy": float(selected["accuracy"]),
            "selected.size_kb": float(selected["size_bytes"]) / 1024.0,
            "selected.latency_p50_ms": float(selected["latency_p50_ms"]),
        }
    )
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_path).write_text(json.dumps(summary, indent=2))
    log_named(parent, summary_path, "summary.json", "")
    return summary


def _register_selected(selected, int8, model_dir: str, data, training, model_name: str, parent_run_id: str, uri: str):
    """Register the selected variant on the parent run, the int8 file attached when there is one.

    The float32 baseline is served as Keras, any other variant as its TFLite file.

    Returns:
        The registered version (``challenger``).
    """
    from nasflow.registry.registration import register_model

    serve = "keras" if selected["name"] == "float32" else "tflite"
    return register_model(
        keras_model_path=str(Path(model_dir) / "model.keras"),
        tflite_path=selected["path"] if serve == "tflite" else None,
        extra_artifacts={"int8_tflite": int8["path"]} if int8 else None,
        serve=serve,
        model_name=model_name,
        test_metric_name="test_accuracy",
        # The variant was chosen on validation accuracy, so its test accuracy is unbiased.
        test_metric_value=float(selected["accuracy"]),
        input_example=data.x_test[:5],
        run_id=parent_run_id,
        tags={"nasflow.variant": selected["name"], "nasflow.architecture": training.get("architecture", "")},
        tracking_uri=uri,
    )


def _summary(training, report, candidates, version, decision) -> dict[str, Any]:
    """What the run produced, for ``summary.json``: the architecture, every variant, the choice, the gate."""
    return {
        "architecture": training.get("architecture", ""),
        "trial_id": training.get("trial_id"),
        "test_accuracy": training["metrics"]["test_accuracy"],
        "variants": [
            {
                "name": v["name"],
                "accuracy": v["accuracy"],
                "val_accuracy": v.get("val_accuracy"),
                "size_bytes": v["size_bytes"],
                "latency_p50_ms": v["latency_p50_ms"],
            }
            for v in candidates
        ],
        "selected_variant": report["selected"],
        "selection_reason": report["reason"],
        "model_name": version.name,
        "model_version": version.version,
        "aliases": ["challenger", *(["champion"] if decision.promoted else [])],
        "promotion": {"promoted": decision.promoted, "reason": decision.reason},
    }
