"""Quantize/prune/distill the trained model and pick the variant to register."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compress(
    dataset: Input[Dataset],
    model: Input[Model],
    parent_run_id: str,
    compressed: Output[Model],
    compression_metrics: Output[Metrics],
    compression_report: Output[Markdown],
    tracking_uri: str,
    variants: list,
    max_accuracy_drop: float,
    prefer: str,
    seed: int,
    fine_tune_epochs: int = 2,
):
    """Every variant measured through LiteRT; the selection and its reason are recorded."""
    from nasflow.steps.compress import compress_step

    result = compress_step(
        dataset.path,
        model.path,
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        variants=variants,
        max_accuracy_drop=max_accuracy_drop,
        prefer=prefer,
        output_dir=compressed.path,
        seed=seed,
        fine_tune_epochs=fine_tune_epochs,
    )
    for name, value in result["metrics"].items():
        compression_metrics.log_metric(name, value)
    with open(compression_report.path, "w") as handle:
        handle.write(f"# Compression\n\nSelected **{result['selected']}**: {result['reason']}\n\n{result['markdown']}\n")
    compressed.metadata["selected_variant"] = result["selected"]
