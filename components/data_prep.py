"""Load, validate and split a dataset."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data_prep(
    dataset_source: str,
    dataset: Output[Dataset],
    label_column: str,
    seed: int,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    min_samples_per_class: int = 5,
):
    """Write a validated, stratified train/val/test split (``splits.npz`` + ``metadata.json``)."""
    from nasflow.steps.data_prep import data_prep_step

    metadata = data_prep_step(
        dataset_source,
        dataset.path,
        label_column=label_column,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_samples_per_class=min_samples_per_class,
    )
    dataset.metadata.update(metadata)
