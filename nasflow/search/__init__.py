"""The architecture search: strategies, one trial's work, trial records, selection.

Laid out as Keras Tuner's engine is: ``tuner`` runs the search (Keras Tuner owns the
loop, the oracle state, resume and the chief/worker protocol), ``trial`` does one
candidate's work, ``records`` writes and reads the trial runs in MLflow, ``selection``
picks the trial to train, and ``strategies`` maps each strategy name to its oracle.
"""

from nasflow.search.records import TrialRecord, close_running_attempts, collect_trials
from nasflow.search.selection import SearchResult, choose_best, summarize_rows, write_trial_table
from nasflow.search.settings import DEFAULT_STRATEGY, PROJECT_NAME, SearchSettings
from nasflow.search.strategies import STRATEGIES, OracleSettings, make_oracle
from nasflow.search.tuner import run_search

__all__ = [
    "DEFAULT_STRATEGY",
    "PROJECT_NAME",
    "STRATEGIES",
    "OracleSettings",
    "SearchResult",
    "SearchSettings",
    "TrialRecord",
    "choose_best",
    "close_running_attempts",
    "collect_trials",
    "make_oracle",
    "run_search",
    "summarize_rows",
    "write_trial_table",
]
