"""What shapes one search apart from data and space, and the names trials are recorded under."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nasflow.errors import SearchError
from nasflow.search.confirmation import DEFAULT_CONFIRM_BEST, confirmation_count
from nasflow.search.strategies import check_strategy

logger = logging.getLogger(__name__)


PROJECT_NAME = "search"


#: The strategy the benchmarks chose: ahead of ``tpe`` in 7 of the 9 NAS-Bench-201 cells (60 seeds) of
#: bench/results/tabular_nas.md and on real training (bench/results/search_efficiency_2026-12-03.md).
DEFAULT_STRATEGY = "tpe_local"


OBJECTIVE_NAME = "score"


#: Trial statuses written to the ``nasflow.trial_status`` tag of each nested run.
COMPLETED, FAILED, INVALID, INFEASIBLE = "COMPLETED", "FAILED", "INVALID", "INFEASIBLE"
#: Objective score of an INVALID trial (an architecture that cannot be built for the input):
#: as low as an infeasible one's, so every strategy learns to avoid the region.
INVALID_SCORE = -1.0
#: A trial the early-stopping rule stopped before its last epoch (see nasflow.search.early_stopping).
PRUNED = "PRUNED"

#: ``warm_start`` when not given: "auto" reads earlier runs, a run id names one (nasflow.search.warm_start).
DEFAULT_WARM_START = "none"

#: ``measure_costs`` choices: what the objective and constraints need (plus a final
#: measurement of the chosen and Pareto candidates), every cost, or params and FLOPs only.
MEASURE_COSTS: tuple[str, ...] = ("auto", "all", "none")


@dataclass(frozen=True)
class SearchSettings:
    """Everything that shapes one search, apart from data and space."""

    strategy: str = DEFAULT_STRATEGY
    max_trials: int = 8
    epochs: int = 3
    seed: int = 42
    max_search_minutes: float = 0.0
    max_consecutive_failed_trials: int = 5
    batch_size: int | None = None
    #: Which costs each trial measures: see :data:`MEASURE_COSTS`.
    measure_costs: str = "auto"
    #: Stop poor trials early: see :data:`nasflow.search.early_stopping.EARLY_STOPPING`.
    early_stopping: str = "none"
    #: Trials at the end of the budget that train the leading architectures again (the pick
    #: is by their mean): ``auto``, ``none`` or a count (see :mod:`nasflow.search.confirmation`).
    confirm_best: str = DEFAULT_CONFIRM_BEST
    #: Trials of earlier runs as ``(hyperparameter values, score)`` pairs, best first
    #: (warm start, see :mod:`nasflow.search.warm_start`); not trials of this search.
    prior_observations: tuple = ()
    #: Worker processes pulling trials from one chief oracle (0: trials run in this process).
    num_workers: int = 0
    #: Start a fresh worker process after this many trials (0: never), to keep the
    #: per-trial overhead flat despite Keras' leak across builds.
    trials_per_process: int = 0

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> SearchSettings:
        """The settings named in a mapping of pipeline parameters (others are ignored)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in parameters.items() if name in names})

    def __post_init__(self) -> None:
        """Refuse a bad setting where it is made: ``SearchError`` naming the first one."""
        check_strategy(self.strategy)
        if self.max_trials < 1:
            raise SearchError(f"max_trials must be at least 1, got {self.max_trials}")
        if self.epochs < 1:
            raise SearchError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_search_minutes < 0:
            raise SearchError(f"max_search_minutes must be >= 0, got {self.max_search_minutes}")
        if self.num_workers < 0 or self.trials_per_process < 0:
            raise SearchError("num_workers and trials_per_process must be >= 0")
        if self.measure_costs not in MEASURE_COSTS:
            raise SearchError(f"measure_costs must be one of {', '.join(MEASURE_COSTS)}, got {self.measure_costs!r}")
        confirmation_count(self.confirm_best, self.max_trials)  # refuses a bad value
        from nasflow.search.early_stopping import EARLY_STOPPING

        if self.early_stopping not in EARLY_STOPPING:
            raise SearchError(
                f"early_stopping must be one of {', '.join(EARLY_STOPPING)}, got {self.early_stopping!r}"
            )

    @property
    def uses_worker_processes(self) -> bool:
        """Whether trials run in worker processes rather than in this one."""
        return self.num_workers > 0 or self.trials_per_process > 0
