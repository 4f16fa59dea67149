"""The real search step on the prepared ``digits`` folder with a tiny budget, for cluster tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_search_step(tmp_path: Path, digits_dir: str, uri: str, parent_id: str, **overrides: Any) -> dict[str, float]:
    """Run ``search_step`` (cnn space, random, 1 epoch, state under ``tmp_path``); returns its metrics."""
    from nasflow.steps.search import search_step

    out = tmp_path / "out"
    settings: dict[str, Any] = {"strategy": "random", "max_trials": 3, "state_dir": str(tmp_path / "state")}
    settings.update(overrides)
    return search_step(
        digits_dir,
        parent_run_id=parent_id,
        tracking_uri=uri,
        search_space="cnn",
        epochs=1,
        seed=5,
        best_hyperparameters_path=str(out / "best.json"),
        trial_table_path=str(out / "trials.csv"),
        report_path=str(out / "report.md"),
        **settings,
    )
