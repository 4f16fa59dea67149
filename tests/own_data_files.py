"""A user's own data files, written from scikit-learn's bundled data sets (a plain module on sys.path).

One writer per file kind nasflow reads: CSV (string or integer labels), Parquet, ``.npz``
and image folders (RGB or grayscale PNGs, one folder per class). Each returns the path it
wrote and the label column (``None`` where the kind has none), so a test can give both to
``nasflow run`` exactly as a user would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine

#: Wine cultivars by the names a winemaker would give them: labels that are words, not 0..2.
CULTIVARS = ("barolo", "barbera", "nebbiolo")
#: Class folders named by words (``zero``, ``one``...) rather than by numbers.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def wine_csv(folder: Path) -> tuple[Path, str | None]:
    """The wine table with a string label column ``cultivar``."""
    return _table(folder, load_wine(as_frame=True), "wines.csv", "cultivar", label_names=CULTIVARS)


def iris_csv(folder: Path) -> tuple[Path, str | None]:
    """The iris table with integer labels in the default column ``label``."""
    return _table(folder, load_iris(as_frame=True), "iris.csv", "label")


def cancer_parquet(folder: Path) -> tuple[Path, str | None]:
    """The breast-cancer table as Parquet, labels in ``diagnosis`` (0/1)."""
    return _table(folder, load_breast_cancer(as_frame=True), "cancer.parquet", "diagnosis")


def _table(
    folder: Path, bunch, file_name: str, label_column: str, label_names: Sequence[str] | None = None
) -> tuple[Path, str]:
    """A scikit-learn table, its target last as ``label_column`` (as words when ``label_names``).

    Written as Parquet or CSV by the file name's suffix.
    """
    frame = bunch.frame.drop(columns=["target"])
    frame[label_column] = [label_names[target] for target in bunch.target] if label_names else bunch.target
    path = folder / file_name
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path, label_column


def digits_npz(folder: Path) -> tuple[Path, str | None]:
    """``digits`` as an ``.npz`` of 8x8 images (``x``) and integer labels (``y``)."""
    bunch = load_digits()
    path = folder / "digits.npz"
    np.savez(path, x=bunch.images.astype("float32"), y=bunch.target)
    return path, None


def _image_folder(folder: Path, name: str, per_class: int, rgb: bool) -> Path:
    from PIL import Image

    bunch = load_digits()
    root = folder / name
    counts = dict.fromkeys(range(10), 0)
    for image, label in zip(bunch.images, bunch.target, strict=True):
        if counts[label] >= per_class:
            continue
        pixels = (image * (255.0 / 16.0)).round().astype("uint8")
        if rgb:
            # A tinted digit, so the three channels differ as in a real photo.
            pixels = np.stack([pixels, pixels // 2, 255 - pixels], axis=-1)
        class_dir = root / DIGIT_WORDS[label]
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(class_dir / f"{counts[label]:03d}.png")
        counts[label] += 1
    return root


def rgb_image_folder(folder: Path) -> tuple[Path, str | None]:
    """RGB PNGs of digits in word-named class folders (``zero/``, ``one/``...)."""
    return _image_folder(folder, "rgb_digits", per_class=30, rgb=True), None


def gray_image_folder(folder: Path) -> tuple[Path, str | None]:
    """Grayscale PNGs of digits in word-named class folders."""
    return _image_folder(folder, "gray_digits", per_class=30, rgb=False), None


#: Every kind, by the name tests use for it.
KINDS: dict[str, Callable[[Path], tuple[Path, str | None]]] = {
    "csv-string-labels": wine_csv,
    "csv-integer-labels": iris_csv,
    "parquet": cancer_parquet,
    "npz": digits_npz,
    "image-folder-rgb": rgb_image_folder,
    "image-folder-gray": gray_image_folder,
}
