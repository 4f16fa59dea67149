"""Registration, serving and the promotion gate against a real ``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import create_tagged_version, free_port, running_mlflow_server, wait_until_healthy

from nasflow.config import CHALLENGER_ALIAS, CHAMPION_ALIAS
from nasflow.errors import PromotionRefused, TrackingError
from nasflow.registry._mlflow import SERVED_FORMAT_TAG, TEST_METRIC_NAME_TAG, TEST_METRIC_TAG
from nasflow.registry.lock import LOCK_SUFFIX
from nasflow.registry.promotion import AUDIT_TAG_PREFIX, PROMOTION_TAG_PREFIX, decide_promotion, promote
from nasflow.registry.registration import register_model
from nasflow.registry.serving import to_probabilities


@pytest.fixture(scope="module")
def booting_server(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow"), wait=False) as uri:
        yield uri


@pytest.fixture(scope="module")
def server_uri(booting_server, trained):
    """The server, once healthy; it boots while ``trained`` trains the model."""
    wait_until_healthy(booting_server)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(booting_server)
    try:
        yield booting_server
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def client(server_uri):
    return MlflowClient(tracking_uri=server_uri, registry_uri=server_uri)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CNN trained 1 epoch on digits, saved as .keras and as an int8 .tflite."""
    import keras
    from sklearn.datasets import load_digits

    from nasflow.litert import LiteRTModel, convert_keras_model

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("model")
    keras_path = folder / "model.keras"
    model.save(keras_path)
    tflite_bytes = convert_keras_model(model, "int8", x_train)
    tflite_path = folder / "model_int8.tflite"
    tflite_path.write_bytes(tflite_bytes)
    keras_accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=-1) == y_test))
    tflite_accuracy = LiteRTModel(tflite_bytes).accuracy(x_test, y_test)
    return {
        "keras_path": str(keras_path),
        "tflite_path": str(tflite_path),
        "x_test": x_test,
        "y_test": y_test,
        "keras_accuracy": keras_accuracy,
        "tflite_accuracy": tflite_accuracy,
    }


@pytest.fixture(scope="module")
def registered(server_uri, trained):
    versions = {}
    for serve in ("keras", "tflite"):
        versions[serve] = register_model(
            keras_model_path=trained["keras_path"],
            tflite_path=trained["tflite_path"],
            serve=serve,
            model_name=f"digits-{serve}",
            test_metric_name="accuracy",
            test_metric_value=trained[f"{serve}_accuracy"],
            input_example=trained["x_test"][:3],
            tags={"nasflow.dataset": "digits"},
            tracking_uri=server_uri,
        )
    return versions


@pytest.mark.parametrize("serve", ["keras", "tflite"])
def test_challenger_serves_probabilities_close_to_keras(serve, registered, trained):
    version = registered[serve]
    assert version.alias == CHALLENGER_ALIAS
    assert version.uri == f"models:/digits-{serve}/{version.version}"

    model = mlflow.pyfunc.load_model(f"models:/digits-{serve}@{CHALLENGER_ALIAS}")
    probabilities = model.predict(trained["x_test"])

    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(trained["x_test"]), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(np.argmax(probabilities, axis=-1) == trained["y_test"]))
    assert abs(accuracy - trained["keras_accuracy"]) <= 0.02
    assert trained["keras_accuracy"] > 0.5  # the comparison means something


def test_version_carries_both_model_files_and_metric_tags(registered, trained, client, tmp_path):
    version = registered["tflite"]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=str(tmp_path)))
    assert (local / "artifacts" / "model_int8.tflite").read_bytes() == Path(
        trained["tflite_path"]
    ).read_bytes()
    assert (local / "artifacts" / "model.keras").read_bytes() == Path(trained["keras_path"]).read_bytes()

    details = client.get_model_version(version.name, version.version)
    assert float(details.tags[TEST_METRIC_TAG]) == pytest.approx(trained["tflite_accuracy"])
    assert details.tags[TEST_METRIC_NAME_TAG] == "accuracy"
    assert details.tags[SERVED_FORMAT_TAG] == "tflite"
    assert details.tags["nasflow.dataset"] == "digits"
    assert details.run_id == version.run_id
    assert (
        client.get_run(version.run_id).data.tags["nasflow.registered_version"]
        == f"{version.name}/{version.version}"
    )


def test_first_promotion_of_a_registered_model_sets_champion(registered, server_uri, client):
    decision = promote("digits-keras", tracking_uri=server_uri, actor="test")
    assert decision.promoted and decision.champion_version is None
    assert decision.version == registered["keras"].version
    assert client.get_registered_model("digits-keras").aliases[CHAMPION_ALIAS] == registered["keras"].version


def _snapshot(client, name):
    model = client.get_registered_model(name)
    versions = {v.version: dict(v.tags) for v in client.search_model_versions(f"name='{name}'")}
    return dict(model.aliases), dict(model.tags), versions


def _audit_records(client, name):
    tags = client.get_registered_model(name).tags
    return [json.loads(value) for key, value in sorted(tags.items()) if key.startswith(AUDIT_TAG_PREFIX)]


def test_gate_promotes_refuses_and_is_idempotent(server_uri, client):
    name = "gate"
    v90 = create_tagged_version(client, name, 0.90)
    v85 = create_tagged_version(client, name, 0.85)
    v93 = create_tagged_version(client, name, 0.93)
    v95 = create_tagged_version(client, name, 0.95)

    first = promote(name, v90, min_improvement=0.05, tracking_uri=server_uri, actor="alice")
    assert first.promoted and first.champion_version is None and first.candidate_metric == pytest.approx(0.90)

    worse = promote(name, v85, min_improvement=0.0, tracking_uri=server_uri, actor="bob")
    assert not worse.promoted
    assert (worse.champion_version, worse.champion_metric) == (v90, pytest.approx(0.90))
    tags = client.get_model_version(name, v85).tags
    assert tags[PROMOTION_TAG_PREFIX + "decision"] == "refused"
    assert tags[PROMOTION_TAG_PREFIX + "reason"] == worse.reason
    assert tags[PROMOTION_TAG_PREFIX + "champion_version"] == v90
    assert float(tags[PROMOTION_TAG_PREFIX + "champion_metric"]) == pytest.approx(0.90)
    assert tags[PROMOTION_TAG_PREFIX + "by"] == "bob" and tags[PROMOTION_TAG_PREFIX + "at"]

    not_enough = promote(name, v93, min_improvement=0.05, tracking_uri=server_uri)
    assert not not_enough.promoted
    assert client.get_registered_model(name).aliases[CHAMPION_ALIAS] == v90

    # 0.95 - 0.90 is 0.0499999... in floating point: still "by >= 0.05".
    client.set_registered_model_alias(name, CHALLENGER_ALIAS, v95)
    better = promote(name, min_improvement=0.05, tracking_uri=server_uri, actor="carol")
    assert better.promoted and better.version == v95 and better.champion_version == v90
    assert client.get_registered_model(name).aliases[CHAMPION_ALIAS] == v95
    assert client.get_model_version(name, v95).tags[PROMOTION_TAG_PREFIX + "decision"] == "promoted"

    before = _snapshot(client, name)
    again = promote(name, v95, min_improvement=0.05, tracking_uri=server_uri, actor="dave")
    assert again.promoted and "already" in again.reason
    assert _snapshot(client, name) == before

    audit = _audit_records(client, name)
    assert [(r["version"], r["event"]) for r in audit] == [
        (v90, "promoted"), (v85, "refused"), (v93, "refused"), (v95, "promoted")
    ]  # fmt: skip
    assert audit[-1]["champion_version"] == v90 and audit[-1]["champion_metric"] == pytest.approx(0.90)
    assert audit[-1]["candidate_metric"] == pytest.approx(0.95) and audit[-1]["by"] == "carol"
    assert audit[-1]["run_id"] == client.get_model_version(name, v95).run_id
    assert not client.search_model_versions(f"name = '{name}{LOCK_SUFFIX}'")  # every ticket released


def test_gate_errors_name_the_uri(server_uri, client):
    name = "gate-errors"
    untagged = create_tagged_version(client, name, None)
    with pytest.raises(TrackingError, match=re.escape(server_uri)) as missing_tag:
        promote(name, untagged, tracking_uri=server_uri)
    assert TEST_METRIC_TAG in str(missing_tag.value)
    with pytest.raises(TrackingError, match="does not exist"):
        promote("no-such-model", "1", tracking_uri=server_uri)
    with pytest.raises(TrackingError, match="does not exist"):
        promote(name, "99", tracking_uri=server_uri)
    with pytest.raises(TrackingError, match=CHALLENGER_ALIAS):
        promote(name, tracking_uri=server_uri)
    tagged = create_tagged_version(client, name, 0.9, metric_name="f1")
    with pytest.raises(TrackingError, match="'f1', not 'accuracy'"):
        promote(name, tagged, metric_name="accuracy", tracking_uri=server_uri)
    with pytest.raises(PromotionRefused):
        promote(name, tagged, min_improvement=-0.1, tracking_uri=server_uri)


def test_unreachable_server_raises_one_line_tracking_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=re.escape(uri)) as error:
        promote("anything", tracking_uri=uri)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "candidate,champion,min_improvement,expected",
    [
        (0.90, None, 0.0, True),
        (0.10, None, 0.5, True),
        (0.95, 0.90, 0.0, True),
        (0.95, 0.90, 0.05, True),  # floating-point difference 0.04999999999999993
        (0.95, 0.90, 0.06, False),
        (0.90, 0.90, 0.0, True),
        (0.90, 0.90, 0.01, False),
        (0.85, 0.90, 0.0, False),
        (math.nan, 0.90, 0.0, False),
        (math.nan, None, 0.0, False),
        (0.90, math.nan, 0.0, True),
    ],
)
def test_decide_promotion(candidate, champion, min_improvement, expected):
    promoted, reason = decide_promotion(candidate, champion, min_improvement)
    assert promoted is expected
    assert reason and "\n" not in reason


@pytest.mark.parametrize("min_improvement", [-0.01, math.nan, math.inf])
def test_decide_promotion_rejects_bad_threshold(min_improvement):
    with pytest.raises(PromotionRefused, match="min_improvement"):
        decide_promotion(0.9, 0.8, min_improvement)


@pytest.mark.parametrize(
    "scores,outputs,expected",
    [
        ([[2.0, 0.0]], "logits", [[0.880797, 0.119203]]),
        ([[0.5, 0.49]], "probabilities", [[0.505051, 0.494949]]),
        ([[-0.01, 1.0]], "probabilities", [[0.0, 1.0]]),
        ([[0.0, 0.0]], "probabilities", [[0.5, 0.5]]),
    ],
)
def test_to_probabilities(scores, outputs, expected):
    result = to_probabilities(np.array(scores), outputs)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-5)
