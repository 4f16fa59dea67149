"""Time outside ``fit`` as a fraction of trial time, with cheap trials (issue 12, item 3).

Runs nasflow's search in-process (``run_search``, the path of a search step without
workers), MLflow in a throw-away SQLite store, one fresh process per variant, on one of
:data:`SETUPS`: ``reference`` (issue 12's real-training setup, mnist-5k, the ``cnn``
space, 3 epochs; the targets are judged here) or ``digits`` (a tiny space, 1 epoch: the
worst case, a fit of ~1.8 s, mostly tracing the new model). The variants:

* ``accuracy``: accuracy objective, ``measure_costs="auto"`` (the default): params and
  FLOPs only, no TFLite conversion, no latency timing, no weights saved. Target <= 5 %.
* ``latency``: MnasNet reward on latency (``mode="reward"``, ``cost_metric="latency_ms"``),
  ``measure_costs="auto"``: each trial is timed on LiteRT (the flatbuffer is converted for
  that; size is not needed). Target <= 15 %.
* ``accuracy_all`` (contrast, fewer trials): accuracy objective, ``measure_costs="all"``,
  what every trial did before.

Fractions: *search* = (search wall time − Σ fit) / search wall time, i.e. everything a
trial costs outside ``model.fit`` (oracle, Keras Tuner's state files, MLflow, clear_session,
build, costs); *in-trial* = Σ(duration_s − fit_seconds) / Σ duration_s from the MLflow
rows (leaves out the oracle's work between trials). PASS/MISS is judged on *search*.
Timers around the parts of a trial say where the rest goes.

Usage::

    python bench/cheap_trials.py --trials 200 --out bench/results             # reference setup
    python bench/cheap_trials.py --setup digits --trials 200 --out bench/results
    python bench/cheap_trials.py --quick        # 15 trials each, results in /tmp
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SPLIT_SEED = 42
#: Where trials run. ``reference`` is issue 12's real-training setup (mnist-5k, the
#: 14-hyperparameter ``cnn`` space, 3 epochs: a fit of a few seconds), on which the targets
#: are judged; ``digits`` is the worst case (a 1-epoch fit of a tiny space on 8x8 digits,
#: ~1.8 s, mostly tracing the new model, so any fixed per-trial cost is a large share).
SETUPS = {
    "reference": {"dataset": "mnist-5k", "space": "cnn", "epochs": 3,
                  "label": "`mnist-5k`, the 14-hyperparameter `cnn` space, 3 epochs per trial"},
    "digits": {"dataset": "digits", "space": str(Path(__file__).resolve().parent / "spaces" / "tiny_cnn.yaml"),
               "epochs": 1, "label": "`digits`, space `bench/spaces/tiny_cnn.yaml`, 1 epoch per trial"},
}  # fmt: skip
VARIANTS = {
    "accuracy": {"objective": {}, "measure_costs": "auto", "target": 0.05,
                 "label": "accuracy objective, measure_costs=auto"},
    "latency": {"objective": {"mode": "reward", "cost_metric": "latency_ms", "cost_target": 1.0},
                "measure_costs": "auto", "target": 0.15, "label": "latency reward, measure_costs=auto"},
    "accuracy_all": {"objective": {}, "measure_costs": "all", "target": None,
                     "label": "accuracy objective, measure_costs=all (every cost, as before)"},
}  # fmt: skip


def _timed(owner, name: str, label: str, timings: dict) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def run_variant(name: str, trials: int, seed: int, work: Path, setup: str = "reference") -> dict:
    """One search of ``trials`` trials in this process; MLflow rows, wall time and part timers."""
    import keras
    import keras_tuner

    from nasflow import tracking
    from nasflow.data import load_raw_dataset, split_dataset
    from nasflow.search import costs, records
    from nasflow.search.objectives import ObjectiveConfig
    from nasflow.search.records import collect_trials
    from nasflow.search.settings import SearchSettings
    from nasflow.search.tuner import run_search
    from nasflow.spaces.schema import SearchSpace, load_search_space, resolve_search_space

    variant, where = VARIANTS[name], SETUPS[setup]
    timings: dict = collections.defaultdict(list)
    _timed(keras.backend, "clear_session", "clear_session (incl. gc.collect)", timings)
    _timed(gc, "collect", "gc.collect", timings)
    _timed(SearchSpace, "build_model", "build model", timings)
    _timed(records.TrialRecord, "open", "MLflow: open trial run", timings)
    _timed(records.TrialRecord, "finish", "MLflow: finish trial run", timings)
    _timed(costs, "measure_candidate_costs", "costs (params, FLOPs, TFLite, LiteRT)", timings)
    _timed(keras_tuner.Oracle, "create_trial", "oracle: create_trial", timings)
    _timed(keras_tuner.Oracle, "end_trial", "oracle: end_trial", timings)
    data = split_dataset(load_raw_dataset(where["dataset"]), 0.2, 0.2, SPLIT_SEED)
    space = load_search_space(resolve_search_space(where["space"], "image"))
    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    parent = tracking.open_parent(uri, tracking.start_parent_run(uri, "cheap-trials", f"{name}-{time.time_ns()}"))
    settings = SearchSettings(
        strategy="random", max_trials=trials, epochs=where["epochs"], seed=seed, measure_costs=variant["measure_costs"],
        max_consecutive_failed_trials=trials,
    )  # fmt: skip
    started = time.monotonic()
    run_search(
        data, space, settings, ObjectiveConfig.from_parameters(variant["objective"]),
        parent=parent, work_dir=work / "tuner", overwrite=True,
    )  # fmt: skip
    wall = time.monotonic() - started
    rows = [row for row in collect_trials(parent) if row["fit_s"] is not None and row["duration_s"] is not None]
    fit = sum(row["fit_s"] for row in rows)
    duration = sum(row["duration_s"] for row in rows)
    measured = rows[0] if rows else {}
    return {
        "variant": name,
        "label": variant["label"],
        "target": variant["target"],
        "trials": len(rows),
        "search_wall_s": wall,
        "fit_total_s": fit,
        "trial_total_s": duration,
        "search_fraction_outside_fit": (wall - fit) / wall,
        "in_trial_fraction_outside_fit": (duration - fit) / duration,
        "per_trial_outside_fit_s": (wall - fit) / max(1, len(rows)),
        "fit_mean_s": fit / max(1, len(rows)),
        "costs_recorded": sorted(key for key in ("size_kb", "latency_ms") if measured.get(key) is not None),
        "parts_per_trial_s": {label: sum(values) / max(1, len(rows)) for label, values in timings.items()},
        "load_average": os.getloadavg(),
    }


def summarize_store(name: str, work: Path) -> dict:
    """A variant's result from its MLflow store alone, for a run stopped before its last trial.

    The search time is then from the first trial run's start to the last one's end (the
    oracle's work before the first trial is left out); the part timers are lost with the process.
    """
    import mlflow

    from nasflow import tracking
    from nasflow.search.records import collect_trials

    client = mlflow.MlflowClient(f"sqlite:///{(work / 'mlflow.db').resolve()}")
    [parent] = client.search_runs(
        [client.get_experiment_by_name("cheap-trials").experiment_id],
        filter_string=f"tags.`{tracking.ROLE_TAG}` = 'pipeline'",
    )
    rows = [
        row for row in collect_trials(tracking.RunHandle(client, parent.info.run_id))
        if row["fit_s"] is not None and row["duration_s"] is not None
    ]  # fmt: skip
    infos = [client.get_run(row["mlflow_run_id"]).info for row in rows]
    wall = (max(info.end_time for info in infos) - min(info.start_time for info in infos)) / 1000.0
    fit = sum(row["fit_s"] for row in rows)
    duration = sum(row["duration_s"] for row in rows)
    variant = VARIANTS[name]
    return {
        "variant": name, "label": variant["label"], "target": variant["target"], "trials": len(rows),
        "search_wall_s": wall, "fit_total_s": fit, "trial_total_s": duration,
        "search_fraction_outside_fit": (wall - fit) / wall,
        "in_trial_fraction_outside_fit": (duration - fit) / duration,
        "per_trial_outside_fit_s": (wall - fit) / max(1, len(rows)), "fit_mean_s": fit / max(1, len(rows)),
        "costs_recorded": sorted(key for key in ("size_kb", "latency_ms") if rows and rows[0].get(key) is not None),
        "parts_per_trial_s": {}, "load_average": os.getloadavg(), "stopped_early": True,
    }  # fmt: skip


def overhead_growth(work: Path, window: int = 25) -> dict:
    """Whether the cost of a trial outside ``fit`` grows over the search (Keras' leak).

    *Cycle − fit* of trial i: from its run's start to the next trial run's start, minus its
    fit (everything a trial costs, the oracle between trials included). Medians of the first
    and last ``window`` trials, and the least-squares slope over all, in s per 100 trials.
    """
    import numpy as np

    from nasflow import tracking
    from nasflow.search.records import collect_trials

    client = tracking.make_client(f"sqlite:///{(work / 'mlflow.db').resolve()}")
    [parent] = client.search_runs(
        [client.get_experiment_by_name("cheap-trials").experiment_id],
        filter_string=f"tags.`{tracking.ROLE_TAG}` = 'pipeline'",
    )
    rows = [row for row in collect_trials(tracking.RunHandle(client, parent.info.run_id)) if row["fit_s"] is not None]
    starts = sorted((client.get_run(row["mlflow_run_id"]).info.start_time / 1000.0, row["fit_s"]) for row in rows)
    cycles = [starts[i + 1][0] - starts[i][0] - starts[i][1] for i in range(len(starts) - 1)]
    if len(cycles) < 2 * window:
        return {}
    return {
        "window": window,
        "first_median_s": float(np.median(cycles[:window])),
        "last_median_s": float(np.median(cycles[-window:])),
        "slope_s_per_100_trials": float(np.polyfit(np.arange(len(cycles)), cycles, 1)[0] * 100),
    }


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    lines = [
        "# Cheap trials: time outside `fit` as a fraction of trial time",
        "",
        f"{SETUPS[s['setup']]['label']} (60/20/20, split seed {SPLIT_SEED}), random search, "
        f"search seed {s['seed']}, `run_search` in one fresh process per variant, MLflow on SQLite. "
        f"Command: `{s['command']}`.",
        "",
        "| variant | trials | fit s/trial | outside fit s/trial | **outside fit / search time** | outside fit / "
        "trial run time | cycle − fit, first → last 25 trials | growth (s per 100 trials) | costs each trial records | "
        "target | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["variants"].values():
        target = entry["target"]
        verdict = "—" if target is None else ("PASS" if entry["search_fraction_outside_fit"] <= target else "MISS")
        lines.append(
            f"| {entry['label']} | {entry['trials']} | {entry['fit_mean_s']:.2f} | {entry['per_trial_outside_fit_s']:.2f} | "
            f"**{entry['search_fraction_outside_fit']:.1%}** | {entry['in_trial_fraction_outside_fit']:.1%} | "
            f"{_growth_cells(entry.get('growth') or {})} | {', '.join(['params', 'flops', *entry['costs_recorded']])} | "
            f"{'—' if target is None else f'<= {target:.0%}'} | {verdict} |"
        )
    lines += ["", "*Cycle − fit*: from a trial run's start to the next one's, minus its fit (the oracle between "
              "trials included); growth is the least-squares slope of that over the whole search.",
              "", "## Where the time outside `fit` goes (seconds per trial)", ""]
    labels = sorted({label for entry in report["variants"].values() for label in entry["parts_per_trial_s"]})
    names = list(report["variants"])
    lines += ["| part | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label in labels:
        cells = [f"{report['variants'][n]['parts_per_trial_s'].get(label, 0.0):.3f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Parts overlap: `clear_session` includes its `gc.collect`; the oracle's calls include its state writes.",
              "", "## Notes", ""] + [f"- {note}" for note in report["notes"] if note] + [""]  # fmt: skip
    path.write_text("\n".join(lines))


def _growth_cells(growth: dict) -> str:
    if not growth:
        return "– | –"
    return (f"{growth['first_median_s']:.2f} → {growth['last_median_s']:.2f} s | "
            f"{growth['slope_s_per_100_trials']:+.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--contrast-trials", type=int, default=40, help="trials of the accuracy_all variant")
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--setup", choices=list(SETUPS), default="reference")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "nasflow-cheap-trials")
    parser.add_argument("--quick", action="store_true", help="15 trials each, results in the work dir")
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--collect", action="store_true",
        help="write the report from the variants' work dirs (result.json, or the MLflow store of a stopped run)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = args.contrast_trials = 15
        args.out = args.work_dir / "results"
    if args.one:
        work = args.work_dir / args.one
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)
        trials = args.contrast_trials if args.one == "accuracy_all" else args.trials
        result = run_variant(args.one, trials, args.seed, work, args.setup)
        (work / "result.json").write_text(json.dumps(result, indent=2))
        return 0
    results = {}
    for name in args.variants:
        if args.collect:
            done = args.work_dir / name / "result.json"
            results[name] = json.loads(done.read_text()) if done.exists() else summarize_store(name, args.work_dir / name)
            results[name]["growth"] = overhead_growth(args.work_dir / name)
            continue
        command = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--seed", str(args.seed),
                   "--trials", str(args.trials), "--contrast-trials", str(args.contrast_trials), "--setup", args.setup,
                   "--work-dir", str(args.work_dir)]  # fmt: skip
        print(f"running {name} ...", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results[name] = json.loads((args.work_dir / name / "result.json").read_text())
        results[name]["growth"] = overhead_growth(args.work_dir / name)
        print(json.dumps({k: v for k, v in results[name].items() if k != "parts_per_trial_s"}), flush=True)
    report = {
        "settings": {"trials": args.trials, "contrast_trials": args.contrast_trials, "seed": args.seed, "setup": args.setup,
                     "command": "python bench/cheap_trials.py " + " ".join(argv if argv is not None else sys.argv[1:])},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "variants": results,
        "notes": [
            "2-core machine (1-min load average at the end of each variant: "
            + ", ".join(f"{n} {r['load_average'][0]:.1f}" for n, r in results.items())
            + "): fit and everything else slow down together, so fractions are steadier than seconds.",
            "The fixed per-trial work (build, MLflow run, oracle state) is a larger share the shorter the fit: "
            "`--setup digits` (a 1-epoch fit of a tiny space on 8x8 digits, ~1.8 s, most of it tracing the new "
            "model's train step) is the worst case, `--setup reference` (issue 12's setup) what the targets are "
            "judged on.",
            "Written with --collect from the variants' work dirs after `python bench/cheap_trials.py --setup "
            f"{args.setup} --trials {args.trials}` ran them." if args.collect else "",
        ],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cheap_trials" if args.setup == "reference" else f"cheap_trials_{args.setup}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, args.out / f"{stem}.md")
    print((args.out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
