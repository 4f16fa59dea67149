"""The NAS pipeline: data prep -> search -> train -> compress -> register, tracked in MLflow.

This module only wires components. Per-run settings are pipeline parameters; the
MLflow URI and credentials of a cluster come from the ``nasflow-config`` ConfigMap and
``nasflow-mlflow-credentials`` Secret (see ``k8s/``), never from literals here.
"""

from kfp import dsl, kubernetes

from components import compress, data_prep, finish_tracking, register, search, start_tracking, train
from nasflow.config import (
    CLUSTER_CONFIG_MAP,
    CLUSTER_CREDENTIALS_SECRET,
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    MLFLOW_CREDENTIAL_KEYS,
)

PIPELINE_NAME = "nasflow-nas"
GPU_ACCELERATOR = "nvidia.com/gpu"
#: Retries of the search and train tasks (a killed pod, a lost node); each resumes where it stopped.
RETRIES, RETRY_BACKOFF = 2, "30s"


def _cluster_settings(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Read the tracking URI and credentials from the cluster (ignored by kfp.local)."""
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=CLUSTER_CONFIG_MAP,
        config_map_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"},
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name=CLUSTER_CREDENTIALS_SECRET,
        secret_key_to_env={key: key for key in MLFLOW_CREDENTIAL_KEYS},
        optional=True,
    )
    return task


def _compress_and_register(
    trained: dsl.PipelineTask,
    *,
    dataset,
    parent_run_id,
    tracking_uri,
    compression_variants,
    max_accuracy_drop,
    prefer,
    seed,
    model_name,
    min_improvement,
) -> dsl.PipelineTask:
    """Wire compress -> register after one training task."""
    compressed = _cluster_settings(
        compress(
            dataset=dataset,
            model=trained.outputs["model"],
            parent_run_id=parent_run_id,
            tracking_uri=tracking_uri,
            variants=compression_variants,
            max_accuracy_drop=max_accuracy_drop,
            prefer=prefer,
            seed=seed,
        )
    ).set_caching_options(False)
    compressed.set_cpu_request("2").set_memory_request("4G")
    return _cluster_settings(
        register(
            dataset=dataset,
            model=trained.outputs["model"],
            compressed=compressed.outputs["compressed"],
            parent_run_id=parent_run_id,
            tracking_uri=tracking_uri,
            model_name=model_name,
            min_improvement=min_improvement,
        )
    ).set_caching_options(False)


@dsl.pipeline(name=PIPELINE_NAME, description="Neural architecture search with MLflow tracking and registry.")
def nas_pipeline(
    dataset: str = "mnist-5k",
    label_column: str = "label",
    search_space: str = "",
    strategy: str = "tpe",
    max_trials: int = 8,
    epochs: int = 3,
    max_search_minutes: float = 0.0,
    objective_mode: str = "accuracy",
    cost_metric: str = "latency_ms",
    cost_target: float = 0.0,
    reward_exponent: float = -0.07,
    selection: str = "most_accurate",
    max_params: int = 0,
    max_flops: int = 0,
    max_latency_ms: float = 0.0,
    max_size_kb: float = 0.0,
    train_epochs: int = 10,
    use_gpu: bool = False,
    compression_variants: list = ["float16", "int8"],
    max_accuracy_drop: float = 1.0,
    prefer: str = "size",
    model_name: str = DEFAULT_MODEL_NAME,
    min_improvement: float = 0.0,
    seed: int = 42,
    tracking_uri: str = "",
    experiment: str = DEFAULT_EXPERIMENT,
    state_dir: str = "",
    run_identity: str = "",
    num_workers: int = 0,
    trials_per_process: int = 0,
    early_stopping: str = "none",
    measure_costs: str = "auto",
    warm_start: str = "none",
):
    """Search, train, compress and register a model for ``dataset``.

    Args:
        dataset: Bundled name (``mnist-5k``, ``digits``, ``wine``...), ``keras:NAME`` or a path.
        label_column: Label column of CSV/Parquet data.
        search_space: Bundled space name or YAML path; empty picks one by the data's modality.
        strategy: random | bayesian | hyperband | evolution | reinforce | tpe | gp | nsga2.
        max_trials: Trials to run.
        epochs: Epochs per trial.
        max_search_minutes: Wall-clock budget of the search (0: none).
        objective_mode: accuracy | reward | pareto.
        cost_metric: latency_ms | size_kb | params | flops.
        cost_target: Reward target for the cost (0: none).
        reward_exponent: MnasNet exponent w of the reward.
        selection: most_accurate | knee.
        max_params: Constraint (0: none).
        max_flops: Constraint (0: none).
        max_latency_ms: Constraint (0: none).
        max_size_kb: Constraint (0: none).
        train_epochs: Maximum epochs of the final training.
        use_gpu: Request one GPU for training.
        compression_variants: Variants to produce, e.g. float16, int8, structured_prune+int8.
        max_accuracy_drop: Largest accuracy drop (points) a selected variant may have.
        prefer: size | latency: what the variant selection minimizes.
        model_name: Registered model name.
        min_improvement: How much the candidate must beat the champion by to be promoted.
        seed: Random seed.
        tracking_uri: MLflow URI; empty uses MLFLOW_TRACKING_URI (the cluster ConfigMap).
        experiment: MLflow experiment.
        state_dir: Persistent folder for the tuner state, so a retried search resumes.
        run_identity: Names the MLflow parent run; a run started again with the same identity
            (and state_dir) resumes it. Empty: the KFP pipeline-job id.
        num_workers: Search workers pulling trials from one chief oracle (0: trials in the search task).
        trials_per_process: Recycle a worker process after this many trials (0: never).
        early_stopping: Stop poor trials early (median stopping rule or ASHA); the budget is
            then max_trials x epochs epochs, and what a stopped trial leaves funds more trials.
        measure_costs: Costs each trial measures: auto (what the objective and constraints
            use, then the chosen and Pareto candidates), all, or none (params and FLOPs only).
        warm_start: auto (earlier runs on the same data and space in this experiment), an
            MLflow run id, or none: their trials become the strategy's prior observations.
    """
    finish = _cluster_settings(
        finish_tracking(
            tracking_uri=tracking_uri,
            experiment=experiment,
            pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            run_identity=run_identity,
        )
    ).set_caching_options(False)
    with dsl.ExitHandler(finish, name="nas"):
        start = _cluster_settings(
            start_tracking(
                tracking_uri=tracking_uri,
                experiment=experiment,
                pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                run_identity=run_identity,
                pipeline_parameters={
                    "dataset": dataset,
                    "strategy": strategy,
                    "max_trials": max_trials,
                    "epochs": epochs,
                    "train_epochs": train_epochs,
                    "seed": seed,
                    "model_name": model_name,
                },
            )
        ).set_caching_options(False)
        prepared = data_prep(dataset_source=dataset, label_column=label_column, seed=seed).after(start)
        searched = _cluster_settings(
            search(
                dataset=prepared.outputs["dataset"],
                parent_run_id=start.output,
                tracking_uri=tracking_uri,
                search_space=search_space,
                strategy=strategy,
                max_trials=max_trials,
                epochs=epochs,
                seed=seed,
                objective_mode=objective_mode,
                cost_metric=cost_metric,
                cost_target=cost_target,
                reward_exponent=reward_exponent,
                selection=selection,
                max_params=max_params,
                max_flops=max_flops,
                max_latency_ms=max_latency_ms,
                max_size_kb=max_size_kb,
                max_search_minutes=max_search_minutes,
                state_dir=state_dir,
                num_workers=num_workers,
                trials_per_process=trials_per_process,
                early_stopping=early_stopping,
                measure_costs=measure_costs,
                warm_start=warm_start,
            )
        )
        # A retry resumes: the search state and the training backup are kept in the parent run.
        searched.set_caching_options(False).set_cpu_request("2").set_memory_request("4G").set_retry(
            num_retries=RETRIES, backoff_duration=RETRY_BACKOFF
        )
        # As the chief of a distributed search it owns the worker Job (garbage-collected
        # with this pod) and is what the NetworkPolicy lets the workers reach.
        kubernetes.add_pod_label(searched, label_key="nasflow.io/role", label_value="search-chief")
        kubernetes.use_field_path_as_env(searched, env_name="NASFLOW_POD_UID", field_path="metadata.uid")
        kubernetes.use_field_path_as_env(
            searched, env_name="NASFLOW_NAMESPACE", field_path="metadata.namespace"
        )
        kubernetes.use_field_path_as_env(searched, env_name="NASFLOW_POD_IP", field_path="status.podIP")
        train_args = dict(
            dataset=prepared.outputs["dataset"],
            best_hyperparameters=searched.outputs["best_hyperparameters"],
            parent_run_id=start.output,
            tracking_uri=tracking_uri,
            epochs=train_epochs,
            seed=seed,
        )
        # Both branches wire the same steps after training: kfp.local cannot resolve a
        # dsl.OneOf over the two branches' models (kfp 2.17), and a cluster run is no worse off.
        after_training = dict(
            dataset=prepared.outputs["dataset"],
            parent_run_id=start.output,
            tracking_uri=tracking_uri,
            compression_variants=compression_variants,
            max_accuracy_drop=max_accuracy_drop,
            prefer=prefer,
            seed=seed,
            model_name=model_name,
            min_improvement=min_improvement,
        )
        with dsl.If(use_gpu == True, name="gpu-training"):  # noqa: E712 - a KFP condition, not a Python test
            gpu_trained = _cluster_settings(train(use_gpu=True, **train_args))
            gpu_trained.set_caching_options(False).set_accelerator_type(
                GPU_ACCELERATOR
            ).set_accelerator_limit(1).set_retry(num_retries=RETRIES, backoff_duration=RETRY_BACKOFF)
            gpu_trained.set_memory_request("8G")
            kubernetes.add_toleration(
                gpu_trained, key=GPU_ACCELERATOR, operator="Exists", effect="NoSchedule"
            )
            kubernetes.add_node_selector(gpu_trained, label_key="nvidia.com/gpu.present", label_value="true")
            _compress_and_register(gpu_trained, **after_training)
        with dsl.Else(name="cpu-training"):
            cpu_trained = _cluster_settings(train(use_gpu=False, **train_args))
            cpu_trained.set_caching_options(False).set_cpu_request("2").set_memory_request("4G").set_retry(
                num_retries=RETRIES, backoff_duration=RETRY_BACKOFF
            )
            _compress_and_register(cpu_trained, **after_training)
