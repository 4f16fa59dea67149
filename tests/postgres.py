"""A throw-away PostgreSQL 15 cluster on a free loopback port, for tests.

Usage (a plain module: pytest puts ``tests/`` on ``sys.path``)::

    from postgres import postgres_unavailable_reason, running_postgres

    reason = postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with running_postgres() as dsn:        # postgresql://<user>@127.0.0.1:<port>/mlflow
        ...

``initdb`` refuses to run as root, so as root the cluster is created and run as the
``postgres`` system user (``runuser``) in a fresh directory owned by that user; any other
user runs the binaries as itself. ``trust`` authentication on loopback only. Everything
is removed at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path(os.environ.get("NASFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"


def postgres_unavailable_reason() -> str | None:
    """Why a throw-away cluster cannot be started here, or ``None`` when it can."""
    missing = [name for name in ("initdb", "pg_ctl", "createdb") if not (PG_BIN / name).is_file()]
    if missing:
        return f"PostgreSQL server binaries {', '.join(missing)} not found in {PG_BIN}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no {PG_USER!r} system user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is not installed"
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1's default driver for postgresql:// URIs)
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]==3.3.9')"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_user() -> str:
    """Who owns the cluster: ``postgres`` when we are root (initdb refuses root), else ourselves."""
    return PG_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def _as_postgres(*command: str | Path, timeout_s: float = 120.0) -> None:
    prefix = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [*prefix, *map(str, command)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({result.returncode}): {result.stderr or result.stdout}"
        )


@contextmanager
def running_postgres(base_dir: Path | str | None = None, *, dbname: str = "mlflow") -> Iterator[str]:
    """Create, start and finally stop and delete a PostgreSQL cluster.

    Args:
        base_dir: Where to create the cluster's folder; it must be traversable by the
            ``postgres`` user, so the default is the system temp dir (pytest's
            ``tmp_path`` is private to root and is not used for that reason).
        dbname: Database created for the caller.

    Yields:
        A SQLAlchemy/libpq URI such as ``postgresql://postgres@127.0.0.1:5433/mlflow``.
    """
    reason = postgres_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix="nasflow-pg-", dir=base_dir))
    user = _cluster_user()
    entry = pwd.getpwnam(user)
    if os.geteuid() == 0:
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data, log = root / "data", root / "postgres.log"
    port = _free_port()
    started = False
    try:
        _as_postgres(
            PG_BIN / "initdb", "-D", data, "-U", user, "--auth=trust", "-E", "UTF8", "--locale=C", "-N"
        )
        options = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        try:
            _as_postgres(PG_BIN / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start")
        except RuntimeError as error:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{error}\n{tail}") from error
        started = True
        _as_postgres(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, dbname)
        yield f"postgresql://{user}@127.0.0.1:{port}/{dbname}"
    finally:
        if started:
            _as_postgres(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=False)
