"""Optuna's model-based samplers (TPE, GP, NSGA-II) as Keras Tuner oracles.

:class:`OptunaOracle` keeps Keras Tuner in charge of the loop, the trial files, resume
(``overwrite=False``) and the chief/worker protocol, and asks an Optuna study for each
trial's values (``study.ask`` / ``study.tell``). The study lives in an Optuna journal
file inside the tuner's project folder (``optuna.journal``): every ask and tell is one
appended line, so what the sampler has learnt survives a SIGKILL and a resume.

How Keras Tuner hyperparameters become Optuna distributions (:func:`distribution_for`):
unordered ``Choice`` and ``Boolean`` are categorical; ordered (numeric) ``Choice`` values
and every stepped range are an integer *index* into their sorted values, so TPE and GP
see the order; ``Int`` and ``Float`` ranges without a step are integer / float ranges
(log-scaled for ``sampling="log"``); ``Fixed`` is not sampled. Trials are suggested
define-by-run in the space's registration order, parents before children, so only the
hyperparameters active under the values drawn so far are sampled (``when`` / ``repeat``
conditions hold) and TPE's ``group`` mode models each conditional sub-space on its own.

What the sampler is told:

* a completed trial: its score (or, in multi-objective mode, its validation accuracy and
  cost, with "score < 0" as a violated constraint: nasflow scores infeasible trials
  below zero);
* a failed or invalid trial (a build error, NaN loss, out of memory...): the worst value
  seen so far, so the sampler learns to avoid the region that failed (Optuna's FAIL state
  would be ignored by TPE and GP, which would then keep proposing it); FAIL while nothing
  has completed, and always in multi-objective mode (a "worst" point is not defined);
* a proposal the cheap constraint check refused: FAIL for the values themselves is not
  enough to steer the sampler, so like a failed trial it gets the worst value seen;
* a proposal that repeats values already tried (TPE concentrates on its incumbent and,
  on a categorical space, proposes cells it has seen): accepted while those values have
  been trained fewer than :data:`MAX_REPEATS` times — a repeat trains the architecture
  again from another seed, and the choice ranks an architecture by the mean of its
  trainings (:func:`nasflow.search.selection.pool_repeated_architectures`), so a repeat of
  the sampler's favourite is a measurement of a promising cell, not a wasted trial. On the
  noisy NAS-Bench-201 tables (tuning seeds, ``bench/tpe_repeats.py``) never repeating left
  nasflow at 1.23x Optuna TPE's regret (mean over tables and budgets), against 0.75x with
  2 trainings allowed, 0.80x with 3 or unbounded; on HPOBench 0.99x against 0.93x. Past
  the cap (and always in a multi-objective search): FAIL, and the trial gets instead the
  nearest untried neighbour of those values: the same values with one hyperparameter
  changed (two if every one-change neighbour was tried, and so on; values still under the
  cap once none is untried), so a sampler stuck on one cell turns into a local search.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras_tuner
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from nasflow.errors import SearchError
from nasflow.search.strategies import OracleSettings
from nasflow.search.strategies.base import (
    Saved,
    SeededOracle,
    active_hyperparameters,
    can_mutate,
    complete_values,
    hp_key,
    in_space,
    load_int_map,
    mutate_value,
)

logger = logging.getLogger(__name__)

#: The journal file of the Optuna study, inside the tuner's project folder.
JOURNAL_FILE = "optuna.journal"
STUDY_NAME = "nasflow"
#: User attribute linking an Optuna trial to the Keras Tuner trial it proposed.
TRIAL_ID_ATTR = "keras_tuner_trial_id"
#: User attribute holding the constraint value of a multi-objective trial (<= 0: feasible).
CONSTRAINT_ATTR = "nasflow_constraint"
#: Largest number of hyperparameters changed at once when looking for an untried neighbour.
MAX_NEIGHBOUR_DISTANCE = 3
#: How many times the same values may be trained before a repeat becomes an untried neighbour.
MAX_REPEATS = 2

#: A sampler factory: (seed, number of trials, multi-objective?) -> an Optuna sampler.
SamplerFactory = Callable[[int, int, bool], Any]


@functools.cache
def _import_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's ``group`` mode is marked experimental; nasflow pins the Optuna version it uses.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _constraint(frozen_trial) -> Sequence[float]:
    return (float(frozen_trial.user_attrs.get(CONSTRAINT_ATTR, 0.0)),)


class _Encoding:
    """How one Keras Tuner hyperparameter is sampled by Optuna and decoded back."""

    def __init__(self, hp, name: str):
        optuna = _import_optuna()
        dists = optuna.distributions
        self.hp = hp
        self.name = name
        self.values: list | None = None  # set for index encodings
        if isinstance(hp, hp_module.Boolean):
            self.distribution = dists.CategoricalDistribution([False, True])
        elif isinstance(hp, hp_module.Choice):
            if hp.ordered:
                self.values = sorted(hp.values)
                self.distribution = dists.IntDistribution(0, len(self.values) - 1)
            else:
                self.distribution = dists.CategoricalDistribution(list(hp.values))
        elif isinstance(hp, hp_module.Int | hp_module.Float) and hp.min_value == hp.max_value:
            self.distribution = None
        elif (
            isinstance(hp, hp_module.Int | hp_module.Float)
            and hp.step is not None
            and not (isinstance(hp, hp_module.Int) and hp.step == 1 and hp.sampling != "log")
        ):
            cast = int if isinstance(hp, hp_module.Int) else float
            self.values = sorted({cast(hp._get_value_by_index(i)) for i in range(hp._get_n_values())})
            self.distribution = dists.IntDistribution(0, len(self.values) - 1)
        elif isinstance(hp, hp_module.Int):
            self.distribution = dists.IntDistribution(
                int(hp.min_value), int(hp.max_value), log=hp.sampling == "log"
            )
        elif isinstance(hp, hp_module.Float):
            self.distribution = dists.FloatDistribution(
                float(hp.min_value), float(hp.max_value), log=hp.sampling == "log"
            )
        else:  # Fixed
            self.distribution = None

    def suggest(self, trial):
        """Sample this hyperparameter in an Optuna trial and return the Keras Tuner value."""
        if self.distribution is None:
            return self.hp.value if isinstance(self.hp, hp_module.Fixed) else self.hp.min_value
        distribution = self.distribution
        if isinstance(distribution, _import_optuna().distributions.CategoricalDistribution):
            raw = trial.suggest_categorical(self.name, distribution.choices)
        elif isinstance(distribution, _import_optuna().distributions.IntDistribution):
            raw = trial.suggest_int(self.name, distribution.low, distribution.high, log=distribution.log)
        else:
            raw = trial.suggest_float(self.name, distribution.low, distribution.high, log=distribution.log)
        return self.decode(raw)

    def decode(self, raw):
        """The Keras Tuner value of an Optuna parameter value."""
        if self.values is not None:
            return self.values[int(raw)]
        if isinstance(self.hp, hp_module.Int):
            return int(raw)
        if isinstance(self.hp, hp_module.Boolean):
            return bool(raw)
        return raw

    def encode(self, value):
        """The Optuna parameter value of a Keras Tuner value (None when it is not in the space)."""
        if self.distribution is None or not in_space(self.hp, value):
            return None
        if self.values is not None:
            matches = [i for i, option in enumerate(self.values) if math.isclose(float(option), float(value))]
            return matches[0] if matches else None
        return value


class OptunaOracle(SeededOracle):
    """A Keras Tuner oracle whose proposals come from an Optuna sampler.

    Args:
        sampler_factory: ``(seed, n_trials, multi_objective) -> sampler``. A fresh sampler
            is made for every proposal, seeded from the oracle's seed and proposal
            counter, so a resumed or distributed search proposes what an uninterrupted
            one would (Optuna samplers keep no state outside the study but their RNG).
        objective: The Keras Tuner objective (its direction is the study's).
        max_trials: Total number of trials.
        pareto_objectives: For multi-objective search: ``(metric, "max"|"min")`` pairs of
            trial metrics (e.g. ``(("val_accuracy", "max"), ("cost", "min"))``); None
            optimizes the objective alone.
        prior_observations: ``(values, score)`` pairs from earlier searches, added to a new
            study as completed trials (warm start).
        max_repeats: How many times the same values may be trained; a proposal repeating
            values tried that often gets an untried neighbour instead (1: never repeat). A
            multi-objective search never repeats: its front has no mean to pool repeats into.
        **oracle_kwargs: The shared settings of :class:`SeededOracle` (space, seed,
            failure limit, constraint check).
    """

    #: The trial-id -> Optuna-number links (the study itself is in its journal).
    SAVED_STATE = {
        **SeededOracle.SAVED_STATE,
        "optuna": (
            Saved("numbers", "optuna_numbers", load_int_map, {}),
            Saved("duplicates_replaced", "duplicates_replaced", int, 0),
        ),
    }

    def __init__(
        self,
        sampler_factory: SamplerFactory,
        objective=None,
        max_trials: int | None = 10,
        pareto_objectives: Sequence[tuple[str, str]] | None = None,
        prior_observations: Sequence[tuple[Mapping, float]] = (),
        max_repeats: int = MAX_REPEATS,
        **oracle_kwargs,
    ):
        super().__init__(objective=objective, max_trials=max_trials, **oracle_kwargs)
        self.sampler_factory = sampler_factory
        self.pareto_objectives = tuple(tuple(pair) for pair in pareto_objectives or ())
        for metric, direction in self.pareto_objectives:
            if direction not in ("max", "min"):
                raise SearchError(
                    f"pareto objective {metric!r} needs direction max or min, got {direction!r}"
                )
        self.prior_observations = list(prior_observations)
        if max_repeats < 1:
            raise SearchError(f"max_repeats must be at least 1, got {max_repeats}")
        self.max_repeats = int(max_repeats)
        self._study = None
        self._encoding_cache: dict[str, _Encoding] = {}
        self._pending: int | None = None
        #: Keras Tuner trial id -> Optuna trial number (saved in the oracle state).
        self.optuna_numbers: dict[str, int] = {}
        self.duplicates_replaced = 0

    # --- the study ------------------------------------------------------------------

    @property
    def multi_objective(self) -> bool:
        """Whether the study has one direction per pareto objective."""
        return len(self.pareto_objectives) > 1

    def _directions(self) -> list[str]:
        if self.multi_objective:
            return ["maximize" if d == "max" else "minimize" for _, d in self.pareto_objectives]
        return ["maximize" if self.objective.direction == "max" else "minimize"]

    @property
    def study(self):
        """The Optuna study, created or reloaded from the journal on first use."""
        if self._study is None:
            optuna = _import_optuna()
            from optuna.storages.journal import JournalFileBackend

            path = os.path.join(self._project_dir, JOURNAL_FILE)
            storage = optuna.storages.JournalStorage(JournalFileBackend(path))
            self._study = optuna.create_study(
                storage=storage,
                study_name=STUDY_NAME,
                directions=self._directions(),
                sampler=self.sampler_factory(self.seed or 0, self.max_trials or 0, self.multi_objective),
                load_if_exists=True,
            )
            self._close_orphans()
            if not self._study.trials:
                self._add_prior_observations()
        return self._study

    def _encodings(self, hps) -> dict[str, _Encoding]:
        names = [hp.name for hp in hps.space]
        for hp in hps.space:
            key = hp_key(hp)
            if key not in self._encoding_cache:
                self._encoding_cache[key] = _Encoding(hp, hp.name if names.count(hp.name) == 1 else key)
        return self._encoding_cache

    def _storage_id(self, number: int) -> int:
        return self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)

    def _is_told(self, number: int) -> bool:
        return self.study._storage.get_trial(self._storage_id(number)).state.is_finished()

    def _close_orphans(self) -> None:
        """Settle the Optuna trials a kill left RUNNING, so that journal and oracle agree.

        A trial Keras Tuner has ended but the sampler was not told (killed in between) is
        told now; one Keras Tuner will run again (its retry queue) is told when that
        ends; any other (killed before Keras Tuner recorded its trial) is FAILed, or it
        would stay a "lie" of the constant liar forever.
        """
        optuna = _import_optuna()
        for frozen in self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            trial_id = frozen.user_attrs.get(TRIAL_ID_ATTR)
            if trial_id not in self.trials or self.optuna_numbers.get(trial_id) != frozen.number:
                self._study.tell(frozen.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            elif trial_id in self.end_order:
                self._tell_result(self.trials[trial_id], frozen.number)

    def _add_prior_observations(self) -> None:
        """Warm start: earlier ``(values, score)`` pairs become completed trials of the study."""
        if not self.prior_observations:
            return
        optuna = _import_optuna()
        added = 0
        for values, score in self.prior_observations:
            params, distributions = self._to_params(values)
            if params is None or score is None or not math.isfinite(float(score)) or self.multi_objective:
                continue
            self._study.add_trial(
                optuna.trial.create_trial(params=params, distributions=distributions, value=float(score))
            )
            added += 1
        logger.info(
            "warm start: %d of %d prior observations given to the sampler",
            added,
            len(self.prior_observations),
        )

    def _to_params(self, values: Mapping) -> tuple[dict | None, dict]:
        hps = self.hyperparameters.copy()
        hps.values = dict(values)
        encodings = self._encodings(hps)
        params, distributions = {}, {}
        for hp in hps.space:
            if not hps.is_active(hp) or hp.name not in values:
                continue
            encoding = encodings[hp_key(hp)]
            if encoding.distribution is None:
                continue
            raw = encoding.encode(values[hp.name])
            if raw is None:
                return None, {}
            params[encoding.name] = raw
            distributions[encoding.name] = encoding.distribution
        return params, distributions

    # --- proposals --------------------------------------------------------------------

    def _suggest(self, optuna_trial) -> dict:
        hps = self.hyperparameters.copy()
        hps.values = {}
        encodings = self._encodings(hps)
        for hp in hps.space:
            if hp.name in hps.values or not hps.is_active(hp):
                continue
            hps.values[hp.name] = encodings[hp_key(hp)].suggest(optuna_trial)
        return hps.values

    def _ask(self, trial_id: str, fixed: Mapping | None = None):
        if fixed is not None:
            params, _ = self._to_params(fixed)
            self.study.enqueue_trial(params or {}, skip_if_exists=False)
        optuna_trial = self.study.ask()
        optuna_trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        return optuna_trial, self._suggest(optuna_trial)

    def _fail(self, number: int, reason: str) -> None:
        optuna = _import_optuna()
        self.study._storage.set_trial_user_attr(self._storage_id(number), "nasflow_reason", reason[:500])
        self.study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def _untried_neighbour(
        self, values: Mapping, rng: random.Random, rejected: set[str], trained: collections.Counter
    ) -> dict | None:
        """Values at the fewest changed hyperparameters from ``values`` not yet tried.

        When every neighbour looked at was tried, the first one still under ``max_repeats``
        (``trained``: times per values hash), so a small space is used up before it stops.
        """
        under_cap = None
        for distance in range(1, MAX_NEIGHBOUR_DISTANCE + 1):
            for _ in range(4 * (self._max_collisions + 1)):
                candidate = dict(values)
                mutable = [
                    hp for hp in active_hyperparameters(self.hyperparameters, candidate) if can_mutate(hp)
                ]
                if not mutable:
                    return under_cap
                for hp in rng.sample(mutable, min(distance, len(mutable))):
                    candidate[hp.name] = mutate_value(hp, candidate[hp.name], rng)
                candidate = complete_values(self.hyperparameters, candidate, rng)
                if self._is_new(candidate, rejected):
                    return candidate
                if under_cap is None and self._may_repeat(candidate, rejected, trained):
                    under_cap = candidate
        return under_cap

    def _times_trained(self) -> collections.Counter:
        """How many trials hold each values hash (counted once per proposal)."""
        return collections.Counter(self._compute_values_hash(t.hyperparameters.values) for t in self.trials.values())

    def _may_repeat(self, values: Mapping, rejected: set[str], trained: collections.Counter) -> bool:
        """Whether tried ``values`` may be trained again (fewer than ``max_repeats`` times so far)."""
        if self.multi_objective:
            return False
        digest = self._compute_values_hash(values)
        return digest not in rejected and trained[digest] < self.max_repeats

    def propose(self, trial_id: str, rng: random.Random, rejected: set[str]) -> dict | None:
        """Ask the sampler; past ``max_repeats``, replace a repeat by an untried neighbour.

        Args:
            trial_id: The new trial's id.
            rng: This proposal's generator (seeds the sampler).
            rejected: Hashes of values the constraint check refused for this trial.

        Returns:
            New values, or None when every value near the proposal was tried ``max_repeats`` times.
        """
        self.study.sampler = self.sampler_factory(
            rng.randrange(2**31), self.max_trials or 0, self.multi_objective
        )
        optuna_trial, values = self._ask(trial_id)
        trained = self._times_trained()
        if self._is_new(values, rejected) or self._may_repeat(values, rejected, trained):
            self._pending = optuna_trial.number
            return values
        self._fail(optuna_trial.number, "repeats values already tried")
        neighbour = self._untried_neighbour(values, rng, rejected, trained)
        if neighbour is None:
            return None
        self.duplicates_replaced += 1
        optuna_trial, values = self._ask(trial_id, fixed=neighbour)
        if not (self._is_new(values, rejected) or self._may_repeat(values, rejected, trained)):
            self._fail(optuna_trial.number, "repeats values already tried")
            return None
        self._pending = optuna_trial.number
        return values

    def on_accepted(self, trial_id: str, values: dict) -> None:
        """Link the Keras Tuner trial to the Optuna trial that proposed it."""
        self.optuna_numbers[trial_id] = self._pending

    def on_rejected(self, values: dict, violations: list[str]) -> None:
        """Tell the sampler a proposal broke the cheap constraints (worst value seen)."""
        self._tell_worst(self._pending, "; ".join(violations))

    # --- results ----------------------------------------------------------------------

    def _tell_worst(self, number: int, reason: str) -> None:
        optuna = _import_optuna()
        if self.multi_objective:
            self._fail(number, reason)
            return
        done = [
            t.value for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        ]
        if not done:
            self._fail(number, reason)
            return
        worst = min(done) if self._directions()[0] == "maximize" else max(done)
        self.study.tell(number, worst, skip_if_finished=True)

    def _metric(self, trial, name: str) -> float | None:
        if not trial.metrics.exists(name):
            return None
        value = trial.metrics.get_last_value(name)
        return float(value) if value is not None and math.isfinite(float(value)) else None

    def _tell_result(self, stored, number: int) -> None:
        """Tell the sampler how an ended Keras Tuner trial went (at most once)."""
        if self._is_told(number):
            return  # told before a kill, re-run after it: never told twice
        completed = stored.status == trial_module.TrialStatus.COMPLETED
        score = (
            stored.score if completed and stored.score is not None and math.isfinite(stored.score) else None
        )
        if score is None:
            self._tell_worst(number, stored.message or str(stored.status))
        elif self.multi_objective:
            values = [self._metric(stored, metric) for metric, _ in self.pareto_objectives]
            if any(value is None for value in values):
                self._fail(number, "a pareto objective metric is missing")
                return
            # nasflow scores an infeasible trial below zero: a violated constraint.
            self.study._storage.set_trial_user_attr(
                self._storage_id(number), CONSTRAINT_ATTR, -score if score < 0 else -1.0
            )
            self.study.tell(number, values, skip_if_finished=True)
        else:
            self.study.tell(number, score, skip_if_finished=True)

    @keras_tuner.synchronized
    def end_trial(self, trial):
        """End the trial as the base oracle does, then tell the sampler its result."""
        super().end_trial(trial)
        stored = self.trials[trial.trial_id]
        if stored.status in (trial_module.TrialStatus.INVALID, trial_module.TrialStatus.RUNNING):
            return  # queued for a retry with the same values: tell it when that ends
        number = self.optuna_numbers.get(stored.trial_id)
        if number is not None:
            self._tell_result(stored, number)

    def set_state(self, state):
        """Restore what :meth:`get_state` saved, and reload the study on its next use."""
        super().set_state(state)
        self._study = None  # reload from the journal: it may hold more than this state knows


# --- samplers ---------------------------------------------------------------------------


def startup_trials(max_trials: int) -> int:
    """Random trials before the model takes over: 10 % of the budget, between 5 and 10."""
    return max(5, min(10, max_trials // 10)) if max_trials else 10


def tpe_sampler(seed: int, max_trials: int, multi_objective: bool):
    """Multivariate TPE with group decomposition and the constant liar for parallel workers."""
    optuna = _import_optuna()
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=startup_trials(max_trials),
        multivariate=True,
        group=True,
        constant_liar=True,
        constraints_func=_constraint if multi_objective else None,
    )


def gp_sampler(seed: int, max_trials: int, multi_objective: bool):
    """Optuna's Gaussian-process sampler (log EI; needs PyTorch)."""
    optuna = _import_optuna()
    return optuna.samplers.GPSampler(
        seed=seed,
        n_startup_trials=startup_trials(max_trials),
        constraints_func=_constraint if multi_objective else None,
    )


def nsga2_sampler(seed: int, max_trials: int, multi_objective: bool):
    """NSGA-II with a population sized from the budget (a tenth, between 4 and 50)."""
    optuna = _import_optuna()
    population = max(4, min(50, max_trials // 10)) if max_trials else 50
    return optuna.samplers.NSGAIISampler(
        seed=seed, population_size=population, constraints_func=_constraint if multi_objective else None
    )


def _make(
    settings: OracleSettings, sampler_factory: SamplerFactory, max_repeats: int = MAX_REPEATS
) -> OptunaOracle:
    return OptunaOracle(
        sampler_factory,
        max_repeats=max_repeats,
        max_trials=settings.max_trials,
        pareto_objectives=getattr(settings, "pareto_objectives", None),
        # Warm start (issue 12, item 4) adds OracleSettings.prior_observations; until then none.
        prior_observations=getattr(settings, "prior_observations", None) or (),
        constraint_check=settings.constraint_check,
        **settings.common(),
    )


def tpe(settings: OracleSettings) -> OptunaOracle:
    """The registry's factory for ``tpe``."""
    return _make(settings, tpe_sampler)


def gp(settings: OracleSettings) -> OptunaOracle:
    """The registry's factory for ``gp``.

    Raises:
        SearchError: PyTorch, which Optuna's GPSampler computes with, is not installed.
    """
    from nasflow.search.strategies import missing_requirement

    if missing_requirement("gp"):
        raise SearchError(
            "strategy 'gp' needs PyTorch (Optuna's GPSampler computes with it): "
            "pip install 'nasflow[gp]', or choose another strategy"
        )
    return _make(settings, gp_sampler)


def nsga2(settings: OracleSettings) -> OptunaOracle:
    """The registry's factory for ``nsga2``."""
    # A genetic algorithm's repeats are crossovers of equal parents, not the model's belief.
    return _make(settings, nsga2_sampler, max_repeats=1)


__all__ = ["OptunaOracle", "distribution_for", "gp", "nsga2", "tpe"]


def distribution_for(hp):
    """The Optuna distribution a Keras Tuner hyperparameter is sampled from (None: not sampled)."""
    return _Encoding(hp, hp.name).distribution
