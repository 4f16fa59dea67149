"""The Optuna strategies (tpe, nsga2, gp) as Keras Tuner oracles: the oracle contract.

Driven by a real Keras Tuner on the synthetic objective of tests/search/test_oracles.py (no
model, no training), and on the NAS-Bench-201 table where no training is needed.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import time

import keras_tuner
import optuna
import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from test_oracles import (  # noqa: E402
    OBJECTIVE,
    SyntheticTuner,
    assert_valid_distinct_proposals,
    assert_valid_proposals,
    expected_active,
    make_space,
    synthetic_score,
    value_hash,
)

from nasflow.errors import SearchError  # noqa: E402
from nasflow.search.strategies import PARETO_OBJECTIVES, OracleSettings, make_oracle  # noqa: E402
from nasflow.search.strategies.optuna_sampler import (  # noqa: E402
    JOURNAL_FILE,
    MAX_REPEATS,
    TRIAL_ID_ATTR,
    OptunaOracle,
    tpe_sampler,
)

KINDS = ["tpe", "nsga2"]


def settings(max_trials: int, seed: int = 5, **kwargs) -> OracleSettings:
    return OracleSettings(
        objective=OBJECTIVE,
        hyperparameters=make_space(),
        seed=seed,
        max_trials=max_trials,
        epochs=1,
        **kwargs,
    )


def search(
    kind: str,
    directory,
    max_trials: int,
    seed: int = 5,
    overwrite: bool = True,
    tuner_class=SyntheticTuner,
    **kwargs,
):
    oracle = make_oracle(kind, settings(max_trials, seed, **kwargs))
    tuner = tuner_class(oracle=oracle, directory=str(directory), project_name="p", overwrite=overwrite)
    tuner.search(verbose=0)
    return oracle


def trial_values(oracle) -> list[dict]:
    return [dict(oracle.trials[trial_id].hyperparameters.values) for trial_id in sorted(oracle.trials)]


def journal_study(directory) -> optuna.Study:
    """The study as a fresh process would read it back from the journal file alone."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(pathlib.Path(directory) / "p" / JOURNAL_FILE))
    )
    return optuna.load_study(study_name="nasflow", storage=storage)


def told_once(study: optuna.Study) -> dict[str, int]:
    """Keras Tuner trial id -> how many COMPLETE Optuna trials carry it."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        key = trial.user_attrs[TRIAL_ID_ATTR]
        counts[key] = counts.get(key, 0) + 1
    return counts


def times_trained(oracle) -> collections.Counter:
    return collections.Counter(value_hash(v) for v in trial_values(oracle))


@pytest.mark.parametrize("kind", KINDS)
def test_only_active_values_in_range_repeated_at_most_max_repeats(kind, tmp_path):
    oracle = search(kind, tmp_path, max_trials=30)
    values = trial_values(oracle)
    if kind == "nsga2":
        assert oracle.max_repeats == 1
        assert_valid_distinct_proposals(values, 30)
    else:
        assert oracle.max_repeats == MAX_REPEATS
        assert_valid_proposals(values, 30)
        assert max(times_trained(oracle).values()) <= MAX_REPEATS
    study = journal_study(tmp_path)
    assert told_once(study) == {trial_id: 1 for trial_id in oracle.trials}
    # Conditional values are sampled only when their branch is active.
    for frozen in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert ("units" in frozen.params) == (frozen.params["block"] == "mlp")


def test_tpe_state_round_trip_resumes_the_same_search(tmp_path):
    search("tpe", tmp_path / "resumed", max_trials=12, seed=9)
    resumed = search("tpe", tmp_path / "resumed", max_trials=24, seed=9, overwrite=False)
    straight = search("tpe", tmp_path / "straight", max_trials=24, seed=9)
    assert len(resumed.trials) == 24
    # The sampler is seeded per proposal and its history is the journal: the resumed
    # search is the very search that would have run without the interruption.
    assert trial_values(resumed) == trial_values(straight)
    assert told_once(journal_study(tmp_path / "resumed")) == {trial_id: 1 for trial_id in resumed.trials}


def four_cell_space() -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Choice("op", ["conv", "pool"])
    hp.Choice("width", [16, 32], ordered=True)
    return hp


class FourCellTuner(keras_tuner.Tuner):
    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        return {"score": (values["op"] == "conv") + values["width"] / 100, "cost": values["width"]}


def four_cell_oracle(**kwargs) -> OptunaOracle:
    return OptunaOracle(
        tpe_sampler, objective=OBJECTIVE, max_trials=20, hyperparameters=four_cell_space(), seed=2, **kwargs
    )


@pytest.mark.parametrize("max_repeats", [1, 3])
def test_tpe_trains_the_same_values_at_most_max_repeats_times_then_stops(max_repeats, tmp_path):
    # Four cells and a budget of 20: TPE repeats its favourite cell; each cell may be trained
    # max_repeats times, then the repeat becomes an untried neighbour, and once every cell is
    # used up the search stops early (4 x max_repeats trials of the 20).
    oracle = four_cell_oracle(max_repeats=max_repeats)
    FourCellTuner(oracle=oracle, directory=str(tmp_path), project_name="p").search(verbose=0)
    assert sorted(times_trained(oracle).values()) == [max_repeats] * 4
    # Each Keras Tuner trial is one told Optuna trial, repeats included.
    assert told_once(journal_study(tmp_path)) == {trial_id: 1 for trial_id in oracle.trials}


def test_a_pareto_search_never_repeats(tmp_path):
    # The default cap, but two objectives: the front has no mean to pool a repeat into.
    oracle = four_cell_oracle(pareto_objectives=(("score", "max"), ("cost", "min")))
    assert oracle.max_repeats == MAX_REPEATS and oracle.multi_objective
    FourCellTuner(oracle=oracle, directory=str(tmp_path), project_name="p").search(verbose=0)
    assert sorted(times_trained(oracle).values()) == [1] * 4


def test_max_repeats_below_one_is_refused():
    with pytest.raises(SearchError, match="max_repeats must be at least 1, got 0"):
        OptunaOracle(tpe_sampler, objective=OBJECTIVE, hyperparameters=four_cell_space(), max_repeats=0)


KILL_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
from test_optuna_strategies import SyntheticTuner, search, synthetic_score

class HangingTuner(SyntheticTuner):
    def run_trial(self, trial, *args, **kwargs):
        if trial.trial_id == "07":
            open({marker!r}, "w").close()
            time.sleep(600)
        return {{"score": synthetic_score(trial.hyperparameters.values)}}

search("tpe", {directory!r}, max_trials=14, seed=3, tuner_class=HangingTuner)
"""


def test_tpe_resumes_after_sigkill_mid_trial_with_exact_count_and_no_trial_twice(tmp_path):
    marker = tmp_path / "hanging"
    script = tmp_path / "kill.py"
    script.write_text(
        KILL_SCRIPT.format(
            tests=str(pathlib.Path(__file__).parent), marker=str(marker), directory=str(tmp_path)
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(TESTS)}, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the search never reached trial 07"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    before = journal_study(tmp_path)
    assert len(told_once(before)) == 7  # trials 00-06 were told; 07 was running

    resumed = search("tpe", tmp_path, max_trials=14, seed=3, overwrite=False)
    assert len(resumed.trials) == 14
    assert all(trial.status == "COMPLETED" for trial in resumed.trials.values())
    assert max(times_trained(resumed).values()) <= MAX_REPEATS
    study = journal_study(tmp_path)
    # Trial 07 ran again after the kill and was told once; nothing is left RUNNING.
    assert told_once(study) == {trial_id: 1 for trial_id in resumed.trials}
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


class FailingTuner(SyntheticTuner):
    """The mlp branch always fails, like an architecture that cannot be built."""

    def run_trial(self, trial, *args, **kwargs):
        if trial.hyperparameters.values["block"] == "mlp":
            raise keras_tuner.errors.FailedTrialError("mlp cannot be built here")
        return super().run_trial(trial, *args, **kwargs)


def test_failed_trials_are_told_the_worst_value_so_the_sampler_avoids_them(tmp_path):
    oracle = make_oracle("tpe", settings(30, seed=4, max_consecutive_failed_trials=30))
    FailingTuner(oracle=oracle, directory=str(tmp_path), project_name="p").search(verbose=0)
    study = journal_study(tmp_path)
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    worst_success = min(t.value for t in completed if t.params["block"] == "conv")
    failed = [t for t in completed if t.params["block"] == "mlp"]
    assert failed and all(t.value <= worst_success for t in failed)
    blocks = [v["block"] for v in trial_values(oracle)]
    # After the random start the model steers away from the failing branch.
    assert blocks[15:].count("mlp") < blocks[:15].count("mlp")


def test_constraint_rejections_are_never_handed_out(tmp_path):
    def check(values: dict) -> list[str]:
        return ["too wide"] if values.get("filters", 0) > 32 or values.get("units", 0) > 64 else []

    oracle = search("tpe", tmp_path, max_trials=20, constraint_check=check)
    assert len(oracle.trials) == 20
    assert all(check(v) == [] for v in trial_values(oracle))
    assert oracle.constraint_rejections > 0


def test_unsatisfiable_constraints_stop_the_search(tmp_path):
    oracle = make_oracle("tpe", settings(5, constraint_check=lambda values: ["never"]))
    oracle.max_constraint_attempts = 6
    SyntheticTuner(oracle=oracle, directory=str(tmp_path), project_name="p").search(verbose=0)
    assert len(oracle.trials) == 0 and oracle.constraint_rejections == 6


class ParetoTuner(SyntheticTuner):
    """Accuracy and a cost that grows with the filters: a real trade-off."""

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        accuracy = synthetic_score(values)
        cost = float(values.get("filters", values.get("units", 16))) * values["depth"]
        return {"score": accuracy, "val_accuracy": accuracy, "cost": cost}


@pytest.mark.parametrize("kind", KINDS)
def test_pareto_objective_is_a_multi_objective_study(kind, tmp_path):
    oracle = search(
        kind, tmp_path, max_trials=16, pareto_objectives=PARETO_OBJECTIVES, tuner_class=ParetoTuner
    )
    study = journal_study(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(completed) == 16 == len(oracle.trials)
    for frozen in completed:
        trial = oracle.trials[frozen.user_attrs[TRIAL_ID_ATTR]]
        assert frozen.values[0] == pytest.approx(trial.metrics.get_last_value("val_accuracy"))
        assert frozen.values[1] == pytest.approx(trial.metrics.get_last_value("cost"))
    assert study.best_trials  # a Pareto front, not one best trial


def test_prior_observations_are_given_to_a_new_study_once(tmp_path):
    priors = (
        ({"block": "conv", "filters": 48, "kernel": 3, "depth": 3, "lr": 0.01, "batch_norm": True}, 1.0),
        ({"block": "mlp", "units": 64, "depth": 1, "lr": 0.001, "batch_norm": False}, 0.3),
        ({"block": "conv", "filters": 999, "kernel": 3, "depth": 3, "lr": 0.01, "batch_norm": True}, 0.9),
    )
    search("tpe", tmp_path, max_trials=4, prior_observations=priors)
    search("tpe", tmp_path, max_trials=6, overwrite=False, prior_observations=priors)
    study = journal_study(tmp_path)
    added = [t for t in study.trials if TRIAL_ID_ATTR not in t.user_attrs]
    # The out-of-space prior (filters 999) is skipped; resuming does not add them again.
    assert sorted(t.value for t in added) == [0.3, 1.0]


def test_gp_without_pytorch_is_one_clear_error():
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("PyTorch is installed: gp works")
    with pytest.raises(SearchError, match="needs PyTorch"):
        make_oracle("gp", settings(5))


DISTRIBUTED_SCRIPT = """
import json, pathlib, sys, time
sys.path.insert(0, {tests!r})
from test_optuna_strategies import SyntheticTuner, make_oracle, settings
directory, out = sys.argv[1], sys.argv[2]
meeting = pathlib.Path(directory).parent


class RendezvousTuner(SyntheticTuner):
    # Each worker holds its first trial until the other has one. Keras Tuner's chief exits once
    # no tuner it knows is busy, so a worker still importing TensorFlow when the other had run
    # all ten instant trials met a closed socket (CI, 2 loaded cores).
    def run_trial(self, trial, *args, **kwargs):
        started = meeting / ("started-" + self.tuner_id)
        if not started.exists():
            started.touch()
            deadline = time.monotonic() + 300
            while len(list(meeting.glob("started-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        return super().run_trial(trial, *args, **kwargs)


tuner = RendezvousTuner(oracle=make_oracle("tpe", settings(10, seed=21)), directory=directory, project_name="p")
tuner.search(verbose=0)
if hasattr(tuner.oracle, "trials"):  # the chief
    trials = tuner.oracle.trials.values()
    json.dump([dict(t.hyperparameters.values) for t in trials if t.status == "COMPLETED"], open(out, "w"))
"""


@pytest.mark.slow  # three processes each importing TensorFlow
def test_tpe_chief_and_two_workers(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(tests=str(pathlib.Path(__file__).parent)))
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    env["PYTHONPATH"] = str(TESTS)
    out = tmp_path / "trials.json"
    command = [sys.executable, str(script), str(tmp_path / "search"), str(out)]
    processes = [
        subprocess.Popen(command, env={**env, "KERASTUNER_TUNER_ID": tuner_id}, stderr=subprocess.PIPE)
        for tuner_id in ("chief", "tuner0", "tuner1")
    ]
    try:
        # Generous: three TensorFlow imports on 2 shared cores; a quiet machine needs ~20 s.
        errors = [process.communicate(timeout=400)[1] for process in processes[1:]]
        errors.insert(0, processes[0].communicate(timeout=120)[1])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, error in zip(processes, errors, strict=True):
        assert process.returncode == 0, error.decode()[-2000:]
    assert sorted(path.name for path in tmp_path.glob("started-*")) == ["started-tuner0", "started-tuner1"]
    values = json.loads(out.read_text())
    assert len(values) == 10
    assert len({value_hash(v) for v in values}) == 10
    assert all(set(v) == expected_active(v) for v in values)
    study = journal_study(tmp_path / "search")
    assert len(told_once(study)) == 10 and set(told_once(study).values()) == {1}


def test_tpe_beats_random_on_nas_bench_201(tmp_path):
    """On the NAS-Bench-201 table (CIFAR-10, noisy queries), 100 evaluations, fixed seeds."""
    sys.path.insert(0, str(TESTS.parent / "bench"))
    import tabular_nas

    bench = tabular_nas.Tabular("nb201/cifar10")
    regrets: dict[str, list[float]] = {"tpe": [], "random": []}
    for strategy in regrets:
        for seed in (1, 2, 3):
            bench.table.reseed(seed)
            history = tabular_nas.run_nasflow(bench, strategy, 100, seed, str(tmp_path / f"{strategy}{seed}"))
            assert len(history) == 100
            regrets[strategy].append(tabular_nas.regret_curve(bench, history)[-1])
    assert statistics.fmean(regrets["tpe"]) < statistics.fmean(regrets["random"])
