"""Refuse a pipeline run's bad parameters before anything is created.

Each setting is validated once, where it is made (``SearchSettings``, ``ObjectiveConfig``,
the compression preference): the check below makes the same objects from the pipeline's
parameters, so ``nasflow run``/``submit``/``schedule`` fail in a second with the error the
step would raise hours later, and nothing (no MLflow run, no run folder) exists yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasflow.errors import NasflowError


def check_run_parameters(parameters: Mapping[str, Any]) -> None:
    """Make every settings object a run of the pipeline makes from ``parameters``.

    Raises:
        NasflowError: The first bad parameter, in the words of the object that refused it.
    """
    from nasflow.compression.selection import check_preference
    from nasflow.search.objectives import ObjectiveConfig, objective_parameters
    from nasflow.search.settings import SearchSettings

    SearchSettings.from_parameters(parameters)
    ObjectiveConfig.from_parameters(objective_parameters(parameters))
    check_preference(parameters["prefer"])
    for name in ("train_epochs",):
        if parameters[name] < 1:
            raise NasflowError(f"{name} must be at least 1, got {parameters[name]}")
    for name in ("max_accuracy_drop", "min_improvement"):
        if parameters[name] < 0:
            raise NasflowError(f"{name} must be >= 0, got {parameters[name]}")
