"""The train step: train the chosen architecture on train+val and evaluate it on test."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from nasflow import progress, tracking
from nasflow.steps._common import read_json, user_errors

logger = logging.getLogger(__name__)

#: Artifact folder of the parent run holding the final training's ``BackupAndRestore`` folder.
TRAIN_STATE_ARTIFACT_PATH = "train_state"
#: Keras writes it after the weights: the copy of an epoch is complete once it is uploaded.
BACKUP_COMMIT_FILE = "training_metadata.json"


@user_errors("train")
def train_step(
    dataset_dir: str,
    best_hyperparameters_path: str,
    *,
    parent_run_id: str,
    tracking_uri: str,
    epochs: int,
    seed: int,
    model_dir: str,
    use_gpu: bool = False,
) -> dict[str, Any]:
    """Train the chosen architecture on train+val and evaluate it on test.

    Returns:
        ``{"metrics": {...}, "confusion_matrix": [[...]], "class_names": [...]}``.
    """
    from nasflow.data import load_prepared
    from nasflow.search.state import MlflowStateCopy
    from nasflow.spaces.schema import parse_search_space
    from nasflow.train import train_final_model

    data = load_prepared(dataset_dir)
    best = read_json(best_hyperparameters_path, "best hyperparameters")
    space = parse_search_space(best["search_space_config"], source=best.get("search_space", "<best hyperparameters>"))
    parent = tracking.open_parent(tracking_uri, parent_run_id)
    # A retried task resumes from the last epoch the attempt before backed up to the parent run.
    backup = MlflowStateCopy(
        parent, Path(model_dir) / "checkpoints", artifact_path=TRAIN_STATE_ARTIFACT_PATH, commit_file=BACKUP_COMMIT_FILE
    )
    resumed = backup.restore()
    tags = {tracking.ROLE_TAG: "train"}
    interrupted = _close_interrupted_train_runs(parent)
    if interrupted:
        tags["nasflow.resumed_from_run"] = interrupted[-1]
    with tracking.child_run(parent, "train", tags=tags) as run:
        if resumed:
            logger.info("final training resumes from the backup of an interrupted attempt")
        run.log_params({**best["values"], "train.epochs": epochs, "train.seed": seed})

        started = time.monotonic()

        def log_epoch(epoch, logs):
            run.log_metrics({key: float(value) for key, value in (logs or {}).items()}, step=epoch)
            progress.emit(progress.epoch_line(epoch, epochs, logs or {}, started))

        result = train_final_model(
            data, space, best["values"], epochs=epochs, output_dir=model_dir, seed=seed, use_gpu=use_gpu,
            epoch_callback=log_epoch, after_backup=lambda _folder: backup.sync(),
        )
        metrics = {
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "epochs_run": float(result.epochs_run),
            "params": float(result.params),
        }
        run.log_metrics(metrics)
        run.set_tags({"nasflow.device": result.device, "nasflow.mixed_precision": str(result.mixed_precision).lower()})
        run.log_artifact(result.model_path, "model")
    parent.log_metrics({"test_accuracy": result.test_accuracy})
    info = {"architecture": best.get("architecture", ""), "trial_id": best.get("trial_id"), "train_run_id": run.run_id}
    Path(model_dir, "training.json").write_text(json.dumps({**info, "metrics": metrics}, indent=2))
    return {"metrics": metrics, "confusion_matrix": result.confusion_matrix, "class_names": result.class_names}


def _close_interrupted_train_runs(parent: tracking.RunHandle) -> list[str]:
    """Close, as KILLED, train runs a killed attempt left RUNNING; returns their ids."""
    query = (
        f"tags.`{tracking.PARENT_TAG}` = '{parent.run_id}' and tags.`{tracking.ROLE_TAG}` = 'train'"
        " and attributes.status = 'RUNNING'"
    )
    experiment_id = parent.cached_run().info.experiment_id
    runs = tracking.with_retry(
        lambda: parent.client.search_runs([experiment_id], filter_string=query), "list train runs"
    )
    for run in runs:
        handle = tracking.RunHandle(parent.client, run.info.run_id)
        handle.set_tags({tracking.FAILURE_REASON_TAG: "interrupted: the train task stopped during training"})
        handle.terminate("KILLED")
    return [run.info.run_id for run in runs]
