"""Tests of nasflow.data on real files: bundled sets, tiny generated files and the bad-dataset corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from nasflow.data import (
    BUNDLED_DATASETS,
    METADATA_FILE,
    SPLITS_FILE,
    DatasetMetadata,
    RawDataset,
    load_prepared,
    load_raw_dataset,
    prepare_dataset,
    save_splits,
    split_dataset,
    validate_raw_dataset,
)
from nasflow.errors import DataError

CORPUS = Path(__file__).parent / "bad_inputs" / "datasets"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text())


def _table(n_per_class: tuple[int, ...], n_features: int = 3, seed: int = 0) -> RawDataset:
    """A tabular raw dataset whose feature 0 is the sample's index, so splits can be traced back."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, label) for label, n in enumerate(n_per_class)]).astype(np.int64)
    x = rng.normal(size=(len(y), n_features))
    x[:, 0] = np.arange(len(y))
    return RawDataset(x=x, y=y, class_names=[f"c{i}" for i in range(len(n_per_class))], modality="tabular",
                      name="table", source="table.npz", feature_names=[f"f{i}" for i in range(n_features)])


def _sample_ids(x: np.ndarray, normalization: dict) -> np.ndarray:
    """Undo standardization of feature 0 to recover the sample indices."""
    return np.rint(x[:, 0] * normalization["std"][0] + normalization["mean"][0]).astype(int)


def _write_images(root: Path, classes: dict[str, int], size=(6, 5), mode="L", suffix=".png") -> None:
    rng = np.random.default_rng(1)
    channels = 1 if mode == "L" else 3
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / name / f"{index}{suffix}")


# --------------------------------------------------------------------------- bad-dataset corpus


def test_corpus_and_expected_yaml_list_the_same_entries():
    on_disk = {path.name for path in CORPUS.iterdir()} - {"expected.yaml"}
    assert on_disk == set(EXPECTED)
    assert len(EXPECTED) >= 12


@pytest.mark.parametrize("name,expected", sorted(EXPECTED.items()))
def test_bad_dataset_is_rejected_with_one_line_naming_the_file(name, expected, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        prepare_dataset(str(CORPUS / name), output)
    message = str(caught.value)
    assert name in message
    assert expected in message
    assert "\n" not in message and "\r" not in message
    assert not output.exists()


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    "name,modality,input_shape,num_classes,n_samples,scale",
    [
        ("mnist-5k", "image", [28, 28, 1], 10, 5000, 1 / 255),
        ("digits", "image", [8, 8, 1], 10, 1797, 1 / 16),
        ("wine", "tabular", [13], 3, 178, None),
        ("iris", "tabular", [4], 3, 150, None),
        ("breast_cancer", "tabular", [30], 2, 569, None),
    ],
)
def test_bundled_dataset_loads_with_expected_shape_and_range(name, modality, input_shape, num_classes, n_samples, scale):
    raw = load_raw_dataset(name)
    validate_raw_dataset(raw)
    splits = split_dataset(raw)
    meta = splits.metadata
    assert (meta.name, meta.modality, meta.input_shape, meta.num_classes) == (name, modality, input_shape, num_classes)
    assert sum(sum(per_class.values()) for per_class in meta.counts.values()) == n_samples
    assert list(splits.x_train.shape[1:]) == input_shape
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int64
    if modality == "image":
        assert meta.normalization == {"kind": "scale", "scale": pytest.approx(scale)}
        every_x = np.concatenate([splits.x_train, splits.x_val, splits.x_test])
        assert every_x.min() == 0.0 and every_x.max() == 1.0
    else:
        assert meta.normalization["kind"] == "standardize"
        assert meta.feature_names is not None and len(meta.feature_names) == input_shape[0]
    assert name in BUNDLED_DATASETS


@pytest.mark.parametrize(
    "source,expected",
    [
        ("keras:foo", "keras:foo: unknown Keras dataset (known: keras:mnist, keras:fashion_mnist, keras:cifar10)"),
        ("missing.npz", "missing.npz: file not found"),
        ("mnist", "mnist: file not found (bundled datasets: mnist-5k, digits"),
    ],
)
def test_unknown_source_is_a_data_error(source, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        load_raw_dataset(source)


def test_csv_with_string_labels_maps_them_to_sorted_classes(tmp_path):
    rows = [{"size": float(i), "weight": float(i % 3), "kind": ["dog", "cat", "emu"][i % 3]} for i in range(30)]
    path = tmp_path / "animals.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    meta = prepare_dataset(str(path), tmp_path / "out", label_column="kind")
    assert meta.class_names == ["cat", "dog", "emu"]
    assert meta.feature_names == ["size", "weight"]
    assert meta.input_shape == [2] and meta.name == "animals.csv" and meta.source == str(path)
    assert meta.counts["train"] == {"cat": 6, "dog": 6, "emu": 6}
    splits = load_prepared(tmp_path / "out")
    # Recover the label of each training row from its raw 'size' (which is the row index).
    sizes = np.rint(splits.x_train[:, 0] * meta.normalization["std"][0] + meta.normalization["mean"][0]).astype(int)
    names = np.array(meta.class_names)[splits.y_train]
    assert list(names) == [["dog", "cat", "emu"][size % 3] for size in sizes]


def test_parquet_with_integer_labels(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20) * 2, "target": [3, 7] * 10}).to_parquet(path)
    meta = prepare_dataset(str(path), tmp_path / "out", label_column="target")
    assert meta.class_names == ["3", "7"]
    assert meta.modality == "tabular" and meta.input_shape == [2]


@pytest.mark.parametrize(
    "x_shape,max_value,input_shape,scale",
    [
        ((20, 5), 9.0, [5], None),
        ((20, 4, 3), 255, [4, 3, 1], 1 / 255),
        ((20, 4, 3), 1.0, [4, 3, 1], 1.0),
        ((20, 4, 3, 3), 200, [4, 3, 3], 1 / 255),
    ],
)
def test_npz_rank_selects_modality_and_scale(x_shape, max_value, input_shape, scale, tmp_path):
    x = np.linspace(0, max_value, num=int(np.prod(x_shape))).reshape(x_shape)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.array([0, 1] * 10))
    meta = prepare_dataset(str(path), tmp_path / "out")
    assert meta.input_shape == input_shape
    if scale is None:
        assert meta.modality == "tabular" and meta.normalization["kind"] == "standardize"
    else:
        splits = load_prepared(tmp_path / "out")
        assert meta.modality == "image" and meta.normalization["scale"] == pytest.approx(scale)
        assert 0.0 <= splits.x_train.min() and splits.x_train.max() <= 1.0


@pytest.mark.parametrize(
    "mode,suffix,channels",
    [("L", ".png", 1), ("RGB", ".png", 3), ("RGB", ".jpg", 3), ("L", ".jpeg", 1)],
)
def test_image_folder_loads_one_class_per_subfolder(mode, suffix, channels, tmp_path):
    root = tmp_path / "imgs"
    _write_images(root, {"cat": 6, "dog": 5, "emu": 7}, size=(6, 5), mode=mode, suffix=suffix)
    (root / "cat" / ".DS_Store").write_bytes(b"ignored")
    raw = load_raw_dataset(str(root))
    assert raw.x.shape == (18, 5, 6, channels) and raw.x.dtype == np.uint8
    assert raw.class_names == ["cat", "dog", "emu"]
    assert np.bincount(raw.y).tolist() == [6, 5, 7]
    if suffix == ".png":
        first = np.asarray(Image.open(root / "cat" / "0.png")).reshape(5, 6, channels)
        assert np.array_equal(raw.x[0], first)
    meta = prepare_dataset(str(root), tmp_path / "out")
    assert meta.input_shape == [5, 6, channels] and meta.normalization["scale"] == pytest.approx(1 / 255)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change,min_samples,expected",
    [
        (lambda raw: setattr(raw, "y", raw.y + 1), 5, "label 3 at sample 10 is outside 0..2"),
        (lambda raw: setattr(raw, "x", raw.x[:, :, None]), 5, "tabular x has shape (16, 3, 1); expected rank 2"),
        (lambda raw: setattr(raw, "y", raw.y.astype(np.float64)), 5, "y has dtype float64"),
        (lambda raw: None, 6, "class 'c0' has 5 samples (need at least 6) (and 1 more classes)"),
        (lambda raw: None, 0, "min_samples_per_class is 0"),
        (lambda raw: setattr(raw, "class_names", ["only"]), 5, "only 1 class (need at least 2)"),
    ],
)
def test_validate_raw_dataset_rejects(change, min_samples, expected):
    raw = _table((5, 5, 6))
    change(raw)
    with pytest.raises(DataError) as caught:
        validate_raw_dataset(raw, min_samples_per_class=min_samples)
    assert str(caught.value).startswith(f"table.npz: {expected}")


def test_validate_accepts_a_good_dataset():
    validate_raw_dataset(_table((5, 5, 6)))


# --------------------------------------------------------------------------- split


def test_split_is_stratified_disjoint_and_complete():
    raw = _table((50, 30, 20))
    splits = split_dataset(raw, val_fraction=0.2, test_fraction=0.2, seed=3)
    meta = splits.metadata
    assert meta.counts == {
        "train": {"c0": 30, "c1": 18, "c2": 12},
        "val": {"c0": 10, "c1": 6, "c2": 4},
        "test": {"c0": 10, "c1": 6, "c2": 4},
    }
    ids = {split: _sample_ids(getattr(splits, f"x_{split}"), meta.normalization) for split in ("train", "val", "test")}
    all_ids = np.concatenate(list(ids.values()))
    assert sorted(all_ids.tolist()) == list(range(100))
    for split in ids:
        assert np.array_equal(raw.y[ids[split]], getattr(splits, f"y_{split}"))


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    raw = _table((20, 20))
    first, again, other = (split_dataset(raw, seed=seed) for seed in (7, 7, 8))
    for name, array in first.arrays().items():
        assert np.array_equal(array, again.arrays()[name])
    assert not np.array_equal(first.x_test, other.x_test)
    assert first.metadata == again.metadata
    assert first.metadata.seed == 7 and other.metadata.seed == 8


def test_standardization_uses_train_statistics_only():
    raw = _table((20, 20), n_features=3)
    raw.x[:, 1] = 5.0  # constant feature
    raw.x[-1, 2] = 1e6  # an outlier, so full-data and train statistics differ clearly
    splits = split_dataset(raw, seed=0)
    norm = splits.metadata.normalization
    train_ids = _sample_ids(splits.x_train, norm)
    train_raw = raw.x[train_ids]
    assert norm["mean"] == pytest.approx(train_raw.mean(axis=0).tolist())
    assert norm["std"][0] == pytest.approx(train_raw[:, 0].std())
    assert norm["std"][1] == 1.0
    assert np.all(splits.x_train[:, 1] == 0.0)
    assert np.allclose(splits.x_train.mean(axis=0)[[0, 2]], 0.0, atol=1e-5)
    assert np.allclose(splits.x_train.std(axis=0)[[0, 2]], 1.0, atol=1e-4)
    assert norm["mean"][2] != pytest.approx(raw.x[:, 2].mean())


@pytest.mark.parametrize(
    "n_per_class,kwargs,expected",
    [
        ((10, 10), {"val_fraction": 0.0}, "val_fraction is 0.0, must be between 0 and 1"),
        ((10, 10), {"test_fraction": 1.2}, "test_fraction is 1.2"),
        ((10, 10), {"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction is 1"),
        ((10, 10, 2), {}, "class 'c2' has 2 samples, too few to appear in train, val and test"),
        ((10, 10, 10), {"test_fraction": 0.05}, "test split would hold 2 samples for 3 classes"),
        ((4, 30, 30), {"val_fraction": 0.1, "test_fraction": 0.1}, "split leaves class 'c0' with 0 samples in"),
    ],
)
def test_split_rejects_splits_that_lose_a_class(n_per_class, kwargs, expected):
    with pytest.raises(DataError, match="^table.npz: ") as caught:
        split_dataset(_table(n_per_class), **kwargs)
    assert expected in str(caught.value)


# --------------------------------------------------------------------------- files


def test_prepare_and_load_prepared_round_trip(tmp_path):
    meta = prepare_dataset("digits", tmp_path / "out", seed=5)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [METADATA_FILE, SPLITS_FILE]
    loaded = load_prepared(tmp_path / "out")
    assert loaded.metadata == meta
    expected = split_dataset(load_raw_dataset("digits"), seed=5)
    for name, array in expected.arrays().items():
        stored = loaded.arrays()[name]
        assert stored.dtype == array.dtype and np.array_equal(stored, array)
    assert loaded.x_train.dtype == np.float32 and loaded.y_test.dtype == np.int64


def test_metadata_round_trips_through_json():
    meta = split_dataset(_table((5, 6)), seed=1).metadata
    restored = DatasetMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert restored == meta
    assert restored.feature_names == ["f0", "f1", "f2"]


def test_metadata_from_dict_names_a_missing_field():
    data = split_dataset(_table((5, 6))).metadata.to_dict()
    del data["content_hash"]
    with pytest.raises(DataError, match="missing field 'content_hash'"):
        DatasetMetadata.from_dict(data)


def test_content_hash_is_stable_and_sensitive_to_data(tmp_path):
    path = tmp_path / "d.npz"
    x = np.arange(60.0).reshape(20, 3)
    np.savez(path, x=x, y=np.array([0, 1] * 10))
    first = prepare_dataset(str(path), tmp_path / "a").content_hash
    second = prepare_dataset(str(path), tmp_path / "b", seed=9).content_hash
    x[0, 0] = -1
    np.savez(path, x=x, y=np.array([0, 1] * 10))
    changed = prepare_dataset(str(path), tmp_path / "c").content_hash
    assert first == second != changed and len(first) == 64


def _break_metadata(directory: Path) -> None:
    (directory / METADATA_FILE).write_text("{not json")


def _drop_metadata_field(directory: Path) -> None:
    data = json.loads((directory / METADATA_FILE).read_text())
    del data["counts"]
    (directory / METADATA_FILE).write_text(json.dumps(data))


def _shrink_x_test(directory: Path) -> None:
    with np.load(directory / SPLITS_FILE) as archive:
        arrays = dict(archive)
    arrays["x_test"] = arrays["x_test"][:, :2]
    np.savez(directory / SPLITS_FILE, **arrays)


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda d: (d / SPLITS_FILE).unlink(), "splits.npz not found"),
        (lambda d: (d / METADATA_FILE).unlink(), "metadata.json not found"),
        (lambda d: (d / SPLITS_FILE).write_bytes(b"garbage"), "splits.npz: cannot read npz archive"),
        (_break_metadata, "metadata.json: invalid JSON"),
        (_drop_metadata_field, "metadata.json: dataset metadata: missing field 'counts'"),
        (_shrink_x_test, "x_test has shape (8, 2), metadata says samples are [3]"),
    ],
)
def test_load_prepared_rejects_damaged_output(damage, expected, tmp_path):
    directory = tmp_path / "prepared"
    splits = split_dataset(_table((20, 20)))
    save_splits(splits, directory)
    damage(directory)
    with pytest.raises(DataError) as caught:
        load_prepared(directory)
    assert "prepared" in str(caught.value) and expected in str(caught.value)


def test_load_prepared_names_a_missing_directory(tmp_path):
    with pytest.raises(DataError, match="nowhere: prepared dataset directory not found"):
        load_prepared(tmp_path / "nowhere")
