"""What shapes one search apart from data and space, and the names trials are recorded under."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nasflow.errors import SearchError
from nasflow.search.strategies import check_strategy

logger = logging.getLogger(__name__)


PROJECT_NAME = "search"


#: The strategy bench/tabular_nas.py found best (bench/results/tabular_nas.md).
DEFAULT_STRATEGY = "tpe"


OBJECTIVE_NAME = "score"


#: Trial statuses written to the ``nasflow.trial_status`` tag of each nested run.
COMPLETED, FAILED, INVALID, INFEASIBLE = "COMPLETED", "FAILED", "INVALID", "INFEASIBLE"
#: Objective score of an INVALID trial (an architecture that cannot be built for the input):
#: as low as an infeasible one's, so every strategy learns to avoid the region.
INVALID_SCORE = -1.0


@dataclass(frozen=True)
class SearchSettings:
    """Everything that shapes one search, apart from data and space."""

    strategy: str = DEFAULT_STRATEGY
    max_trials: int = 10
    epochs: int = 3
    seed: int = 42
    max_search_minutes: float = 0.0
    max_consecutive_failed_trials: int = 5
    batch_size: int | None = None
    measure_latency: bool = True
    #: Worker processes pulling trials from one chief oracle (0: trials run in this process).
    num_workers: int = 0
    #: Start a fresh worker process after this many trials (0: never), to keep the
    #: per-trial overhead flat despite Keras' leak across builds.
    trials_per_process: int = 0

    def validate(self) -> None:
        """Raise ``SearchError`` naming the first bad setting."""
        check_strategy(self.strategy)
        if self.max_trials < 1:
            raise SearchError(f"max_trials must be at least 1, got {self.max_trials}")
        if self.epochs < 1:
            raise SearchError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_search_minutes < 0:
            raise SearchError(f"max_search_minutes must be >= 0, got {self.max_search_minutes}")
        if self.num_workers < 0 or self.trials_per_process < 0:
            raise SearchError("num_workers and trials_per_process must be >= 0")

    @property
    def uses_worker_processes(self) -> bool:
        """Whether trials run in worker processes rather than in this one."""
        return self.num_workers > 0 or self.trials_per_process > 0
