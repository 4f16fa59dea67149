"""Register the selected model, set `challenger`, and run the promotion gate."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    dataset: Input[Dataset],
    model: Input[Model],
    compressed: Input[Model],
    parent_run_id: str,
    summary: Output[Artifact],
    tracking_uri: str,
    model_name: str,
    min_improvement: float,
) -> str:
    """Returns ``name/version`` of the registered model version."""
    from nasflow.steps.register import register_step

    result = register_step(
        dataset.path,
        model.path,
        compressed.path,
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        model_name=model_name,
        min_improvement=min_improvement,
        summary_path=summary.path,
    )
    summary.metadata.update({k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))})
    return f"{result['model_name']}/{result['model_version']}"
