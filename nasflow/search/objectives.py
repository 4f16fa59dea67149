"""Search objectives: hard constraints, the scalar score oracles maximize, Pareto fronts.

A trial is described by a *row*: a dict with at least ``trial_id``, ``status``,
``val_accuracy``, ``feasible`` and the costs ``params``, ``flops``, ``size_kb`` and
``latency_ms`` (:meth:`nasflow.search.costs.CandidateCosts.to_dict` names the latency
``latency_p50_ms``; both names are understood here).

Modes (:class:`ObjectiveConfig`):

* ``accuracy``: the score is validation accuracy; costs only enter through hard limits.
* ``reward``: MnasNet's soft-constrained reward ``acc * (cost / T) ** w`` with a target
  cost ``T`` and ``w = -0.07``, so a candidate twice as costly must be about 5% (relative)
  more accurate to score the same.
* ``pareto``: the same reward, with ``T`` the running median cost of the trials seen so
  far. Multiplying every score by the same ``T ** -w`` does not change which of two trials
  ranks higher, so the ranking is that of ``acc * cost ** w``, which favours trials on the
  accuracy/cost front without the user having to guess a target; the median only keeps
  the number on an accuracy-like scale. The final model is then chosen from the front by
  ``selection``.

Infeasible trials (a hard limit violated) score below zero in every mode, so an oracle
ranks every feasible trial above every infeasible one, and infeasible trials closer to
the limits above those further away.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nasflow.errors import SearchError

CostMetric = Literal["latency_ms", "size_kb", "params", "flops"]
COST_METRICS: tuple[str, ...] = ("latency_ms", "size_kb", "params", "flops")
MODES: tuple[str, ...] = ("accuracy", "reward", "pareto")
SELECTIONS: tuple[str, ...] = ("most_accurate", "knee")

#: Other names under which a cost may appear in a costs dict.
_COST_ALIASES: dict[str, tuple[str, ...]] = {
    "latency_ms": ("latency_ms", "latency_p50_ms"),
    "size_kb": ("size_kb",),
    "params": ("params",),
    "flops": ("flops",),
}

#: (config field, cost metric) of every hard limit, in reporting order.
_LIMITS: tuple[tuple[str, str], ...] = (
    ("max_params", "params"),
    ("max_flops", "flops"),
    ("max_size_kb", "size_kb"),
    ("max_latency_ms", "latency_ms"),
)


#: Pipeline parameter -> ObjectiveConfig field. The pipeline hands these to the search step
#: as one ``objective`` value (:func:`objective_parameters`); nothing else lists them.
PIPELINE_PARAMETERS: dict[str, str] = {
    "objective_mode": "mode",
    "cost_metric": "cost_metric",
    "cost_target": "cost_target",
    "reward_exponent": "reward_exponent",
    "selection": "selection",
    "max_params": "max_params",
    "max_flops": "max_flops",
    "max_latency_ms": "max_latency_ms",
    "max_size_kb": "max_size_kb",
}


#: Numeric fields of ObjectiveConfig and their types; 0 means "unset" for all but the exponent.
_NUMERIC_FIELDS: dict[str, type] = {
    "cost_target": float,
    "reward_exponent": float,
    "max_params": int,
    "max_flops": int,
    "max_latency_ms": float,
    "max_size_kb": float,
}


def objective_parameters(pipeline_parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The objective's settings, by ObjectiveConfig field, out of all the pipeline's parameters."""
    return {field: pipeline_parameters[name] for name, field in PIPELINE_PARAMETERS.items()}


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the search optimizes and which candidates are acceptable.

    Attributes:
        mode: ``accuracy``, ``reward`` or ``pareto`` (see the module docstring).
        cost_metric: The cost the reward and the Pareto front use.
        cost_target: Target cost ``T`` of the reward (required in ``reward`` mode; in
            ``pareto`` mode it replaces the running median when given).
        reward_exponent: MnasNet's ``w`` (negative: costlier is worse).
        max_params: Hard limit on parameters (checkable before training).
        max_latency_ms: Hard limit on median batch-1 latency.
        max_size_kb: Hard limit on float32 TFLite size.
        max_flops: Hard limit on multiply-accumulates (checkable before training).
        selection: How the final trial is chosen among feasible completed trials:
            ``most_accurate`` or ``knee`` (knee of the accuracy/cost front).
    """

    mode: Literal["accuracy", "reward", "pareto"] = "accuracy"
    cost_metric: CostMetric = "latency_ms"
    cost_target: float | None = None
    reward_exponent: float = -0.07
    max_params: int | None = None
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    max_flops: int | None = None
    selection: Literal["most_accurate", "knee"] = "most_accurate"

    def __post_init__(self) -> None:
        """Reject inconsistent settings with one-line errors."""
        if self.mode not in MODES:
            raise SearchError(f"objective mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.cost_metric not in COST_METRICS:
            raise SearchError(
                f"objective cost_metric {self.cost_metric!r} is not one of {', '.join(COST_METRICS)}"
            )
        if self.selection not in SELECTIONS:
            raise SearchError(f"objective selection {self.selection!r} is not one of {', '.join(SELECTIONS)}")
        if self.mode == "reward" and self.cost_target is None:
            raise SearchError("objective mode 'reward' needs cost_target (the target cost T)")
        if self.cost_target is not None and not self.cost_target > 0:
            raise SearchError(f"objective cost_target must be positive, got {self.cost_target}")
        for field, _ in _LIMITS:
            limit = getattr(self, field)
            if limit is not None and not limit > 0:
                raise SearchError(f"objective {field} must be positive, got {limit}")

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> ObjectiveConfig:
        """The objective from pipeline parameters, where 0 means "no limit" / "no target".

        KFP has no optional numbers, so the pipeline passes 0 for an unset limit.

        Raises:
            SearchError: An unknown setting, or an inconsistent one.
        """
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise SearchError(f"unknown objective setting(s): {', '.join(unknown)}")
        cleaned: dict[str, Any] = {}
        for key, value in values.items():
            kind = _NUMERIC_FIELDS.get(key)
            if kind is not None:
                # A placeholder inside a KFP struct may arrive as text ("0.0"): read it as a number.
                try:
                    value = kind(float(value))
                except (TypeError, ValueError) as error:
                    raise SearchError(f"objective {key} must be a number, got {value!r}") from error
                if not value and key != "reward_exponent":
                    value = None
            cleaned[key] = value
        return cls(**cleaned)

    def cheap_constraints(self) -> ObjectiveConfig:
        """The limits that can be checked from the built model alone, before training.

        Returns:
            A copy keeping only ``max_params`` and ``max_flops`` (mode ``accuracy``), for
            :func:`constraint_violations` on the costs of an untrained model.
        """
        return ObjectiveConfig(mode="accuracy", max_params=self.max_params, max_flops=self.max_flops)

    @property
    def has_cheap_constraints(self) -> bool:
        """Whether any limit can be checked before training."""
        return self.max_params is not None or self.max_flops is not None

    def replace(self, **changes) -> ObjectiveConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def cost_value(costs: dict, metric: str) -> float | None:
    """One cost from a costs dict or row, or None when absent or not a finite number.

    Args:
        costs: A row or :meth:`CandidateCosts.to_dict` output.
        metric: One of :data:`COST_METRICS`.

    Returns:
        The cost as a float, or None.
    """
    for key in _COST_ALIASES.get(metric, (metric,)):
        value = costs.get(key)
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None
    return None


def constraint_violations(costs: dict, config: ObjectiveConfig) -> list[str]:
    """Every hard limit a candidate breaks, as readable one-line messages.

    A limit whose cost is missing or not a number (for example a latency that was not
    measured) counts as violated: an unchecked candidate is not accepted.

    Args:
        costs: A row or costs dict.
        config: The limits.

    Returns:
        Messages such as ``"params 120345 > max_params 100000"``; empty when feasible.
    """
    violations: list[str] = []
    for field, metric, limit, value in _set_limits(costs, config):
        if value is None:
            violations.append(f"{metric} unknown, cannot check {field} {_fmt(limit)}")
        elif value > limit:
            violations.append(f"{metric} {_fmt(value)} > {field} {_fmt(limit)}")
    return violations


def _set_limits(costs: Mapping[str, Any], config: ObjectiveConfig) -> Iterator[tuple[str, str, float, float | None]]:
    """Each limit the config sets, with the candidate's cost it bounds (None: not measured).

    Yields:
        ``(limit field, cost metric, limit, cost value or None)``.
    """
    for field, metric in _LIMITS:
        limit = getattr(config, field)
        if limit is not None:
            yield field, metric, limit, cost_value(costs, metric)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _reward(val_accuracy: float, cost: float, target: float, exponent: float) -> float:
    return val_accuracy * (cost / target) ** exponent


def _infeasibility_factor(costs: dict, config: ObjectiveConfig) -> float:
    """Product of ``limit / value`` over violated limits (0 for unknown costs)."""
    factor = 1.0
    for _, _, limit, value in _set_limits(costs, config):
        if value is None:
            return 0.0
        if value > limit:
            factor *= limit / value
    return factor


def objective_score(
    val_accuracy: float,
    costs: dict,
    config: ObjectiveConfig,
    front_context: Sequence[dict] | None = None,
) -> float:
    """The scalar an oracle maximizes for one trial.

    Feasible trials score ``val_accuracy`` (accuracy mode) or
    ``val_accuracy * (cost / T) ** w`` (reward and pareto modes, ``T`` the target or, in
    pareto mode without one, the median cost of ``front_context``; with no context the
    trial's own cost, giving plain accuracy). Infeasible trials score
    ``feasible_score * prod(limit / value) - 1``, which is below zero.

    Args:
        val_accuracy: Validation accuracy in [0, 1].
        costs: The trial's costs (row or :meth:`CandidateCosts.to_dict`).
        config: The objective.
        front_context: Rows of earlier trials (pareto mode only: their median cost is T).

    Returns:
        The score; higher is better.

    Raises:
        SearchError: When the reward needs a cost that is missing or not positive.
    """
    score = float(val_accuracy)
    if config.mode in ("reward", "pareto"):
        cost = cost_value(costs, config.cost_metric)
        if cost is None or cost <= 0:
            raise SearchError(
                f"objective mode {config.mode!r} needs a positive {config.cost_metric}, got {cost}"
            )
        target = config.cost_target
        if target is None:
            seen = [cost_value(row, config.cost_metric) for row in front_context or ()]
            seen = [value for value in seen if value is not None and value > 0]
            target = _median(seen) if seen else cost
        score = _reward(score, cost, target, config.reward_exponent)
    if constraint_violations(costs, config):
        return score * _infeasibility_factor(costs, config) - 1.0
    return score


def _is_candidate(row: dict) -> bool:
    """Completed, marked feasible, with a finite accuracy."""
    if row.get("status", "COMPLETED") != "COMPLETED" or not row.get("feasible", True):
        return False
    accuracy = row.get("val_accuracy")
    return accuracy is not None and math.isfinite(float(accuracy))


def pareto_front(rows: Sequence[dict], cost_key: str = "latency_ms") -> list[int]:
    """Indices of the non-dominated feasible completed rows (max accuracy, min cost).

    A row is dominated when another is at least as accurate and at most as costly, and
    strictly better in one of the two. Identical points do not dominate each other.

    Args:
        rows: Trial rows.
        cost_key: The cost to minimize.

    Returns:
        Indices into ``rows``, ordered by increasing cost.
    """
    points = [
        (index, float(row["val_accuracy"]), cost)
        for index, row in enumerate(rows)
        if _is_candidate(row) and (cost := cost_value(row, cost_key)) is not None
    ]
    front = [
        (index, accuracy, cost)
        for index, accuracy, cost in points
        if not any(
            other_acc >= accuracy and other_cost <= cost and (other_acc > accuracy or other_cost < cost)
            for _, other_acc, other_cost in points
        )
    ]
    front.sort(key=lambda point: (point[2], -point[1], point[0]))
    return [index for index, _, _ in front]


def knee_point(rows: Sequence[dict], front: list[int], cost_key: str = "latency_ms") -> int:
    """The front's knee: the point furthest from the chord between its two ends.

    Accuracy and cost are first scaled to [0, 1] over the front, so units do not matter.
    With fewer than three points, or a straight front, the most accurate point is chosen.

    Args:
        rows: Trial rows.
        front: Indices from :func:`pareto_front`.
        cost_key: The cost of the front.

    Returns:
        An index into ``rows``.

    Raises:
        SearchError: For an empty front.
    """
    if not front:
        raise SearchError("cannot pick a knee point from an empty Pareto front")
    most_accurate = max(front, key=lambda i: (float(rows[i]["val_accuracy"]), -cost_value(rows[i], cost_key)))
    if len(front) < 3:
        return most_accurate
    accuracies = [float(rows[i]["val_accuracy"]) for i in front]
    costs = [cost_value(rows[i], cost_key) for i in front]
    acc_low, acc_span = min(accuracies), (max(accuracies) - min(accuracies)) or 1.0
    cost_low, cost_span = min(costs), (max(costs) - min(costs)) or 1.0
    scaled = [
        ((c - cost_low) / cost_span, (a - acc_low) / acc_span) for a, c in zip(accuracies, costs, strict=True)
    ]
    (x0, y0), (x1, y1) = scaled[0], scaled[-1]
    chord = math.hypot(x1 - x0, y1 - y0) or 1.0
    distances = [abs((y1 - y0) * x - (x1 - x0) * y + x1 * y0 - y1 * x0) / chord for x, y in scaled]
    best = max(range(len(front)), key=lambda k: distances[k])
    return front[best] if distances[best] > 1e-12 else most_accurate


def select_trial(rows: Sequence[dict], config: ObjectiveConfig) -> int:
    """The trial to keep: among completed, feasible rows, by ``config.selection``.

    Feasibility is both the row's ``feasible`` flag and the config's hard limits.

    Args:
        rows: Trial rows.
        config: The objective.

    Returns:
        An index into ``rows``.

    Raises:
        SearchError: When no completed trial meets the constraints.
    """
    candidates = [
        index
        for index, row in enumerate(rows)
        if _is_candidate(row) and not constraint_violations(row, config)
    ]
    if not candidates:
        raise SearchError(
            f"none of {len(rows)} trials completed within the constraints; relax them or search longer"
        )
    if config.selection == "knee":
        subset = [rows[i] for i in candidates]
        front = pareto_front(subset, config.cost_metric)
        if front:
            return candidates[knee_point(subset, front, config.cost_metric)]

    def rank(index: int) -> tuple[float, float]:
        cost = cost_value(rows[index], config.cost_metric)
        return float(rows[index]["val_accuracy"]), -(cost if cost is not None else math.inf)

    return max(candidates, key=rank)


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by (accuracy, cost) points relative to a reference point.

    Accuracy is maximized and cost minimized: each point dominates the rectangle
    ``[acc_ref, acc] x [cost, cost_ref]``; the result is the area of their union. Points
    no better than the reference in both objectives add nothing.

    Args:
        points: (accuracy, cost) pairs.
        reference: (acc_ref, cost_ref), a worst acceptable corner.

    Returns:
        The dominated area (accuracy units times cost units).
    """
    acc_ref, cost_ref = reference
    useful = sorted((cost, acc) for acc, cost in points if acc > acc_ref and cost < cost_ref)
    area = 0.0
    best_accuracy = acc_ref
    for k, (cost, acc) in enumerate(useful):
        best_accuracy = max(best_accuracy, acc)
        next_cost = useful[k + 1][0] if k + 1 < len(useful) else cost_ref
        area += (next_cost - cost) * (best_accuracy - acc_ref)
    return area


def plot_pareto(
    rows: Sequence[dict], front: list[int], chosen: int | None, path: str | Path, cost_key: str = "latency_ms"
) -> None:
    """Write a PNG of accuracy against cost: all trials, infeasible ones, front, choice.

    Args:
        rows: Trial rows.
        front: Indices from :func:`pareto_front`.
        chosen: Index of the selected row, or None.
        path: Output PNG path (parent folders are created).
        cost_key: The cost on the x axis.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    plotted = [
        (i, cost_value(row, cost_key), float(row["val_accuracy"]))
        for i, row in enumerate(rows)
        if row.get("status", "COMPLETED") == "COMPLETED" and row.get("val_accuracy") is not None
    ]
    plotted = [(i, c, a) for i, c, a in plotted if c is not None and math.isfinite(a)]
    feasible = [(c, a) for i, c, a in plotted if rows[i].get("feasible", True)]
    infeasible = [(c, a) for i, c, a in plotted if not rows[i].get("feasible", True)]
    if feasible:
        axes.scatter(*zip(*feasible, strict=True), s=18, color="0.55", label="feasible trial")
    if infeasible:
        axes.scatter(
            *zip(*infeasible, strict=True), s=22, marker="x", color="tab:red", label="infeasible trial"
        )
    if front:
        front_points = [(cost_value(rows[i], cost_key), float(rows[i]["val_accuracy"])) for i in front]
        axes.step(*zip(*front_points, strict=True), where="post", color="tab:blue", linewidth=1.2)
        axes.scatter(*zip(*front_points, strict=True), s=30, color="tab:blue", label="Pareto front", zorder=3)
    if chosen is not None and cost_value(rows[chosen], cost_key) is not None:
        axes.scatter(
            [cost_value(rows[chosen], cost_key)],
            [float(rows[chosen]["val_accuracy"])],
            s=160,
            marker="*",
            color="tab:orange",
            edgecolor="black",
            label=f"chosen (trial {rows[chosen].get('trial_id')})",
            zorder=4,
        )
    axes.set_xlabel(cost_key)
    axes.set_ylabel("val_accuracy")
    axes.set_title("Accuracy / cost of every trial")
    axes.grid(alpha=0.3)
    if plotted:
        axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def pareto_markdown(
    rows: Sequence[dict], front: list[int], chosen: int | None, cost_key: str = "latency_ms"
) -> str:
    """A Markdown summary: trial counts, hypervolume and the front as a table.

    The hypervolume uses the reference (accuracy 0, largest cost of any completed trial),
    so it is comparable between searches over the same space only.

    Args:
        rows: Trial rows.
        front: Indices from :func:`pareto_front`.
        chosen: Index of the selected row, or None.
        cost_key: The front's cost.

    Returns:
        Markdown text.
    """
    completed = [row for row in rows if row.get("status", "COMPLETED") == "COMPLETED"]
    feasible = [row for row in completed if row.get("feasible", True)]
    costs = [value for row in completed if (value := cost_value(row, cost_key)) is not None]
    reference = (0.0, max(costs) if costs else 0.0)
    volume = hypervolume_2d(
        [(float(rows[i]["val_accuracy"]), cost_value(rows[i], cost_key)) for i in front], reference
    )
    lines = [
        f"**Trials:** {len(rows)} ({len(completed)} completed, {len(feasible)} feasible); "
        f"**Pareto front:** {len(front)} trials on `{cost_key}`; "
        f"**hypervolume** vs (0, {_fmt(reference[1])}): {volume:.4g}",
        "",
        "| trial | val_accuracy | latency_ms | size_kb | params | flops | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in front:
        row = rows[i]
        cells = [
            str(row.get("trial_id", i)),
            f"{float(row['val_accuracy']):.4f}",
            _cell(cost_value(row, "latency_ms"), ".3f"),
            _cell(cost_value(row, "size_kb"), ".1f"),
            _cell(cost_value(row, "params"), "d"),
            _cell(cost_value(row, "flops"), "d"),
            "**yes**" if i == chosen else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if chosen is not None and chosen not in front:
        row = rows[chosen]
        lines += ["", f"Chosen trial {row.get('trial_id', chosen)} is not on the front (selection policy)."]
    return "\n".join(lines) + "\n"


def _cell(value: float | None, spec: str) -> str:
    if value is None:
        return "n/a"
    return format(int(value), spec) if spec == "d" else format(value, spec)
