"""Keras Tuner architecture search, every trial a nested MLflow run."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def search(
    dataset: Input[Dataset],
    parent_run_id: str,
    best_hyperparameters: Output[Artifact],
    trial_table: Output[Dataset],
    search_metrics: Output[Metrics],
    search_report: Output[Markdown],
    search_report_html: Output[HTML],
    tracking_uri: str,
    search_space: str,
    strategy: str,
    max_trials: int,
    epochs: int,
    seed: int,
    objective: dict,
    max_search_minutes: float,
    state_dir: str,
    num_workers: int,
    trials_per_process: int,
    early_stopping: str,
    measure_costs: str,
    warm_start: str,
    confirm_best: str,
    worker_image: str,
):
    """Search the space; outputs the best hyperparameters (JSON), the trial table (CSV) and a report.

    Parameters are the pipeline's (see ``nas_pipeline``); ``objective`` holds its objective
    settings, 0 meaning "no limit". ``worker_image`` is the image of the worker Job of a
    distributed search: the pipeline passes this component's own image (:data:`IMAGE`),
    fixed when it is compiled.
    """
    from nasflow.steps.search import search_step

    metrics = search_step(
        dataset.path,
        parent_run_id=parent_run_id,
        tracking_uri=tracking_uri,
        search_space=search_space,
        strategy=strategy,
        max_trials=max_trials,
        epochs=epochs,
        seed=seed,
        best_hyperparameters_path=best_hyperparameters.path,
        trial_table_path=trial_table.path,
        report_path=search_report.path,
        html_report_path=search_report_html.path,
        objective=objective,
        max_search_minutes=max_search_minutes,
        state_dir=state_dir,
        num_workers=num_workers,
        trials_per_process=trials_per_process,
        early_stopping=early_stopping,
        measure_costs=measure_costs,
        warm_start=warm_start,
        confirm_best=confirm_best,
        worker_image=worker_image,
    )
    for name, value in metrics.items():
        search_metrics.log_metric(name, value)
