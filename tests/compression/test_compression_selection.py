import pytest

from nasflow.compression.selection import VariantResult, select_variant
from nasflow.errors import CompressionError


def result(name, accuracy, size, latency, test_accuracy=None):
    """A measured variant; ``accuracy`` is its validation accuracy (what selection uses)."""
    return VariantResult(
        name=name,
        technique="t",
        path=f"{name}.tflite",
        val_accuracy=accuracy,
        accuracy=accuracy if test_accuracy is None else test_accuracy,
        size_bytes=size,
        gzip_bytes=size // 2,
        latency_p50_ms=latency,
        latency_p95_ms=latency * 1.2,
        params=100,
        sparsity=0.0,
    )


BASE = result("float32", 0.95, 100_000, 1.0)
SMALL_SLOW = result("int8", 0.945, 25_000, 1.1)  # 0.5-point drop
MID_FAST = result("float16", 0.948, 50_000, 0.5)  # 0.2-point drop
TINY_BAD = result("magnitude_prune+int8", 0.92, 10_000, 0.4)  # 3-point drop
EXACT = result("dynamic", 0.94, 30_000, 0.9)  # exactly 1.0 point in float arithmetic terms


@pytest.mark.parametrize(
    "variants,max_drop,prefer,expected",
    [
        ([SMALL_SLOW, MID_FAST, TINY_BAD], 1.0, "size", "int8"),  # the tiny one is over the threshold
        ([SMALL_SLOW, MID_FAST, TINY_BAD], 5.0, "size", "magnitude_prune+int8"),  # within a looser threshold
        ([SMALL_SLOW, MID_FAST, TINY_BAD], 1.0, "latency", "float16"),
        ([SMALL_SLOW, MID_FAST, TINY_BAD], 0.3, "size", "float16"),  # int8's 0.5 points is now too much
        ([SMALL_SLOW, MID_FAST, TINY_BAD], 1.0, "gzip_size", "int8"),
        ([EXACT], 1.0, "size", "dynamic"),  # a drop of exactly the threshold qualifies
        ([TINY_BAD], 1.0, "size", "float32"),  # none qualifies
        ([SMALL_SLOW], 1.0, "latency", "float32"),  # qualifies but slower than the baseline
        ([], 1.0, "size", "float32"),
    ],
)
def test_selection_policy(variants, max_drop, prefer, expected):
    name, reason = select_variant(BASE, variants, max_accuracy_drop=max_drop, prefer=prefer)
    assert name == expected
    assert "\n" not in reason and reason


def test_reason_explains_with_numbers():
    name, reason = select_variant(BASE, [SMALL_SLOW, MID_FAST, TINY_BAD], 1.0, "size")
    assert name == "int8"
    assert "4.00x" in reason and "2 of 3" in reason and "0.50 points" in reason


def test_none_qualifies_reason_names_the_closest():
    name, reason = select_variant(BASE, [TINY_BAD], 1.0, "size")
    assert name == "float32"
    assert "none of 1" in reason and "magnitude_prune+int8 drops 3.00 points" in reason


def test_validation_decides_and_test_accuracy_does_not():
    # int8 looks lossless on the test split but loses 2 points on validation; float16 is the
    # other way round. Choosing on the test split (the old behaviour) would ship int8.
    baseline = result("float32", 0.95, 100_000, 1.0, test_accuracy=0.95)
    int8 = result("int8", 0.93, 25_000, 1.0, test_accuracy=0.95)
    float16 = result("float16", 0.95, 50_000, 1.0, test_accuracy=0.90)
    name, reason = select_variant(baseline, [int8, float16], max_accuracy_drop=1.0, prefer="size")
    assert name == "float16", reason
    assert "1 of 2" in reason and "validation accuracy 95.00%" in reason

    # Any test accuracies at all leave the choice unchanged.
    for test_accuracies in ([0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, 0.99, 0.2]):
        for row, test_accuracy in zip((baseline, int8, float16), test_accuracies, strict=True):
            row.accuracy = test_accuracy
        assert select_variant(baseline, [int8, float16], 1.0, "size")[0] == "float16"


def test_a_variant_without_validation_accuracy_is_refused():
    unmeasured = VariantResult("int8", "t", "int8.tflite", 0.9, 1, 1, 1.0, 1.0, 1, 0.0)
    with pytest.raises(CompressionError, match="no validation accuracy"):
        select_variant(BASE, [unmeasured], 1.0, "size")


@pytest.mark.parametrize(
    "kwargs,match", [({"prefer": "speed"}, "size, gzip_size, latency"), ({"max_accuracy_drop": -1}, ">= 0")]
)
def test_invalid_policy_is_rejected(kwargs, match):
    with pytest.raises(CompressionError, match=match):
        select_variant(BASE, [SMALL_SLOW], **kwargs)
