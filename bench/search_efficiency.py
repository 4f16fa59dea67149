"""Search efficiency of nasflow's strategies against Optuna TPE at an equal wall-clock budget.

Every (strategy, seed) search runs in a fresh Python process (Keras 3 leaks objects
across builds, so a long-lived process would handicap whichever search ran last) on
``mnist-5k`` (60/20/20 stratified split, split seed 42), the ``mobile_cnn`` space, the
same epochs per trial and the same ``max_search_minutes``:

* nasflow ``random``, ``bayesian``, ``hyperband``, ``evolution``, ``reinforce`` through
  :func:`nasflow.search.run_search` (MLflow logging to a throw-away SQLite store included);
* Optuna's TPE sampler on the same space (conditions respected), the same model builder,
  epochs and cost measurement; its trials are not MLflow-logged nor checkpointed.

Both stop starting new trials once the budget is used (Optuna ``timeout``, nasflow
``max_search_minutes``). The best trial by validation accuracy is then rebuilt,
trained for the same epochs on train (same seed) and evaluated on test. The curves are
best *validation* accuracy vs wall time; only the final point gets a test accuracy.

Usage::

    python bench/search_efficiency.py --budget-seconds 120 --seeds 11 2027 90001 --epochs 2 --out bench/results
    python bench/search_efficiency.py --quick        # smoke run, tiny budget, results in /tmp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

STRATEGIES = ("random", "bayesian", "hyperband", "evolution", "reinforce", "optuna_tpe")
#: nasflow's default strategy (``SearchSettings.strategy``, ``nasflow run --strategy``).
DEFAULT_STRATEGY = "bayesian"
DATASET = "mnist-5k"
SPACE = "mobile_cnn"
SPLIT_SEED = 42
CURVE_STEP_S = 2.0


# --------------------------------------------------------------------------- one search


def _load():
    from nasflow.data import load_raw_dataset, split_dataset
    from nasflow.spaces.schema import load_search_space, resolve_search_space

    data = split_dataset(load_raw_dataset(DATASET), 0.2, 0.2, SPLIT_SEED)
    space = load_search_space(resolve_search_space(SPACE, "image"))
    return data, space


def test_accuracy(space, data, values: dict, epochs: int, seed: int) -> float:
    """Rebuild one candidate, train it ``epochs`` on train with ``seed``, return test accuracy."""
    import keras

    from nasflow.train import hyperparameters_from_values

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    hp = hyperparameters_from_values(space, values)
    model = space.build_model(hp, list(data.metadata.input_shape), int(data.metadata.num_classes))
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=space.batch_size(), verbose=0)
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    return float(accuracy)


def _nasflow_search(
    strategy: str, seed: int, budget_s: float, epochs: int, max_trials: int, work: Path, data, space
):
    from nasflow import tracking
    from nasflow.search.records import collect_trials
    from nasflow.search.settings import SearchSettings
    from nasflow.search.tuner import run_search

    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    parent_id = tracking.start_parent_run(uri, "search-efficiency", f"{strategy}-{seed}-{time.time_ns()}")
    parent = tracking.open_parent(uri, parent_id)
    settings = SearchSettings(
        strategy=strategy, max_trials=max_trials, epochs=epochs, seed=seed, max_search_minutes=budget_s / 60.0
    )
    started = time.time()
    run_search(data, space, settings, parent=parent, work_dir=work / "tuner", overwrite=True)
    elapsed = time.time() - started
    rows = collect_trials(parent)
    times = {}
    for row in rows:
        info = parent.client.get_run(row["mlflow_run_id"]).info
        times[row["mlflow_run_id"]] = (
            info.start_time / 1000.0 - started,
            (info.end_time or 0) / 1000.0 - started,
        )
    trials = []
    for row in rows:
        t_start, t_end = times[row["mlflow_run_id"]]
        trials.append(
            {
                "trial_id": row["trial_id"],
                "status": row["status"],
                "t_start": t_start,
                "t_end": t_end,
                "val_accuracy": row["val_accuracy"],
                "latency_ms": row["latency_ms"],
                "params": row["params"],
                "flops": row["flops"],
                "epochs": row["epochs"],
                "duration_s": row["duration_s"],
                "fit_s": row["fit_s"],
                "values": {k: v for k, v in row["values"].items() if not k.startswith("tuner/")},
            }
        )
    return trials, elapsed


def suggest_values(trial, space) -> dict:
    """Translate every ``HyperparameterSpec`` into ``trial.suggest_*``, children only when their parent matches."""
    values: dict = {}
    for spec in space.hyperparameters:
        if spec.condition is not None:
            parent, allowed = spec.condition
            if parent not in values or values[parent] not in allowed:
                continue
        if spec.type == "fixed":
            values[spec.name] = spec.value
        elif spec.type == "boolean":
            values[spec.name] = trial.suggest_categorical(spec.name, [False, True])
        elif spec.type == "choice":
            values[spec.name] = trial.suggest_categorical(spec.name, list(spec.values))
        elif spec.type == "int":
            if spec.sampling == "log" and (spec.step or 1) > 1:
                raise NotImplementedError(f"{spec.name}: log-stepped ints have no Optuna equivalent here")
            values[spec.name] = trial.suggest_int(
                spec.name, int(spec.min), int(spec.max), step=int(spec.step or 1), log=spec.sampling == "log"
            )
        elif spec.type == "float":
            if spec.sampling == "log" and spec.step is not None:
                raise NotImplementedError(f"{spec.name}: log-stepped floats have no Optuna equivalent here")
            values[spec.name] = trial.suggest_float(
                spec.name, float(spec.min), float(spec.max), step=spec.step, log=spec.sampling == "log"
            )
        else:
            raise NotImplementedError(spec.type)
    return values


def _optuna_search(seed: int, budget_s: float, epochs: int, max_trials: int, data, space):
    import keras
    import optuna

    from nasflow.errors import InvalidArchitectureError
    from nasflow.search.costs import measure_candidate_costs
    from nasflow.train import hyperparameters_from_values

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    input_shape, num_classes = list(data.metadata.input_shape), int(data.metadata.num_classes)
    trials: list[dict] = []
    started = time.time()

    def objective(trial):
        t_start = time.time() - started
        values = suggest_values(trial, space)
        record = {"trial_id": str(trial.number), "t_start": t_start, "values": values, "epochs": epochs}
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed + trial.number)
        try:
            model = space.build_model(hyperparameters_from_values(space, values), input_shape, num_classes)
        except InvalidArchitectureError:
            trials.append({**record, "status": "INVALID", "t_end": time.time() - started})
            raise optuna.TrialPruned() from None
        fit_started = time.monotonic()
        history = model.fit(
            data.x_train, data.y_train, epochs=epochs, batch_size=space.batch_size(),
            validation_data=(data.x_val, data.y_val), verbose=0,
        )  # fmt: skip
        fit_s = time.monotonic() - fit_started
        val_accuracy = float(history.history["val_accuracy"][-1])
        costs = measure_candidate_costs(model, data.x_val[:1])
        t_end = time.time() - started
        trials.append(
            {
                **record,
                "status": "COMPLETED" if math.isfinite(val_accuracy) else "FAILED",
                "t_end": t_end,
                "val_accuracy": val_accuracy,
                "latency_ms": costs.latency_p50_ms,
                "params": costs.params,
                "flops": costs.flops,
                "duration_s": t_end - t_start,
                "fit_s": fit_s,
            }
        )
        return val_accuracy

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=max_trials, timeout=budget_s, catch=(Exception,))
    return trials, time.time() - started


def patch_batch_norm_momentum(momentum: float) -> None:
    """Make ``BatchNormalization`` default to ``momentum`` in this process (0: leave Keras' 0.99).

    Workaround, not a fix: ``nasflow.spaces.families`` builds every mobile block with Keras'
    default momentum 0.99, and after 1-3 epochs of ~47 steps the moving statistics are
    still mostly their initial values, so every ``mobile_cnn`` candidate evaluates at
    chance (val accuracy 0.100) in inference mode and the search is blind. Applied to
    every strategy and to the peer alike.
    """
    if not momentum:
        return
    import keras

    original = keras.layers.BatchNormalization.__init__

    def init(self, *args, **kwargs):
        if len(args) < 2:
            kwargs.setdefault("momentum", momentum)
        original(self, *args, **kwargs)

    keras.layers.BatchNormalization.__init__ = init


def run_one(
    strategy: str, seed: int, budget_s: float, epochs: int, max_trials: int, work: Path, result_path: Path,
    bn_momentum: float = 0.0,
):  # fmt: skip
    """One search in this process; writes its trials and the test accuracy of its best-by-val trial."""
    load_start = os.getloadavg()
    patch_batch_norm_momentum(bn_momentum)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # MLflow / Keras Tuner side files stay out of the repository
    data, space = _load()
    if strategy == "optuna_tpe":
        trials, elapsed = _optuna_search(seed, budget_s, epochs, max_trials, data, space)
    else:
        trials, elapsed = _nasflow_search(strategy, seed, budget_s, epochs, max_trials, work, data, space)
    done = [t for t in trials if t["status"] == "COMPLETED" and t.get("val_accuracy") is not None]
    best = max(done, key=lambda t: (t["val_accuracy"], -(t.get("latency_ms") or 0.0)))
    retrain_started = time.time()
    best_test = test_accuracy(space, data, best["values"], epochs, seed)
    result = {
        "strategy": strategy,
        "seed": seed,
        "budget_s": budget_s,
        "epochs": epochs,
        "max_trials": max_trials,
        "search_s": elapsed,
        "trials": sorted(trials, key=lambda t: t["t_end"]),
        "best": {
            "trial_id": best["trial_id"],
            "val_accuracy": best["val_accuracy"],
            "latency_ms": best.get("latency_ms"),
            "test_accuracy": best_test,
            "values": best["values"],
        },
        "retrain_s": time.time() - retrain_started,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    result_path.write_text(json.dumps(result, indent=1, default=float))


# --------------------------------------------------------------------------- analysis


def best_val_curve(trials: list[dict], grid: np.ndarray) -> np.ndarray:
    """Best validation accuracy among completed trials that ended by each time of ``grid`` (NaN before the first)."""
    ends = sorted(
        (t["t_end"], t["val_accuracy"])
        for t in trials
        if t["status"] == "COMPLETED" and t["val_accuracy"] is not None
    )
    curve = np.full(len(grid), np.nan)
    best, k = -np.inf, 0
    for i, when in enumerate(grid):
        while k < len(ends) and ends[k][0] <= when:
            best = max(best, ends[k][1])
            k += 1
        if best > -np.inf:
            curve[i] = best
    return curve


def time_to_reach(trials: list[dict], target: float) -> float | None:
    """Wall time (s since search start) at which the best validation accuracy first reached ``target``."""
    for trial in sorted(trials, key=lambda t: t["t_end"]):
        if (
            trial["status"] == "COMPLETED"
            and trial["val_accuracy"] is not None
            and trial["val_accuracy"] >= target - 1e-9
        ):
            return float(trial["t_end"])
    return None


def front_hypervolume(trials: list[dict], reference: tuple[float, float]) -> tuple[float, int]:
    from nasflow.search.objectives import hypervolume_2d, pareto_front

    rows = [
        {
            "status": "COMPLETED",
            "feasible": True,
            "val_accuracy": t["val_accuracy"],
            "latency_ms": t["latency_ms"],
        }
        for t in trials
        if t["status"] == "COMPLETED" and t.get("latency_ms") is not None and math.isfinite(t["latency_ms"])
    ]
    front = pareto_front(rows, cost_key="latency_ms")
    points = [(rows[i]["val_accuracy"], rows[i]["latency_ms"]) for i in front]
    return hypervolume_2d(points, reference), len(front)


def _stats(values: list[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "n": int(len(arr))}  # fmt: skip


def analyse(runs: list[dict], budget_s: float) -> dict:
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    by = {(r["strategy"], r["seed"]): r for r in runs}
    max_latency = max(
        t["latency_ms"] for r in runs for t in r["trials"]
        if t["status"] == "COMPLETED" and t.get("latency_ms") is not None and math.isfinite(t["latency_ms"])
    )  # fmt: skip
    reference = (0.0, max_latency * 1.1)
    random_final = {seed: max(t["val_accuracy"] for t in by[("random", seed)]["trials"] if t["status"] == "COMPLETED")
                    for seed in seeds if ("random", seed) in by}  # fmt: skip
    grid = np.arange(0.0, budget_s * 1.25 + CURVE_STEP_S, CURVE_STEP_S)
    summary: dict = {}
    for strategy in strategies:
        per_seed = {}
        curves = []
        for seed in seeds:
            run = by.get((strategy, seed))
            if run is None:
                continue
            completed = [t for t in run["trials"] if t["status"] == "COMPLETED"]
            hv, front_size = front_hypervolume(run["trials"], reference)
            reach = time_to_reach(run["trials"], random_final[seed]) if seed in random_final else None
            random_reach = (
                time_to_reach(by[("random", seed)]["trials"], random_final[seed])
                if seed in random_final
                else None
            )
            overhead = [
                t["duration_s"] - t["fit_s"] for t in completed if t.get("duration_s") and t.get("fit_s")
            ]
            per_seed[seed] = {
                "test_accuracy": run["best"]["test_accuracy"],
                "best_val_accuracy": run["best"]["val_accuracy"],
                "trials_completed": len(completed),
                "trials_total": len(run["trials"]),
                "search_s": run["search_s"],
                "hypervolume": hv,
                "front_size": front_size,
                "time_to_random_final_val_s": reach,
                "random_own_time_to_final_val_s": random_reach,
                "mean_overhead_outside_fit_s": float(np.mean(overhead)) if overhead else None,
                "mean_trial_s": float(
                    np.mean([t["duration_s"] for t in completed if t.get("duration_s")] or [np.nan])
                ),
                "loadavg_start": run["loadavg_start"],
                "loadavg_end": run["loadavg_end"],
                "best_values": run["best"]["values"],
            }
            curves.append(best_val_curve(run["trials"], grid))
        curves_arr = np.vstack(curves)
        summary[strategy] = {
            "per_seed": per_seed,
            **{key: _stats([p[key] for p in per_seed.values()]) for key in (
                "test_accuracy", "best_val_accuracy", "trials_completed", "hypervolume",
                "time_to_random_final_val_s", "mean_overhead_outside_fit_s", "search_s")},
            "reached_random_final_val": sum(p["time_to_random_final_val_s"] is not None for p in per_seed.values()),
            "curve": {
                "t_s": grid.tolist(),
                "mean": [None if np.all(np.isnan(c)) else float(np.nanmean(c)) for c in curves_arr.T],
                "min": [None if np.all(np.isnan(c)) else float(np.nanmin(c)) for c in curves_arr.T],
                "max": [None if np.all(np.isnan(c)) else float(np.nanmax(c)) for c in curves_arr.T],
            },
        }  # fmt: skip
    targets = _targets(summary, seeds, budget_s)
    return {"hypervolume_reference": {"accuracy": reference[0], "latency_ms": reference[1]},
            "random_final_val_by_seed": random_final, "strategies": summary, "targets": targets}  # fmt: skip


def _targets(summary: dict, seeds: list[int], budget_s: float) -> dict:
    default, peer = summary.get(DEFAULT_STRATEGY), summary.get("optuna_tpe")
    if default is None or peer is None or "random" not in summary:
        return {}
    reach = [default["per_seed"][s]["time_to_random_final_val_s"] for s in default["per_seed"]]
    half = budget_s / 2
    return {
        "test_accuracy_ge_tpe": {
            "default": default["test_accuracy"]["mean"], "tpe": peer["test_accuracy"]["mean"],
            "pass": default["test_accuracy"]["mean"] >= peer["test_accuracy"]["mean"],
        },
        "reach_random_final_val_in_half_budget": {
            "times_s": reach, "half_budget_s": half,
            "pass": all(t is not None and t <= half for t in reach),
        },
        "hypervolume_ge_tpe": {
            "default": default["hypervolume"]["mean"], "tpe": peer["hypervolume"]["mean"],
            "pass": default["hypervolume"]["mean"] >= peer["hypervolume"]["mean"],
        },
    }  # fmt: skip


# --------------------------------------------------------------------------- outputs


def _fmt(stat: dict, spec: str = ".3f") -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:{spec}} ± {stat['sd']:{spec}}"


def write_markdown(report: dict, path: Path) -> None:
    meta, analysis = report["settings"], report["analysis"]
    s = analysis["strategies"]
    lines = [
        "# Search efficiency: nasflow strategies vs Optuna TPE",
        "",
        f"`{DATASET}` (60/20/20 stratified, split seed {SPLIT_SEED}), `{SPACE}` space, "
        f"{meta['epochs']} epochs per trial, **{meta['budget_seconds']:.0f} s of search per strategy and seed**, "
        f"seeds {', '.join(map(str, meta['seeds']))}, `max_trials` {meta['max_trials']} (a cap; the budget ends every search). "
        "Each search ran in a fresh process. Values are mean ± sample sd over seeds.",
        "",
        "| strategy | test acc (best-by-val, retrained) | best val acc | trials completed | "
        "time to random's final val (s) | reached (of seeds) | hypervolume (val acc × ms) | outside-fit s/trial |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in s.items():
        label = f"**{name}** (default)" if name == DEFAULT_STRATEGY else name
        lines.append(
            f"| {label} | {_fmt(row['test_accuracy'], '.4f')} | {_fmt(row['best_val_accuracy'], '.4f')} | "
            f"{_fmt(row['trials_completed'], '.1f')} | {_fmt(row['time_to_random_final_val_s'], '.0f')} | "
            f"{row['reached_random_final_val']}/{len(row['per_seed'])} | {_fmt(row['hypervolume'], '.2f')} | "
            f"{_fmt(row['mean_overhead_outside_fit_s'], '.2f')} |"
        )
    ref = analysis["hypervolume_reference"]
    lines += [
        "",
        f"Hypervolume: area dominated by the validation-accuracy / LiteRT batch-1 p50 latency Pareto front of each "
        f"search, one reference point for all: accuracy {ref['accuracy']:.0f}, latency {ref['latency_ms']:.3f} ms "
        "(1.1 × the largest latency seen in any run). Time to random's final val: the first time the search's best "
        "validation accuracy reached what nasflow `random` ended at with the same seed (mean over the seeds where it did).",
        "",
        "## Per seed",
        "",
        "| strategy | seed | test acc | best val | trials | HV | t→random final (s) | random's own t (s) | load start → end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in s.items():
        for seed, p in row["per_seed"].items():
            reach = (
                "not reached"
                if p["time_to_random_final_val_s"] is None
                else f"{p['time_to_random_final_val_s']:.0f}"
            )
            own = p["random_own_time_to_final_val_s"]
            lines.append(
                f"| {name} | {seed} | {p['test_accuracy']:.4f} | {p['best_val_accuracy']:.4f} | {p['trials_completed']} | "
                f"{p['hypervolume']:.2f} | {reach} | {own:.0f} | {p['loadavg_start'][0]:.2f} → {p['loadavg_end'][0]:.2f} |"
            )
    targets = analysis.get("targets", {})
    if targets:
        t1, t2, t3 = (
            targets[k]
            for k in ("test_accuracy_ge_tpe", "reach_random_final_val_in_half_budget", "hypervolume_ge_tpe")
        )
        reach = ", ".join("not reached" if t is None else f"{t:.0f}" for t in t2["times_s"])
        lines += [
            "",
            f"## Targets (default strategy `{DEFAULT_STRATEGY}`)",
            "",
            f"- Test accuracy ≥ Optuna TPE's: {t1['default']:.4f} vs {t1['tpe']:.4f} → **{'PASS' if t1['pass'] else 'MISS'}**",
            f"- Reaches random search's final validation accuracy within half the budget ({t2['half_budget_s']:.0f} s) "
            f"in every seed: {reach} s → **{'PASS' if t2['pass'] else 'MISS'}**",
            f"- Hypervolume ≥ Optuna TPE's: {t3['default']:.2f} vs {t3['tpe']:.2f} → **{'PASS' if t3['pass'] else 'MISS'}**",
        ]
    lines += ["", "## What it means", ""] + [f"- {o}" for o in observations(report)]
    lines += ["", "## Machine and caveats", ""] + [f"- {c}" for c in report["caveats"]] + [""]
    path.write_text("\n".join(lines))


def observations(report: dict) -> list[str]:
    """Facts read off the runs that explain the table (same-seed duplicates, budget use)."""
    runs = report["runs"]
    budget = report["settings"]["budget_seconds"]
    by = {(r["strategy"], r["seed"]): r for r in runs}
    notes = []
    trials = [sum(t["status"] == "COMPLETED" for t in r["trials"]) for r in runs]
    notes.append(
        f"Each search completed {min(trials)}-{max(trials)} trials (mean {np.mean(trials):.1f}) in its "
        f"{budget:.0f} s: a `mobile_cnn` candidate takes 10-90 s for {report['settings']['epochs']} epochs on this "
        "loaded machine. At that count every model-based strategy is still in its random start (Bayesian: "
        f"max_trials // 3 = {report['settings']['max_trials'] // 3} random points; TPE: 10), so differences between "
        "strategies are mostly which random architectures each seed drew."
    )
    for seed in report["settings"]["seeds"]:
        base = by.get(("random", seed))
        if base is None:
            continue
        sequence = [round(t["val_accuracy"], 4) for t in base["trials"] if t["status"] == "COMPLETED"]
        same = [
            name for name in ("bayesian", "hyperband", "evolution", "reinforce")
            if (name, seed) in by and [round(t["val_accuracy"], 4) for t in by[(name, seed)]["trials"]
                                       if t["status"] == "COMPLETED"][: len(sequence)] == sequence[: len(by[(name, seed)]["trials"])]
        ]  # fmt: skip
        if same:
            notes.append(
                f"Seed {seed}: {', '.join(same)} ran exactly the same candidates as `random` (identical validation "
                "accuracies, trial for trial): Keras Tuner's oracles draw their random points from the same seeded "
                "generator, and with 2 epochs Hyperband (factor 3) has a single bracket of full-length trials."
            )
    over = [r["search_s"] - budget for r in runs]
    notes.append(
        f"The budget is checked between trials, so searches ended {min(over):+.0f} to {max(over):+.0f} s after "
        f"{budget:.0f} s (one long candidate started just before the deadline); Optuna's `timeout` behaves the same way."
    )
    return notes


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, row in report["analysis"]["strategies"].items():
        curve = row["curve"]
        t = np.asarray(curve["t_s"])
        mean = np.asarray([np.nan if v is None else v for v in curve["mean"]])
        low = np.asarray([np.nan if v is None else v for v in curve["min"]])
        high = np.asarray([np.nan if v is None else v for v in curve["max"]])
        style = "--" if name == "optuna_tpe" else "-"
        width = 2.5 if name == DEFAULT_STRATEGY else 1.5
        (line,) = ax.plot(
            t, mean, style, lw=width, label=name + (" (default)" if name == DEFAULT_STRATEGY else "")
        )
        ax.fill_between(t, low, high, color=line.get_color(), alpha=0.12)
    budget = report["settings"]["budget_seconds"]
    ax.axvline(budget, color="grey", lw=0.8, ls=":")
    ax.axvline(budget / 2, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("wall time since search start (s)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(f"mnist-5k / mobile_cnn, {report['settings']['epochs']} epochs per trial: mean and min–max over "
                 f"{len(report['settings']['seeds'])} seeds")  # fmt: skip
    finite = [
        v for row in report["analysis"]["strategies"].values() for v in row["curve"]["min"] if v is not None
    ]
    if finite:
        ax.set_ylim(max(0.0, np.percentile(finite, 5) - 0.05), 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=120.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 2027, 90001])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--bn-momentum",
        type=float,
        default=0.9,
        help="BatchNormalization momentum patched in for every strategy (0: Keras' 0.99, see patch_batch_norm_momentum)",
    )
    parser.add_argument("--max-trials", type=int, default=20,
                        help="cap on trials per search (also sets Bayesian's random start: max_trials // 3)")  # fmt: skip
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "nasflow-bench-search-efficiency",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 20 s budget, 1 epoch, one seed, results in the work dir",
    )
    parser.add_argument("--reuse", action="store_true", help="reuse per-run results already in the work dir")
    parser.add_argument("--one", nargs=2, metavar=("STRATEGY", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_seconds, args.epochs, args.seeds, args.max_trials = 20.0, 1, args.seeds[:1], 10
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "-quick")
        args.out = args.work_dir / "results"
    if args.one:
        strategy, seed = args.one[0], int(args.one[1])
        work = args.work_dir / f"{strategy}-{seed}"
        run_one(
            strategy,
            seed,
            args.budget_seconds,
            args.epochs,
            args.max_trials,
            work,
            args.work_dir / f"{strategy}-{seed}.json",
            args.bn_momentum,
        )
        return 0

    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    load_start, started = os.getloadavg(), time.time()
    runs = []
    for k, seed in enumerate(args.seeds):
        # Rotate the order per seed so that no strategy always runs at the same point of the load pattern.
        order = args.strategies[k % len(args.strategies) :] + args.strategies[: k % len(args.strategies)]
        for strategy in order:
            result_path = args.work_dir / f"{strategy}-{seed}.json"
            if not (args.reuse and result_path.exists()):
                print(
                    f"[{time.strftime('%H:%M:%S')}] {strategy} seed {seed} (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
                command = [sys.executable, str(Path(__file__).resolve()), "--one", strategy, str(seed),
                           "--budget-seconds", str(args.budget_seconds), "--epochs", str(args.epochs),
                           "--max-trials", str(args.max_trials), "--bn-momentum", str(args.bn_momentum), "--work-dir", str(args.work_dir.resolve())]  # fmt: skip
                with (args.work_dir / f"{strategy}-{seed}.log").open("w") as log:
                    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
                if code != 0:
                    print(
                        f"  FAILED (exit {code}), see {args.work_dir / f'{strategy}-{seed}.log'}", flush=True
                    )
                    continue
            runs.append(json.loads(result_path.read_text()))
            last = runs[-1]
            print(f"  {strategy} seed {seed}: {sum(t['status'] == 'COMPLETED' for t in last['trials'])} trials, "
                  f"best val {last['best']['val_accuracy']:.4f}, test {last['best']['test_accuracy']:.4f}", flush=True)  # fmt: skip
    analysis = analyse(runs, args.budget_seconds)
    import keras_tuner
    import mlflow
    import optuna
    import tensorflow as tf

    load_end = os.getloadavg()
    report = {
        "settings": {
            "dataset": DATASET,
            "space": SPACE,
            "split_seed": SPLIT_SEED,
            "budget_seconds": args.budget_seconds,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "max_trials": args.max_trials,
            "strategies": args.strategies,
            "default_strategy": DEFAULT_STRATEGY,
            "quick": args.quick,
            "bn_momentum": args.bn_momentum,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "tensorflow": tf.__version__,
            "keras_tuner": keras_tuner.__version__,
            "mlflow": mlflow.__version__,
            "optuna": optuna.__version__,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "total_wall_s": time.time() - started,
        },
        "caveats": [
            f"BatchNormalization momentum patched to {args.bn_momentum} in every search process (all strategies and "
            "Optuna alike): with nasflow's builder as it is (Keras' default 0.99), every mobile_cnn candidate scored "
            "val accuracy 0.100 (chance) after 1-2 epochs in the smoke runs, so no strategy could tell candidates apart."
            if args.bn_momentum
            else "BatchNormalization momentum left at Keras' 0.99.",
            f"Shared {os.cpu_count()}-core machine, other people's tests running at the same time: 1-min load average "
            f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end (per run in the per-seed table). Wall-clock budgets "
            "therefore bought different numbers of trials in different runs; the strategy order was rotated per seed so "
            "that no strategy always met the same load.",
            f"Budget {args.budget_seconds:.0f} s per search instead of the issue's 240 s (6 strategies x "
            f"{len(args.seeds)} seeds had to fit in ~45 min on a shared machine), with {args.epochs} epochs per trial "
            "on the heavier mobile_cnn space (the STACK.md reference used the 14-hyperparameter cnn space, 3 epochs, "
            "~60 trials): the absolute numbers are not comparable with that reference.",
            f"max_trials = {args.max_trials} (an upper bound the budget never reached) instead of a large cap: "
            "nasflow's Bayesian oracle uses max_trials // 3 random starting points (capped at 3 per hyperparameter), "
            "so with a large cap it never leaves its random start in a time-limited search.",
            "bench/trial_overhead.py (one extra busy process) ran during part of this benchmark to fit the time box.",
            "Optuna TPE's trials are neither MLflow-logged nor checkpointed (nasflow logs a nested run and saves weights "
            "per trial), a small per-trial advantage for the peer.",
            "Test accuracy is one retraining (same epochs, same seed) of the best-by-validation trial: with ~1,000 test "
            "images one image is 0.1 point, and retraining noise is of the order of the differences between strategies.",
            "Latencies (LiteRT batch-1 p50) come from different processes at different loads; the hypervolume inherits "
            "that noise.",
            "Hyperband with max_epochs = 2 and factor 3 has a single bracket, so every trial trained the full epochs.",
        ],
        "analysis": analysis,
        "runs": runs,
    }
    (args.out / "search_efficiency.json").write_text(json.dumps(report, indent=1, default=float))
    write_markdown(report, args.out / "search_efficiency.md")
    plot(report, args.out / "search_efficiency.png")
    print((args.out / "search_efficiency.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
