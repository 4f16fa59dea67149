"""Regenerate the bad-dataset corpus in ``tests/bad_inputs/datasets/`` and its ``expected.yaml``.

The generated files are committed; run this only to change the corpus:
``python tests/bad_inputs/make_bad_datasets.py``. Each entry pairs a builder with a
substring the ``DataError`` message for that entry must contain.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

CORPUS = Path(__file__).resolve().parent / "datasets"


def _npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    return build


def _text(content: str | bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return build


def _csv_rows(header: str, rows: list[str]) -> Callable[[Path], None]:
    return _text("\n".join([header, *rows]) + "\n")


def _balanced_table(per_class: int = 6) -> tuple[list[str], list[str]]:
    """Rows ``a,b,label`` with ``per_class`` rows of classes ``x`` and ``y``."""
    rows = [f"{i},{i * 2},{'x' if i % 2 else 'y'}" for i in range(2 * per_class)]
    return ["a", "b", "label"], rows


def _image(path: Path, size: tuple[int, int] = (8, 8), mode: str = "L", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value, value)
    Image.new(mode, size, color).save(path)


def _image_folder(layout: dict[str, dict]) -> Callable[[Path], None]:
    """``layout`` maps ``class/file`` to keyword arguments of :func:`_image`, or bytes for a raw file."""

    def build(path: Path) -> None:
        path.mkdir()
        for relative, spec in layout.items():
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(spec, bytes):
                target.write_bytes(spec)
            else:
                _image(target, **spec)

    return build


def _parquet(frame: pd.DataFrame) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        frame.to_parquet(path, index=False)

    return build


_x = np.arange(40, dtype=np.float32).reshape(10, 4)
_y = np.repeat([0, 1], 5)
_x_nan = _x.copy()
_x_nan[4, 1] = np.nan
_x_nan[6, 0] = np.nan
_x_nan[7, 3] = np.nan
_x_inf = _x.copy()
_x_inf[2, 2] = np.inf
_header, _rows = _balanced_table()
_non_numeric = list(_rows)
_non_numeric[6] = "6,abc,y"
_missing_value = list(_rows)
_missing_value[3] = "3,,x"
_missing_label = list(_rows)
_missing_label[1] = "1,2,"

#: name -> (builder, substring the error message must contain).
ENTRIES: dict[str, tuple[Callable[[Path], None], str]] = {
    "nan_values.npz": (_npz(x=_x_nan, y=_y), "3 NaN/inf values in x (first at sample 4)"),
    "inf_values.npz": (_npz(x=_x_inf, y=_y), "1 NaN/inf values in x (first at sample 2)"),
    "xy_length_mismatch.npz": (_npz(x=np.zeros((12, 3)), y=np.repeat([0, 1], 5)), "x has 12 samples but y has 10"),
    "missing_y.npz": (_npz(x=_x), "missing array 'y' (found: x)"),
    "x_rank1.npz": (_npz(x=np.arange(10.0), y=_y), "x has rank 1"),
    "x_rank5.npz": (_npz(x=np.zeros((10, 2, 2, 1, 1)), y=_y), "x has rank 5"),
    "y_two_dimensional.npz": (_npz(x=_x, y=np.eye(2)[_y]), "y has shape (10, 2)"),
    "string_features.npz": (_npz(x=np.array([["a"]] * 10), y=_y), "x has dtype <U1"),
    "fractional_labels.npz": (_npz(x=_x, y=np.linspace(0, 1, 10)), "non-integer label"),
    "no_samples.npz": (_npz(x=np.zeros((0, 4)), y=np.zeros(0, dtype=np.int64)), "dataset has no samples"),
    "image_values_above_255.npz": (
        _npz(x=np.full((10, 4, 4), 300, dtype=np.uint16), y=_y), "image values span 300..300, expected 0..255",
    ),
    "corrupt.npz": (_text(b"this is not a zip archive"), "cannot read npz archive"),
    "single_class.csv": (_csv_rows("a,label", [f"{i},same" for i in range(8)]), "only 1 class (need at least 2)"),
    "too_few_per_class.csv": (
        _csv_rows("a,label", [f"{i},a" for i in range(6)] + ["6,b", "7,b"]), "class 'b' has 2 samples (need at least 5)",
    ),
    "empty.csv": (_text(""), "file is empty"),
    "header_only.csv": (_text("a,b,label\n"), "header but no data rows"),
    "missing_label_column.csv": (
        _csv_rows("a,b,c", [f"{i},{i},{i % 2}" for i in range(10)]), "label column 'label' not found (columns: a, b, c)",
    ),
    "no_feature_columns.csv": (_csv_rows("label", ["x", "y"] * 5), "no feature columns besides label column 'label'"),
    "non_numeric_feature.csv": (_csv_rows(",".join(_header), _non_numeric), "row 7, column 'b': non-numeric value 'abc'"),
    "missing_feature_value.csv": (_csv_rows(",".join(_header), _missing_value), "row 4, column 'b': missing value"),
    "missing_label_value.csv": (_csv_rows(",".join(_header), _missing_label), "row 2, column 'label': missing label"),
    "non_numeric_feature.parquet": (
        _parquet(pd.DataFrame({"a": ["1", "2", "oops"] + ["3"] * 9, "label": [0, 1] * 6})),
        "row 3, column 'a': non-numeric value 'oops'",
    ),
    "corrupt.parquet": (_text(b"PAR1 definitely not parquet"), "cannot read parquet file"),
    "unsupported_extension.txt": (_text("a,b,label\n1,2,x\n"), "unsupported extension '.txt'"),
    "mismatched_image_sizes": (
        _image_folder({"cat/1.png": {}, "cat/2.png": {}, "cat/3.png": {"size": (16, 16)}, "dog/1.png": {}}),
        "mismatched_image_sizes/cat/3.png is 16x16, expected 8x8 like",
    ),
    "mixed_image_modes": (
        _image_folder({"cat/1.png": {}, "dog/1.png": {"mode": "RGB"}}), "mixed_image_modes/dog/1.png has mode RGB, expected L",
    ),
    "corrupt_image": (
        _image_folder({"cat/1.png": {}, "dog/x.png": b"\x89PNG\r\n\x1a\n broken"}), "corrupt_image/dog/x.png: cannot read image",
    ),
    "unsupported_image_mode": (
        _image_folder({"cat/1.png": {"mode": "RGBA"}, "dog/1.png": {"mode": "RGBA"}}), "image mode 'RGBA' is not supported",
    ),
    "not_an_image_file": (
        _image_folder({"cat/1.png": {}, "cat/notes.txt": b"hello", "dog/1.png": {}}), "notes.txt: not a PNG/JPEG file",
    ),
    "no_class_folders": (_image_folder({"1.png": {}}), "no class sub-folders"),
    "empty_class_folder": (
        _image_folder({**{f"cat/{i}.png": {"value": i} for i in range(5)}, "dog/.gitkeep": b""}),
        "class 'dog' has 0 samples (need at least 5)",
    ),
}


def main() -> None:
    """Rebuild every corpus entry and ``expected.yaml`` from :data:`ENTRIES`."""
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    CORPUS.mkdir(parents=True)
    for name, (build, _) in ENTRIES.items():
        build(CORPUS / name)
    expected = {name: substring for name, (_, substring) in ENTRIES.items()}
    header = "# Bad-dataset corpus: entry name -> substring its DataError must contain.\n"
    header += "# Generated by tests/bad_inputs/make_bad_datasets.py; edit that file, not this one.\n"
    (CORPUS / "expected.yaml").write_text(header + yaml.safe_dump(expected, sort_keys=True, width=200))


if __name__ == "__main__":
    main()
