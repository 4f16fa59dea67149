"""Entry point of a chief or worker process of a distributed/recycled search.

    python -m nasflow.cluster.worker --spec work_dir/worker_spec.json --role worker [--trials-per-process N]
    python -m nasflow.cluster.worker --spec-url http://CHIEF:8001 --role worker --supervise   # in a pod

Keras Tuner reads the role from ``KERASTUNER_TUNER_ID`` (``chief`` or ``tuner<k>``).
A worker that reaches its trial quota exits with :data:`RECYCLE_EXIT_CODE` and its
supervisor starts a fresh process under the same tuner id. A worker pod shares no files
with the chief, so it fetches the spec and the dataset from the chief first
(:mod:`nasflow.cluster.bootstrap`), once per pod.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from nasflow.cluster.spec import ORACLE_TIMEOUT_ENV, RECYCLE_EXIT_CODE, WorkerSpec
from nasflow.errors import NasflowError


def _run(spec: WorkerSpec, role: str, trials_per_process: int) -> int:
    import os

    from nasflow import tracking
    from nasflow.data import load_prepared
    from nasflow.search.objectives import ObjectiveConfig
    from nasflow.search.settings import PROJECT_NAME, SearchSettings
    from nasflow.search.tuner import run_search
    from nasflow.spaces.schema import parse_search_space

    print(f"nasflow-worker-start role={role} tuner={os.environ.get('KERASTUNER_TUNER_ID')}", flush=True)
    data = load_prepared(spec.dataset_dir)
    space = parse_search_space(spec.space_config, source=spec.space_source)
    settings = SearchSettings(**spec.settings)
    objective = ObjectiveConfig(**spec.objective)
    parent = tracking.open_parent(spec.tracking_uri, spec.parent_run_id)
    state_sync = _state_copier(parent, Path(spec.work_dir) / PROJECT_NAME) if role == "chief" and spec.state_copy else None
    if role == "worker":
        # A recycled worker starts clean: its previous process's tuner file would make
        # Keras Tuner reload a local copy of the oracle it does not own.
        tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
        (Path(spec.work_dir) / PROJECT_NAME / f"{tuner_id}.json").unlink(missing_ok=True)
        _limit_oracle_wait()
    try:
        tuner = run_search(
            data,
            space,
            settings,
            objective,
            parent=parent,
            work_dir=spec.work_dir,
            overwrite=spec.overwrite if role == "chief" else False,
            trials_this_process=trials_per_process if role == "worker" else 0,
            state_sync=state_sync,
        )
    except Exception as error:
        if role == "worker" and _is_deadline(error):
            address = f"{os.environ.get('KERASTUNER_ORACLE_IP')}:{os.environ.get('KERASTUNER_ORACLE_PORT')}"
            print(f"nasflow: the chief oracle at {address} did not answer within {_oracle_wait_s():g} s", flush=True)
            return ORACLE_GONE_EXIT_CODE
        raise
    return RECYCLE_EXIT_CODE if getattr(tuner, "nas_quota_reached", False) else 0


def _state_copier(parent, project_dir: Path):
    """The chief's after-trial hook: copy the changed state files to the parent run, one call at a time.

    The chief's oracle ends trials from several gRPC threads; unserialized, an older
    ``oracle.json`` could be uploaded after a newer one.
    """
    import threading

    from nasflow.search.state import MlflowStateCopy

    copy = MlflowStateCopy(parent, project_dir)
    lock = threading.Lock()

    def sync() -> list[str]:
        with lock:
            return copy.sync()

    return sync


#: Exit code of a worker whose chief stopped answering.
ORACLE_GONE_EXIT_CODE = 3


def _oracle_wait_s() -> float:
    import os

    return float(os.environ.get(ORACLE_TIMEOUT_ENV) or 600)


def _limit_oracle_wait() -> None:
    """Fail a worker whose chief has gone silent, instead of letting it wait an hour per call.

    Keras Tuner's client waits up to 60 min on every call (``oracle_client.TIMEOUT``) because
    its workers may start before the chief serves. nasflow starts workers only once the
    oracle answers, so a chief silent for ``NASFLOW_ORACLE_TIMEOUT_S`` (600 s) is gone: the
    worker exits, and on a cluster its Job fails instead of holding nodes for hours.
    """
    from keras_tuner.src.distribute import oracle_client

    oracle_client.TIMEOUT = _oracle_wait_s()


def _is_deadline(error: BaseException) -> bool:
    import grpc

    for _ in range(10):  # the exception and what it was raised from
        if isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return True
        error = error.__cause__ or error.__context__
        if error is None:
            break
    return False


def _supervise(spec_path: str, role: str, trials_per_process: int) -> int:
    """Keep starting the worker while it exits for recycling (used inside a worker pod)."""
    import os

    from nasflow.cluster.processes import PARENT_PID_ENV

    child = [sys.executable, "-m", "nasflow.cluster.worker", "--spec", spec_path, "--role", role]
    if trials_per_process:
        child += ["--trials-per-process", str(trials_per_process)]
    env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
    while True:
        code = subprocess.call(child, env=env)
        if code != RECYCLE_EXIT_CODE:
            return code


def _local_spec_from_chief(url: str, timeout_s: float) -> str:
    """Fetch the spec and dataset from the chief into this pod's /tmp; return the local spec path."""
    import os
    import tempfile

    from nasflow.cluster.bootstrap import fetch_worker_spec

    local_dir = Path(tempfile.gettempdir()) / f"nasflow-{os.environ.get('KERASTUNER_TUNER_ID', 'worker')}"
    spec = fetch_worker_spec(url, local_dir, timeout_s=timeout_s)
    print(f"nasflow-worker-bootstrap from={url} dataset={spec.dataset_dir}", flush=True)
    return str(spec.save(local_dir / "worker_spec.json"))


def main(argv: list[str] | None = None) -> int:
    """Run one chief or worker process."""
    from nasflow.cluster.processes import die_with_parent

    die_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="nasflow.cluster.worker")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="worker spec JSON on a shared filesystem")
    source.add_argument("--spec-url", help="the chief's bootstrap address, http://HOST:PORT")
    parser.add_argument(
        "--bootstrap-timeout", type=float, default=300.0, help="seconds to keep trying to reach the chief"
    )
    parser.add_argument("--role", choices=("chief", "worker"), required=True)
    parser.add_argument("--trials-per-process", type=int, default=0)
    parser.add_argument("--supervise", action="store_true")
    args = parser.parse_args(argv)
    try:
        spec_path = _local_spec_from_chief(args.spec_url, args.bootstrap_timeout) if args.spec_url else args.spec
    except NasflowError as error:
        print(f"nasflow: {error}", file=sys.stderr, flush=True)
        return 2
    if args.supervise:
        return _supervise(spec_path, args.role, args.trials_per_process)
    return _run(WorkerSpec.load(spec_path), args.role, args.trials_per_process)


if __name__ == "__main__":
    sys.exit(main())
