"""How often nasflow `tpe` may train the same cell: the ablation behind ``MAX_REPEATS``.

TPE concentrates on its favourite region and, on a categorical space, proposes cells it
has already evaluated. nasflow used to replace every such repeat by an untried neighbour
(``max_repeats=1``). On noisy tables a repeat is a second draw of a promising cell, and
the search step ranks a cell observed more than once by the mean of its draws. This
benchmark measures the choice with ``bench/tabular_nas.py``'s harness (the same oracle
protocol, confirmation on as by default) on NAS-Bench-201 and the 8 HPOBench tables, on
*tuning* seeds 100-119, which the reported tables (seeds 1-20) do not use:

- ``max_repeats`` 1 (never repeat, as nasflow did before), 2 (the default, chosen here),
  3 and, on NAS-Bench-201 only, unbounded;
- Optuna's TPE with its defaults as the reference (it repeats freely and picks its best
  single observation; its 100 is the prefix of its 200-evaluation run, the same search).

Regret after 50 / 100 / 200 evaluations (50: the prefix of the 200-evaluation run), mean
over the seeds, in accuracy points; and per variant the mean over the 3 budgets of the
ratio to Optuna TPE's regret. Results: ``bench/results/tpe_repeats.{jsonl.gz,json,md}``.

Usage::

    python bench/tpe_repeats.py --processes 2
    python bench/tpe_repeats.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tabular_nas  # noqa: E402

#: Variant name -> max_repeats (None: Optuna's own TPE, the reference).
VARIANTS = {
    "max_repeats=1": 1,
    "max_repeats=2 (default)": 2,
    "max_repeats=3": 3,
    "unbounded": 10**9,
    "Optuna TPE (defaults)": None,
}
PEER = "Optuna TPE (defaults)"
SEEDS = range(100, 120)
BUDGETS = (100, 200)


def load_rows(path: Path) -> list[dict]:
    return tabular_nas.load_rows(path, key=("variant", "benchmark", "budget", "seed"))


def one_task(task: tuple[str, str, int, int]) -> dict:
    variant, benchmark, budget, seed = task
    started = time.perf_counter()
    max_repeats = VARIANTS[variant]
    strategy = "optuna_tpe" if max_repeats is None else "tpe"
    scratch_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    history, curve = tabular_nas.search(benchmark, strategy, budget, seed, scratch_root, max_repeats=max_repeats)
    return {
        "variant": variant,
        "benchmark": benchmark,
        "budget": budget,
        "seed": seed,
        "distinct_cells": len({key for key, _ in history}),
        "regret_at": {str(n): curve[n - 1] for n in (50, 100, 200) if n <= len(curve)},
        "seconds": round(time.perf_counter() - started, 3),
    }


def regret(rows: list[dict], variant: str, benchmark: str, at: int) -> float | None:
    """Mean regret after ``at`` evaluations: from the run of that budget, else a longer run's prefix."""
    for run_budget in (at, *(b for b in BUDGETS if b > at)):
        values = [
            r["regret_at"][str(at)]
            for r in rows
            if r["variant"] == variant and r["benchmark"] == benchmark and r["budget"] == run_budget
        ]
        if values:
            return statistics.fmean(values)
    return None


def summarize(rows: list[dict]) -> dict:
    table: dict = {}
    for benchmark in tabular_nas.BENCHMARKS:
        for variant in VARIANTS:
            cells = {str(at): regret(rows, variant, benchmark, at) for at in (50, 100, 200)}
            if all(value is None for value in cells.values()):
                continue
            seeds = {r["seed"] for r in rows if r["variant"] == variant and r["benchmark"] == benchmark}
            distinct = [
                r["distinct_cells"]
                for r in rows
                if r["variant"] == variant and r["benchmark"] == benchmark and r["budget"] == 200
            ]
            peer = {str(at): regret(rows, PEER, benchmark, at) for at in (50, 100, 200)}
            ratios = [cells[k] / peer[k] for k in cells if cells[k] is not None and peer[k]]
            table.setdefault(benchmark, {})[variant] = {
                "regret": cells,
                "mean_ratio_to_optuna_tpe": statistics.fmean(ratios) if ratios else None,
                "distinct_cells_of_200": statistics.fmean(distinct) if distinct else None,
                "seeds": len(seeds),
            }
    return table


def overall(table: dict) -> dict:
    """Per variant: the mean ratio to Optuna TPE over NAS-Bench-201 and over HPOBench."""
    result = {}
    for variant in VARIANTS:
        for family in ("nb201", "hpobench"):
            ratios = [
                by_variant[variant]["mean_ratio_to_optuna_tpe"]
                for benchmark, by_variant in table.items()
                if benchmark.startswith(family)
                and by_variant.get(variant, {}).get("mean_ratio_to_optuna_tpe")
            ]
            if ratios:
                result.setdefault(variant, {})[family] = {
                    "mean_ratio": statistics.fmean(ratios),
                    "sets": len(ratios),
                }
    return result


def write_report(table: dict, out: Path) -> None:
    summary = overall(table)
    (out / "tpe_repeats.json").write_text(json.dumps({"table": table, "overall": summary}, indent=1) + "\n")
    lines = [
        "# nasflow `tpe`: how often the same cell may be trained (`max_repeats`)",
        "",
        "`bench/tpe_repeats.py` (see its docstring): noisy queries, tuning seeds 100-119, confirmation",
        "on (`confirm_best=auto`). Regret in accuracy points after 50 / 100 / 200 evaluations (mean",
        "over seeds; lower is better); ratio = mean over the 3 budgets of regret / Optuna TPE's regret.",
        "",
        "## Overall (mean of the per-table ratios to Optuna TPE)",
        "",
        "| variant | NAS-Bench-201 (3 tables) | HPOBench (8 tables) |",
        "|---|---|---|",
    ]
    for variant, families in summary.items():
        cells = [
            f"{families[f]['mean_ratio']:.2f} ({families[f]['sets']})" if f in families else "–"
            for f in ("nb201", "hpobench")
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    for benchmark, by_variant in table.items():
        lines += [
            "",
            f"## {benchmark}",
            "",
            "| variant | 50 / 100 / 200 | ratio | distinct cells of 200 | seeds |",
            "|---|---|---|---|---|",
        ]
        for variant, row in by_variant.items():
            regrets = " / ".join("–" if v is None else f"{v:.2f}" for v in row["regret"].values())
            ratio = (
                ""
                if row["mean_ratio_to_optuna_tpe"] is None or variant == PEER
                else f"{row['mean_ratio_to_optuna_tpe']:.2f}"
            )
            distinct = "" if row["distinct_cells_of_200"] is None else f"{row['distinct_cells_of_200']:.0f}"
            lines.append(f"| {variant} | {regrets} | {ratio} | {distinct} | {row['seeds']} |")
    (out / "tpe_repeats.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--benchmarks", nargs="+", default=list(tabular_nas.BENCHMARKS))
    args = parser.parse_args(argv)
    raw = args.out / "tpe_repeats.jsonl.gz"
    if not args.report_only:
        args.out.mkdir(parents=True, exist_ok=True)
        done = {(r["variant"], r["benchmark"], r["budget"], r["seed"]) for r in load_rows(raw)}
        tasks = [
            (variant, benchmark, budget, seed)
            for seed in SEEDS
            for benchmark in args.benchmarks
            for variant in args.variants
            # Optuna's 100 is its 200-run's prefix; unbounded repeats only on NAS-Bench-201.
            for budget in ((200,) if VARIANTS[variant] is None else BUDGETS)
            if (benchmark.startswith("nb201") or variant != "unbounded")
            and (variant, benchmark, budget, seed) not in done
        ]
        print(f"{len(tasks)} searches to run", file=sys.stderr)
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            for count, _row in enumerate(tabular_nas.append_jsonl(raw, pool.imap_unordered(one_task, tasks)), 1):
                if count % 50 == 0:
                    print(f"{count}/{len(tasks)}", file=sys.stderr)
    write_report(summarize(load_rows(raw)), args.out)
    print((args.out / "tpe_repeats.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
