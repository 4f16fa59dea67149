"""The tabular benchmark's result files and ratios: what a killed run leaves, what a ratio compares."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def tabular_nas():
    sys.path.insert(0, str(BENCH))
    import tabular_nas

    return tabular_nas


APPEND_THEN_HANG = """
import sys, time
sys.path.insert(0, {bench!r})
import tabular_nas

def rows():
    for seed in range(3):
        yield {{"benchmark": "b", "strategy": "s", "budget": 50, "seed": seed, "regret": 0.1 * seed}}
    print("written", flush=True)
    time.sleep(600)  # killed here, mid-run, as a benchmark cut short is
    yield {{}}

for _ in tabular_nas.append_jsonl(__import__("pathlib").Path({path!r}), rows()):
    pass
"""


def test_a_killed_run_keeps_every_row_it_wrote(tabular_nas, tmp_path):
    """SIGKILL mid-run leaves a gzip member without its end marker: the rows before it still read.

    The benchmarks resume from these rows (searches already done are skipped), so a kill must
    neither lose them nor make the file unreadable for the report and the next run.
    """
    raw = tmp_path / "results.jsonl.gz"
    list(tabular_nas.append_jsonl(raw, iter([{"benchmark": "b", "strategy": "s", "budget": 50, "seed": 9, "regret": 1.0}])))
    process = subprocess.Popen(
        [sys.executable, "-c", APPEND_THEN_HANG.format(bench=str(BENCH), path=str(raw))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "written"  # its 3 rows are flushed by now
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    rows = tabular_nas.read_jsonl(raw)
    assert [row["seed"] for row in rows] == [9, 0, 1, 2]
    # The next run appends after the cut member, and everything stays readable.
    list(tabular_nas.append_jsonl(raw, iter([{"benchmark": "b", "strategy": "s", "budget": 50, "seed": 3, "regret": 0.3}])))
    assert [row["seed"] for row in tabular_nas.read_jsonl(raw)] == [9, 0, 1, 2, 3]
    assert sorted(row["seed"] for row in tabular_nas.load_rows(raw)) == [0, 1, 2, 3, 9]  # the report's reader


def _row(strategy: str, seed: int, regret: float, budget: int = 200) -> dict:
    return {"benchmark": "nb201/cifar10", "strategy": strategy, "budget": budget, "seed": seed,
            "regret": regret, "curve": [regret] * budget}  # fmt: skip


def test_the_report_compares_common_seeds_only(tabular_nas):
    """The default extended to more seeds than a peer is compared on the seeds both have.

    Seed 3 exists only for ``tpe_local`` and is 5x worse: on all seeds the ratio would be 1.17
    (mean 2.33 against 2.0); on the common seeds 1 and 2 it is 0.5 at every budget.
    """
    rows = [_row("tpe_local", 1, 1.0), _row("tpe_local", 2, 1.0), _row("tpe_local", 3, 5.0)]
    rows += [_row("optuna_tpe", 1, 2.0), _row("optuna_tpe", 2, 2.0)]
    summary = tabular_nas.summarize(rows, "tpe_local")
    assert summary["ratio_to_optuna_tpe"]["nb201/cifar10"] == pytest.approx({"50": 0.5, "100": 0.5, "200": 0.5})
    assert summary["ratios"]["nb201/cifar10"]["tpe_local"]["200"]["n"] == 2
    assert summary["ratio_interval_90"]["nb201/cifar10"]["200"] == pytest.approx([0.5, 0.5])
    assert summary["table"]["nb201/cifar10"]["tpe_local"]["200"]["n"] == 3  # the regret table keeps every seed


def test_paired_ratio_intervals(tabular_nas):
    """The interval brackets the ratio when seeds disagree, and is a point when they do not."""
    ours = {1: 1.0, 2: 1.0, 3: 5.0}
    theirs = {1: 2.0, 2: 2.0}
    paired = tabular_nas.paired_ratio(ours, theirs, resamples=200)
    assert paired["n"] == 2 and paired["ratio"] == pytest.approx(0.5)
    low, high = paired["interval_90"]
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)  # no spread: every draw is 0.5
    spread = tabular_nas.paired_ratio({s: float(s) for s in range(20)}, {s: 10.0 for s in range(20)}, 500)
    low, high = spread["interval_90"]
    assert low < spread["ratio"] < high
    assert tabular_nas.paired_ratio({1: 1.0}, {2: 1.0}) is None
