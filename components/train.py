"""Train the best architecture; request a GPU when the pipeline asks for one."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    best_hyperparameters: Input[Artifact],
    parent_run_id: str,
    model: Output[Model],
    test_metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    tracking_uri: str,
    epochs: int,
    seed: int,
    use_gpu: bool,
):
    """Train on train+val with early stopping and checkpoints; evaluate on test."""
    from nasflow.steps.train import train_step

    result = train_step(
        dataset.path,
        best_hyperparameters.path,
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        epochs=epochs,
        seed=seed,
        model_dir=model.path,
        use_gpu=use_gpu,
    )
    for name, value in result["metrics"].items():
        test_metrics.log_metric(name, value)
    confusion_matrix.log_confusion_matrix(result["class_names"], result["confusion_matrix"])
    model.metadata["framework"] = "keras"
    model.metadata["format"] = "keras-v3"
