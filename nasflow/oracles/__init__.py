"""Search strategies as Keras Tuner oracles: regularized evolution and REINFORCE.

Both subclass ``keras_tuner.Oracle`` and only override ``populate_space`` (plus
``end_trial`` for the policy update), keeping their state in what the oracle saves, so
``overwrite=False`` resume and chief/worker distributed mode work as for the built-in
oracles. Both accept a ``constraint_check`` (values -> violation messages) and never hand
out values it rejects.
"""

from nasflow.oracles.base import ConstraintCheck, SeededOracle
from nasflow.oracles.evolution import EvolutionOracle
from nasflow.oracles.reinforce import ReinforceOracle

#: Oracle classes by strategy name, for configuration files and the CLI.
ORACLES: dict[str, type[SeededOracle]] = {"evolution": EvolutionOracle, "reinforce": ReinforceOracle}

__all__ = ["ORACLES", "ConstraintCheck", "EvolutionOracle", "ReinforceOracle", "SeededOracle"]
