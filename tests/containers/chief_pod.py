"""Runs inside the chief container: what the search component does in its pod.

The dataset is prepared here, in this container's /tmp; worker containers share no volume
with it and fetch the spec and dataset over the network (nasflow.cluster.bootstrap), as
worker pods do. Settings come from the environment the test gives the container.
"""

from __future__ import annotations

import json
import os
import sys

from nasflow.steps.data_prep import data_prep_step
from nasflow.steps.search import search_step


def main() -> int:
    data_prep_step("digits", "/tmp/dataset", seed=3)
    metrics = search_step(
        "/tmp/dataset",
        parent_run_id=os.environ["PARENT_RUN_ID"],
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        search_space="cnn",
        strategy="random",
        max_trials=int(os.environ["MAX_TRIALS"]),
        epochs=1,
        seed=5,
        best_hyperparameters_path="/tmp/out/best.json",
        trial_table_path="/tmp/out/trials.csv",
        report_path="/tmp/out/report.md",
        state_dir="/tmp/state",
        num_workers=2,
        worker_image=os.environ["WORKER_IMAGE"],
    )
    with open("/tmp/out/best.json") as best:
        print("chief-result " + json.dumps({"metrics": metrics, "best_trial": json.load(best)["trial_id"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
