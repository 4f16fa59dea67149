"""What nasflow's oracles share: seeding, cheap-constraint resampling, space helpers.

Every proposal is drawn from a ``random.Random`` seeded with ``"{seed}:{trial_id}:{n}"``
(``n`` counts proposals). The generator therefore needs no state of its own: the seed
and the counter live in the oracle's saved state, so a resumed search (``overwrite=False``)
or a chief oracle serving distributed workers continues the same sequence.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import keras_tuner
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from nasflow.search.strategies import ConstraintCheck

logger = logging.getLogger(__name__)

#: Largest step-range enumerated value by value; wider ranges are binned.
MAX_ENUMERATED_VALUES = 64


def hp_key(hp) -> str:
    """A stable key for one hyperparameter: its name and its conditions."""
    conditions = [condition.get_config() for condition in hp.conditions]
    return f"{hp.name}|{json.dumps(conditions, sort_keys=True, default=str)}"


def _numeric_range_is_point(hp) -> bool:
    return isinstance(hp, hp_module.Int | hp_module.Float) and hp.min_value == hp.max_value


def discrete_values(hp, bins: int = 8) -> list:
    """The finite set of values a policy over ``hp`` chooses from.

    Choice, Boolean and Fixed give their values; Int and stepped Float their values by
    step (or ``bins`` evenly spaced ones when there are more than
    :data:`MAX_ENUMERATED_VALUES`); a continuous Float the centres of ``bins`` equal-
    probability bins, which are log-spaced for ``sampling="log"``.

    Args:
        hp: A Keras Tuner hyperparameter.
        bins: Number of bins for continuous or very wide ranges.

    Returns:
        Distinct values, in increasing probability order.
    """
    if isinstance(hp, hp_module.Boolean):
        return [False, True]
    if isinstance(hp, hp_module.Fixed):
        return [hp.value]
    if isinstance(hp, hp_module.Choice):
        return list(hp.values)
    if _numeric_range_is_point(hp):
        return [hp.min_value]
    if isinstance(hp, hp_module.Int | hp_module.Float) and hp.step is not None:
        count = hp._get_n_values()
        if count <= MAX_ENUMERATED_VALUES:
            indices = range(count)
        else:
            indices = sorted({round(k * (count - 1) / (bins - 1)) for k in range(bins)})
        cast = int if isinstance(hp, hp_module.Int) else float
        return [cast(hp._get_value_by_index(index)) for index in indices]
    values = [hp.prob_to_value((k + 0.5) / bins) for k in range(bins)]
    return list(dict.fromkeys(values))


def in_space(hp, value) -> bool:
    """Whether ``value`` is one ``hp`` can take (range, step and choices)."""
    if isinstance(hp, hp_module.Boolean):
        return isinstance(value, bool)
    if isinstance(hp, hp_module.Fixed):
        return value == hp.value
    if isinstance(hp, hp_module.Choice):
        return value in hp.values
    if isinstance(hp, hp_module.Int | hp_module.Float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(hp, hp_module.Int) and int(value) != value:
            return False
        tolerance = 1e-9 * max(1.0, abs(hp.max_value))
        if not hp.min_value - tolerance <= value <= hp.max_value + tolerance:
            return False
        if hp.step is None or _numeric_range_is_point(hp):
            return True
        return any(math.isclose(value, option, rel_tol=1e-9, abs_tol=1e-12) for option in _stepped_values(hp))
    return True


def _stepped_values(hp) -> list:
    return [hp._get_value_by_index(index) for index in range(hp._get_n_values())]


def sample_value(hp, rng: random.Random):
    """A random value of ``hp`` drawn with the given generator (respects sampling)."""
    value = hp.prob_to_value(rng.random())
    return int(value) if isinstance(hp, hp_module.Int) else value


def mutate_value(hp, current, rng: random.Random, attempts: int = 20):
    """A value of ``hp`` different from ``current`` when the range has one.

    Args:
        hp: The hyperparameter.
        current: Its present value.
        rng: The generator.
        attempts: Draws tried for numeric ranges before giving up.

    Returns:
        A new in-range value (``current`` itself only when no other exists).
    """
    if isinstance(hp, hp_module.Choice | hp_module.Boolean):
        others = [value for value in discrete_values(hp) if value != current]
        return rng.choice(others) if others else current
    for _ in range(attempts):
        value = sample_value(hp, rng)
        if value != current:
            return value
    return current


def can_mutate(hp) -> bool:
    """Whether ``hp`` has more than one value."""
    if isinstance(hp, hp_module.Fixed) or _numeric_range_is_point(hp):
        return False
    if isinstance(hp, hp_module.Choice):
        return len(hp.values) > 1
    return True


def complete_values(space, proposal: Mapping, rng: random.Random) -> dict:
    """Make a proposal consistent with the space's conditional scopes.

    Hyperparameters are visited in registration order (parents before children). An
    active one keeps the proposal's value when it is in range, else gets a random one;
    inactive ones are dropped.

    Args:
        space: The oracle's ``HyperParameters``.
        proposal: Values to keep where they still apply.
        rng: Generator for missing values.

    Returns:
        Values of exactly the active hyperparameters.
    """
    hps = space.copy()
    hps.values = {}
    for hp in hps.space:
        if hp.name in hps.values or not hps.is_active(hp):
            continue
        value = proposal.get(hp.name)
        hps.values[hp.name] = value if hp.name in proposal and in_space(hp, value) else sample_value(hp, rng)
    return hps.values


def active_hyperparameters(space, values: Mapping) -> list:
    """The hyperparameters of ``space`` that are active for ``values``."""
    hps = space.copy()
    hps.values = dict(values)
    active, seen = [], set()
    for hp in hps.space:
        if hp.name not in seen and hps.is_active(hp) and hp.name in values:
            active.append(hp)
            seen.add(hp.name)
    return active


#: A :class:`Saved` default meaning "keep the value the constructor set".
KEEP = object()


@dataclass(frozen=True)
class Saved:
    """One oracle attribute kept in the oracle's saved state (``oracle.json``).

    Attributes:
        key: Its key within the oracle's state section.
        attribute: The oracle attribute holding it.
        load: Turns the saved JSON value back into the attribute's value; None for a value
            written for readers of the file only (derived from other state, not restored).
        default: What a state without the key (saved by an older version) restores, passed
            through ``load``; :data:`KEEP` keeps the value the constructor set.
    """

    key: str
    attribute: str
    load: Callable[[Any], Any] | None
    default: Any = KEEP


def as_is(value):
    """A :class:`Saved` loader for values JSON restores as they were saved."""
    return value


def load_int_map(saved: Mapping) -> dict[str, int]:
    """A saved ``{name: int}`` mapping (JSON keeps the ints, this keeps the types honest)."""
    return {key: int(value) for key, value in saved.items()}


class SeededOracle(keras_tuner.Oracle):
    """Base of nasflow's oracles: deterministic seeding and cheap-constraint resampling.

    Subclasses implement :meth:`propose`. ``seed=None`` draws a random seed; any other
    value, including 0, is used as given (Keras Tuner's base class treats 0 as random).

    Args:
        objective: The Keras Tuner objective (for nasflow: the score, maximized).
        max_trials: Total number of trials.
        hyperparameters: Optional predefined search space.
        allow_new_entries: See ``keras_tuner.Oracle``.
        tune_new_entries: See ``keras_tuner.Oracle``.
        seed: Random seed; None for a random one.
        max_retries_per_trial: See ``keras_tuner.Oracle``.
        max_consecutive_failed_trials: See ``keras_tuner.Oracle``.
        constraint_check: Maps values to violation messages; a proposal with violations
            is never handed out but drawn again.
        max_constraint_attempts: Proposals tried per trial before the search stops
            because the constraints appear unsatisfiable.
        prior_observations: ``(values, score)`` of earlier searches (warm start), best
            first; subclasses decide what they learn from them.
    """

    #: State section -> the attributes saved in it, walked by :meth:`get_state` and
    #: :meth:`set_state`. A subclass adds its own section:
    #: ``SAVED_STATE = {**Parent.SAVED_STATE, "name": (Saved(...), ...)}``.
    SAVED_STATE: ClassVar[dict[str, tuple[Saved, ...]]] = {
        "nasflow_seeded": (
            Saved("proposals", "_proposals", int, 0),
            Saved("constraint_rejections", "constraint_rejections", int, 0),
        ),
    }

    def __init__(
        self,
        objective=None,
        max_trials: int | None = None,
        hyperparameters=None,
        allow_new_entries: bool = True,
        tune_new_entries: bool = True,
        seed: int | None = None,
        max_retries_per_trial: int = 0,
        max_consecutive_failed_trials: int = 3,
        constraint_check: ConstraintCheck | None = None,
        max_constraint_attempts: int = 100,
        prior_observations=(),
    ):
        super().__init__(
            objective=objective,
            max_trials=max_trials,
            hyperparameters=hyperparameters,
            allow_new_entries=allow_new_entries,
            tune_new_entries=tune_new_entries,
            seed=seed,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        if seed is not None:
            self.seed = int(seed)
            self._seed_state = self.seed
        self.constraint_check = constraint_check
        self.max_constraint_attempts = max_constraint_attempts
        self.prior_observations = [(dict(values), float(score)) for values, score in prior_observations]
        self._proposals = 0
        self.constraint_rejections = 0

    def _trial_rng(self, trial_id: str) -> random.Random:
        self._proposals += 1
        return random.Random(f"{self.seed}:{trial_id}:{self._proposals}")

    def _is_new(self, values: Mapping, rejected: set[str]) -> bool:
        digest = self._compute_values_hash(values)
        return digest not in self._tried_so_far and digest not in rejected

    def _score_for_maximizing(self, trial) -> float:
        """The trial's score with larger meaning better, whatever the objective's direction."""
        return trial.score if self.objective.direction == "max" else -trial.score

    def propose(self, trial_id: str, rng: random.Random, rejected: set[str]) -> dict | None:
        """New values for ``trial_id`` not yet tried nor in ``rejected``; None when exhausted."""
        raise NotImplementedError

    def on_accepted(self, trial_id: str, values: dict) -> None:
        """Hook called when ``values`` are handed out for ``trial_id``."""

    def on_rejected(self, values: dict, violations: list[str]) -> None:
        """Hook called when ``values`` failed the constraint check."""

    def populate_space(self, trial_id):
        """Propose values, drawing again while the constraint check rejects them.

        Args:
            trial_id: The new trial's id.

        Returns:
            ``{"status": "RUNNING", "values": ...}``, or ``{"status": "STOPPED", ...}`` when
            the space is exhausted or no proposal satisfies the constraints.
        """
        rng = self._trial_rng(trial_id)
        rejected: set[str] = set()
        for _ in range(self.max_constraint_attempts):
            values = self.propose(trial_id, rng, rejected)
            if values is None:
                return {"status": trial_module.TrialStatus.STOPPED, "values": None}
            violations = self.constraint_check(values) if self.constraint_check else []
            if not violations:
                self.on_accepted(trial_id, values)
                return {"status": trial_module.TrialStatus.RUNNING, "values": values}
            self.constraint_rejections += 1
            rejected.add(self._compute_values_hash(values))
            self.on_rejected(values, violations)
        logger.warning(
            "stopping the search: %d proposals in a row broke the constraints (last: %s)",
            self.max_constraint_attempts,
            "; ".join(violations),
        )
        return {"status": trial_module.TrialStatus.STOPPED, "values": None}

    def get_state(self):
        """Keras Tuner's state plus every section of :attr:`SAVED_STATE`."""
        state = super().get_state()
        for section, fields in self.SAVED_STATE.items():
            state[section] = {field.key: getattr(self, field.attribute) for field in fields}
        return state

    def set_state(self, state):
        """Restore what :meth:`get_state` saved (older states: each field's default)."""
        super().set_state(state)
        for section, fields in self.SAVED_STATE.items():
            saved = state.get(section, {})
            for field in fields:
                if field.load is None:
                    continue
                if field.key in saved:
                    value = saved[field.key]
                elif field.default is KEEP:
                    value = getattr(self, field.attribute)
                else:
                    value = field.default
                setattr(self, field.attribute, field.load(value))
