import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from digits_data import digits_splits, trained_classifier

from nasflow.compression import REPORT_FILES, VARIANTS, compress_model, parse_variant, technique_of
from nasflow.errors import CompressionError
from nasflow.litert import LiteRTModel


@pytest.fixture(scope="module")
def trained():
    data = digits_splits(1200, 250)

    def classifier():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    return trained_classifier(classifier, data.x_train, data.y_train), data


@pytest.mark.parametrize(
    "name,expected,technique",
    [
        ("int8", (None, "int8"), "quantization"),
        ("magnitude_prune", ("magnitude_prune", "float32"), "magnitude_pruning"),
        ("structured_prune+int8", ("structured_prune", "int8"), "structured_pruning+quantization"),
        ("distill+int8", ("distill", "int8"), "distillation+quantization"),
    ],
)
def test_parse_variant(name, expected, technique):
    assert parse_variant(name) == expected
    assert technique_of(name) == technique


def test_unknown_variant_lists_valid_names_before_any_work(trained, tmp_path):
    model, data = trained
    with pytest.raises(
        CompressionError, match="valid variants: float16, dynamic, int8, magnitude_prune"
    ) as error:
        compress_model(model, data, tmp_path / "out", ("int8", "prune_everything"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
    assert all(name in str(error.value) for name in VARIANTS)


def test_compress_model_end_to_end(trained, tmp_path):
    model, data = trained
    report = compress_model(
        model,
        data,
        tmp_path,
        ("float16", "magnitude_prune", "magnitude_prune+int8"),
        max_accuracy_drop=5.0,
        fine_tune_epochs=3,
    )

    assert report.baseline.name == "float32" and report.baseline.accuracy > 0.85
    assert [v.name for v in report.variants] == ["float16", "magnitude_prune", "magnitude_prune+int8"]
    for row in report.rows:
        content = Path(row.path).read_bytes()
        assert len(content) == row.size_bytes and row.gzip_bytes < row.size_bytes
        assert row.accuracy == pytest.approx(LiteRTModel(content).accuracy(data.x_test, data.y_test))
        assert row.val_accuracy == pytest.approx(LiteRTModel(content).accuracy(data.x_val, data.y_val))
        assert 0 < row.latency_p50_ms <= row.latency_p95_ms
    pruned, chained = report.result("magnitude_prune"), report.result("magnitude_prune+int8")
    assert pruned.sparsity == pytest.approx(0.8, abs=0.01) and chained.sparsity == pruned.sparsity
    assert pruned.gzip_bytes < report.baseline.gzip_bytes / 2.5
    assert chained.size_bytes < report.baseline.size_bytes / 3
    assert LiteRTModel(Path(chained.path).read_bytes()).input_dtype == np.int8
    assert "qat" in chained.details and "qat" not in pruned.details
    assert report.selected == "magnitude_prune+int8"  # smallest, and within the 5-point threshold

    for name in REPORT_FILES:
        assert (tmp_path / name).is_file()
    with open(tmp_path / "compression_report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["float32", "float16", "magnitude_prune", "magnitude_prune+int8"]
    assert [r["selected"] for r in rows] == ["False", "False", "False", "True"]
    markdown = (tmp_path / "compression_report.md").read_text()
    assert "| magnitude_prune+int8 **(selected)** |" in markdown and report.reason in markdown
    assert json.loads((tmp_path / "compression_report.json").read_text())["selected"] == report.selected
