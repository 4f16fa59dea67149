"""The real search step on the prepared ``digits`` folder with a tiny budget, and its processes, for cluster tests."""

from __future__ import annotations

import os
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


def search_processes(under: Path) -> list[int]:
    """PIDs of live chief/worker processes started for this test (command line or cwd under ``under``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "nasflow.cluster.worker" in cmdline and state != "Z" and (str(under) in cmdline or cwd.startswith(str(under))):
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
