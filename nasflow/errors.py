"""The project's own exception types.

Every error a user can cause is one of these. The CLI catches ``NasflowError`` once
and prints ``str(error)`` as a single line, so messages must name the file, field or
URI at fault and fit on one line.
"""

import re


class NasflowError(Exception):
    """Base class of every error nasflow reports to a user."""

    #: Whether running the failing step again may succeed (a crash, an outage). By default
    #: an error is deterministic: the same inputs fail the same way, so a pipeline step that
    #: raises one is not retried (see ``nasflow.steps._common.user_errors``).
    transient: bool = False


class DataError(NasflowError):
    """A dataset cannot be loaded or fails validation."""


class SearchSpaceError(NasflowError):
    """A search-space file is malformed or invalid."""


class InvalidArchitectureError(NasflowError):
    """A sampled architecture cannot be built for this input (e.g. spatial size below 1)."""


class SearchError(NasflowError):
    """The architecture search could not produce a usable result."""


class SearchCrashedError(SearchError):
    """A process of the search died (chief or worker): a retry resumes from the saved state."""

    transient = True


class TrackingError(NasflowError):
    """The MLflow tracking server or registry cannot be used."""


class TrackingUnavailableError(TrackingError):
    """The tracking server does not answer (or kept failing): it may be back for a retry."""

    transient = True


class ParameterConflictError(TrackingError):
    """A parameter of a run would be logged again with a different value (MLflow refuses it)."""


class CompressionError(NasflowError):
    """A compression variant cannot be produced or evaluated."""


class PromotionRefused(NasflowError):
    """The promotion gate refused to move the ``champion`` alias."""


class ClusterError(NasflowError):
    """Submitting to or running on a Kubeflow cluster failed."""

    # Worker pods preempted, OOM-killed or deleted, a chief pod gone: infrastructure, which
    # the search task's retry (resuming from its state folder) exists for.
    transient = True


# TensorFlow and absl print start-up chatter (oneDNN notices, "I0000 ... port.cc" lines) on
# stderr before logging is configured; a process's last lines are quoted in errors without it.
_NOISE = re.compile(r"^\s*$|oneDNN|absl|^[IWE]\d{4} \d\d:\d\d:\d\d")


def meaningful_lines(text: str) -> list[str]:
    """The lines of a process log worth quoting in an error, without TF/absl start-up noise."""
    return [line.strip() for line in text.splitlines() if not _NOISE.search(line)]
