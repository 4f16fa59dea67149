"""Refuse a bad dataset or search space before a run creates anything.

``nasflow run`` calls :func:`check_run_inputs` before the pipeline starts: the dataset is
loaded and validated by the same functions data-prep calls (``nasflow.data``), and the
search space by the same parser the search step uses, so a typo in a path or a label
column costs one line and a second, not an MLflow parent run, a run folder and a failed
data-prep task. Files larger than :data:`FULL_CHECK_MAX_BYTES` are checked only for what
is cheap (existence, format, a table's label column); data-prep checks the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nasflow.errors import DataError, NasflowError

#: Files up to this size are loaded, validated and split once here (a second or two).
FULL_CHECK_MAX_BYTES = 64 * 1024 * 1024


def check_run_inputs(parameters: Mapping[str, Any]) -> None:
    """Check the dataset and search space of a run as data-prep and the search would.

    Raises:
        DataError: The dataset cannot be found, read or split.
        NasflowError: The search space is invalid or is for the other kind of data.
    """
    from nasflow.data import BUNDLED_DATASETS

    dataset = str(parameters["dataset"])
    space = str(parameters.get("search_space") or "")
    modality = None
    if dataset in BUNDLED_DATASETS:
        if space:
            modality = _full_check(dataset, parameters)
    elif dataset.startswith("keras:"):
        _check_keras_name(dataset)
        modality = "image"
    else:
        modality = _check_file(dataset, parameters)
    if space:
        _check_space(space, modality)


def _full_check(dataset: str, parameters: Mapping[str, Any]) -> str:
    """Load, validate and split as data-prep does (nothing is written); returns the modality."""
    from nasflow.data import load_raw_dataset, split_dataset, validate_raw_dataset

    raw = load_raw_dataset(dataset, label_column=str(parameters.get("label_column") or "label"))
    validate_raw_dataset(raw)
    split_dataset(raw, seed=int(parameters.get("seed", 42)))
    return raw.modality


def _check_keras_name(dataset: str) -> None:
    from nasflow.data import KERAS_DATASETS

    name = dataset.removeprefix("keras:")
    if name not in KERAS_DATASETS:
        known = ", ".join(f"keras:{known_name}" for known_name in KERAS_DATASETS)
        raise DataError(f"{dataset}: unknown Keras dataset (known: {known})")


def _check_file(dataset: str, parameters: Mapping[str, Any]) -> str | None:
    from nasflow.data import TABLE_SUFFIXES

    path = Path(dataset)
    if path.is_dir():
        return _full_check(dataset, parameters) if _folder_is_small(path) else "image"
    if not path.is_file() or path.stat().st_size <= FULL_CHECK_MAX_BYTES:
        # A missing file or a bad extension: the loader's own error, named as data-prep names it.
        return _full_check(dataset, parameters)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        _check_csv_header(path, dataset, str(parameters.get("label_column") or "label"))
        return "tabular"
    if suffix in TABLE_SUFFIXES:
        return "tabular"
    if suffix == ".npz":
        return None
    return _full_check(dataset, parameters)  # an unsupported extension: the loader's own error


def _folder_is_small(path: Path) -> bool:
    total = 0
    for item in path.rglob("*"):
        if item.is_file():
            total += item.stat().st_size
            if total > FULL_CHECK_MAX_BYTES:
                return False
    return True


def _check_csv_header(path: Path, dataset: str, label_column: str) -> None:
    import csv

    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    if label_column not in header:
        raise DataError(f"{dataset}: label column '{label_column}' not found (columns: {', '.join(header)})")


def _check_space(space: str, modality: str | None) -> None:
    from nasflow.spaces.schema import load_search_space, resolve_search_space

    loaded = load_search_space(resolve_search_space(space, modality or "image"))
    if modality is not None and loaded.modality != modality:
        raise NasflowError(
            f"search space {space} is for {loaded.modality} data but the dataset is {modality} data"
        )
