"""The NAS pipeline: data prep -> search -> train -> compress -> register, tracked in MLflow.

This module only wires components. Per-run settings are pipeline parameters; the
MLflow URI and credentials of a cluster come from the ``nasflow-config`` ConfigMap and
``nasflow-mlflow-credentials`` Secret (see ``k8s/``), never from literals here.
"""

from collections.abc import Mapping
from typing import Any

from kfp import dsl, kubernetes

from components import compress, data_prep, finish_tracking, register, search, start_tracking, train
from components._image import GPU_IMAGE, IMAGE
from nasflow.config import (
    CLUSTER_CONFIG_MAP,
    CLUSTER_CREDENTIALS_SECRET,
    DEFAULT_COMPRESSION_VARIANTS,
    DEFAULT_DATASET,
    DEFAULT_EXPERIMENT,
    DEFAULT_LABEL_COLUMN,
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MODEL_NAME,
    DEFAULT_PREFER,
    DEFAULT_SEED,
    DEFAULT_TRAIN_EPOCHS,
    MLFLOW_CREDENTIAL_KEYS,
)
from nasflow.search.objectives import ObjectiveConfig, objective_parameters
from nasflow.search.settings import DEFAULT_WARM_START, SearchSettings

PIPELINE_NAME = "nasflow-nas"
#: The defaults of the search and its objective are the core's own (one declaration each).
_SEARCH = SearchSettings()
_OBJECTIVE = ObjectiveConfig()
GPU_ACCELERATOR = "nvidia.com/gpu"
#: Retries of the search and train tasks (a killed pod, a lost node); each resumes where it stopped.
RETRIES, RETRY_BACKOFF = 2, "30s"
#: The parameters start-tracking logs on the parent run as it opens it.
TRACKED_PARAMETERS = ("dataset", "strategy", "max_trials", "epochs", "train_epochs", "seed", "model_name")


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
    trained: dsl.PipelineTask, parameters: Mapping[str, Any], dataset, parent_run_id
) -> dsl.PipelineTask:
    """Wire compress -> register after one training task."""
    compressed = _cluster_settings(
        compress(
            **_same_named(
                compress,
                parameters,
                wired=dict(
                    dataset=dataset,
                    model=trained.outputs["model"],
                    parent_run_id=parent_run_id,
                    variants=parameters["compression_variants"],
                ),
            )
        )
    ).set_caching_options(False)
    compressed.set_cpu_request("2").set_memory_request("4G")
    return _cluster_settings(
        register(
            **_same_named(
                register,
                parameters,
                wired=dict(
                    dataset=dataset,
                    model=trained.outputs["model"],
                    compressed=compressed.outputs["compressed"],
                    parent_run_id=parent_run_id,
                ),
            )
        )
    ).set_caching_options(False)


def _same_named(component, parameters: Mapping[str, Any], *, wired: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline parameters ``component`` takes under their own names, plus the ``wired`` inputs.

    A parameter that passes straight through is then named once (the pipeline signature and
    the component's), not a third time in the call; ``wired`` wins where a name is both
    (``dataset`` is the pipeline's path and the component's prepared artifact).
    """
    inputs = component.component_spec.inputs
    passed = {name: value for name, value in parameters.items() if name in inputs and name not in wired}
    return {**passed, **wired}


def _tracking_task(component, parameters: Mapping[str, Any], **extra: Any) -> dsl.PipelineTask:
    """Start or finish the parent MLflow run: both tasks address it the same way."""
    return _cluster_settings(
        component(
            tracking_uri=parameters["tracking_uri"],
            experiment=parameters["experiment"],
            pipeline_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            run_identity=parameters["run_identity"],
            **extra,
        )
    ).set_caching_options(False)


def _search_task(parameters: Mapping[str, Any], dataset, parent_run_id) -> dsl.PipelineTask:
    """The search task, set up to resume when retried and to act as a distributed search's chief."""
    searched = _cluster_settings(
        search(
            **_same_named(
                search,
                parameters,
                wired=dict(
                    dataset=dataset,
                    parent_run_id=parent_run_id,
                    # The objective travels as one value, turned into an ObjectiveConfig once.
                    objective=objective_parameters(parameters),
                    # The worker Job runs the search's own image, named when this is compiled.
                    worker_image=IMAGE,
                ),
            )
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
    kubernetes.use_field_path_as_env(searched, env_name="NASFLOW_NAMESPACE", field_path="metadata.namespace")
    kubernetes.use_field_path_as_env(searched, env_name="NASFLOW_POD_IP", field_path="status.podIP")
    return searched


def _gpu_training_task(train_args: Mapping[str, Any]) -> dsl.PipelineTask:
    """Training on one GPU node, in the CUDA image (tensorflow with CUDA) named at compile time."""
    trained = _cluster_settings(train(use_gpu=True, **train_args))
    trained.set_container_image(GPU_IMAGE)
    trained.set_caching_options(False).set_retry(num_retries=RETRIES, backoff_duration=RETRY_BACKOFF)
    trained.set_accelerator_type(GPU_ACCELERATOR).set_accelerator_limit(1).set_memory_request("8G")
    kubernetes.add_toleration(trained, key=GPU_ACCELERATOR, operator="Exists", effect="NoSchedule")
    kubernetes.add_node_selector(trained, label_key="nvidia.com/gpu.present", label_value="true")
    return trained


def _cpu_training_task(train_args: Mapping[str, Any]) -> dsl.PipelineTask:
    """Training on CPUs; retried like the search, resuming from its backup in the parent run."""
    trained = _cluster_settings(train(use_gpu=False, **train_args))
    trained.set_caching_options(False).set_cpu_request("2").set_memory_request("4G").set_retry(
        num_retries=RETRIES, backoff_duration=RETRY_BACKOFF
    )
    return trained


def _train_compress_register(
    parameters: Mapping[str, Any], dataset, searched: dsl.PipelineTask, parent_run_id
) -> None:
    """Train the chosen architecture on a GPU or on CPUs, then compress and register it.

    Both branches wire the same steps after training: kfp.local cannot resolve a
    dsl.OneOf over the two branches' models (kfp 2.17), and a cluster run is no worse off.
    """
    train_args = dict(
        dataset=dataset,
        best_hyperparameters=searched.outputs["best_hyperparameters"],
        parent_run_id=parent_run_id,
        tracking_uri=parameters["tracking_uri"],
        epochs=parameters["train_epochs"],
        seed=parameters["seed"],
    )
    with dsl.If(parameters["use_gpu"] == True, name="gpu-training"):  # noqa: E712 - a KFP condition, not a Python test
        _compress_and_register(_gpu_training_task(train_args), parameters, dataset, parent_run_id)
    with dsl.Else(name="cpu-training"):
        _compress_and_register(_cpu_training_task(train_args), parameters, dataset, parent_run_id)


@dsl.pipeline(name=PIPELINE_NAME, description="Neural architecture search with MLflow tracking and registry.")
def nas_pipeline(
    dataset: str = DEFAULT_DATASET,
    label_column: str = DEFAULT_LABEL_COLUMN,
    search_space: str = "",
    strategy: str = _SEARCH.strategy,
    max_trials: int = _SEARCH.max_trials,
    epochs: int = _SEARCH.epochs,
    max_search_minutes: float = _SEARCH.max_search_minutes,
    objective_mode: str = _OBJECTIVE.mode,
    cost_metric: str = _OBJECTIVE.cost_metric,
    cost_target: float = 0.0,
    reward_exponent: float = _OBJECTIVE.reward_exponent,
    selection: str = _OBJECTIVE.selection,
    max_params: int = 0,
    max_flops: int = 0,
    max_latency_ms: float = 0.0,
    max_size_kb: float = 0.0,
    train_epochs: int = DEFAULT_TRAIN_EPOCHS,
    use_gpu: bool = False,
    compression_variants: list = list(DEFAULT_COMPRESSION_VARIANTS),
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    prefer: str = DEFAULT_PREFER,
    model_name: str = DEFAULT_MODEL_NAME,
    min_improvement: float = 0.0,
    seed: int = DEFAULT_SEED,
    tracking_uri: str = "",
    experiment: str = DEFAULT_EXPERIMENT,
    state_dir: str = "",
    run_identity: str = "",
    num_workers: int = _SEARCH.num_workers,
    trials_per_process: int = _SEARCH.trials_per_process,
    early_stopping: str = _SEARCH.early_stopping,
    measure_costs: str = _SEARCH.measure_costs,
    warm_start: str = DEFAULT_WARM_START,
    confirm_best: str = _SEARCH.confirm_best,
):
    """Search, train, compress and register a model for ``dataset``.

    Args:
        dataset: Bundled name (``mnist-5k``, ``digits``, ``wine``...), ``keras:NAME`` or a path.
        label_column: Label column of CSV/Parquet data.
        search_space: Bundled space name or YAML path; empty picks one by the data's modality.
        strategy: Search strategy.
        max_trials: Trials to run.
        epochs: Epochs per trial.
        max_search_minutes: Wall-clock budget of the search (0: none).
        objective_mode: What the search optimizes (accuracy alone, a cost-aware reward, or a Pareto front).
        cost_metric: The cost that the reward, the constraints and the Pareto front use.
        cost_target: Reward target for the cost (0: none).
        reward_exponent: MnasNet exponent w of the reward.
        selection: How the trial to train is chosen among feasible completed trials.
        max_params: Constraint (0: none).
        max_flops: Constraint (0: none).
        max_latency_ms: Constraint (0: none).
        max_size_kb: Constraint (0: none).
        train_epochs: Maximum epochs of the final training.
        use_gpu: Request one GPU for training.
        compression_variants: Variants to produce, e.g. float16, int8, structured_prune+int8.
        max_accuracy_drop: Largest accuracy drop (points) a selected variant may have.
        prefer: What the selection of a compressed variant minimizes.
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
        confirm_best: Trials at the end of the budget that train the leading architectures
            again (each up to 4 trainings), the choice by the mean: auto (10 % of the
            budget from 100 trials on), none, or a count.
    """
    parameters = dict(locals())  # this run's parameters (KFP placeholders), by name
    finish = _tracking_task(finish_tracking, parameters)
    with dsl.ExitHandler(finish, name="nas"):
        start = _tracking_task(
            start_tracking,
            parameters,
            pipeline_parameters={name: parameters[name] for name in TRACKED_PARAMETERS},
        )
        prepared = data_prep(dataset_source=dataset, label_column=label_column, seed=seed).after(start)
        searched = _search_task(parameters, prepared.outputs["dataset"], start.output)
        _train_compress_register(parameters, prepared.outputs["dataset"], searched, start.output)
