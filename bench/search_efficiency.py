"""Search efficiency of nasflow's strategies against Optuna TPE at an equal wall-clock budget.

Every (strategy, seed) search runs in a fresh Python process (Keras 3 leaks objects
across builds, so a long-lived process would handicap whichever search ran last) on
``mnist-5k`` (60/20/20 stratified split, split seed 42), the 14-hyperparameter ``cnn``
space (the reference of issue 12 and STACK.md), the same epochs per trial and the same
``max_search_minutes``:

* nasflow strategies through :func:`nasflow.search.run_search` with its defaults
  (MLflow logging of every trial to a throw-away SQLite store, ``measure_costs=auto``);
  ``NAME+asha`` / ``NAME+median`` is strategy NAME with that early-stopping rule;
* Optuna's TPE sampler with its defaults on the same space (conditions respected), the
  same model builder and epochs, written as a user's plain Optuna script would be: no
  tracking, no checkpoints, no cost measurement.

Targets (issue 12): the default strategy's test accuracy >= Optuna TPE's + 0.5 points,
and trials completed >= 0.95 x TPE's; with early stopping on, how many more candidates
were looked at in the same budget.

Both stop starting new trials once the budget is used (Optuna ``timeout``, nasflow
``max_search_minutes``). The best trial by validation accuracy is then rebuilt,
trained for the same epochs on train (same seed) and evaluated on test. The curves are
best *validation* accuracy vs wall time; only the final point gets a test accuracy.

Usage::

    python bench/search_efficiency.py --strategies tpe optuna_tpe tpe+asha --out bench/results
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

from nasflow.search.early_stopping import EARLY_STOPPING  # noqa: E402
from nasflow.search.settings import DEFAULT_STRATEGY  # noqa: E402
from nasflow.search.strategies import STRATEGIES as STRATEGY_NAMES  # noqa: E402

#: Every nasflow strategy, each also with an early-stopping rule (``tpe+asha``), and the peer.
STRATEGIES = (
    *STRATEGY_NAMES,
    *(f"{name}+{rule}" for name in STRATEGY_NAMES for rule in EARLY_STOPPING if rule != "none"),
    "optuna_tpe",
)
DATASET = "mnist-5k"
SPACE = "cnn"
#: Issue 12: default's test accuracy >= TPE's + this, and trials >= this share of TPE's.
TEST_ACCURACY_MARGIN = 0.005
TRIALS_SHARE = 0.95
SPLIT_SEED = 42
CURVE_STEP_S = 2.0


# --------------------------------------------------------------------------- one search


def _load(space_name: str = SPACE):
    from nasflow.data import load_raw_dataset, split_dataset
    from nasflow.spaces.schema import load_search_space, resolve_search_space

    data = split_dataset(load_raw_dataset(DATASET), 0.2, 0.2, SPLIT_SEED)
    space = load_search_space(resolve_search_space(space_name, "image"))
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
    name, _, rule = strategy.partition("+")
    settings = SearchSettings(
        strategy=name, max_trials=max_trials, epochs=epochs, seed=seed, max_search_minutes=budget_s / 60.0,
        early_stopping=rule or "none",
    )  # fmt: skip
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
        t_end = time.time() - started
        trials.append(
            {
                **record,
                "status": "COMPLETED" if math.isfinite(val_accuracy) else "FAILED",
                "t_end": t_end,
                "val_accuracy": val_accuracy,
                "latency_ms": None,
                "params": model.count_params(),
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
    bn_momentum: float = 0.0, space_name: str = SPACE,
):  # fmt: skip
    """One search in this process; writes its trials and the test accuracy of its best-by-val trial."""
    load_start = os.getloadavg()
    patch_batch_norm_momentum(bn_momentum)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # MLflow / Keras Tuner side files stay out of the repository
    data, space = _load(space_name)
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


def _stats(values: list[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "n": int(len(arr))}  # fmt: skip


def _looked_at(run: dict) -> list[dict]:
    """Trials that trained (completed, or stopped early by the rule): the candidates looked at."""
    return [t for t in run["trials"] if t["status"] in ("COMPLETED", "PRUNED")]


def analyse(runs: list[dict], budget_s: float) -> dict:
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    by = {(r["strategy"], r["seed"]): r for r in runs}
    grid = np.arange(0.0, budget_s * 1.25 + CURVE_STEP_S, CURVE_STEP_S)
    summary: dict = {}
    for strategy in strategies:
        per_seed, curves = {}, []
        for seed in seeds:
            run = by.get((strategy, seed))
            if run is None:
                continue
            completed = [t for t in run["trials"] if t["status"] == "COMPLETED"]
            overhead = [t["duration_s"] - t["fit_s"] for t in completed if t.get("duration_s") and t.get("fit_s")]
            durations = [t["duration_s"] for t in completed if t.get("duration_s")]
            per_seed[seed] = {
                "test_accuracy": run["best"]["test_accuracy"],
                "best_val_accuracy": run["best"]["val_accuracy"],
                "trials_completed": len(completed),
                "trials_looked_at": len(_looked_at(run)),
                "trials_pruned": sum(t["status"] == "PRUNED" for t in run["trials"]),
                "trials_total": len(run["trials"]),
                "search_s": run["search_s"],
                "mean_overhead_outside_fit_s": float(np.mean(overhead)) if overhead else None,
                "mean_trial_s": float(np.mean(durations)) if durations else None,
                "loadavg_start": run["loadavg_start"],
                "loadavg_end": run["loadavg_end"],
                "best_values": run["best"]["values"],
            }
            curves.append(best_val_curve(run["trials"], grid))
        curves_arr = np.vstack(curves)
        summary[strategy] = {
            "per_seed": per_seed,
            **{key: _stats([p[key] for p in per_seed.values()]) for key in (
                "test_accuracy", "best_val_accuracy", "trials_completed", "trials_looked_at", "trials_pruned",
                "mean_overhead_outside_fit_s", "mean_trial_s", "search_s")},
            "curve": {
                "t_s": grid.tolist(),
                "mean": [None if np.all(np.isnan(c)) else float(np.nanmean(c)) for c in curves_arr.T],
                "min": [None if np.all(np.isnan(c)) else float(np.nanmin(c)) for c in curves_arr.T],
                "max": [None if np.all(np.isnan(c)) else float(np.nanmax(c)) for c in curves_arr.T],
            },
        }  # fmt: skip
    return {"strategies": summary, "targets": _targets(summary)}


def _targets(summary: dict) -> dict:
    """Issue 12's two targets for the default strategy, and what early stopping adds."""
    default, peer = summary.get(DEFAULT_STRATEGY), summary.get("optuna_tpe")
    if default is None or peer is None:
        return {}
    test, peer_test = default["test_accuracy"]["mean"], peer["test_accuracy"]["mean"]
    trials, peer_trials = default["trials_completed"]["mean"], peer["trials_completed"]["mean"]
    targets = {
        "test_accuracy": {
            "default": test, "tpe": peer_test, "margin": TEST_ACCURACY_MARGIN,
            "pass": test >= peer_test + TEST_ACCURACY_MARGIN,
        },
        "trials_completed": {
            "default": trials, "tpe": peer_trials, "share": trials / peer_trials, "target_share": TRIALS_SHARE,
            "pass": trials >= TRIALS_SHARE * peer_trials,
        },
    }  # fmt: skip
    for rule in EARLY_STOPPING:
        with_rule = summary.get(f"{DEFAULT_STRATEGY}+{rule}")
        if with_rule is not None:
            looked = with_rule["trials_looked_at"]["mean"]
            targets[f"early_stopping_{rule}"] = {
                "looked_at": looked, "without": default["trials_looked_at"]["mean"],
                "more": looked / default["trials_looked_at"]["mean"] - 1.0,
                "test_accuracy": with_rule["test_accuracy"]["mean"],
            }  # fmt: skip
    return targets


# --------------------------------------------------------------------------- outputs


def _fmt(stat: dict, spec: str = ".3f") -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:{spec}} ± {stat['sd']:{spec}}"


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def write_markdown(report: dict, path: Path) -> None:
    meta, analysis = report["settings"], report["analysis"]
    s = analysis["strategies"]
    lines = [
        "# Search efficiency: nasflow against Optuna TPE on real training",
        "",
        f"`{DATASET}` (60/20/20 stratified, split seed {SPLIT_SEED}), `{meta['space']}` space, "
        f"{meta['epochs']} epochs per trial, **{meta['budget_seconds']:.0f} s of search per strategy and seed**, "
        f"seeds {', '.join(map(str, meta['seeds']))}, `max_trials` {meta['max_trials']} (a cap; the budget ends every "
        "search). Each search ran in a fresh process; nasflow with its default tracking (a nested MLflow run per "
        "trial, SQLite store) and `measure_costs=auto`; Optuna TPE with its defaults as a plain script. Test accuracy: "
        "the best-by-validation candidate retrained once (same epochs, same seed) and evaluated on the test split. "
        "Values are mean ± sample sd over seeds.",
        "",
        "| strategy | test acc | best val acc | trials completed | looked at (incl. stopped early) | "
        "s per trial | outside fit s/trial |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in s.items():
        label = f"**{name}** (default)" if name == DEFAULT_STRATEGY else name
        lines.append(
            f"| {label} | {_fmt(row['test_accuracy'], '.4f')} | {_fmt(row['best_val_accuracy'], '.4f')} | "
            f"{_fmt(row['trials_completed'], '.1f')} | {_fmt(row['trials_looked_at'], '.1f')} | "
            f"{_fmt(row['mean_trial_s'], '.2f')} | {_fmt(row['mean_overhead_outside_fit_s'], '.2f')} |"
        )
    lines += [
        "",
        "## Per seed",
        "",
        "| strategy | seed | test acc | best val | trials completed | looked at | load start → end |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in s.items():
        for seed, p in row["per_seed"].items():
            lines.append(
                f"| {name} | {seed} | {p['test_accuracy']:.4f} | {p['best_val_accuracy']:.4f} | "
                f"{p['trials_completed']} | {p['trials_looked_at']} | "
                f"{p['loadavg_start'][0]:.2f} → {p['loadavg_end'][0]:.2f} |"
            )
    targets = analysis.get("targets", {})
    if targets:
        test, trials = targets["test_accuracy"], targets["trials_completed"]
        lines += [
            "",
            f"## Targets (default strategy `{DEFAULT_STRATEGY}`)",
            "",
            f"- Test accuracy ≥ Optuna TPE's + {100 * test['margin']:.1f} points: {test['default']:.4f} vs "
            f"{test['tpe']:.4f} ({100 * (test['default'] - test['tpe']):+.2f} points) → **{_verdict(test['pass'])}**",
            f"- Trials completed ≥ {trials['target_share']:.2f} × TPE's: {trials['default']:.1f} vs {trials['tpe']:.1f} "
            f"({trials['share']:.2f}×) → **{_verdict(trials['pass'])}**",
        ]
        for rule in EARLY_STOPPING:
            extra = targets.get(f"early_stopping_{rule}")
            if extra:
                lines.append(
                    f"- With `--early-stopping {rule}`: {extra['looked_at']:.1f} candidates looked at against "
                    f"{extra['without']:.1f} without ({100 * extra['more']:+.0f} %), test accuracy "
                    f"{extra['test_accuracy']:.4f} (reported, no target)"
                )
    lines += ["", "## Machine and caveats", ""] + [f"- {c}" for c in report["caveats"]] + [""]
    path.write_text("\n".join(lines))


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
    ax.set_title(f"mnist-5k / {report['settings']['space']}, {report['settings']['epochs']} epochs per trial: mean and min–max over "
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
    parser.add_argument("--budget-seconds", type=float, default=240.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 2027, 90001])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--space", default=SPACE, help="a bundled search space (default: the reference cnn space)")
    parser.add_argument(
        "--bn-momentum",
        type=float,
        default=0.0,
        help="BatchNormalization momentum patched in for every strategy (0: Keras' 0.99, see patch_batch_norm_momentum)",
    )
    parser.add_argument("--max-trials", type=int, default=200,
                        help="cap on trials per search, above what the budget allows (it sizes some strategies' start)")  # fmt: skip
    parser.add_argument("--strategies", nargs="+", default=[DEFAULT_STRATEGY, "optuna_tpe", f"{DEFAULT_STRATEGY}+asha"],
                        choices=STRATEGIES)  # fmt: skip
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
            args.space,
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
                           "--max-trials", str(args.max_trials), "--bn-momentum", str(args.bn_momentum), "--space", args.space, "--work-dir", str(args.work_dir.resolve())]  # fmt: skip
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
            "space": args.space,
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
            "Optuna alike), see patch_batch_norm_momentum."
            if args.bn_momentum
            else "BatchNormalization momentum left at Keras' 0.99 (nasflow's builder as users get it).",
            f"{os.cpu_count()}-core machine: 1-min load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end "
            "(per run in the per-seed table). A wall-clock budget buys fewer trials when the machine is busy; the "
            "order of the arms was rotated per seed so that no arm always met the same load.",
            "Optuna TPE's trials are neither tracked nor checkpointed nor measured (a plain Optuna script); nasflow "
            "logs a nested MLflow run per trial, keeps its search state crash-safe, and counts params and FLOPs.",
            "Test accuracy is one retraining (same epochs, same seed) of the best-by-validation trial: with 1,000 test "
            "images one image is 0.1 point, and retraining noise is of the order of the differences between arms.",
            "The budget is checked between trials: a search ends after the first trial that finishes past it "
            "(Optuna's timeout behaves the same way).",
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
