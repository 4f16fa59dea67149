"""One device's half of bench/gpu_check.sh: a short search and the final training, timed.

Run by gpu_check.sh once with the GPU visible and once with ``CUDA_VISIBLE_DEVICES=-1``;
prints one JSON object (device TensorFlow used, per-trial seconds, training seconds, whether
the final training ran in mixed precision). ``--require-gpu`` fails with one ``nasflow:``
line when TensorFlow sees no GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--max-trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--require-gpu", action="store_true")
    args = parser.parse_args(argv)

    import tensorflow as tf

    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    if args.require_gpu and not gpus:
        print("nasflow: TensorFlow sees no GPU (is the NVIDIA driver loaded and the gpu extra installed?)", file=sys.stderr)
        return 2

    from nasflow import tracking
    from nasflow.steps.data_prep import data_prep_step
    from nasflow.steps.search import search_step
    from nasflow.steps.train import train_step

    with tempfile.TemporaryDirectory(prefix="nasflow-gpu-check-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        data_prep_step(args.dataset, str(root / "dataset"), seed=args.seed)
        parent_id = tracking.start_parent_run(uri, "gpu-check", f"gpu-check-{'gpu' if gpus else 'cpu'}")
        started = time.monotonic()
        search_step(
            str(root / "dataset"), parent_run_id=parent_id, tracking_uri=uri, search_space="", strategy="random",
            max_trials=args.max_trials, epochs=args.epochs, seed=args.seed,
            best_hyperparameters_path=str(root / "best.json"), trial_table_path=str(root / "trials.csv"),
            report_path=str(root / "report.md"), state_dir=str(root / "state"),
        )  # fmt: skip
        search_s = time.monotonic() - started
        client = tracking.make_client(uri)
        experiment = client.get_experiment_by_name("gpu-check").experiment_id
        trials = client.search_runs(
            [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`nasflow.role` = 'trial'"
        )
        durations = sorted(run.data.metrics["duration_s"] for run in trials if "duration_s" in run.data.metrics)
        started = time.monotonic()
        result = train_step(
            str(root / "dataset"), str(root / "best.json"), parent_run_id=parent_id, tracking_uri=uri,
            epochs=args.train_epochs, seed=args.seed, model_dir=str(root / "model"), use_gpu=True,
        )  # fmt: skip
        train_s = time.monotonic() - started
        (train_run,) = client.search_runs(
            [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`nasflow.role` = 'train'"
        )
    print(json.dumps({
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "dataset": args.dataset,
        "trials": len(durations),
        "trial_s_median": statistics.median(durations) if durations else None,
        "trial_s": durations,
        "search_s": round(search_s, 2),
        "train_s": round(train_s, 2),
        "train_epochs_run": result["metrics"]["epochs_run"],
        "test_accuracy": result["metrics"]["test_accuracy"],
        "train_device": train_run.data.tags.get("nasflow.device"),
        "mixed_precision": train_run.data.tags.get("nasflow.mixed_precision") == "true",
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
