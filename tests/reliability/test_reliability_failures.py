"""Failed trials are recorded with their reason and the search goes on; hopeless searches stop clearly.

Candidates fail here the way real ones do: a model whose outputs turn NaN inside the
real training loop, and a build that raises (as an out-of-memory build does).
"""

from __future__ import annotations

import keras
import pytest

from nasflow.errors import SearchError
from nasflow.search.records import collect_trials
from nasflow.search.selection import choose_best
from nasflow.search.settings import SearchSettings
from nasflow.search.tuner import run_search
from nasflow.spaces.schema import load_search_space, resolve_search_space


class FailingCandidates:
    """The real cnn space, except that some architectures break in a chosen way."""

    def __init__(self, space, fails, how: str):
        self._space, self._fails, self._how = space, fails, how

    def __getattr__(self, name):
        return getattr(self._space, name)

    def build_model(self, hp, input_shape, num_classes):
        model = self._space.build_model(hp, input_shape, num_classes)
        if not self._fails(hp.values):
            return model
        if self._how == "oom":
            raise MemoryError("failed to allocate 34359738368 bytes for conv weights")
        poisoned = keras.Sequential([model, keras.layers.Lambda(lambda x: x * float("nan"))])
        poisoned.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return poisoned


def _space(fails, how="nan"):
    return FailingCandidates(load_search_space(resolve_search_space("cnn", "image")), fails, how)


@pytest.mark.parametrize("how,reason", [("nan", "NaN"), ("oom", "MemoryError: failed to allocate")])
def test_failed_trials_are_recorded_and_the_search_goes_on(digits, parent, tmp_path, how, reason):
    space = _space(lambda values: values["num_blocks"] != 1, how)
    run_search(digits, space, SearchSettings("random", max_trials=5, epochs=1, seed=11), parent=parent, work_dir=tmp_path)
    rows = collect_trials(parent)
    assert len(rows) == 5
    failed = [row for row in rows if row["status"] == "FAILED"]
    assert failed and len(failed) < 5, [row["values"]["num_blocks"] for row in rows]
    assert all(reason in row["reason"] for row in failed)
    client = parent.client
    assert {client.get_run(row["mlflow_run_id"]).info.status for row in failed} == {"FAILED"}
    assert choose_best(rows).best_row["values"]["num_blocks"] == 1


def test_consecutive_failures_stop_the_search_with_a_summary(digits, parent, tmp_path):
    space = _space(lambda values: True)
    settings = SearchSettings("random", max_trials=8, epochs=1, seed=11, max_consecutive_failed_trials=3)
    with pytest.raises(SearchError) as caught:
        run_search(digits, space, settings, parent=parent, work_dir=tmp_path)
    message = str(caught.value)
    assert "consecutive failures" in message and "NaN" in message and "\n" not in message
    assert len(collect_trials(parent)) == 3, "stopped at the third failure in a row, before max_trials"


def test_zero_successful_trials_fail_instead_of_choosing(digits, parent, tmp_path):
    space = _space(lambda values: True, "oom")
    run_search(digits, space, SearchSettings("random", max_trials=2, epochs=1, seed=11), parent=parent, work_dir=tmp_path)
    with pytest.raises(SearchError, match=r"no trial completed within the constraints \(2 failed\)"):
        choose_best(collect_trials(parent))


#: On 8x8 digits a fourth 2x2 max-pool has nothing left to pool: 4 and 5 blocks are invalid,
#: which with the per-block filter choices is 48 of the space's 56 architectures.
MOSTLY_INVALID = {
    "name": "mostly-too-deep",
    "family": "cnn",
    "modality": "image",
    "hyperparameters": [
        {"name": "num_blocks", "type": "int", "min": 3, "max": 5},
        {"repeat": {"count": "num_blocks", "hyperparameters": [
            {"name": "filters", "type": "choice", "values": [4, 8]},
            {"name": "kernel_size", "type": "fixed", "value": 3},
        ]}},
        {"name": "pooling", "type": "fixed", "value": "flatten"},
        {"name": "dense_units", "type": "fixed", "value": 0},
        {"name": "learning_rate", "type": "fixed", "value": 0.01},
    ],
}  # fmt: skip


def test_invalid_candidates_are_not_failures_and_never_stop_the_search(digits, parent, tmp_path):
    from nasflow.search.selection import summarize_rows
    from nasflow.search.settings import INVALID_SCORE
    from nasflow.spaces.schema import parse_search_space

    settings = SearchSettings("random", max_trials=10, epochs=1, seed=5, max_consecutive_failed_trials=5)
    tuner = run_search(digits, parse_search_space(MOSTLY_INVALID), settings, parent=parent, work_dir=tmp_path)
    rows = collect_trials(parent)
    statuses = "".join("I" if row["status"] == "INVALID" else "c" for row in rows)
    assert "I" * 6 in statuses, f"more invalid candidates in a row than the failure limit: {statuses}"
    assert len(rows) == 10, "the search went on to max_trials"
    summary = summarize_rows(rows)
    assert summary["trials_failed"] == 0 and summary["trials_invalid"] == statuses.count("I")
    # The strategy saw a (very low) score for each invalid candidate: a signal to learn from.
    invalid_ids = [row["trial_id"] for row in rows if row["status"] == "INVALID"]
    assert {tuner.oracle.trials[trial_id].score for trial_id in invalid_ids} == {INVALID_SCORE}
    assert all(parent.client.get_run(row["mlflow_run_id"]).info.status == "FINISHED" for row in rows)
    assert choose_best(rows).best_row["values"]["num_blocks"] == 3
