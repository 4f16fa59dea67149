"""Open and close the pipeline's parent MLflow run."""

from kfp import dsl

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_tracking(
    tracking_uri: str, experiment: str, pipeline_job_id: str, pipeline_parameters: dict, run_identity: str = ""
) -> str:
    """Check that MLflow answers and create (or, for a resumed run identity, reopen) the parent run."""
    from nasflow.steps.tracking import start_tracking_step

    return start_tracking_step(tracking_uri, experiment, run_identity or pipeline_job_id, pipeline_parameters)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish_tracking(
    tracking_uri: str,
    experiment: str,
    pipeline_job_id: str,
    status: dsl.PipelineTaskFinalStatus,
    run_identity: str = "",
):
    """Exit handler: end the parent run FINISHED/FAILED and close runs a crash left RUNNING."""
    from nasflow.steps.tracking import finish_tracking_step

    finish_tracking_step(
        tracking_uri, experiment, run_identity or pipeline_job_id, status.state, status.error_message or ""
    )
