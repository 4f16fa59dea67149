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
    tracking_uri: str = "",
    search_space: str = "",
    strategy: str = "tpe",
    max_trials: int = 8,
    epochs: int = 3,
    seed: int = 42,
    objective_mode: str = "accuracy",
    cost_metric: str = "latency_ms",
    cost_target: float = 0.0,
    reward_exponent: float = -0.07,
    selection: str = "most_accurate",
    max_params: int = 0,
    max_flops: int = 0,
    max_latency_ms: float = 0.0,
    max_size_kb: float = 0.0,
    max_search_minutes: float = 0.0,
    state_dir: str = "",
    num_workers: int = 0,
    trials_per_process: int = 0,
    early_stopping: str = "none",
    measure_costs: str = "auto",
    warm_start: str = "none",
):
    """Search the space (0 means "no constraint"); outputs the best hyperparameters (JSON), the trial table (CSV) and a report."""
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
        objective={
            "mode": objective_mode,
            "cost_metric": cost_metric,
            "cost_target": cost_target,
            "reward_exponent": reward_exponent,
            "selection": selection,
            "max_params": max_params,
            "max_flops": max_flops,
            "max_latency_ms": max_latency_ms,
            "max_size_kb": max_size_kb,
        },
        max_search_minutes=max_search_minutes,
        state_dir=state_dir,
        num_workers=num_workers,
        trials_per_process=trials_per_process,
        early_stopping=early_stopping,
        measure_costs=measure_costs,
        warm_start=warm_start,
    )
    for name, value in metrics.items():
        search_metrics.log_metric(name, value)
