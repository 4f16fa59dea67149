"""Choosing the trial to train, and the trial table and summary written for it."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasflow.errors import SearchError
from nasflow.search.settings import COMPLETED, FAILED, INFEASIBLE, INVALID, PRUNED

logger = logging.getLogger(__name__)


TRIAL_TABLE_COLUMNS = (
    "trial_id",
    "status",
    "feasible",
    "score",
    "val_accuracy",
    "params",
    "flops",
    "size_kb",
    "latency_ms",
    "epochs",
    "duration_s",
    "fit_s",
    "architecture",
    "reason",
    "mlflow_run_id",
)


@dataclass
class SearchResult:
    """What the search hands to the training step."""

    best_trial_id: str
    best_values: dict[str, Any]
    best_row: dict[str, Any]
    rows: list[dict[str, Any]]
    pareto_front: list[int] = field(default_factory=list)
    #: The chosen architecture's validation accuracy: the mean of its ``observations``
    #: completed trials (more than one when it was confirmed, see
    #: :func:`pool_repeated_architectures`); None: the chosen row's own.
    val_accuracy: float | None = None
    observations: int = 1

    def __post_init__(self) -> None:
        if self.val_accuracy is None:
            self.val_accuracy = self.best_row.get("val_accuracy")

    def best_hyperparameters_json(self, space_source: str) -> dict[str, Any]:
        """The JSON document written as the search's ``best_hyperparameters`` artifact."""
        return {
            "trial_id": self.best_trial_id,
            "values": self.best_values,
            "search_space": space_source,
            "val_accuracy": self.val_accuracy,
            # More than one: the architecture was trained that often, val_accuracy is the mean.
            "observations": self.observations,
            "score": self.best_row.get("score"),
            "architecture": self.best_row.get("architecture"),
        }


def choose_best(rows: list[dict[str, Any]], objective=None) -> SearchResult:
    """Pick the trial to train, by the objective's selection policy, among feasible completed trials.

    A ``PRUNED`` trial is chosen only when no trial completed: its accuracy is that of fewer
    epochs, so next to completed trials it is not comparable (and the pruner already judged
    it worse than the others at the same epoch); but when every trial was stopped early, the
    best of them is still a better outcome of the search than none.

    Raises:
        SearchError: No trial completed within the constraints.
    """
    from nasflow.search.objectives import ObjectiveConfig, pareto_front, select_trial

    objective = objective or ObjectiveConfig()
    completed = [row for row in rows if row["status"] == COMPLETED and row["feasible"]]
    if not completed and any(row["status"] == PRUNED and row["feasible"] for row in rows):
        # Selection works on COMPLETED rows; let the pruned ones stand in for them.
        stand_ins = [{**row, "status": COMPLETED} if row["status"] == PRUNED else row for row in rows]
        result = choose_best(stand_ins, objective)
        index = stand_ins.index(result.best_row)
        return SearchResult(result.best_trial_id, result.best_values, rows[index], rows, result.pareto_front)
    if not completed:
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        summary = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())) or "no trials ran"
        reasons = [row["reason"] for row in rows if row["reason"]]
        hint = f"; last reason: {reasons[-1]}" if reasons else ""
        raise SearchError(f"no trial completed within the constraints ({summary}){hint}")
    cost_key = cost_key_for(objective)
    pooled = pool_repeated_architectures(rows)
    index = select_trial(pooled, objective)
    best = rows[index]
    values = {key: value for key, value in best["values"].items()}
    front = pareto_front(pooled, cost_key=cost_key)
    return SearchResult(
        best["trial_id"], values, best, rows, front,
        val_accuracy=pooled[index]["val_accuracy"], observations=pooled[index].get("observations", 1),
    )


def pool_repeated_architectures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, each architecture trained more than once carrying the mean of its draws.

    An architecture confirmed at the end of the search (:mod:`nasflow.search.confirmation`),
    or repeated by a strategy, has several completed feasible rows: ranking them one by one
    would pick its luckiest draw. Each of them gets a copy with ``val_accuracy`` and
    ``score`` the means over those rows and ``observations`` their number; every other row
    is returned as it is, in the same order.
    """
    from nasflow.search.confirmation import architecture_key

    groups: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        if row["status"] == COMPLETED and row["feasible"] and row.get("val_accuracy") is not None:
            groups.setdefault(architecture_key(row["values"]), []).append(index)
    pooled = list(rows)
    for members in groups.values():
        if len(members) < 2:
            continue
        means = {
            key: float(np.mean([rows[i][key] for i in members]))
            for key in ("val_accuracy", "score")
            if all(rows[i].get(key) is not None for i in members)
        }
        for i in members:
            pooled[i] = {**rows[i], **means, "observations": len(members)}
    return pooled


def cost_key_for(objective) -> str:
    """The trial-row key of the objective's cost metric (latency when the objective names none)."""
    return {"latency_ms": "latency_ms", "size_kb": "size_kb", "params": "params", "flops": "flops"}.get(
        getattr(objective, "cost_metric", "latency_ms"), "latency_ms"
    )


def write_trial_table(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write the trial table as CSV (hyperparameters as one JSON column)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*TRIAL_TABLE_COLUMNS, "hyperparameters"])
        for row in rows:
            writer.writerow([_cell(row.get(column)) for column in TRIAL_TABLE_COLUMNS] + [json.dumps(row["values"])])


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Counts and bests for the KFP Metrics artifact."""
    completed = [row for row in rows if row["status"] == COMPLETED]
    accuracies = [row["val_accuracy"] for row in completed if row["val_accuracy"] is not None]
    return {
        "trials_total": float(len(rows)),
        "trials_completed": float(len(completed)),
        "trials_failed": float(sum(row["status"] == FAILED for row in rows)),
        # An architecture that cannot be built is a result of the search, not a failure of it.
        "trials_invalid": float(sum(row["status"] == INVALID for row in rows)),
        "trials_infeasible": float(sum(row["status"] == INFEASIBLE for row in rows)),
        "trials_pruned": float(sum(row["status"] == PRUNED for row in rows)),
        "best_val_accuracy": float(max(accuracies)) if accuracies else 0.0,
        "mean_trial_seconds": float(np.mean([row["duration_s"] for row in rows if row["duration_s"]] or [0.0])),
    }
