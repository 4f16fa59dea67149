"""Compression stage: pruning, quantization and distillation of Keras 3 classifiers.

``compress_model`` is the entry point the pipeline component calls; the technique
modules can be used on their own.

Names are imported on first use, so that reading a constant of one technique module
(e.g. ``nasflow.compression.selection.PREFERENCES`` for the CLI's help) does not load
Keras and TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "CompressionReport": "nasflow.compression.pipeline",
    "DistillationResult": "nasflow.compression.distillation",
    "MagnitudePruningCallback": "nasflow.compression.pruning",
    "PTQ_MODES": "nasflow.compression.quantization",
    "PruningReport": "nasflow.compression.pruning",
    "QAT_UNAVAILABLE_REASON": "nasflow.compression.quantization",
    "REPORT_FILES": "nasflow.compression.pipeline",
    "VARIANTS": "nasflow.compression.pipeline",
    "VariantResult": "nasflow.compression.selection",
    "accuracy_drop_points": "nasflow.compression.selection",
    "compress_model": "nasflow.compression.pipeline",
    "distill": "nasflow.compression.distillation",
    "logits_model": "nasflow.compression.distillation",
    "magnitude_prune": "nasflow.compression.pruning",
    "mask_model": "nasflow.compression.structured",
    "measure_sparsity": "nasflow.compression.pruning",
    "measure_tflite": "nasflow.compression.pipeline",
    "parse_variant": "nasflow.compression.pipeline",
    "polynomial_decay_sparsity": "nasflow.compression.pruning",
    "quantize": "nasflow.compression.quantization",
    "select_variant": "nasflow.compression.selection",
    "shrink_model": "nasflow.compression.structured",
    "structured_prune": "nasflow.compression.structured",
    "technique_of": "nasflow.compression.pipeline",
    "width_scaled_copy": "nasflow.compression.distillation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
