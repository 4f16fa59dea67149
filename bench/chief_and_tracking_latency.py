"""What a distributed search serializes per trial: the chief oracle, MLflow, the data load.

    python bench/chief_and_tracking_latency.py --out bench/results

No model is trained. Three measurements, each the input of ``docs/scaling.md``:

* **oracle**: Keras Tuner's chief server exactly as ``oracle_chief.start_server`` builds
  it (``grpc.server(ThreadPoolExecutor(max_workers=1))`` around ``OracleServicer``),
  with nasflow's oracle for the ``cnn`` space (``make_oracle``), in this process. K
  client processes (``OracleClient``, the class a worker uses) run the worker's per-trial
  RPC sequence with no training in between: CreateTrial, GetTrial, UpdateTrial,
  EndTrial. Reported: client round-trip per call, the chief's handler time per call
  (the part that serializes) and the chief's saturated throughput in trials/s. For
  ``bayesian`` the CreateTrial handler time is also reported against the number of
  finished trials (the GP refit grows with them).
* **mlflow**: a local ``mlflow server`` on loopback over SQLite with one worker (what
  ``nasflow.cluster.local.tracking_for_workers`` starts), and K client processes each
  replaying ``run_trial``'s tracking with nasflow's own ``TrialRecord`` (open: search for a
  stale attempt, create, params; one ``add_epoch`` per epoch; finish: one batch, end). Run
  against a checkout from before ``TrialRecord`` (``PYTHONPATH=<that checkout>``), it replays
  the calls of that time instead: ``close_running_attempts`` (get_run + search_runs),
  ``start_child_run`` (get_run + create_run), ``log_params``, one ``log_metrics`` per epoch,
  ``set_tags`` (latency runtime), final ``log_metrics``, ``set_tags``, ``terminate``.
* **data**: size of ``splits.npz`` and time of ``load_prepared`` for ``digits`` and
  ``mnist-5k``.

The machine is shared: 1-minute load averages are recorded at the start and end of
each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RPCS = ("CreateTrial", "GetTrial", "UpdateTrial", "EndTrial")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    return {
        "n": len(values),
        "mean_ms": round(1000 * statistics.fmean(values), 3),
        "p50_ms": round(1000 * values[len(values) // 2], 3),
        "p95_ms": round(1000 * values[min(len(values) - 1, int(0.95 * len(values)))], 3),
    }


# --------------------------------------------------------------------------- oracle


def _declared_space():
    import keras_tuner

    from nasflow.spaces.schema import load_search_space, resolve_search_space

    space = load_search_space(resolve_search_space("cnn", "image"))
    hp = keras_tuner.HyperParameters()
    space.declare(hp)
    return hp


def _start_chief(strategy: str, project_dir: str, max_trials: int):
    """The chief's gRPC server, built as keras_tuner's oracle_chief does, with timed handlers."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    from nasflow.search.strategies import make_oracle

    oracle = make_oracle(strategy, max_trials, 3, 2027, _declared_space())
    oracle._set_project_dir(project_dir, "search")
    servicer = OracleServicer(oracle)
    oracle.verbose = 0
    handler_s: dict[str, list[tuple[int, float]]] = {name: [] for name in RPCS}
    handler_cpu_s: dict[str, list[float]] = {name: [] for name in RPCS}

    def timed(name):
        method = getattr(servicer, name)

        def call(request, context):
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                return method(request, context)
            finally:
                handler_s[name].append((len(oracle.end_order), time.perf_counter() - started))
                handler_cpu_s[name].append(time.thread_time() - cpu_started)

        return call

    for name in RPCS:
        setattr(servicer, name, timed(name))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, oracle, handler_s, handler_cpu_s


def oracle_client(port: int, tuner_id: str, trials: int, seconds: float) -> None:
    """A worker's RPC loop with no training; prints its round-trip times as JSON."""
    import random

    import keras_tuner
    from keras_tuner.src.distribute.oracle_client import OracleClient
    from keras_tuner.src.engine import trial as trial_module

    os.environ.update(
        KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port), KERASTUNER_TUNER_ID=tuner_id
    )
    stand_in = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("score", "max"), max_trials=1
    )
    client = OracleClient(stand_in)
    client.get_space()  # connect before timing
    rng = random.Random(tuner_id)
    round_trip = {name: [] for name in RPCS}
    done = 0
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    while done < trials and time.monotonic() < deadline:
        t0 = time.perf_counter()
        trial = client.create_trial(tuner_id)
        t1 = time.perf_counter()
        if trial.status == trial_module.TrialStatus.STOPPED:
            break
        if trial.status == trial_module.TrialStatus.IDLE:
            continue
        client.get_trial(trial.trial_id)
        t2 = time.perf_counter()
        client.update_trial(trial.trial_id, {"score": rng.random()}, step=0)
        t3 = time.perf_counter()
        trial.status = trial_module.TrialStatus.COMPLETED
        client.end_trial(trial)
        t4 = time.perf_counter()
        for name, seconds_taken in zip(RPCS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            round_trip[name].append(seconds_taken)
        done += 1
    print(json.dumps({"trials": done, "wall_s": time.monotonic() - started, "round_trip_s": round_trip}))


def _run_clients(mode: str, count: int, args: list[str]) -> list[dict]:
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, mode, *args, f"tuner{k}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1"),
        )
        for k in range(count)
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=900)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def measure_oracle(strategy: str, clients: int, trials_per_client: int, seconds: float) -> dict:
    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="nasflow-chief-") as folder:
        server, port, oracle, handler_s, handler_cpu_s = _start_chief(strategy, folder, max_trials=100_000)
        try:
            results = _run_clients(
                "--oracle-client", clients, [str(port), str(trials_per_client), str(seconds)]
            )
        finally:
            server.stop(grace=1)
        oracle_json_kb = round(os.path.getsize(Path(folder) / "search" / "oracle.json") / 1024, 1)
    trials = sum(r["trials"] for r in results)
    wall = max(r["wall_s"] for r in results)
    per_call_handler = {name: _summary([s for _, s in handler_s[name]]) for name in RPCS}
    serialized = sum(statistics.fmean(s for _, s in handler_s[name]) for name in RPCS if handler_s[name])
    row = {
        "strategy": strategy,
        "clients": clients,
        "trials": trials,
        "wall_s": round(wall, 2),
        "trials_per_s": round(trials / wall, 1),
        "round_trip": {
            name: _summary([s for r in results for s in r["round_trip_s"][name]]) for name in RPCS
        },
        "chief_handler": per_call_handler,
        "chief_handler_ms_per_trial": round(1000 * serialized, 3),
        # CPU time of the handler thread: what the chief would need on an idle core.
        "chief_handler_cpu_ms_per_trial": round(
            1000 * sum(statistics.fmean(handler_cpu_s[name]) for name in RPCS if handler_cpu_s[name]), 3
        ),
        "oracle_json_kb_at_end": oracle_json_kb,
        "load_1min_start": load_start,
        "load_1min_end": _load(),
    }
    if strategy == "bayesian":
        # CreateTrial handler time against the number of finished trials.
        buckets: dict[int, list[float]] = {}
        for finished, seconds_taken in handler_s["CreateTrial"]:
            buckets.setdefault(finished // 50 * 50, []).append(seconds_taken)
        row["create_trial_ms_by_finished_trials"] = {
            f"{start}-{start + 49}": round(1000 * statistics.fmean(v), 1)
            for start, v in sorted(buckets.items())
        }
    return row


# --------------------------------------------------------------------------- mlflow


def _server_cpu_s(port: int) -> float:
    """CPU seconds (user + system) of the ``mlflow server`` on ``port`` and its process group."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (cmdline, int(fields[2]), int(fields[11]) + int(fields[12]))
    leaders = {
        pid for pid, (cmdline, _, _) in stats.items()
        if b"server" in cmdline and b"mlflow" in b" ".join(cmdline) and str(port).encode() in cmdline
    }  # fmt: skip
    groups = {stats[pid][1] for pid in leaders}
    return sum(cpu for _, pgid, cpu in stats.values() if pgid in groups) / ticks


FINAL_METRICS = (
    "final_val_accuracy", "best_val_accuracy", "final_val_loss", "score", "params", "flops", "size_bytes",
    "latency_p50_ms", "latency_p95_ms", "fit_seconds", "epochs_trained",
)  # fmt: skip


def _legacy_trial(parent, trial_id, tuner_id, values, epochs, rng, timed) -> None:
    """run_trial's calls before TrialRecord (2026-11-22): 9 + one request per epoch."""
    from nasflow import tracking
    from nasflow.search.records import close_running_attempts

    timed("close_running_attempts (get_run+search_runs)", lambda: close_running_attempts(parent, trial_id))
    tags = {
        tracking.ROLE_TAG: "trial", "nasflow.trial_id": trial_id, "nasflow.strategy": "random",
        "nasflow.tuner_id": tuner_id, "nasflow.architecture": "conv32-conv64-gap-dense64",
        "nasflow.trial_status": "RUNNING",
    }  # fmt: skip
    run = timed(
        "start_child_run (get_run+create_run)",
        lambda: tracking.start_child_run(parent, run_name=f"trial-{trial_id}", tags=tags),
    )
    timed("log_params", lambda: run.log_params(values))
    for epoch in range(epochs):
        logs = {name: rng.random() for name in ("loss", "accuracy", "val_loss", "val_accuracy")}
        timed("log_metrics (epoch)", lambda logs=logs, epoch=epoch: run.log_metrics(logs, step=epoch))
    timed("set_tags (latency runtime)", lambda: run.set_tags({"nasflow.latency_runtime": "litert"}))
    final = {name: rng.random() for name in (*FINAL_METRICS, "duration_s")}
    timed("log_metrics (final)", lambda: run.log_metrics(final))
    timed("set_tags (status)", lambda: run.set_tags({"nasflow.trial_status": "COMPLETED", "nasflow.feasible": "true"}))
    timed("terminate", lambda: run.terminate("FINISHED"))


def mlflow_client(uri: str, parent_id: str, trials: int, epochs: int, tuner_id: str) -> None:
    """Replays search.py's MLflow calls for ``trials`` trials; prints per-call times as JSON."""
    import random

    from nasflow import tracking

    try:
        from nasflow.search.records import TrialRecord
    except ImportError:  # measuring a checkout from before TrialRecord
        TrialRecord = None  # noqa: N806

    parent = tracking.RunHandle(tracking.make_client(uri), parent_id)
    rng = random.Random(tuner_id)
    # The cnn space's 14 hyperparameters, as run_trial logs them.
    values = {f"hp_{k}": rng.choice([16, 32, 64, "relu", "max", 0.25]) for k in range(14)}
    calls: dict[str, list[float]] = {}
    per_trial: list[float] = []

    def timed(name, call):
        started = time.perf_counter()
        result = call()
        calls.setdefault(name, []).append(time.perf_counter() - started)
        return result

    started = time.monotonic()
    for number in range(trials):
        trial_start = time.perf_counter()
        trial_id = f"{tuner_id}-{number:04d}"
        if TrialRecord is None:  # the code before TrialRecord: one request per call below
            _legacy_trial(parent, trial_id, tuner_id, values, epochs, rng, timed)
        else:
            record = timed(
                "open (search_runs + create_run + params)",
                lambda trial_id=trial_id: TrialRecord.open(
                    parent,
                    trial_id,
                    tags={
                        "nasflow.strategy": "random",
                        "nasflow.tuner_id": tuner_id,
                        "nasflow.architecture": "conv32-conv64-gap-dense64",
                    },
                    params=values,
                ),
            )
            for epoch in range(epochs):
                logs = {name: rng.random() for name in ("loss", "accuracy", "val_loss", "val_accuracy")}
                timed("add_epoch", lambda record=record, logs=logs, epoch=epoch: record.add_epoch(epoch, logs))
            record.tag({"nasflow.latency_runtime": "litert"})
            final = {name: rng.random() for name in FINAL_METRICS}
            timed(
                "finish (one batch + end)",
                lambda record=record, final=final: record.finish("COMPLETED", final, duration_s=1.0, feasible=True),
            )
        per_trial.append(time.perf_counter() - trial_start)
    print(
        json.dumps(
            {"trials": trials, "wall_s": time.monotonic() - started, "calls": calls, "per_trial": per_trial}
        )
    )


def _calls_per_trial(epochs: int) -> int:
    try:
        from nasflow.search.records import TrialRecord  # noqa: F401
    except ImportError:
        return 9 + epochs
    return 5  # search_runs, create_run, params, one batch, end (trials shorter than EPOCH_FLUSH_S)


def measure_mlflow(clients: int, trials_per_client: int, epochs: int) -> dict:
    from nasflow import cluster, tracking

    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="nasflow-mlflow-bench-") as folder:
        store = f"sqlite:///{folder}/mlflow.db"
        # num_workers=2 makes tracking_for_workers start the server nasflow starts for workers.
        with cluster.tracking_for_workers(store, num_workers=2) as uri:
            parent_id = tracking.start_parent_run(uri, "nasflow-bench", f"mlflow-{clients}")
            # Warm the server (first requests import and migrate lazily).
            _run_clients("--mlflow-client", 1, [uri, parent_id, "2", str(epochs)])
            port = int(uri.rsplit(":", 1)[1])
            cpu_before = _server_cpu_s(port)
            results = _run_clients(
                "--mlflow-client", clients, [uri, parent_id, str(trials_per_client), str(epochs)]
            )
            server_cpu = _server_cpu_s(port) - cpu_before
    calls = {}
    for name in results[0]["calls"]:
        calls[name] = _summary([s for r in results for s in r["calls"][name]])
    per_trial = [s for r in results for s in r["per_trial"]]
    trials = sum(r["trials"] for r in results)
    wall = max(r["wall_s"] for r in results)
    return {
        "backend": "sqlite via `mlflow server --workers 1` on 127.0.0.1",
        "clients": clients,
        "epochs": epochs,
        "calls_per_trial": _calls_per_trial(epochs),
        "trials": trials,
        "wall_s": round(wall, 2),
        "trials_per_s": round(trials / wall, 2),
        "per_trial": _summary(per_trial),
        # CPU the server (and its workers) spent per trial: its limit on an idle core.
        "server_cpu_ms_per_trial": round(1000 * server_cpu / trials, 1),
        "per_call": calls,
        "load_1min_start": load_start,
        "load_1min_end": _load(),
    }


# --------------------------------------------------------------------------- data


def measure_data() -> list[dict]:
    from nasflow.data import load_prepared
    from nasflow.steps.data_prep import data_prep_step

    rows = []
    for source in ("digits", "mnist-5k"):
        with tempfile.TemporaryDirectory(prefix="nasflow-data-bench-") as folder:
            data_prep_step(source, f"{folder}/dataset", seed=42)
            size = os.path.getsize(f"{folder}/dataset/splits.npz")
            times = []
            for _ in range(5):
                started = time.perf_counter()
                load_prepared(f"{folder}/dataset")
                times.append(time.perf_counter() - started)
            rows.append({"dataset": source, "splits_npz_mb": round(size / 2**20, 3), "load": _summary(times)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--oracle-trials", type=int, default=300, help="trials per client process")
    parser.add_argument("--bayesian-trials", type=int, default=250)
    parser.add_argument("--mlflow-trials", type=int, default=40, help="trials per client process")
    parser.add_argument("--epochs", type=int, default=3, help="per-epoch metric batches per trial")
    parser.add_argument(
        "--parts", nargs="+", choices=("oracle", "mlflow", "data"), default=["oracle", "mlflow", "data"],
        help="what to measure; a subset is written to chief_and_tracking_latency_<parts>.json",
    )  # fmt: skip
    args = parser.parse_args()
    import platform

    document: dict = {
        "settings": vars(args),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "oracle": [],
        "mlflow": [],
    }
    for strategy, clients, trials in () if "oracle" not in args.parts else (
        ("random", 1, args.oracle_trials),
        ("random", 2, args.oracle_trials),
        ("random", 4, args.oracle_trials // 2),
        ("evolution", 2, args.oracle_trials),
        ("reinforce", 2, args.oracle_trials),
        ("bayesian", 1, args.bayesian_trials),
    ):
        row = measure_oracle(strategy, clients, trials, seconds=240)
        print(
            json.dumps(
                {k: row[k] for k in ("strategy", "clients", "trials_per_s", "chief_handler_ms_per_trial")}
            )
        )
        document["oracle"].append(row)
    for clients in (1, 2, 4) if "mlflow" in args.parts else ():
        row = measure_mlflow(clients, args.mlflow_trials, args.epochs)
        print(json.dumps({k: row[k] for k in ("clients", "trials_per_s", "per_trial")}))
        document["mlflow"].append(row)
    if "data" in args.parts:
        document["data"] = measure_data()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    every_part = {"oracle", "mlflow", "data"} <= set(args.parts)
    name = "chief_and_tracking_latency" + ("" if every_part else "_" + "_".join(args.parts)) + ".json"
    (out / name).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out / name}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--oracle-client":
        oracle_client(int(sys.argv[2]), sys.argv[5], int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--mlflow-client":
        mlflow_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
