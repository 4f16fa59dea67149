"""Warm start: does a second run reach the first run's best within a third of its trials? (issue 12, item 4)

For each seed, in an MLflow experiment of its own (SQLite store), through the search step
the pipeline runs (``nasflow.steps.search.search_step``: run tags, MLflow look-up, priors):

1. *first*: a cold search of ``--trials`` trials (``warm_start="none"``);
2. *warm*: a search of ``trials // 3`` trials with ``warm_start="auto"`` and another seed,
   which finds the first run by its dataset and space hashes;
3. *cold*: the same ``trials // 3`` trials and seed without warm start, in another
   experiment (what the second run would have found on its own).

PASS when, for every seed, the warm run's best validation accuracy within its
``trials // 3`` trials is at least the first run's best.

Usage::

    nice python bench/warm_start.py --trials 12 --seeds 1 2 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _search(work: Path, uri: str, experiment: str, name: str, *, space: str, strategy: str, trials: int,
            epochs: int, seed: int, warm_start: str) -> dict:  # fmt: skip
    from nasflow import tracking
    from nasflow.search.records import collect_trials
    from nasflow.steps.search import search_step

    parent_id = tracking.start_parent_run(uri, experiment, f"{name}-{time.time_ns()}")
    out = work / experiment / name
    started = time.monotonic()
    search_step(
        str(work / "data"), parent_run_id=parent_id, tracking_uri=uri, search_space=space, strategy=strategy,
        max_trials=trials, epochs=epochs, seed=seed, best_hyperparameters_path=str(out / "best.json"),
        trial_table_path=str(out / "trials.csv"), report_path=str(out / "report.md"), warm_start=warm_start,
    )  # fmt: skip
    rows = collect_trials(tracking.RunHandle(tracking.make_client(uri), parent_id))
    rows.sort(key=lambda row: int("".join(ch for ch in row["trial_id"] if ch.isdigit()) or 0))
    curve, best, own_best = [], 0.0, None
    for row in rows:
        if row["status"] == "COMPLETED" and row["val_accuracy"] is not None:
            best = max(best, float(row["val_accuracy"]))
            if "tuner/seed" not in row["values"]:  # proposed by the strategy, not a re-evaluated prior
                own_best = max(own_best or 0.0, float(row["val_accuracy"]))
        curve.append(best)
    run = tracking.make_client(uri).get_run(parent_id)
    return {
        "parent_run_id": parent_id,
        "trials": len(rows),
        "best_val_accuracy": best,
        "best_so_far": curve,
        "val_accuracies": [row["val_accuracy"] for row in rows],
        "reevaluated": ["tuner/seed" in row["values"] for row in rows],
        "best_of_own_proposals": own_best,
        "priors": int(run.data.params.get("search.warm_start_priors", 0)),
        "warm_started_from": run.data.tags.get("nasflow.warm_start_runs", ""),
        "wall_s": time.monotonic() - started,
    }


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--space", default="cnn", help="bundled space name or YAML path")
    parser.add_argument("--strategy", default="", help="empty: the default strategy")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "nasflow-warm-start")
    args = parser.parse_args(argv)

    from nasflow.data import prepare_dataset
    from nasflow.search.settings import DEFAULT_STRATEGY

    strategy = args.strategy or DEFAULT_STRATEGY
    args.work_dir.mkdir(parents=True, exist_ok=True)
    prepare_dataset(args.dataset, args.work_dir / "data", seed=42)
    uri = f"sqlite:///{(args.work_dir / f'mlflow-{time.time_ns()}.db').resolve()}"
    budget = max(1, args.trials // 3)
    common = dict(space=args.space, strategy=strategy, epochs=args.epochs)
    seeds = []
    for seed in args.seeds:
        experiment = f"warm-start-seed-{seed}"
        first = _search(args.work_dir, uri, experiment, "first", trials=args.trials, seed=seed, warm_start="none", **common)
        warm = _search(args.work_dir, uri, experiment, "warm", trials=budget, seed=seed + 1000, warm_start="auto", **common)
        cold = _search(args.work_dir, uri, f"{experiment}-cold", "cold", trials=budget, seed=seed + 1000,
                       warm_start="none", **common)  # fmt: skip
        reached = next((k + 1 for k, best in enumerate(warm["best_so_far"]) if best >= first["best_val_accuracy"]), None)
        seeds.append({"seed": seed, "first": first, "warm": warm, "cold": cold, "warm_trials_to_reach_first_best": reached})
        print(json.dumps({"seed": seed, "first_best": first["best_val_accuracy"], "warm_best": warm["best_val_accuracy"],
                          "cold_best": cold["best_val_accuracy"], "reached_after": reached}), flush=True)  # fmt: skip
    passed = all(entry["warm_trials_to_reach_first_best"] is not None for entry in seeds)
    report = {
        "settings": {**vars(args), "out": str(args.out), "work_dir": str(args.work_dir), "strategy": strategy,
                     "second_run_trials": budget},  # fmt: skip
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average_end": os.getloadavg()},
        "seeds": seeds,
        "pass": passed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "warm_start.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Warm start: a second run against the first run's best",
        "",
        f"`{args.dataset}`, space `{args.space}`, strategy `{strategy}`, {args.epochs} epoch(s) per trial. The first run has "
        f"{args.trials} trials; the second has {budget} (a third) and `--warm-start auto`, another seed; the cold control "
        f"has the same {budget} trials and seed without warm start. Through `search_step`, MLflow on SQLite. "
        f"Command: `python bench/warm_start.py {' '.join(argv if argv is not None else sys.argv[1:])}`.",
        "",
        f"| seed | first run: best val acc ({args.trials} trials) | warm run: best in {budget} trials | trials to reach the first's best | "
        f"priors | warm run: best of the strategy's own proposals | cold control: best in {budget} trials |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in seeds:
        reached = entry["warm_trials_to_reach_first_best"]
        lines.append(
            f"| {entry['seed']} | {entry['first']['best_val_accuracy']:.4f} | {entry['warm']['best_val_accuracy']:.4f} | "
            f"{reached if reached is not None else 'not reached'} | {entry['warm']['priors']} | "
            f"{_fmt(entry['warm']['best_of_own_proposals'])} | {entry['cold']['best_val_accuracy']:.4f} |"
        )
    lines += [
        "",
        f"**Target** (the second run reaches the first run's best validation accuracy within <= 1/3 of the first "
        f"run's trials, every seed): **{'PASS' if passed else 'MISS'}**.",
        "",
        "The warm run's first trials evaluate the first run's best architectures again (its best few priors, "
        "at most a third of the budget), each from the seed it was trained with: on the same data that "
        "reproduces the first run's result, so *trials to reach* measures whether the warm start keeps what "
        "the first run found. Whether the priors also steer the strategy is the column of its own proposals "
        "against the cold control (same seed and budget, no priors).",
        "",
        f"Machine: shared 2-core CPU machine, 1-min load average at the end {os.getloadavg()[0]:.1f}.",
        "",
    ]
    (args.out / "warm_start.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
