"""The start-tracking and finish-tracking steps: the pipeline's parent MLflow run."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from nasflow import tracking
from nasflow.errors import NasflowError
from nasflow.steps._common import user_errors

logger = logging.getLogger(__name__)


@user_errors("start-tracking")
def start_tracking_step(
    tracking_uri: str, experiment: str, pipeline_job_id: str, params: Mapping[str, Any] | None = None
) -> str:
    """Check the tracking server and open the pipeline's parent run; returns its id."""
    return tracking.start_parent_run(tracking_uri, experiment, pipeline_job_id, params=params)


def finish_tracking_step(
    tracking_uri: str, experiment: str, pipeline_job_id: str, state: str, error_message: str = ""
) -> None:
    """Close the parent run (FINISHED or FAILED) and any trial a crash left RUNNING."""
    try:
        tracking.finish_parent_run(
            tracking_uri, experiment, pipeline_job_id, succeeded=state == "SUCCEEDED", message=error_message
        )
    except NasflowError as error:
        # The exit handler must not mask the pipeline's own outcome.
        print(f"nasflow: finish-tracking: {error}", file=sys.stderr)
