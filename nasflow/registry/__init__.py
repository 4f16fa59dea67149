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
    therefore serializes promotions of one registered model:

    1. **Lock.** It creates a registered model named ``<model>.nasflow-promotion-lock``
       whose tags hold a random token, the owner and a lease expiry. Creating a
       registered model is atomic in every SQL backend (the name is a primary key), so
       exactly one gate wins; the others get ``RESOURCE_ALREADY_EXISTS`` and retry with
       jittered exponential backoff. A lock whose lease has expired (its holder died) is
       deleted by the next gate after re-reading that the token is still the stale one.
       If the create request reached the server but its answer was lost, the gate
       recognises its own token and proceeds.
    2. **Decide under the lock.** It re-reads the champion alias and the champion's
       metric tag, decides, and checks that it still holds an unexpired lease just
       before moving the alias.
    3. **Verify.** After moving the alias it waits briefly, re-reads the alias and, if
       a *worse* version displaced the candidate (which only a broken lock or a client
       that bypasses the gate can cause), restores the candidate and audits that.
    4. **Release.** It deletes the lock model if the token is still its own.

    Promoting the version that already is champion writes nothing (not even a lock).
    The transient lock model is visible to ``search_registered_models`` while a
    promotion runs; its name ends in ``.nasflow-promotion-lock``.

Errors
    An unreachable server, a missing model, version or alias, and a version without
    the metric tag raise :class:`~nasflow.errors.TrackingError` with one line that names
    the tracking URI. A refusal is not an error: the returned decision says so.
"""

from nasflow.registry.promotion import PromotionDecision, decide_promotion, promote
from nasflow.registry.registration import RegisteredVersion, register_model

__all__ = ["PromotionDecision", "RegisteredVersion", "decide_promotion", "promote", "register_model"]
