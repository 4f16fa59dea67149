"""Constraints, scores, Pareto fronts, hypervolume and selection policies."""

from __future__ import annotations

import math

import pytest

from nasflow.errors import SearchError
from nasflow.search.objectives import (
    ObjectiveConfig,
    constraint_violations,
    hypervolume_2d,
    knee_point,
    objective_score,
    pareto_front,
    pareto_markdown,
    plot_pareto,
    select_trial,
)


def row(
    trial_id, accuracy, latency, *, status="COMPLETED", feasible=True, params=1000, flops=10_000, size_kb=4.0
):
    return {
        "trial_id": trial_id,
        "status": status,
        "val_accuracy": accuracy,
        "feasible": feasible,
        "params": params,
        "flops": flops,
        "size_kb": size_kb,
        "latency_ms": latency,
    }


# Hand-checked: (accuracy, latency). "c" is dominated by "b" (less accurate, slower),
# "f" is infeasible, "g" failed, "e" duplicates nothing and is the most accurate.
ROWS = [
    row("a", 0.90, 1.0),
    row("b", 0.95, 2.0),
    row("c", 0.93, 3.0),
    row("d", 0.96, 4.0),
    row("e", 0.97, 5.0),
    row("f", 0.99, 0.5, feasible=False),
    row("g", 0.99, 0.5, status="FAILED"),
]


def test_pareto_front_hand_checked():
    assert pareto_front(ROWS, "latency_ms") == [0, 1, 3, 4]


def test_pareto_front_on_another_cost_and_ties():
    rows = [row("x", 0.9, 1.0, params=10), row("y", 0.9, 9.0, params=10), row("z", 0.8, 1.0, params=5)]
    # On params: x and y are the same point (neither dominates), z is cheaper and less accurate.
    assert pareto_front(rows, "params") == [2, 0, 1]
    # On latency: y is dominated by x.
    assert pareto_front(rows, "latency_ms") == [0]


def test_knee_point_hand_checked():
    # Scaled over the front: cost x = (0, .25, .75, 1), accuracy y = (0, .714, .857, 1);
    # distance to the chord y = x is |y - x| / sqrt(2), largest for "b" (0.464 / sqrt(2)).
    front = pareto_front(ROWS, "latency_ms")
    assert knee_point(ROWS, front, "latency_ms") == 1


@pytest.mark.parametrize(
    "front,expected",
    [([0], 0), ([0, 4], 4)],  # fewer than three points: the most accurate
)
def test_knee_point_small_fronts(front, expected):
    assert knee_point(ROWS, front, "latency_ms") == expected


def test_knee_point_of_empty_front_is_an_error():
    with pytest.raises(SearchError):
        knee_point(ROWS, [], "latency_ms")


@pytest.mark.parametrize(
    "points,reference,expected",
    [
        # Sorted by cost: [1,2) x (0.90-0.5) + [2,5) x (0.95-0.5) + [5,6) x (0.97-0.5)
        # = 0.40 + 1.35 + 0.47 = 2.22
        ([(0.90, 1.0), (0.95, 2.0), (0.97, 5.0)], (0.5, 6.0), 2.22),
        # A dominated point (0.93, 3.0) adds nothing.
        ([(0.90, 1.0), (0.95, 2.0), (0.93, 3.0), (0.97, 5.0)], (0.5, 6.0), 2.22),
        # Points no better than the reference in both objectives add nothing.
        ([(0.4, 1.0), (0.9, 7.0)], (0.5, 6.0), 0.0),
        # One point: a single rectangle (1.0 - 0.0) x (10 - 4) = 6.
        ([(1.0, 4.0)], (0.0, 10.0), 6.0),
        ([], (0.0, 1.0), 0.0),
    ],
)
def test_hypervolume_hand_arithmetic(points, reference, expected):
    assert hypervolume_2d(points, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    "config,accuracy,costs,expected",
    [
        (ObjectiveConfig(), 0.8, {"latency_ms": 20.0}, 0.8),
        # MnasNet: 0.8 * (20 / 10) ** -0.07 = 0.8 * 0.952638 = 0.762110
        (ObjectiveConfig(mode="reward", cost_target=10.0), 0.8, {"latency_ms": 20.0}, 0.762110),
        # At the target the reward is the accuracy.
        (ObjectiveConfig(mode="reward", cost_target=10.0), 0.8, {"latency_ms": 10.0}, 0.8),
        # Cheaper than the target scores above accuracy: 0.8 * 0.5 ** -0.07 = 0.839777
        (ObjectiveConfig(mode="reward", cost_target=10.0), 0.8, {"latency_p50_ms": 5.0}, 0.839777),
        # On params with w = -0.5: 0.9 * (400 / 100) ** -0.5 = 0.45
        (
            ObjectiveConfig(mode="reward", cost_metric="params", cost_target=100, reward_exponent=-0.5),
            0.9,
            {"params": 400},
            0.45,
        ),
    ],
)
def test_objective_score(config, accuracy, costs, expected):
    assert objective_score(accuracy, costs, config) == pytest.approx(expected, rel=1e-5)


def test_pareto_score_uses_the_running_median_and_keeps_the_ranking():
    config = ObjectiveConfig(mode="pareto")
    context = [row("a", 0.9, 1.0), row("b", 0.9, 4.0), row("c", 0.9, 10.0)]  # median latency 4
    assert objective_score(0.8, {"latency_ms": 8.0}, config, context) == pytest.approx(0.8 * 2**-0.07)
    # Without context the trial's own cost is T: plain accuracy.
    assert objective_score(0.8, {"latency_ms": 8.0}, config) == pytest.approx(0.8)
    # T multiplies every score by the same factor, so it never changes which trial ranks higher.
    fast, slow = {"latency_ms": 2.0}, {"latency_ms": 6.0}
    for ctx in (context[:1], context, [row("z", 0.5, 100.0)]):
        assert objective_score(0.90, fast, config, ctx) > objective_score(0.92, slow, config, ctx)


def test_infeasible_scores_below_every_feasible_score():
    config = ObjectiveConfig(max_latency_ms=5.0)
    feasible = objective_score(0.10, {"latency_ms": 5.0}, config)
    near = objective_score(0.99, {"latency_ms": 6.0}, config)
    far = objective_score(0.99, {"latency_ms": 60.0}, config)
    assert feasible == pytest.approx(0.10)
    assert far < near < 0 < feasible
    # 0.99 * (5 / 6) - 1
    assert near == pytest.approx(0.99 * 5 / 6 - 1)


@pytest.mark.parametrize("costs", [{}, {"latency_ms": float("nan")}, {"latency_ms": 0.0}])
def test_reward_needs_a_positive_cost(costs):
    with pytest.raises(SearchError, match="latency_ms"):
        objective_score(0.9, costs, ObjectiveConfig(mode="reward", cost_target=1.0))


@pytest.mark.parametrize(
    "costs,config,expected",
    [
        ({"params": 120345}, ObjectiveConfig(max_params=100000), ["params 120345 > max_params 100000"]),
        ({"params": 100000}, ObjectiveConfig(max_params=100000), []),
        (
            {"params": 5, "flops": 2_000_000, "size_kb": 12.5, "latency_ms": 3.25},
            ObjectiveConfig(max_params=10, max_flops=1_000_000, max_size_kb=10.0, max_latency_ms=3.0),
            [
                "flops 2000000 > max_flops 1000000",
                "size_kb 12.5 > max_size_kb 10",
                "latency_ms 3.25 > max_latency_ms 3",
            ],
        ),
        ({"latency_p50_ms": 2.0}, ObjectiveConfig(max_latency_ms=3.0), []),
        (
            {"latency_p50_ms": float("nan")},
            ObjectiveConfig(max_latency_ms=3.0),
            ["latency_ms unknown, cannot check max_latency_ms 3"],
        ),
        ({"params": 10**9}, ObjectiveConfig(), []),
    ],
)
def test_constraint_violations(costs, config, expected):
    assert constraint_violations(costs, config) == expected


def test_cheap_constraints_keep_only_what_needs_no_training():
    config = ObjectiveConfig(
        mode="reward", cost_target=2.0, max_params=10, max_flops=20, max_latency_ms=1.0, max_size_kb=1.0
    )
    cheap = config.cheap_constraints()
    assert (cheap.max_params, cheap.max_flops, cheap.max_latency_ms, cheap.max_size_kb) == (
        10,
        20,
        None,
        None,
    )
    assert constraint_violations({"params": 11, "flops": 5}, cheap) == ["params 11 > max_params 10"]
    assert config.has_cheap_constraints and not ObjectiveConfig(max_latency_ms=1.0).has_cheap_constraints


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "best"},
        {"cost_metric": "energy"},
        {"selection": "random"},
        {"mode": "reward"},
        {"mode": "reward", "cost_target": 0.0},
        {"max_params": 0},
        {"max_latency_ms": -1.0},
    ],
)
def test_invalid_configs_are_rejected(kwargs):
    with pytest.raises(SearchError):
        ObjectiveConfig(**kwargs)


@pytest.mark.parametrize(
    "config,expected",
    [
        (ObjectiveConfig(), 4),  # most accurate feasible completed ("f", "g" excluded)
        (ObjectiveConfig(selection="knee"), 1),
        (ObjectiveConfig(max_latency_ms=4.5), 3),  # "e" is too slow for this config
        (ObjectiveConfig(max_latency_ms=4.5, selection="knee"), 1),
        (ObjectiveConfig(max_params=500), None),  # every trial has 1000 params
    ],
)
def test_select_trial(config, expected):
    if expected is None:
        with pytest.raises(SearchError, match="constraints"):
            select_trial(ROWS, config)
    else:
        assert select_trial(ROWS, config) == expected


def test_most_accurate_breaks_ties_by_lower_cost():
    rows = [row("slow", 0.9, 9.0), row("fast", 0.9, 1.0), row("worse", 0.8, 0.5)]
    assert select_trial(rows, ObjectiveConfig()) == 1


def test_plot_and_markdown(tmp_path):
    front = pareto_front(ROWS, "latency_ms")
    path = tmp_path / "plots" / "pareto.png"
    plot_pareto(ROWS, front, 1, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    text = pareto_markdown(ROWS, front, 1, "latency_ms")
    assert "**Trials:** 7 (6 completed, 5 feasible)" in text
    assert "**Pareto front:** 4 trials" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2] in "abcde"]
    assert [line.split(" | ")[0][2:] for line in table] == ["a", "b", "d", "e"]
    assert "**yes**" in table[1] and all("**yes**" not in line for line in table[:1] + table[2:])
    # Hypervolume vs (0, slowest completed latency 5): 1*0.90 + 2*0.95 + 1*0.96 = 3.76
    assert "3.76" in text and not math.isnan(float(text.split("): ")[1].split()[0]))
