"""Per-trial time outside ``fit`` over a long search: plain Keras Tuner vs nasflow with recycled workers.

Keras 3.15 / TF 2.21 leave objects behind on every build + fit, so in one long-lived
process the work around ``fit`` (``clear_session``, ``gc``, building, saving) gets slower
with every trial. This runs ``--trials`` tiny 1-epoch trials on ``digits`` with the
space in ``bench/spaces/tiny_cnn.yaml`` for:

* ``keras_tuner``: ``keras_tuner.RandomSearch`` with a HyperModel from the same space,
  all trials in one process. Timers around ``run_trial`` and around ``model.fit``.
* ``nasflow_recycled``: nasflow's random search with ``trials_per_process`` (default 25)
  through the path ``nasflow.steps`` takes for it (``cluster.run_search_processes``:
  a chief oracle process and one worker process started again every N trials), MLflow
  logging to a throw-away SQLite store. Times from the MLflow rows: ``duration_s`` and
  ``fit_seconds``.
* ``nasflow_in_process`` (optional): ``run_search`` in this process, no recycling.

Two overheads per trial: *in-trial* = trial wall time − fit time (``run_trial`` for Keras
Tuner, ``duration_s`` for nasflow), and *cycle* = time between the ends of consecutive
trials − fit time, which also counts the oracle's bookkeeping and, for nasflow, the
restart of a recycled worker (TensorFlow import, data load, tuner reload) spread over
the trial that follows it.

Usage::

    python bench/trial_overhead.py --trials 300 --trials-per-process 25 --out bench/results
    python bench/trial_overhead.py --quick      # 20 trials each, results in /tmp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

SPACE_FILE = Path(__file__).resolve().parent / "spaces" / "tiny_cnn.yaml"
DATASET = "digits"
SPLIT_SEED = 42
VARIANTS = ("keras_tuner", "nasflow_recycled", "nasflow_in_process")


def _load():
    from nasflow.data import load_raw_dataset, split_dataset
    from nasflow.spaces.schema import load_search_space

    return split_dataset(load_raw_dataset(DATASET), 0.2, 0.2, SPLIT_SEED), load_search_space(SPACE_FILE)


def run_keras_tuner(trials: int, seed: int, work: Path) -> list[dict]:
    """Plain ``keras_tuner.RandomSearch`` in this process, timed around ``run_trial`` and ``fit``."""
    import keras_tuner

    from nasflow.spaces.schema import SearchSpaceHyperModel

    data, space = _load()
    records: list[dict] = []
    last_fit: dict = {}
    origin = time.monotonic()

    class TimedHyperModel(SearchSpaceHyperModel):
        def fit(self, hp, model, *args, **kwargs):
            started = time.monotonic()
            history = model.fit(*args, **kwargs)
            last_fit["s"] = time.monotonic() - started
            return history

    class TimedRandomSearch(keras_tuner.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            started = time.monotonic()
            result = super().run_trial(trial, *args, **kwargs)
            records.append({"trial_id": trial.trial_id, "t_start": started - origin,
                            "duration_s": time.monotonic() - started, "fit_s": last_fit.pop("s")})  # fmt: skip
            return result

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            if records and records[-1]["trial_id"] == trial.trial_id:
                records[-1]["t_end"] = time.monotonic() - origin

    tuner = TimedRandomSearch(
        hypermodel=TimedHyperModel(space, list(data.metadata.input_shape), int(data.metadata.num_classes)),
        objective="val_accuracy",
        max_trials=trials,
        seed=seed,
        directory=str(work),
        project_name="kt",
        overwrite=True,
    )
    tuner.search(
        data.x_train, data.y_train, epochs=1, batch_size=space.batch_size(),
        validation_data=(data.x_val, data.y_val), verbose=0,
    )  # fmt: skip
    return records


def run_nasflow(trials: int, seed: int, work: Path, trials_per_process: int, recycled: bool) -> list[dict]:
    """nasflow's random search, recycled worker processes (as ``nasflow.steps``) or in this process."""
    from dataclasses import asdict

    from nasflow import cluster, tracking
    from nasflow.data import save_splits
    from nasflow.search.objectives import ObjectiveConfig
    from nasflow.search.records import collect_trials
    from nasflow.search.settings import SearchSettings
    from nasflow.search.tuner import run_search

    data, space = _load()
    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    parent_id = tracking.start_parent_run(uri, "trial-overhead", f"overhead-{time.time_ns()}")
    parent = tracking.open_parent(uri, parent_id)
    settings = SearchSettings(
        strategy="random", max_trials=trials, epochs=1, seed=seed,
        trials_per_process=trials_per_process if recycled else 0,
    )  # fmt: skip
    if recycled:
        save_splits(data, work / "dataset")
        spec = cluster.WorkerSpec(
            dataset_dir=str((work / "dataset").resolve()),
            space_config=space.to_dict(),
            space_source=str(SPACE_FILE),
            settings=asdict(settings),
            objective=asdict(ObjectiveConfig()),
            parent_run_id=parent_id,
            tracking_uri=uri,
            work_dir=str((work / "tuner").resolve()),
            overwrite=True,
        )
        processes = cluster.run_search_processes(
            spec, num_workers=1, trials_per_process=trials_per_process, timeout_s=3600
        )
        print(f"worker processes used: {processes}", flush=True)
    else:
        run_search(data, space, settings, parent=parent, work_dir=work / "tuner", overwrite=True)
    rows = collect_trials(parent)
    records = []
    for row in rows:
        info = parent.client.get_run(row["mlflow_run_id"]).info
        if row["duration_s"] is None or row["fit_s"] is None:
            continue
        records.append({"trial_id": row["trial_id"], "t_start": info.start_time / 1000.0,
                        "t_end": info.end_time / 1000.0, "duration_s": row["duration_s"], "fit_s": row["fit_s"]})  # fmt: skip
    records.sort(key=lambda r: r["t_end"])
    origin = records[0]["t_start"] if records else 0.0
    for record in records:
        record["t_start"] -= origin
        record["t_end"] -= origin
    return records


def analyse(records: list[dict]) -> dict:
    """Overheads per trial and their linear trend (seconds per 100 trials)."""
    records = sorted(records, key=lambda r: r["t_end"])
    in_trial = np.asarray([r["duration_s"] - r["fit_s"] for r in records])
    fit = np.asarray([r["fit_s"] for r in records])
    ends = np.asarray([r["t_end"] for r in records])
    cycle = np.diff(ends) - fit[1:]
    index = np.arange(len(records))

    def trend(values: np.ndarray, x: np.ndarray) -> float:
        return float(np.polyfit(x, values, 1)[0] * 100) if len(values) > 2 else float("nan")

    def window(values: np.ndarray, part: slice) -> float:
        return float(np.median(values[part])) if len(values[part]) else float("nan")

    n = max(1, min(25, len(records) // 4))
    return {
        "trials": len(records),
        "in_trial_overhead_s": in_trial.tolist(),
        "cycle_overhead_s": cycle.tolist(),
        "fit_s": fit.tolist(),
        "in_trial_slope_s_per_100": trend(in_trial, index),
        "cycle_slope_s_per_100": trend(cycle, index[1:]),
        "fit_slope_s_per_100": trend(fit, index),
        "in_trial_median_first_s": window(in_trial, slice(0, n)),
        "in_trial_median_last_s": window(in_trial, slice(-n, None)),
        "cycle_median_first_s": window(cycle, slice(0, n)),
        "cycle_median_last_s": window(cycle, slice(-n, None)),
        "cycle_mean_s": float(cycle.mean()) if len(cycle) else float("nan"),
        "in_trial_mean_s": float(in_trial.mean()),
        "fit_mean_s": float(fit.mean()),
        "total_s": float(ends[-1] - records[0]["t_start"]) if records else float("nan"),
        "window": n,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(report["variants"])
    fig, axes = plt.subplots(1, len(variants), figsize=(5.2 * len(variants), 4.2), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], variants, strict=True):
        result = report["variants"][name]["analysis"]
        in_trial, cycle = np.asarray(result["in_trial_overhead_s"]), np.asarray(result["cycle_overhead_s"])
        ax.plot(
            np.arange(1, len(cycle) + 1), cycle, ".", ms=3, color="tab:orange", alpha=0.5, label="cycle − fit"
        )
        ax.plot(
            np.arange(len(in_trial)), in_trial, ".", ms=3, color="tab:blue", alpha=0.7, label="trial − fit"
        )
        for values, offset, color in ((in_trial, 0, "tab:blue"), (cycle, 1, "tab:orange")):
            if len(values) > 2:
                x = np.arange(len(values)) + offset
                slope, intercept = np.polyfit(x, values, 1)
                ax.plot(x, slope * x + intercept, color=color, lw=1.5)
        ax.set_title(f"{report['variants'][name]['label']}\nslope trial−fit {result['in_trial_slope_s_per_100']:+.2f} s/100, "
                     f"cycle−fit {result['cycle_slope_s_per_100']:+.2f} s/100", fontsize=9)  # fmt: skip
        ax.set_xlabel("trial index")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("seconds outside fit per trial")
    axes[0][0].legend(loc="upper left")
    everything = np.concatenate(
        [np.asarray(report["variants"][v]["analysis"]["in_trial_overhead_s"]) for v in variants]
    )
    axes[0][0].set_ylim(0, max(1.0, float(np.percentile(everything, 99)) * 1.6))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    lines = [
        "# Per-trial overhead outside `fit`: Keras Tuner vs nasflow with recycled workers",
        "",
        f"`{DATASET}` (60/20/20, split seed {SPLIT_SEED}), space `bench/spaces/tiny_cnn.yaml`, random search, "
        f"{s['trials']} trials of 1 epoch per variant, search seed {s['seed']}, each variant in its own fresh process tree, "
        "one after the other.",
        "",
        "| variant | trials | fit s/trial (mean) | trial − fit: median first → last "
        f"{report['variants'][next(iter(report['variants']))]['analysis']['window']} | **slope (s per 100 trials)** | "
        "cycle − fit: median first → last | cycle slope (s/100) | total wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["variants"].values():
        a = entry["analysis"]
        lines.append(
            f"| {entry['label']} | {a['trials']} | {a['fit_mean_s']:.2f} | {a['in_trial_median_first_s']:.2f} → "
            f"{a['in_trial_median_last_s']:.2f} | **{a['in_trial_slope_s_per_100']:+.3f}** | {a['cycle_median_first_s']:.2f} → "
            f"{a['cycle_median_last_s']:.2f} | {a['cycle_slope_s_per_100']:+.3f} | {a['total_s']:.0f} |"
        )
    lines += (
        [
            "",
            "*trial − fit*: Keras Tuner's `run_trial` (build, fit, checkpoint) minus `model.fit`; nasflow's MLflow "
            "`duration_s` (child run creation, `clear_session`, build, fit, save weights, params/FLOPs, TFLite conversion "
            "for size and latency, MLflow logging) minus `fit_seconds`. The absolute levels differ because nasflow does "
            "more per trial (cost measurement and tracking); the slope is what the leak shows. *cycle − fit*: time between "
            "the ends of consecutive trials minus the fit, i.e. everything a trial costs, including the oracle and, for "
            "nasflow, restarting the worker every `trials_per_process` trials (the spikes).",
            "",
            "## Machine and caveats",
            "",
        ]
        + [f"- {c}" for c in report["caveats"]]
        + [""]
    )
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--trials-per-process", type=int, default=25)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument(
        "--variants", nargs="+", default=["keras_tuner", "nasflow_recycled"], choices=VARIANTS
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "nasflow-bench-trial-overhead",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 20 trials, recycle every 8, results in the work dir"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse per-variant results already in the work dir"
    )
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.trials_per_process = 20, 8
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "-quick")
        args.out = args.work_dir / "results"
    if args.one:
        work = args.work_dir / args.one
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)
        load_start = os.getloadavg()
        if args.one == "keras_tuner":
            records = run_keras_tuner(args.trials, args.seed, work)
        else:
            records = run_nasflow(
                args.trials, args.seed, work, args.trials_per_process, args.one == "nasflow_recycled"
            )
        result = {"records": records, "loadavg_start": load_start, "loadavg_end": os.getloadavg()}
        (args.work_dir / f"{args.one}.json").write_text(json.dumps(result, indent=1))
        return 0

    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    load_start, started = os.getloadavg(), time.time()
    labels = {
        "keras_tuner": "Keras Tuner RandomSearch, one process",
        "nasflow_recycled": f"nasflow random, trials_per_process={args.trials_per_process}",
        "nasflow_in_process": "nasflow random, one process (trials_per_process=0)",
    }
    variants = {}
    for variant in args.variants:
        result_path = args.work_dir / f"{variant}.json"
        if not (args.reuse and result_path.exists()):
            print(f"[{time.strftime('%H:%M:%S')}] {variant} (load {os.getloadavg()[0]:.2f})", flush=True)
            command = [sys.executable, str(Path(__file__).resolve()), "--one", variant, "--trials", str(args.trials),
                       "--trials-per-process", str(args.trials_per_process), "--seed", str(args.seed),
                       "--work-dir", str(args.work_dir.resolve())]  # fmt: skip
            with (args.work_dir / f"{variant}.log").open("w") as log:
                code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
            if code != 0:
                print(f"  FAILED (exit {code}), see {args.work_dir / f'{variant}.log'}", flush=True)
                continue
        raw = json.loads(result_path.read_text())
        analysis = analyse(raw["records"])
        variants[variant] = {"label": labels[variant], "analysis": analysis, "records": raw["records"],
                             "loadavg_start": raw["loadavg_start"], "loadavg_end": raw["loadavg_end"]}  # fmt: skip
        print(
            f"  {variant}: {analysis['trials']} trials, slope {analysis['in_trial_slope_s_per_100']:+.3f} s/100",
            flush=True,
        )
    import keras
    import keras_tuner
    import mlflow
    import tensorflow as tf

    load_end = os.getloadavg()
    loads = ", ".join(
        f"{v} {e['loadavg_start'][0]:.2f} → {e['loadavg_end'][0]:.2f}" for v, e in variants.items()
    )
    report = {
        "settings": {"dataset": DATASET, "space": str(SPACE_FILE.relative_to(SPACE_FILE.parents[2])), "trials": args.trials,
                     "trials_per_process": args.trials_per_process, "seed": args.seed, "epochs": 1,
                     "variants": args.variants, "quick": args.quick},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "tensorflow": tf.__version__, "keras": keras.__version__, "keras_tuner": keras_tuner.__version__,
                    "mlflow": mlflow.__version__, "loadavg_start": load_start, "loadavg_end": load_end,
                    "total_wall_s": time.time() - started},
        "caveats": [
            f"Shared {os.cpu_count()}-core machine with other people's tests running: 1-min load average "
            f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end (per variant: {loads}). Single trials jump by a "
            "second or more when the neighbours are busy; the slope over hundreds of trials is the robust number.",
            "The variants ran one after the other, not interleaved, so a change of background load between them shifts "
            "their levels; compare slopes more than levels.",
            "nasflow's recycled workers write to SQLite directly (one worker); the chief oracle is a separate process.",
        ],
        "variants": variants,
    }  # fmt: skip
    (args.out / "trial_overhead.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, args.out / "trial_overhead.md")
    plot(report, args.out / "trial_overhead.png")
    print((args.out / "trial_overhead.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
