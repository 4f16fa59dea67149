"""Submit and schedule compiled pipelines on a Kubeflow Pipelines (KFP v2) cluster.

This is the client layer: the only nasflow module that talks to the KFP API server. It takes any
compiled pipeline package (``nasflow compile`` writes one), so it knows nothing about what the
pipeline does.

Authentication: if the environment variable named by ``token_env`` (default
``KFP_BEARER_TOKEN``) is set, every request carries ``Authorization: Bearer <token>`` (e.g. a
Kubernetes service-account token, or an OIDC token for a Kubeflow behind Dex/oauth2-proxy).

Schedules: KFP's scheduler uses 6-field cron expressions with a leading *seconds* field
(``"0 0 3 * * *"`` = 03:00:00 daily). The usual 5-field form (``"0 3 * * *"``) is accepted too
and gets ``"0 "`` (second zero) prepended. ``@every 1h``-style and ``@daily``-style descriptors
are passed through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nasflow.config import DEFAULT_EXPERIMENT
from nasflow.errors import ClusterError

logger = logging.getLogger(__name__)

#: Path of the KFP v2 health endpoint, probed before any other call.
HEALTHZ_PATH = "/apis/v2beta1/healthz"

_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"
# (name, lowest, highest, names allowed) of the 6 fields of KFP's cron (robfig/cron with seconds).
_CRON_FIELDS = (
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)


@dataclass(frozen=True)
class SubmittedRun:
    """A pipeline run created on the cluster.

    Attributes:
        run_id: KFP run ID.
        url: Link to the run in the KFP UI.
    """

    run_id: str
    url: str


@dataclass(frozen=True)
class ScheduledJob:
    """A recurring run created on the cluster.

    Attributes:
        job_id: KFP recurring-run ID.
        url: Link to the recurring run in the KFP UI.
    """

    job_id: str
    url: str


def normalize_cron(expression: str) -> str:
    """Check a cron expression and return it in KFP's 6-field (seconds first) form.

    Args:
        expression: 5 fields (minute hour day-of-month month day-of-week), 6 fields (with a
            leading seconds field), or a descriptor such as ``@daily`` or ``@every 6h``.

    Returns:
        The 6-field expression (5-field input gets ``"0 "`` prepended) or the descriptor.

    Raises:
        ClusterError: If the expression is not a valid cron expression.
    """
    text = " ".join(expression.split())
    if text in _CRON_DESCRIPTORS:
        return text
    if text.startswith("@every "):
        if re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", text):
            return text
        raise ClusterError(f"invalid cron expression {expression!r}: @every needs a duration such as 6h or 30m")
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ClusterError(
            f"invalid cron expression {expression!r}: expected 5 fields (min hour dom mon dow) "
            f"or 6 with leading seconds, got {len(fields)}"
        )
    for value, (field, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        _check_cron_field(expression, value, field, low, high, names)
    return " ".join(fields)


def _check_cron_field(expression: str, value: str, field: str, low: int, high: int, names: str | None) -> None:
    """Raise ClusterError unless ``value`` is a valid cron field between ``low`` and ``high``."""
    if value == "?" and field in ("day of month", "day of week"):
        return
    atom = rf"(\d+|{names})" if names else r"(\d+)"
    item = re.compile(rf"^(\*|{atom}(-{atom})?)(/(\d+))?$", re.IGNORECASE)
    for part in value.split(","):
        match = item.match(part)
        if not match:
            raise ClusterError(f"invalid cron expression {expression!r}: bad {field} field {value!r}")
        numbers = [int(token) for token in re.findall(r"\d+", part.split("/")[0])]
        if any(not low <= number <= high for number in numbers):
            raise ClusterError(
                f"invalid cron expression {expression!r}: {field} {value!r} outside {low}-{high}"
            )
        step = match.group(6)
        if step is not None and int(step) == 0:
            raise ClusterError(f"invalid cron expression {expression!r}: {field} step must be above 0")


def _probe(host: str, token: str | None, timeout_s: float) -> None:
    """GET the health endpoint; raise ClusterError naming the URL if it does not answer 2xx."""
    url = host + HEALTHZ_PATH
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310 - the user's KFP URL
            return
    except urllib.error.HTTPError as error:
        hint = " (check the bearer token)" if error.code in (401, 403) else ""
        raise ClusterError(f"Kubeflow Pipelines at {host} answered HTTP {error.code} on {url}{hint}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ClusterError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from error


def _normalize_host(host: str) -> str:
    host = host.strip().rstrip("/")
    if not host:
        raise ClusterError("no Kubeflow Pipelines host given (e.g. http://localhost:8080)")
    if not host.startswith(("http://", "https://")):
        host = "https://" + host
    return host


def make_client(host: str, token_env: str = "KFP_BEARER_TOKEN", *, timeout_s: float = 10.0) -> Any:
    """Connect to the KFP API server at ``host``.

    Args:
        host: KFP endpoint, e.g. ``http://localhost:8080`` (a port-forward of ``ml-pipeline-ui``)
            or ``https://kubeflow.example.com/pipeline``; ``https://`` is assumed without scheme.
        token_env: Environment variable holding a bearer token; unset means no token.
        timeout_s: Seconds to wait for the health check.

    Returns:
        A ``kfp.Client`` bound to ``host``.

    Raises:
        ClusterError: If the host is unreachable or refuses the request (message names the URL).
    """
    import kfp
    import urllib3

    host = _normalize_host(host)
    token = os.environ.get(token_env) or None
    _probe(host, token, timeout_s)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return kfp.Client(host=host, existing_token=token)
    except (urllib3.exceptions.HTTPError, TimeoutError, OSError) as error:
        raise ClusterError(f"cannot connect to Kubeflow Pipelines at {host}: {error}") from error


def _package(package_path: str) -> Path:
    path = Path(package_path)
    if not path.is_file():
        raise ClusterError(f"pipeline package not found: {package_path} (run `nasflow compile` first)")
    return path


def _experiment_id(client: Any, experiment: str) -> str:
    """The ID of the named KFP experiment, created if it does not exist."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        created = client.create_experiment(name=experiment)
    logger.debug("kfp: %s", printed.getvalue().strip())
    return created.experiment_id


def _api_error(action: str, host: str, error: Exception) -> ClusterError:
    status = getattr(error, "status", None)
    reason = " ".join(str(getattr(error, "reason", None) or error).split())
    prefix = f"HTTP {status} " if status else ""
    return ClusterError(f"cannot {action} on Kubeflow Pipelines at {host}: {prefix}{reason}")


def submit_pipeline(
    host: str,
    package_path: str,
    parameters: dict[str, Any],
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    token_env: str = "KFP_BEARER_TOKEN",
    service_account: str | None = None,
) -> SubmittedRun:
    """Start one run of a compiled pipeline.

    Args:
        host: KFP endpoint (see :func:`make_client`).
        package_path: Compiled pipeline YAML.
        parameters: Pipeline parameters (typed values; KFP checks them against the spec).
        experiment: KFP experiment to file the run under; created if missing.
        run_name: Display name; defaults to ``<package stem> <UTC time>``.
        token_env: Environment variable holding a bearer token.
        service_account: Kubernetes service account of the run's pods; the cluster's default
            (``pipeline-runner`` / ``default-editor``) if None.

    Returns:
        The run's ID and UI link.

    Raises:
        ClusterError: If the package is missing, the host unreachable or the API refuses the run.
    """
    import kfp_server_api

    package = _package(package_path)
    client = make_client(host, token_env)
    host = _normalize_host(host)
    name = run_name or f"{package.stem} {datetime.now(UTC):%Y-%m-%d %H-%M-%S}"
    try:
        experiment_id = _experiment_id(client, experiment)
        with contextlib.redirect_stdout(io.StringIO()):
            run = client.run_pipeline(
                experiment_id=experiment_id,
                job_name=name,
                pipeline_package_path=str(package),
                params=dict(parameters),
                service_account=service_account,
            )
    except (kfp_server_api.ApiException, ValueError) as error:
        raise _api_error("submit the run", host, error) from error
    logger.info("submitted run %s to %s", run.run_id, host)
    return SubmittedRun(run_id=run.run_id, url=f"{host}/#/runs/details/{run.run_id}")


def wait_for_run(
    host: str,
    run_id: str,
    *,
    timeout_s: float = 24 * 3600,
    poll_s: float = 10.0,
    token_env: str = "KFP_BEARER_TOKEN",
) -> str:
    """Block until a run ends; CI uses it so that the promotion gate judges this run.

    Returns:
        The final state (``SUCCEEDED``).

    Raises:
        ClusterError: The run ended in another state, or did not end within ``timeout_s``.
    """
    import kfp_server_api

    client = make_client(host, token_env)
    host = _normalize_host(host)
    url = f"{host}/#/runs/details/{run_id}"
    try:
        run = client.wait_for_run_completion(run_id, timeout=timeout_s, sleep_duration=poll_s)
    except TimeoutError as error:
        raise ClusterError(f"run {run_id} did not finish within {timeout_s:.0f}s ({url})") from error
    except kfp_server_api.ApiException as error:
        raise _api_error("follow the run", host, error) from error
    state = str(run.state).upper()
    if state != "SUCCEEDED":
        raise ClusterError(f"run {run_id} ended {state} ({url})")
    return state


def schedule_pipeline(
    host: str,
    package_path: str,
    parameters: dict[str, Any],
    *,
    cron: str,
    experiment: str = DEFAULT_EXPERIMENT,
    job_name: str | None = None,
    max_concurrency: int = 1,
    no_catchup: bool = True,
    token_env: str = "KFP_BEARER_TOKEN",
    service_account: str | None = None,
) -> ScheduledJob:
    """Create a recurring run of a compiled pipeline.

    Args:
        host: KFP endpoint (see :func:`make_client`).
        package_path: Compiled pipeline YAML.
        parameters: Pipeline parameters of every run.
        cron: Cron expression, 5 fields or KFP's 6 (seconds first); see :func:`normalize_cron`.
        experiment: KFP experiment to file the runs under; created if missing.
        job_name: Display name; defaults to ``<package stem>-schedule``.
        max_concurrency: Most runs of this schedule running at once.
        no_catchup: If True, missed intervals (e.g. while paused) are not backfilled.
        token_env: Environment variable holding a bearer token.
        service_account: Kubernetes service account of the runs' pods (cluster default if None).

    Returns:
        The recurring run's ID and UI link.

    Raises:
        ClusterError: If the cron expression or concurrency is invalid, the package is missing,
            the host unreachable or the API refuses the schedule.
    """
    import kfp_server_api

    cron_expression = normalize_cron(cron)
    if max_concurrency < 1:
        raise ClusterError(f"max_concurrency must be at least 1, got {max_concurrency}")
    package = _package(package_path)
    client = make_client(host, token_env)
    host = _normalize_host(host)
    try:
        experiment_id = _experiment_id(client, experiment)
        job = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name or f"{package.stem}-schedule",
            cron_expression=cron_expression,
            max_concurrency=max_concurrency,
            no_catchup=no_catchup,
            params=dict(parameters),
            pipeline_package_path=str(package),
            service_account=service_account,
        )
    except (kfp_server_api.ApiException, ValueError) as error:
        raise _api_error("create the schedule", host, error) from error
    logger.info("scheduled %s on %s with cron %r", job.recurring_run_id, host, cron_expression)
    return ScheduledJob(job_id=job.recurring_run_id, url=f"{host}/#/recurringrun/details/{job.recurring_run_id}")


@dataclass(frozen=True)
class RegisteredByRun:
    """The model version a finished pipeline run registered.

    Attributes:
        model_name: Registered model name.
        version: Version number, as MLflow prints it.
        parent_run_id: The run's MLflow parent run, which carries the registration tag.
        tracking_uri: Where it was found.
    """

    model_name: str
    version: str
    parent_run_id: str
    tracking_uri: str

    def output_lines(self, run_id: str) -> str:
        """``key=value`` lines: readable by a shell and GitHub Actions' ``$GITHUB_OUTPUT`` format."""
        return (
            f"kfp_run_id={run_id}\nmodel_name={self.model_name}\nmodel_version={self.version}\n"
            f"mlflow_parent_run_id={self.parent_run_id}\n"
        )


def find_registered_version(tracking_uri: str, experiment: str, run_key: str) -> RegisteredByRun:
    """The model version that the pipeline run keyed ``run_key`` registered, read from MLflow.

    The pipeline's start-tracking step tags its MLflow parent run with the run's key (the
    KFP run ID, or ``run_identity`` when one is given) and the register step tags the same
    parent run with ``<model>/<version>``; this reads both back, so CI can promote exactly
    the version its own run registered, whatever ``challenger`` points at by then.

    Args:
        tracking_uri: The MLflow URI the pipeline run used.
        experiment: Its MLflow experiment.
        run_key: The KFP run ID, or the run's ``run_identity``.

    Raises:
        TrackingError: MLflow cannot be read, or no parent run / no registration is found.
    """
    from nasflow import tracking
    from nasflow.errors import TrackingError
    from nasflow.registry._mlflow import tracking_errors
    from nasflow.registry.registration import REGISTERED_VERSION_TAG

    with tracking_errors(tracking_uri, f"find the version run {run_key} registered"):
        client = tracking.make_client(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        parent_id = None if found is None else tracking.find_parent_run(client, found.experiment_id, run_key)
        if parent_id is None:
            raise TrackingError(
                f"no MLflow parent run tagged {tracking.PIPELINE_JOB_TAG}={run_key} in experiment "
                f"{experiment!r} at {tracking_uri}; cannot tell which model version the run registered"
            )
        tag = client.get_run(parent_id).data.tags.get(REGISTERED_VERSION_TAG, "")
    model_name, _, version = tag.rpartition("/")
    if not model_name or not version:
        raise TrackingError(
            f"MLflow parent run {parent_id} of run {run_key} at {tracking_uri} has no "
            f"{REGISTERED_VERSION_TAG} tag: the run registered no model"
        )
    return RegisteredByRun(model_name, version, parent_id, tracking_uri)


def report_registered_version(parameters: dict[str, Any], run_id: str, output_file: str | None) -> RegisteredByRun:
    """Print (and append to ``output_file``) the version a finished run registered; see :func:`find_registered_version`.

    Raises:
        TrackingError: No tracking URI is known here (neither the run's ``tracking_uri``
            parameter nor ``MLFLOW_TRACKING_URI``), or the version cannot be found.
    """
    from nasflow.errors import TrackingError

    uri = parameters.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise TrackingError(
            "cannot tell which model version the run registered: set --tracking-uri or MLFLOW_TRACKING_URI "
            "to the MLflow server the cluster's runs use"
        )
    key = parameters.get("run_identity") or run_id
    registered = find_registered_version(uri, parameters.get("experiment") or DEFAULT_EXPERIMENT, key)
    print(f"model_name: {registered.model_name}\nmodel_version: {registered.version}", flush=True)
    if output_file:
        with open(output_file, "a", encoding="utf-8") as handle:
            handle.write(registered.output_lines(run_id))
    return registered
