"""Empty MLflow SQLite stores for tests, made in milliseconds instead of seconds.

A new SQLite tracking store runs MLflow's whole chain of schema migrations on first use
(about 6 s on this 2-core machine, more under load), and dozens of tests each need a fresh
store. The migrated, empty database is made once per test process and copied: MLflow sees an
ordinary store at the head of its schema, exactly as if it had made it itself. The default
experiment ("0") of the copy points at the template's folder, which nasflow never uses: its
experiments get an artifact folder beside their own database
(``nasflow.tracking.default_artifact_location``).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

_template: Path | None = None


def _migrated_template() -> Path:
    global _template
    if _template is None:
        from mlflow.tracking import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="nasflow-mlflow-template-")) / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # runs the migrations
        _template = path
    return _template


def fresh_sqlite_uri(folder: Path, name: str = "mlflow.db") -> str:
    """The URI of a new, empty, fully migrated MLflow SQLite store at ``folder / name``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists():
        raise FileExistsError(f"{target} exists: a fresh store must not overwrite one")
    # SQLite's backup, not a file copy: a store nasflow opened is in WAL mode, and the
    # template's last commits may still sit in its -wal file (nasflow.tracking.make_client).
    source, copy = sqlite3.connect(_migrated_template()), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return f"sqlite:///{target}"
