"""Compression stage: pruning, quantization and distillation of Keras 3 classifiers.

``compress_model`` is the entry point the pipeline component calls; the technique
modules can be used on their own.
"""

from nasflow.compression.distillation import DistillationResult, distill, logits_model, width_scaled_copy
from nasflow.compression.pipeline import (
    REPORT_FILES,
    VARIANTS,
    CompressionReport,
    compress_model,
    measure_tflite,
    parse_variant,
    technique_of,
)
from nasflow.compression.pruning import (
    MagnitudePruningCallback,
    PruningReport,
    magnitude_prune,
    measure_sparsity,
    polynomial_decay_sparsity,
)
from nasflow.compression.quantization import PTQ_MODES, QAT_UNAVAILABLE_REASON, quantize
from nasflow.compression.selection import VariantResult, accuracy_drop_points, select_variant
from nasflow.compression.structured import mask_model, shrink_model, structured_prune

__all__ = [
    "PTQ_MODES",
    "QAT_UNAVAILABLE_REASON",
    "REPORT_FILES",
    "VARIANTS",
    "CompressionReport",
    "DistillationResult",
    "MagnitudePruningCallback",
    "PruningReport",
    "VariantResult",
    "accuracy_drop_points",
    "compress_model",
    "distill",
    "logits_model",
    "magnitude_prune",
    "mask_model",
    "measure_sparsity",
    "measure_tflite",
    "parse_variant",
    "polynomial_decay_sparsity",
    "quantize",
    "select_variant",
    "shrink_model",
    "structured_prune",
    "technique_of",
    "width_scaled_copy",
]
