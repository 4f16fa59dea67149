"""The data-prep step: load, validate and split a dataset."""

from __future__ import annotations

import logging
from typing import Any

from nasflow.steps._common import user_errors

logger = logging.getLogger(__name__)


@user_errors("data-prep")
def data_prep_step(
    dataset: str,
    output_dir: str,
    *,
    label_column: str = "label",
    seed: int = 42,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    min_samples_per_class: int = 5,
) -> dict[str, Any]:
    """Load, validate and split a dataset into ``output_dir``; returns its metadata."""
    from nasflow.data import prepare_dataset

    metadata = prepare_dataset(
        dataset,
        output_dir,
        label_column=label_column,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        min_samples_per_class=min_samples_per_class,
    )
    return metadata.to_dict()
