"""Trial throughput of a search with 0, 1 and 2 worker processes on this machine.

    python bench/worker_throughput.py --trials 12 --epochs 3 --out bench/results

The same random search (same seed, so the chief samples the same architectures in the
same order) runs on ``digits`` with the ``cnn`` space as:

* ``in-process`` (``num_workers=0``): one process, TensorFlow free to use every core;
* ``1-worker``: a chief oracle process + one worker process with one TF thread;
* ``2-workers``: a chief + two one-thread workers and a local ``mlflow server``.

Variants run in the order A B C C B A (``--repeats 2``) so a drift in the load of the
shared machine hits every variant alike. Two throughputs are reported:

* **wall**: trials / wall time of the whole ``search_step`` call (process start-up,
  TensorFlow import, data load, the local MLflow server and the final trial table
  included);
* **span**: trials / (last trial end − first trial start), from the MLflow runs: the
  steady-state rate once the workers are up.

1-minute load averages are recorded at the start and end of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {"in-process": 0, "1-worker": 1, "2-workers": 2}


def run_variant(name: str, dataset_dir: str, trials: int, epochs: int, seed: int) -> dict:
    from nasflow import tracking
    from nasflow.search.records import collect_trials
    from nasflow.steps.search import search_step

    root = Path(tempfile.mkdtemp(prefix=f"nasflow-worker-throughput-{name}-"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent_id = tracking.start_parent_run(uri, "nasflow", f"throughput-{name}")
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    search_step(
        dataset_dir,
        parent_run_id=parent_id,
        tracking_uri=uri,
        search_space="cnn",
        strategy="random",
        max_trials=trials,
        epochs=epochs,
        seed=seed,
        best_hyperparameters_path=str(root / "best.json"),
        trial_table_path=str(root / "trials.csv"),
        report_path=str(root / "report.md"),
        state_dir=str(root / "state"),
        num_workers=VARIANTS[name],
    )
    wall = time.monotonic() - started
    load_end = os.getloadavg()[0]
    parent = tracking.open_parent(uri, parent_id)
    rows = [row for row in collect_trials(parent) if row["duration_s"] is not None]
    runs = {run.info.run_id: run for run in parent.client.search_runs(
        [parent.client.get_run(parent_id).info.experiment_id],
        filter_string="tags.`nasflow.role` = 'trial'", max_results=1000,
    )}  # fmt: skip
    starts = [runs[row["mlflow_run_id"]].info.start_time for row in rows]
    ends = [runs[row["mlflow_run_id"]].info.end_time for row in rows]
    span = (max(ends) - min(starts)) / 1000
    shutil.rmtree(root, ignore_errors=True)
    durations = [row["duration_s"] for row in rows]
    fits = [row["fit_s"] for row in rows if row["fit_s"] is not None]
    return {
        "variant": name,
        "num_workers": VARIANTS[name],
        "trials": len(rows),
        "statuses": sorted({row["status"] for row in rows}),
        "wall_s": round(wall, 1),
        "trials_per_min_wall": round(len(rows) / wall * 60, 2),
        "span_s": round(span, 1),
        "trials_per_min_span": round(len(rows) / span * 60, 2),
        "mean_trial_s": round(statistics.fmean(durations), 2),
        "mean_fit_s": round(statistics.fmean(fits), 2) if fits else None,
        "architectures": sorted(row["architecture"] for row in rows),
        "load_1min_start": round(load_start, 2),
        "load_1min_end": round(load_end, 2),
    }


def _mean(rows: list[dict], key: str) -> float:
    return round(statistics.fmean(row[key] for row in rows), 2)


def main() -> None:
    from nasflow.steps.data_prep import data_prep_step

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--repeats", type=int, default=2, choices=(1, 2))
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    data_root = tempfile.mkdtemp(prefix="nasflow-worker-throughput-data-")
    data_prep_step("digits", f"{data_root}/dataset", seed=42)
    order = list(VARIANTS) + (list(reversed(VARIANTS)) if args.repeats == 2 else [])
    runs = []
    for name in order:
        runs.append(run_variant(name, f"{data_root}/dataset", args.trials, args.epochs, args.seed))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "architectures"}), flush=True)
    shutil.rmtree(data_root, ignore_errors=True)

    summary = {}
    for name in VARIANTS:
        mine = [run for run in runs if run["variant"] == name]
        summary[name] = {key: _mean(mine, key) for key in (
            "trials_per_min_wall", "trials_per_min_span", "mean_trial_s", "mean_fit_s", "wall_s",
        )}  # fmt: skip
    ratios = {
        f"{b}/{a} ({kind})": round(
            summary[b][f"trials_per_min_{kind}"] / summary[a][f"trials_per_min_{kind}"], 2
        )
        for b, a in (("2-workers", "1-worker"), ("2-workers", "in-process"), ("1-worker", "in-process"))
        for kind in ("wall", "span")
    }
    same_architectures = len({tuple(run["architectures"]) for run in runs}) == 1
    document = {
        "settings": vars(args),
        "cpus": os.cpu_count(),
        "order": order,
        "same_architectures_in_every_run": same_architectures,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "worker_throughput.json").write_text(json.dumps(document, indent=2) + "\n")
    print(
        json.dumps({"summary": summary, "ratios": ratios, "same_architectures": same_architectures}, indent=2)
    )


if __name__ == "__main__":
    main()
