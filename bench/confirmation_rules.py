"""How the end of a search budget is best spent confirming its leaders: the study behind ``confirm_best=auto``.

On every table of ``bench/tabular_nas.py`` (NAS-Bench-201's three datasets and the eight
HPOBench sets; each query one training seed's validation accuracy), a nasflow strategy
(``--strategy``, ``tpe`` unless given; nasflow's default strategy is ``tpe_local``) searches
200 evaluations with ``confirm_best=none`` on the *tuning* seeds 100-119 (the
reported seeds of ``tabular_nas.py`` are 1-20 and stay out of the choice). A budget of B
evaluations with K confirmations is then its first B - K evaluations (the strategy's
proposals do not depend on what the last slots do) followed by K confirmations drawn
from the table, and the pick is the search step's: the best architecture by the mean of
its observations. Each (search, rule) is scored by the mean regret over 5 draws of the
confirmations, so the rules are compared on the same searches.

Rules:

* ``none``: no confirmation.
* ``once K``: the rule before racing (until 2026-12-03): each of the best K architectures
  (by their single draw, the ones observed once) trained once more.
* ``race K to M``: nasflow's rule (:meth:`nasflow.search.confirmation._ConfirmingOracle.
  _next_to_confirm`, called on the simulated trials, not a copy): each confirmation trains
  the architecture leading by its mean among those with fewer than M trainings. ``auto``
  raced 6 % to 4 until 2026-12-04 (chosen on ``tpe``'s searches), 10 % to 4 since (chosen on
  the default ``tpe_local``'s: lower than 6 % on 8 of 11 tables at 100 evaluations and on 9
  of 11 at 200).

Usage::

    python bench/confirmation_rules.py --processes 2   # searches (cached in the .jsonl.gz), then the report
    python bench/confirmation_rules.py --strategy tpe_local --processes 2   # -> confirmation_rules_tpe_local.md
    python bench/confirmation_rules.py --report-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tabular_nas  # noqa: E402

TUNING_SEEDS = range(100, 120)
BUDGET = 200
#: At 50 every rule measured cost more than it gained (auto confirms none below 100).
BUDGETS = (100, 200)
CONFIRMATION_DRAWS = 5
#: (label, K as a share of the budget or a count, rule, M)
RULES = (
    ("none", 0, "none", 0),
    ("once 3", 3, "once", 0),
    ("race 3 to 4", 3, "race", 4),
    ("race 6 % to 3", 0.06, "race", 3),
    ("race 6 % to 4 (before)", 0.06, "race", 4),
    ("race 10 % to 4 (auto)", 0.10, "race", 4),
    ("race 15 % to 4", 0.15, "race", 4),
    ("race 10 % to 6", 0.10, "race", 6),
)


def _search(task: tuple[str, str, int]) -> dict:
    strategy, benchmark, seed = task
    with tempfile.TemporaryDirectory() as scratch:
        history, _ = tabular_nas.search(benchmark, strategy, BUDGET, seed, scratch, confirm_best="none")
    return {"strategy": strategy, "benchmark": benchmark, "seed": seed, "history": history}


def _params(bench: tabular_nas.Tabular, key: str) -> dict:
    # Tabular.key's inverse: one choice index per parameter of the table.
    return {name: list(choices)[int(digit)] for (name, choices), digit in zip(bench.table.search_space.items(), key, strict=True)}


def _race_pick(history: list[tuple[str, float]], confirmations: dict[str, str], max_observations: int):
    """nasflow's own choice of the next confirmation (``_next_to_confirm``), on the history as trials."""
    from nasflow.search.confirmation import _ConfirmingOracle

    oracle = _ConfirmingOracle()
    oracle.trials = {
        str(number): types.SimpleNamespace(
            trial_id=str(number), hyperparameters=types.SimpleNamespace(values={"cell": key}),
            status="COMPLETED", score=observed,
        )  # fmt: skip
        for number, (key, observed) in enumerate(history)
    }
    # One slot left in the trial budget and one confirmation still to make: the next trial confirms.
    oracle.max_trials, oracle.nasflow_confirm = len(history) + 1, len(confirmations) + 1
    oracle.nasflow_confirmations, oracle.nasflow_max_observations = confirmations, max_observations
    chosen = oracle._next_to_confirm()
    return None if chosen is None else chosen.hyperparameters.values["cell"]


def confirmed_regret(bench, history, count: int, rule: str, max_observations: int) -> float:
    """Regret of the search step's pick after ``count`` confirmations by ``rule``."""
    history = list(history)
    confirmations: dict[str, str] = {}
    confirmed: set[str] = set()
    for _ in range(count):
        if rule == "once":
            observed = Counter(key for key, _ in history)
            candidates = [(value, key) for key, value in history if observed[key] == 1 and key not in confirmed]
            key = max(candidates)[1] if candidates else None
        else:
            key = _race_pick(history, confirmations, max_observations)
        if key is None:
            break
        confirmed.add(key)
        confirmations[str(len(history))] = key
        history.append((key, bench.query(_params(bench, key))))
    draws: dict[str, list[float]] = {}
    for key, value in history:
        draws.setdefault(key, []).append(value)
    pick = max(draws, key=lambda cell: statistics.fmean(draws[cell]))
    return bench.best_mean - bench.means[pick]


def evaluate(rows: list[dict]) -> dict:
    """Mean regret per benchmark, budget and rule."""
    table: dict = {}
    for row in rows:
        bench = tabular_nas.cached(row["benchmark"])
        history = [tuple(item) for item in row["history"]]
        for budget in BUDGETS:
            for label, share, rule, max_observations in RULES:
                count = round(share * budget) if isinstance(share, float) else share
                regrets = []
                for draw in range(CONFIRMATION_DRAWS):
                    bench.table.reseed(row["seed"] * 1000 + budget * 10 + draw)
                    regrets.append(confirmed_regret(bench, history[: budget - count], count, rule, max_observations))
                table.setdefault(row["benchmark"], {}).setdefault(str(budget), {}).setdefault(label, []).append(
                    statistics.fmean(regrets)
                )
    return {
        benchmark: {
            budget: {label: round(statistics.fmean(values), 4) for label, values in rules.items()}
            for budget, rules in budgets.items()
        }
        for benchmark, budgets in table.items()
    }


def write_report(summary: dict, out: Path, strategy: str) -> None:
    labels = [label for label, *_ in RULES]
    lines = [
        "# Confirmation rules: regret of the pick after 100 / 200 evaluations",
        "",
        f"`bench/confirmation_rules.py --strategy {strategy}` (see its docstring): nasflow `{strategy}`, tuning seeds 100-119, "
        "the same searches with the end of the budget confirmed by each rule, mean regret (accuracy "
        f"points) over {CONFIRMATION_DRAWS} draws of the confirmations; lower is better, **bold** the "
        "lowest of the row. `K %` rules spend that share of the budget (10 % = 10 at 100, 20 at 200).",
        "",
    ]
    for budget in ("100", "200"):
        lines += [f"## {budget} evaluations", "", "| table | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        wins = Counter()
        for benchmark, budgets in summary.items():
            values = budgets[budget]
            best = min(values.values())
            if values["race 10 % to 4 (auto)"] < values["race 6 % to 4 (before)"]:
                wins["auto better than before"] += 1
            cells = [f"**{values[label]:.3f}**" if values[label] == best else f"{values[label]:.3f}" for label in labels]
            lines.append(f"| {benchmark} | " + " | ".join(cells) + " |")
        lines += ["", f"`auto` (10 % to 4) lower than the rule before it (6 % to 4) on {wins['auto better than before']} of {len(summary)} tables.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"rules": [list(rule) for rule in RULES], "regret": summary}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--strategy", default="tpe", help="the nasflow strategy that searches (report: confirmation_rules[_STRATEGY])")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--report-only", action="store_true", help="evaluate the searches already in the .jsonl.gz")
    args = parser.parse_args(argv)
    raw = args.out / "confirmation_rules.jsonl.gz"
    # Rows from before --strategy existed are tpe's searches.
    rows = [row for row in tabular_nas.read_jsonl(raw) if row.get("strategy", "tpe") == args.strategy]
    if not args.report_only:
        done = {(row["benchmark"], row["seed"]) for row in rows}
        tasks = [(args.strategy, b, s) for b in tabular_nas.BENCHMARKS for s in TUNING_SEEDS if (b, s) not in done]
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            rows += tabular_nas.append_jsonl(raw, pool.imap_unordered(_search, tasks))
    report = args.out / ("confirmation_rules" if args.strategy == "tpe" else f"confirmation_rules_{args.strategy}")
    write_report(evaluate(rows), report, args.strategy)
    print(report.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
