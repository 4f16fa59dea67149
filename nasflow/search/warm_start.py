"""Warm start: earlier runs' trials on the same data and space become the strategy's priors.

A search tags its parent MLflow run with the content hash of its dataset, a hash of its
validated search space and a hash of its objective. ``warm_start="auto"`` finds earlier
parent runs in the same experiment with the same dataset and space hashes; a run id names
one directly. Their trial runs (params, score) become ``(values, score)`` prior
observations, best first, handed to the strategy through
``OracleSettings.prior_observations`` (the Optuna strategies add them to the study,
evolution seeds its population with them, REINFORCE updates its policy on them, random
search ignores them), and the best few are evaluated again first, so the new search
starts from the best known architectures and can select them. A re-evaluation draws its
weights from the seed the earlier trial was trained with: on the same data (what ``auto``
requires) it reproduces that trial's result, where a fresh initialization would spend the
trial on measuring initialization noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from nasflow import tracking
from nasflow.errors import SearchError

logger = logging.getLogger(__name__)

DATASET_HASH_TAG = "nasflow.dataset_hash"
SPACE_HASH_TAG = "nasflow.space_hash"
OBJECTIVE_HASH_TAG = "nasflow.objective_hash"
#: Tag of a run that was warm-started: the parent runs its priors came from.
WARM_START_TAG = "nasflow.warm_start_runs"

#: Earlier runs read by ``auto`` (most recent first) and priors kept (best first).
MAX_EARLIER_RUNS = 5
MAX_PRIORS = 500
#: How many of the best priors are evaluated again before the strategy proposes anything.
REEVALUATE_BEST = 3

#: Key of a re-evaluated trial's values holding the seed of the trial it repeats. It rides
#: in the values like Keras Tuner's own ``tuner/epochs``, so it reaches a distributed
#: worker inside the chief's trial; every hash of values (what was tried) leaves it out.
REEVALUATION_SEED = "tuner/seed"

#: Trial statuses whose score a prior may carry (a PRUNED score is that of fewer epochs:
#: exactly what the earlier search's strategy learned from, and still a lower bound).
_PRIOR_STATUSES = ("COMPLETED", "PRUNED", "INFEASIBLE")


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def space_hash(space) -> str:
    """Hash of a validated space's canonical form (its name and description left out)."""
    canonical = {key: value for key, value in space.to_dict().items() if key not in ("name", "description")}
    return _digest(canonical)


def objective_hash(objective) -> str:
    """Hash of an ``ObjectiveConfig``: equal hashes mean scores are comparable."""
    return _digest(dict(vars(objective)))


def run_tags(dataset_hash: str, space, objective) -> dict[str, str]:
    """The tags that let later runs find this one."""
    return {
        DATASET_HASH_TAG: dataset_hash,
        SPACE_HASH_TAG: space_hash(space),
        OBJECTIVE_HASH_TAG: objective_hash(objective),
    }


def find_earlier_runs(parent: tracking.RunHandle, warm_start: str, tags: Mapping[str, str]) -> list:
    """The earlier parent runs to learn from.

    Args:
        parent: This search's parent run (never returned).
        warm_start: ``"none"``, ``"auto"`` or an MLflow run id.
        tags: This run's :func:`run_tags`.

    Returns:
        MLflow runs, most recent first.

    Raises:
        SearchError: A named run does not exist or searched another space.
    """
    if warm_start in ("", "none"):
        return []
    client = parent.client
    if warm_start != "auto":
        try:
            run = tracking.with_retry(lambda: client.get_run(warm_start), "get warm-start run")
        except Exception as error:
            raise SearchError(f"warm start: run {warm_start!r} not found in the tracking server ({error})") from error
        found = run.data.tags.get(SPACE_HASH_TAG)
        if found != tags[SPACE_HASH_TAG]:
            raise SearchError(
                f"warm start: run {warm_start!r} searched another space "
                f"({'space hash ' + found[:12] if found else 'no space hash recorded'}); "
                "use --warm-start auto or none"
            )
        if run.data.tags.get(DATASET_HASH_TAG) != tags[DATASET_HASH_TAG]:
            logger.warning("warm start: run %s used other data; its scores are priors all the same", warm_start)
        return [run]
    experiment_id = parent.cached_run().info.experiment_id
    query = (
        f"tags.`{DATASET_HASH_TAG}` = '{tags[DATASET_HASH_TAG]}' and tags.`{SPACE_HASH_TAG}` = '{tags[SPACE_HASH_TAG]}'"
    )
    runs = tracking.with_retry(
        lambda: client.search_runs(
            [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=50
        ),
        "find earlier runs",
    )
    return [run for run in runs if run.info.run_id != parent.run_id][:MAX_EARLIER_RUNS]


def prior_observations(parent: tracking.RunHandle, runs: Sequence, objective) -> list[tuple[dict, float]]:
    """``(values, score)`` of the earlier runs' trials, best first, one per distinct values.

    Values carry the best trial's initialization seed under :data:`REEVALUATION_SEED`
    (trials recorded before seeds were tagged have none).

    A trial's recorded score is used when its run had the same objective; otherwise, for an
    accuracy-only objective without limits, its validation accuracy; otherwise it is left out
    (a score under another objective would mislead the strategy).
    """
    from nasflow.search.records import collect_trials

    current = objective_hash(objective)
    accuracy_only = objective.mode == "accuracy" and not any(
        getattr(objective, name) is not None for name in ("max_params", "max_flops", "max_latency_ms", "max_size_kb")
    )
    best: dict[str, tuple[dict, float]] = {}
    for run in runs:
        same_objective = run.data.tags.get(OBJECTIVE_HASH_TAG) == current
        if not same_objective and not accuracy_only:
            logger.info("warm start: run %s had another objective; its trials are left out", run.info.run_id)
            continue
        for row in collect_trials(tracking.RunHandle(parent.client, run.info.run_id)):
            if row["status"] not in _PRIOR_STATUSES:
                continue
            score = row["score"] if same_objective else row["val_accuracy"]
            if score is None or not math.isfinite(float(score)):
                continue
            values = {key: value for key, value in row["values"].items() if not key.startswith("tuner/")}
            key = json.dumps(values, sort_keys=True, default=str)
            if key not in best or best[key][1] < float(score):
                if row.get("seed") is not None:
                    values[REEVALUATION_SEED] = int(row["seed"])
                best[key] = (values, float(score))
    return sorted(best.values(), key=lambda prior: -prior[1])[:MAX_PRIORS]


def coerce_values(hyperparameters, values: Mapping[str, Any]) -> dict | None:
    """Values read back from MLflow params, typed as the space declares them.

    MLflow keeps params as strings; ``collect_trials`` parses them as JSON, so a choice of
    strings ``"1"``/``"2"`` comes back as numbers. Each value is mapped onto the value of
    the space it stands for.

    Returns:
        Values of exactly the active hyperparameters, or None when the values do not fit
        the space (out of range, missing or unknown choices).
    """
    from keras_tuner.engine import hyperparameters as hp_module

    from nasflow.search.strategies.base import in_space

    hps = hyperparameters.copy()
    hps.values = {}
    for hp in hps.space:
        if hp.name in hps.values or not hps.is_active(hp):
            continue
        if hp.name not in values:
            return None
        raw = values[hp.name]
        if isinstance(hp, hp_module.Boolean):
            value = raw if isinstance(raw, bool) else str(raw).lower() == "true"
        elif isinstance(hp, hp_module.Choice):
            matches = [option for option in hp.values if option == raw or str(option) == str(raw)]
            if not matches:
                return None
            value = matches[0]
        elif isinstance(hp, hp_module.Int):
            value = int(raw) if isinstance(raw, int | float) else raw
        elif isinstance(hp, hp_module.Float):
            value = float(raw) if isinstance(raw, int | float) else raw
        else:
            value = raw
        if not in_space(hp, value):
            return None
        hps.values[hp.name] = value
    return hps.values


def usable_priors(hyperparameters, priors: Sequence) -> list[tuple[dict, float]]:
    """The priors whose values fit the space, typed as it declares them, order kept.

    A prior's :data:`REEVALUATION_SEED` is kept (a re-evaluation trains from it); the
    strategies get :func:`space_values_only` of these.

    Args:
        hyperparameters: The declared space.
        priors: ``(values, score)`` from :func:`prior_observations`.
    """
    usable = []
    for values, score in priors:
        typed = coerce_values(hyperparameters, values)
        if typed is None:
            continue
        if values.get(REEVALUATION_SEED) is not None:
            typed[REEVALUATION_SEED] = int(values[REEVALUATION_SEED])
        usable.append((typed, float(score)))
    return usable


def space_values_only(priors: Sequence) -> list[tuple[dict, float]]:
    """``priors`` without the re-evaluation seed: what a strategy learns from."""
    return [(_without_seed(values), score) for values, score in priors]


class _ReevaluatingOracle:
    """Mixed in front of a strategy's oracle class by :func:`add_reevaluation`."""

    nasflow_reevaluate: list[dict]

    def populate_space(self, trial_id):
        check = getattr(self, "constraint_check", None)
        for values in self.nasflow_reevaluate:
            if self._compute_values_hash(values) in self._tried_so_far:
                continue
            if check is not None and check(_without_seed(values)):
                continue
            logger.info("warm start: trial %s evaluates a prior's architecture again", trial_id)
            return {"status": "RUNNING", "values": dict(values)}
        return super().populate_space(trial_id)

    def _compute_values_hash(self, values):
        # A re-evaluation is a trial of its architecture: the strategies' duplicate checks
        # and a resumed search must see those values as tried, whatever seed they ran with.
        return super()._compute_values_hash(_without_seed(values))


def _without_seed(values: Mapping[str, Any]) -> dict:
    return {key: value for key, value in values.items() if key != REEVALUATION_SEED}


_CLASSES: dict[type, type] = {}


def add_reevaluation(oracle, priors: Sequence, count: int = REEVALUATE_BEST):
    """Make ``oracle``'s first trials the best ``count`` priors, each once (across resumes).

    An oracle whose class sets ``handles_prior_reevaluation = True`` does this itself (and
    is returned unchanged), as does Hyperband, whose brackets decide every trial.

    Args:
        oracle: The strategy's oracle (in the process that owns it).
        priors: ``(values, score)``, best first, typed by :func:`usable_priors` (a
            re-evaluation trains from the prior's seed where it has one).
        count: How many to evaluate again.
    """
    if not priors or count < 1 or getattr(oracle, "handles_prior_reevaluation", False):
        return oracle
    import keras_tuner

    if isinstance(oracle, keras_tuner.oracles.HyperbandOracle):
        return oracle
    base = type(oracle)
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Reevaluating{base.__name__}", (_ReevaluatingOracle, base), {})
    oracle.__class__ = _CLASSES[base]
    oracle.nasflow_reevaluate = [dict(values) for values, _ in list(priors)[:count]]
    return oracle


def reevaluation_count(max_trials: int) -> int:
    """Priors evaluated again: :data:`REEVALUATE_BEST`, at most a third of the budget."""
    return max(1, min(REEVALUATE_BEST, max_trials // 3))
