"""Open and close the pipeline's parent MLflow run."""

from kfp import dsl

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_tracking(tracking_uri: str, experiment: str, pipeline_job_id: str, pipeline_parameters: dict) -> str:
    """Check that MLflow answers and create the parent run; returns its id."""
    from nasflow.steps import start_tracking_step

    return start_tracking_step(tracking_uri, experiment, pipeline_job_id, pipeline_parameters)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish_tracking(
    tracking_uri: str, experiment: str, pipeline_job_id: str, status: dsl.PipelineTaskFinalStatus
):
    """Exit handler: end the parent run FINISHED/FAILED and close runs a crash left RUNNING."""
    from nasflow.steps import finish_tracking_step

    finish_tracking_step(tracking_uri, experiment, pipeline_job_id, status.state, status.error_message or "")
