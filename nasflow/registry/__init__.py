"""Register the chosen model in the MLflow Model Registry and promote it safely.

Registration
    :func:`register_model` logs a pyfunc model from code (``nasflow/serving.py``) that
    serves either the float ``.keras`` model or the int8 ``.tflite`` file through the
    LiteRT interpreter. Both files are always artifacts of the version, the version is
    tagged with its test metric and gets the ``challenger`` alias.

Promotion gate
    :func:`promote` moves the ``champion`` alias to a candidate only when
    :func:`decide_promotion` says the candidate's test metric beats the champion's by at
    least ``min_improvement`` (higher is better). Every decision is recorded as tags on
    the candidate version (``nasflow.promotion.*``) and as one audit tag on the
    registered model (``nasflow.audit.<time_ns>.<token>``, a JSON record of who, when,
    which run, the old and the new champion and their metrics).

Concurrency protocol
    MLflow has no compare-and-set on aliases, so two gates running at once could each
    read the old champion and the slower one could overwrite a better model. The gate
    therefore decides and moves ``champion`` under a per-model lock
    (:mod:`nasflow.registry.lock`, whose docstring has the full protocol):

    * a ``postgresql://`` tracking URI: a PostgreSQL advisory lock on the model's key,
      held on a connection of its own for the whole decide + write + verify;
    * a ``sqlite:///`` tracking URI: an exclusive transaction on a lock file beside
      MLflow's database;
    * an ``http(s)://`` server: a lease whose tickets are versions of the registered
      model ``<model>.nasflow-promotion-lock`` (the version number is a fencing token),
      renewed by a background thread, expired only by the server's own timestamps, and
      fenced immediately before and after the alias write; a gate that finds itself
      fenced out after writing puts the previous champion back and fails.

    Promoting the version that already is champion writes nothing (not even a lock).

Errors
    An unreachable server, a missing model, version or alias, and a version without
    the metric tag raise :class:`~nasflow.errors.TrackingError` with one line that names
    the tracking URI. A refusal is not an error: the returned decision says so.
"""

from nasflow.registry.promotion import PromotionDecision, decide_promotion, promote
from nasflow.registry.registration import RegisteredVersion, register_model

__all__ = ["PromotionDecision", "RegisteredVersion", "decide_promotion", "promote", "register_model"]
