"""Entry point of a chief or worker process of a distributed/recycled search.

    python -m nasflow.search_worker --spec work_dir/worker_spec.json --role worker [--trials-per-process N]

Keras Tuner reads the role from ``KERASTUNER_TUNER_ID`` (``chief`` or ``tuner<k>``).
A worker that reaches its trial quota exits with :data:`RECYCLE_EXIT_CODE` and its
supervisor starts a fresh process under the same tuner id.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from nasflow.distributed import RECYCLE_EXIT_CODE, WorkerSpec


def _run(spec: WorkerSpec, role: str, trials_per_process: int) -> int:
    import os

    from nasflow import tracking
    from nasflow.data import load_prepared
    from nasflow.objectives import ObjectiveConfig
    from nasflow.search import PROJECT_NAME, SearchSettings, run_search
    from nasflow.search_space import parse_search_space

    print(f"nasflow-worker-start role={role} tuner={os.environ.get('KERASTUNER_TUNER_ID')}", flush=True)
    data = load_prepared(spec.dataset_dir)
    space = parse_search_space(spec.space_config, source=spec.space_source)
    settings = SearchSettings(**spec.settings)
    objective = ObjectiveConfig(**spec.objective)
    parent = tracking.open_parent(spec.tracking_uri, spec.parent_run_id)
    if role == "worker":
        # A recycled worker starts clean: its previous process's tuner file would make
        # Keras Tuner reload a local copy of the oracle it does not own.
        tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
        (Path(spec.work_dir) / PROJECT_NAME / f"{tuner_id}.json").unlink(missing_ok=True)
    tuner = run_search(
        data,
        space,
        settings,
        objective,
        parent=parent,
        work_dir=spec.work_dir,
        overwrite=spec.overwrite if role == "chief" else False,
        in_process=True,
        trials_this_process=trials_per_process if role == "worker" else 0,
    )
    return RECYCLE_EXIT_CODE if getattr(tuner, "nas_quota_reached", False) else 0


def _supervise(argv: list[str]) -> int:
    """Keep starting the worker while it exits for recycling (used inside a worker pod)."""
    child = [sys.executable, "-m", "nasflow.search_worker", *[a for a in argv if a != "--supervise"]]
    while True:
        code = subprocess.call(child)
        if code != RECYCLE_EXIT_CODE:
            return code


def main(argv: list[str] | None = None) -> int:
    """Run one chief or worker process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="nasflow.search_worker")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--role", choices=("chief", "worker"), required=True)
    parser.add_argument("--trials-per-process", type=int, default=0)
    parser.add_argument("--supervise", action="store_true")
    args = parser.parse_args(argv)
    if args.supervise:
        return _supervise(argv)
    return _run(WorkerSpec.load(args.spec), args.role, args.trials_per_process)


if __name__ == "__main__":
    sys.exit(main())
