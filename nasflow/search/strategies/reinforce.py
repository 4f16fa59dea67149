"""REINFORCE policy-gradient search as a Keras Tuner oracle (Williams, 1992; Zoph & Le, 2017).

The policy is one independent softmax per hyperparameter over a finite set of values
(:func:`nasflow.search.strategies.base.discrete_values`: choices, stepped ranges, continuous
floats in equal-probability bins, log-spaced for log sampling). A trial samples only the
hyperparameters active under the values drawn so far, so conditional scopes hold. When a
trial completes, its score is the reward and every logit it used moves along
``advantage * grad log p(choice)``, with the advantage measured against a moving-average
baseline. Warm-started (``prior_observations``), the policy first takes one such step per
prior, in a seeded random order, as if it had run those trials itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from keras_tuner.engine import trial as trial_module

from nasflow.errors import SearchError
from nasflow.search.strategies import OracleSettings
from nasflow.search.strategies.base import (
    Saved,
    SeededOracle,
    active_hyperparameters,
    as_is,
    discrete_values,
    hp_key,
    load_int_map,
)

#: Normalized advantages are clipped to this magnitude so one outlier cannot saturate a softmax.
ADVANTAGE_CLIP = 5.0


def _load_logits(saved: dict) -> dict[str, list[float]]:
    return {key: [float(value) for value in values] for key, values in saved.items()}


def _load_choices(saved: dict) -> dict[str, dict[str, int]]:
    return {trial_id: load_int_map(choices) for trial_id, choices in saved.items()}


def _softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(value - top) for value in logits]
    total = sum(exps)
    return [value / total for value in exps]


class ReinforceOracle(SeededOracle):
    """REINFORCE with a moving-average baseline over a Keras Tuner search space.

    Args:
        objective: The Keras Tuner objective; its score is the reward (negated when the
            direction is ``min``).
        max_trials: Total number of trials.
        learning_rate: Step size on the logits.
        baseline_decay: Decay of the moving-average baseline (and of the reward variance).
        entropy_weight: Weight of an entropy bonus that keeps the policy exploring.
        normalize_advantage: Divide advantages by the moving standard deviation of the
            rewards, so the learning rate does not depend on the score's scale.
        bins: Number of values for continuous or very wide numeric ranges.
        constraint_penalty: Negative (normalized) advantage applied to a proposal the
            constraint check refused, so the policy learns to avoid infeasible regions
            without spending a trial on them; 0 disables it.
        **oracle_kwargs: The shared oracle settings of :class:`SeededOracle` (search space,
            seed, retries, failure limit, constraint check).
    """

    #: The policy, its baseline and reward statistics, and the choices of trials not yet learned from.
    SAVED_STATE = {
        **SeededOracle.SAVED_STATE,
        "reinforce": (
            Saved("logits", "_logits", _load_logits, {}),
            Saved("baseline", "_baseline", as_is, None),
            Saved("reward_variance", "_reward_variance", float, 0.0),
            Saved("baseline_average", "_baseline_average", float, 0.0),
            Saved("rewards_seen", "_rewards_seen", int, 0),
            Saved("choices", "_choices", _load_choices, {}),
            Saved("updates", "updates", int, 0),
            Saved("priors_learned", "_priors_learned", bool, False),
            Saved("learned", "_learned", int),
        ),
    }

    def __init__(
        self,
        objective=None,
        max_trials: int | None = 10,
        learning_rate: float = 0.1,
        baseline_decay: float = 0.9,
        entropy_weight: float = 0.0,
        normalize_advantage: bool = True,
        bins: int = 8,
        constraint_penalty: float = 1.0,
        **oracle_kwargs,
    ):
        if learning_rate <= 0:
            raise SearchError(f"reinforce learning_rate must be positive, got {learning_rate}")
        if not 0.0 <= baseline_decay < 1.0:
            raise SearchError(f"reinforce baseline_decay must be in [0, 1), got {baseline_decay}")
        if bins < 2:
            raise SearchError(f"reinforce bins must be at least 2, got {bins}")
        super().__init__(objective=objective, max_trials=max_trials, **oracle_kwargs)
        self.learning_rate = learning_rate
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.normalize_advantage = normalize_advantage
        self.bins = bins
        self.constraint_penalty = constraint_penalty
        self._logits: dict[str, list[float]] = {}
        self._baseline: float | None = None
        #: Zero-started moving averages of the reward and the squared advantage, and the
        #: number of rewards seen (for their bias correction).
        self._baseline_average = 0.0
        self._reward_variance = 0.0
        self._rewards_seen = 0
        self._choices: dict[str, dict[str, int]] = {}
        self._pending: dict[str, int] = {}
        self.updates = 0
        #: How many trials of ``end_order`` the policy has learned from.
        self._learned = 0
        self._priors_learned = False

    def _encode(self, values: Mapping) -> dict[str, int]:
        """Policy key -> index of the option nearest each active value (binned floats)."""
        choices: dict[str, int] = {}
        for hp in active_hyperparameters(self.hyperparameters, values):
            options = discrete_values(hp, self.bins)
            value = values[hp.name]
            if value in options:
                index = options.index(value)
            elif isinstance(value, int | float) and all(isinstance(option, int | float) for option in options):
                index = min(range(len(options)), key=lambda k: abs(options[k] - value))
            else:
                continue
            choices[hp_key(hp)] = index
            self._logits_for(hp_key(hp), len(options))
        return choices

    def learn_priors(self) -> int:
        """One policy step per prior observation, once per search (saved with the state)."""
        if self._priors_learned:
            return 0
        self._priors_learned = True
        priors = list(self.prior_observations)
        random.Random(f"{self.seed}:priors").shuffle(priors)
        for values, score in priors:
            self.learn(self._encode(values), score if self.objective.direction == "max" else -score)
        return len(priors)

    def _logits_for(self, key: str, size: int) -> list[float]:
        logits = self._logits.get(key)
        if logits is None or len(logits) != size:
            logits = [0.0] * size
            self._logits[key] = logits
        return logits

    def _sample(self, rng: random.Random, uniform: bool) -> tuple[dict, dict[str, int]]:
        hps = self.hyperparameters.copy()
        hps.values = {}
        choices: dict[str, int] = {}
        for hp in hps.space:
            if hp.name in hps.values or not hps.is_active(hp):
                continue
            options = discrete_values(hp, self.bins)
            key = hp_key(hp)
            weights = [1.0] * len(options) if uniform else _softmax(self._logits_for(key, len(options)))
            index = rng.choices(range(len(options)), weights=weights, k=1)[0]
            hps.values[hp.name] = options[index]
            choices[key] = index
        return hps.values, choices

    def propose(self, trial_id: str, rng: random.Random, rejected: set[str]) -> dict | None:
        """Sample the policy; fall back to uniform draws when the policy keeps repeating itself.

        Args:
            trial_id: The new trial's id.
            rng: This proposal's generator.
            rejected: Hashes of values the constraint check refused for this trial.

        Returns:
            New values, or None when no untried values can be found.
        """
        self.learn_priors()
        for uniform in (False, True):
            for _ in range(self._max_collisions + 1):
                values, choices = self._sample(rng, uniform)
                if self._is_new(values, rejected):
                    self._pending = choices
                    return values
        return None

    def on_accepted(self, trial_id: str, values: dict) -> None:
        """Remember which policy entries produced the trial, for its update."""
        self._choices[trial_id] = self._pending

    def on_rejected(self, values: dict, violations: list[str]) -> None:
        """Push the policy away from a proposal that broke the constraints."""
        if self.constraint_penalty > 0:
            self._apply_gradient(self._pending, -self.constraint_penalty)

    def _apply_gradient(self, choices: dict[str, int], advantage: float) -> None:
        for key, index in choices.items():
            logits = self._logits[key]
            probs = _softmax(logits)
            entropy = -sum(p * math.log(p) for p in probs if p > 0)
            for k, p in enumerate(probs):
                policy_gradient = (1.0 if k == index else 0.0) - p
                entropy_gradient = -p * (math.log(p) + entropy) if p > 0 else 0.0
                logits[k] += self.learning_rate * (
                    advantage * policy_gradient + self.entropy_weight * entropy_gradient
                )

    def learn(self, choices: dict[str, int], reward: float) -> float:
        """One REINFORCE step for a finished trial.

        Args:
            choices: Policy key -> index of the value the trial used.
            reward: Its reward (larger is better).

        Returns:
            The advantage applied (after normalization and clipping).
        """
        # Williams (1992): the baseline estimates the expected reward from earlier trials
        # only (so it does not bias the gradient); as in NAS-Bench-201's REINFORCE it is an
        # exponential moving average. Both moving averages start at zero and are bias-
        # corrected (as Adam's moments), so the first updates are neither pulled toward
        # zero nor inflated by sqrt(1 / (1 - decay)) when normalized.
        decay = self.baseline_decay
        seen = self._rewards_seen
        advantage = reward - self._baseline if seen and self._baseline is not None else 0.0
        self._baseline_average = decay * self._baseline_average + (1 - decay) * reward
        self._baseline = self._baseline_average / (1 - decay ** (seen + 1))
        self._rewards_seen = seen + 1
        if seen:
            self._reward_variance = decay * self._reward_variance + (1 - decay) * advantage**2
            variance = self._reward_variance / (1 - decay**seen)
            if self.normalize_advantage and variance > 0:
                advantage /= math.sqrt(variance)
                advantage = max(-ADVANTAGE_CLIP, min(ADVANTAGE_CLIP, advantage))
        self._apply_gradient(choices, advantage)
        self.updates += 1
        return advantage

    def _learn_from_ended_trials(self) -> None:
        """One update per trial that ended since the last one, in the order they ended.

        Called from :meth:`get_state`, i.e. inside the base class's save at the end of
        every trial: the update is saved in the same ``oracle.json`` write that commits the
        trial as ended, so a kill can lose neither one without the other. A trial sent for a
        retry is not in ``end_order`` yet and keeps its choices for then.
        """
        for trial_id in self.end_order[self._learned :]:
            stored = self.trials[trial_id]
            choices = self._choices.pop(trial_id, None)
            completed = stored.status == trial_module.TrialStatus.COMPLETED
            if choices is not None and completed and stored.score is not None and math.isfinite(stored.score):
                self.learn(choices, self._score_for_maximizing(stored))
        self._learned = len(self.end_order)

    def policy(self) -> dict[str, dict[str, float]]:
        """Current sampling probabilities: hyperparameter name -> {value: probability}.

        A name registered under several conditions is listed under ``name|conditions``.
        """
        names = [hp.name for hp in self.hyperparameters.space]
        result: dict[str, dict[str, float]] = {}
        for hp in self.hyperparameters.space:
            options = discrete_values(hp, self.bins)
            key = hp_key(hp)
            probs = _softmax(self._logits_for(key, len(options)))
            label = hp.name if names.count(hp.name) == 1 else key
            result[label] = {str(value): prob for value, prob in zip(options, probs, strict=True)}
        return result

    def get_state(self):
        """The saved state (:attr:`SAVED_STATE`), after learning from every ended trial."""
        self._learn_from_ended_trials()
        return super().get_state()

    def set_state(self, state):
        """Restore what :meth:`get_state` saved."""
        super().set_state(state)
        if "learned" not in state.get("reinforce", {}):
            # A state from before the count was saved had learned from every ended trial.
            self._learned = len(self.end_order)


def make(settings: OracleSettings) -> ReinforceOracle:
    """The registry's factory for this strategy."""
    return ReinforceOracle(
        max_trials=settings.max_trials,
        constraint_check=settings.constraint_check,
        prior_observations=settings.prior_observations,
        **settings.common(),
    )
