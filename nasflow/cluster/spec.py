"""What a chief or worker process of a distributed search is given, as one JSON file."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


#: Exit code of a worker that stopped because it reached its trial quota.
RECYCLE_EXIT_CODE = 75

#: How long a worker waits for its chief to answer one call, in seconds (default 600).
ORACLE_TIMEOUT_ENV = "NASFLOW_ORACLE_TIMEOUT_S"


@dataclass
class WorkerSpec:
    """Everything a chief or worker process needs, as JSON."""

    dataset_dir: str
    space_config: dict[str, Any]
    space_source: str
    settings: dict[str, Any]
    objective: dict[str, Any]
    parent_run_id: str
    tracking_uri: str
    work_dir: str
    overwrite: bool
    #: The chief copies the search state to the parent run's artifacts after every trial
    #: (:class:`nasflow.search.state.MlflowStateCopy`), so that a retried step resumes.
    state_copy: bool = False

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> WorkerSpec:
        """Read a spec written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))
