"""Settings that are the same for every component of one release.

The image every component runs in is set here and only here: its tag is the package
version, and ``NASFLOW_IMAGE_REGISTRY`` (read when pipelines are compiled) points all
components at another registry without editing any of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from nasflow import __version__

DEFAULT_IMAGE_REGISTRY = "docker.io/nasflow"
IMAGE_NAME = "nasflow"

#: Default experiment and registered-model names.
DEFAULT_EXPERIMENT = "nasflow"
DEFAULT_MODEL_NAME = "nasflow-model"

#: The cluster's settings ConfigMap and MLflow credentials Secret (k8s/base); pipeline steps
#: and search workers read the tracking URI and credentials from them, never from literals.
CLUSTER_CONFIG_MAP = "nasflow-config"
CLUSTER_CREDENTIALS_SECRET = "nasflow-mlflow-credentials"
MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

#: Defaults of a pipeline run that belong to no narrower module; the search's own defaults
#: are those of ``nasflow.search.settings.SearchSettings`` and ``ObjectiveConfig``.
DEFAULT_DATASET = "mnist-5k"
DEFAULT_LABEL_COLUMN = "label"
DEFAULT_SEED = 42
DEFAULT_TRAIN_EPOCHS = 10
DEFAULT_COMPRESSION_VARIANTS = ("float16", "int8")
#: Largest accuracy drop (points) a compressed variant may have and still be selected.
DEFAULT_MAX_ACCURACY_DROP = 1.0
DEFAULT_PREFER = "size"

#: Aliases the registry uses instead of the deprecated stages.
CHALLENGER_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"


def image_reference(registry: str | None = None, gpu: bool = False) -> str:
    """The container image every component uses, tagged with the package version.

    Args:
        registry: Registry/namespace prefix; defaults to ``NASFLOW_IMAGE_REGISTRY`` or
            :data:`DEFAULT_IMAGE_REGISTRY`.
        gpu: Whether to name the CUDA variant of the image.

    Returns:
        A full image reference such as ``docker.io/nasflow/nasflow:0.1.0``.
    """
    prefix = (registry or os.environ.get("NASFLOW_IMAGE_REGISTRY") or DEFAULT_IMAGE_REGISTRY).rstrip("/")
    suffix = "-gpu" if gpu else ""
    return f"{prefix}/{IMAGE_NAME}:{__version__}{suffix}"


def repo_root() -> Path:
    """The source checkout (editable install) this package was imported from."""
    return Path(__file__).resolve().parents[1]


def search_spaces_dirs() -> list[Path]:
    """Folders that hold the bundled search spaces, in lookup order.

    An editable install finds them beside the package; a wheel/image install finds
    them under ``<prefix>/share/nasflow/search_spaces`` (``setup.cfg`` data_files).
    """
    import sys

    candidates = [repo_root() / "search_spaces", Path(sys.prefix) / "share" / "nasflow" / "search_spaces"]
    return [path for path in candidates if path.is_dir()]
