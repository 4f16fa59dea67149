"""Search spaces: bundled files, conditional declaration, sizes, builders, and bad input."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import tempfile
from pathlib import Path

import keras
import keras_tuner as kt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasflow.errors import InvalidArchitectureError, SearchSpaceError
from nasflow.spaces.schema import (
    HyperparameterSpec,
    SearchSpace,
    SearchSpaceHyperModel,
    describe_architecture,
    load_search_space,
    parse_search_space,
    resolve_search_space,
    search_space_size,
)

BAD_INPUTS = Path(__file__).resolve().parents[1] / "bad_inputs" / "search_spaces"
EXPECTED_ERRORS = yaml.safe_load((BAD_INPUTS / "expected.yaml").read_text(encoding="utf-8"))
BUNDLED = [("cnn", (8, 8, 1)), ("mobile_cnn", (8, 8, 1)), ("mlp", (13,))]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def bundled(name: str) -> SearchSpace:
    return load_search_space(resolve_search_space(name, "image"))


def hp_with(space: SearchSpace, **values) -> kt.HyperParameters:
    """A declared HyperParameters with some values chosen, as a tuner would set them."""
    hp = kt.HyperParameters()
    space.declare(hp)
    hp.values.update(values)
    return hp


def sample(space: SearchSpace, rng: random.Random) -> dict:
    """Random values for every hyperparameter (inactive ones included, as trials carry them)."""
    values = {}
    for spec in space.hyperparameters:
        if spec.type == "choice":
            values[spec.name] = rng.choice(spec.values)
        elif spec.type == "boolean":
            values[spec.name] = rng.random() < 0.5
        elif spec.type == "int":
            values[spec.name] = rng.randint(spec.min, spec.max)
        elif spec.type == "float":
            values[spec.name] = math.exp(rng.uniform(math.log(spec.min), math.log(spec.max)))
    return values


# --- bundled spaces ----------------------------------------------------------------------


@pytest.mark.parametrize("name,input_shape", BUNDLED)
def test_bundled_space_builds_a_compiled_softmax_model(name, input_shape):
    space = bundled(name)
    model = SearchSpaceHyperModel(space, input_shape, num_classes=10).build(kt.HyperParameters())
    assert model.output_shape == (None, 10)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.loss == "sparse_categorical_crossentropy"
    assert isinstance(model.optimizer, keras.optimizers.Adam)


@pytest.mark.parametrize("name,input_shape", BUNDLED)
def test_sampled_architectures_build_or_are_rejected_as_invalid(name, input_shape):
    space, rng = bundled(name), random.Random(1)
    built = 0
    for _ in range(4):
        try:
            model = space.build_model(hp_with(space, **sample(space, rng)), input_shape, 3)
        except InvalidArchitectureError:
            continue
        assert model.output_shape == (None, 3)
        built += 1
    assert built >= 1


@pytest.mark.parametrize("name", ["cnn", "mlp", "mobile_cnn"])
def test_to_dict_round_trips_through_yaml(name):
    space = bundled(name)
    again = parse_search_space(yaml.safe_load(yaml.safe_dump(space.to_dict())), space.source)
    assert again == space


def test_cnn_space_declares_the_fourteen_reference_hyperparameters():
    hp = kt.HyperParameters()
    bundled("cnn").declare(hp)
    assert len(hp.space) == 14
    assert [h.name for h in hp.space][:4] == ["num_blocks", "filters_0", "kernel_size_0", "batch_norm_0"]


def test_bundled_batch_sizes():
    assert (bundled("cnn").batch_size(), bundled("mlp").batch_size()) == (64, 32)


# --- conditional hyperparameters ---------------------------------------------------------


@pytest.mark.parametrize(
    "values,active,inactive",
    [
        ({"num_blocks": 1}, ["filters_0", "batch_norm_0"], ["filters_1", "kernel_size_1", "filters_2"]),
        ({"num_blocks": 2}, ["filters_1", "kernel_size_1"], ["filters_2", "batch_norm_2"]),
        ({"num_blocks": 3}, ["filters_2", "batch_norm_2"], []),
    ],
)
def test_cnn_block_hyperparameters_follow_num_blocks(values, active, inactive):
    hp = hp_with(bundled("cnn"), **values)
    assert all(hp.is_active(name) for name in active)
    assert not any(hp.is_active(name) for name in inactive)


@pytest.mark.parametrize(
    "values,expansion_active",
    [
        ({"block_type_0": "conv"}, {"expansion_0": False}),
        ({"block_type_0": "inverted_residual"}, {"expansion_0": True}),
        # Nested: stage 2 does not exist with two stages, so neither does its expansion.
        ({"num_stages": 2, "block_type_2": "inverted_residual"}, {"expansion_2": False}),
        ({"num_stages": 3, "block_type_2": "inverted_residual"}, {"expansion_2": True}),
    ],
)
def test_mobile_expansion_is_conditional_on_block_type_and_num_stages(values, expansion_active):
    hp = hp_with(bundled("mobile_cnn"), **values)
    assert {name: hp.is_active(name) for name in expansion_active} == expansion_active


def test_built_cnn_follows_the_chosen_blocks():
    space = bundled("cnn")
    values = {
        "num_blocks": 2,
        "batch_norm_0": True,
        "batch_norm_1": False,
        "filters_2": 64,
        "batch_norm_2": True,
    }
    model = space.build_model(hp_with(space, **values), (8, 8, 1), 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert (kinds.count("Conv2D"), kinds.count("BatchNormalization"), kinds.count("MaxPooling2D")) == (
        2,
        1,
        2,
    )


@pytest.mark.parametrize("stride,filters,has_shortcut", [(1, 16, True), (2, 16, False), (1, 32, False)])
def test_inverted_residual_adds_a_shortcut_only_when_shapes_match(stride, filters, has_shortcut):
    space = bundled("mobile_cnn")
    values = {
        "stem_filters": 16,
        "num_stages": 2,
        "block_type_0": "inverted_residual",
        "expansion_0": 3,
        "stride_0": stride,
        "filters_0": filters,
        "repeats_0": 1,
        "block_type_1": "conv",
        "stride_1": 1,
    }
    model = space.build_model(hp_with(space, **values), (8, 8, 1), 10)
    assert any(isinstance(layer, keras.layers.Add) for layer in model.layers) is has_shortcut


# --- sizes and descriptions --------------------------------------------------------------

SMALL_CNN = {
    "name": "small",
    "family": "cnn",
    "modality": "image",
    "hyperparameters": [
        {"name": "num_blocks", "type": "int", "min": 1, "max": 2},
        {
            "repeat": {
                "count": "num_blocks",
                "hyperparameters": [
                    {"name": "filters", "type": "choice", "values": [8, 16]},
                    {"name": "kernel_size", "type": "fixed", "value": 3},
                    {"name": "batch_norm", "type": "boolean"},
                ],
            }
        },
        {"name": "pooling", "type": "choice", "values": ["flatten", "global_avg"]},
        {"name": "dense_units", "type": "int", "min": 16, "max": 64, "step": 16},
        {"name": "learning_rate", "type": "choice", "values": [0.001, 0.01]},
    ],
}
SMALL_MOBILE = {
    "name": "small-mobile",
    "family": "mobile_cnn",
    "modality": "image",
    "hyperparameters": [
        {"name": "stem_filters", "type": "fixed", "value": 8},
        {"name": "num_stages", "type": "choice", "values": [1, 2]},
        {
            "repeat": {
                "count": "num_stages",
                "hyperparameters": [
                    {"name": "block_type", "type": "choice", "values": ["conv", "inverted_residual"]},
                    {
                        "name": "expansion",
                        "type": "choice",
                        "values": [3, 6],
                        "when": {"parent": "block_type", "values": ["inverted_residual"]},
                    },
                    {"name": "kernel_size", "type": "fixed", "value": 3},
                    {"name": "filters", "type": "fixed", "value": 8},
                    {"name": "stride", "type": "fixed", "value": 1},
                ],
            }
        },
        {"name": "pooling", "type": "fixed", "value": "global_avg"},
        {"name": "learning_rate", "type": "fixed", "value": 0.001},
    ],
}


def with_learning_rate(data: dict, entry: dict) -> dict:
    data = copy.deepcopy(data)
    data["hyperparameters"][-1] = entry
    return data


@pytest.mark.parametrize(
    "data,expected",
    [
        # Blocks: 1 block -> 2 filters x 2 bn = 4; 2 blocks -> 4 x 4 = 16; then x pooling 2,
        # dense 4 (16, 32, 48, 64), learning rate 2.
        (SMALL_CNN, (4 + 16) * 2 * 4 * 2),
        # A stage: conv (1) or inverted_residual x expansion (2) = 3; 1 stage 3, 2 stages 9.
        (SMALL_MOBILE, 3 + 9),
        (
            with_learning_rate(
                SMALL_CNN,
                {
                    "name": "learning_rate",
                    "type": "float",
                    "min": 0.001,
                    "max": 0.1,
                    "step": 10,
                    "sampling": "log",
                },
            ),
            (4 + 16) * 2 * 4 * 3,
        ),
        (
            with_learning_rate(
                SMALL_CNN, {"name": "learning_rate", "type": "float", "min": 0.001, "max": 0.1}
            ),
            None,
        ),
    ],
)
def test_search_space_size_counts_only_active_hyperparameters(data, expected):
    assert search_space_size(parse_search_space(data)) == expected


@pytest.mark.parametrize(
    "name,values,expected",
    [
        (
            "cnn",
            {
                "num_blocks": 2,
                "filters_0": 32,
                "kernel_size_0": 3,
                "batch_norm_0": True,
                "filters_1": 64,
                "kernel_size_1": 5,
                "batch_norm_1": False,
                "filters_2": 16,
                "pooling": "global_avg",
                "dense_units": 128,
                "dropout": 0.2,
                "learning_rate": 0.0012,
            },
            "conv32k3bn-conv64k5 | gap | dense128 drop0.2 | lr 1.2e-3",
        ),
        (
            "mlp",
            {
                "num_layers": 2,
                "units_0": 64,
                "dropout_0": 0.1,
                "units_1": 32,
                "dropout_1": 0.0,
                "activation": "gelu",
                "batch_norm": True,
                "learning_rate": 0.001,
            },
            "dense64 drop0.1-dense32 | gelu bn | lr 1.0e-3",
        ),
        (
            "mobile_cnn",
            {
                "stem_filters": 16,
                "num_stages": 2,
                "block_type_0": "inverted_residual",
                "expansion_0": 6,
                "kernel_size_0": 3,
                "filters_0": 24,
                "stride_0": 2,
                "repeats_0": 2,
                "squeeze_excite_0": True,
                "block_type_1": "depthwise_separable",
                "expansion_1": 3,
                "kernel_size_1": 5,
                "filters_1": 32,
                "stride_1": 1,
                "activation_1": "swish",
                "pooling": "global_max",
                "dense_units": 0,
                "dropout": 0.0,
                "learning_rate": 0.01,
            },
            "stem16 | ir6k3c24s2x2se-dwk5c32s1x1swish | gmp | linear | lr 1.0e-2",
        ),
    ],
)
def test_describe_architecture(name, values, expected):
    assert describe_architecture(bundled(name), values) == expected


# --- invalid architectures ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name,values,input_shape,message",
    [
        (
            "mobile_cnn",
            {"num_stages": 4, **{f"stride_{i}": 2 for i in range(5)}},
            (8, 8, 1),
            "stage 3: spatial size 1x1 would become 0x0 after stride 2",
        ),
        (
            "cnn",
            {"num_blocks": 3},
            (4, 4, 1),
            "block 2: spatial size 1x1 would become 0x0 after 2x2 max-pool",
        ),
        ("cnn", {}, (13,), "input shape (13,) is not an image shape"),
    ],
)
def test_impossible_architectures_raise_before_any_layer_is_built(name, values, input_shape, message):
    space = bundled(name)
    hp = hp_with(space, **values)
    # Keras numbers auto-named layers with a global counter; it must not move.
    before = keras.backend.get_uid("input_layer")
    with pytest.raises(InvalidArchitectureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        space.build_model(hp, input_shape, 10)
    assert keras.backend.get_uid("input_layer") == before + 1


def test_stride_two_stages_that_fit_build():
    space = bundled("mobile_cnn")
    values = {"num_stages": 3, **{f"stride_{i}": 2 for i in range(5)}}
    assert space.build_model(hp_with(space, **values), (8, 8, 1), 10).output_shape == (None, 10)


# --- resolving and loading ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name_or_path,modality,expected_file",
    [
        (None, "image", "cnn.yaml"),
        ("", "tabular", "mlp.yaml"),
        ("mobile_cnn", "image", "mobile_cnn.yaml"),
        ("mobile_cnn.yaml", "image", "mobile_cnn.yaml"),
    ],
)
def test_resolve_bundled_spaces(name_or_path, modality, expected_file):
    path = resolve_search_space(name_or_path, modality)
    assert path.name == expected_file and path.is_file()


def test_resolve_a_path_and_errors(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("x: 1\n")
    assert resolve_search_space(str(own), "image") == own
    with pytest.raises(
        SearchSpaceError, match="resnet: search space not found .*bundled: cnn, mlp, mobile_cnn"
    ):
        resolve_search_space("resnet", "image")
    with pytest.raises(SearchSpaceError, match="modality 'audio' is unknown"):
        resolve_search_space(None, "audio")


@pytest.mark.parametrize(
    "make,message", [(lambda p: p / "missing.yaml", "file not found"), (lambda p: p, "cannot read file")]
)
def test_load_reports_unreadable_files(tmp_path, make, message):
    with pytest.raises(SearchSpaceError, match=message):
        load_search_space(make(tmp_path))


# --- bad input ---------------------------------------------------------------------------


def test_bad_input_corpus_is_complete():
    files = {p.name for p in BAD_INPUTS.glob("*.yaml")} - {"expected.yaml"}
    assert files == set(EXPECTED_ERRORS) and len(files) >= 20


@pytest.mark.parametrize("file_name", sorted(EXPECTED_ERRORS))
def test_bad_search_space_files_are_rejected_with_one_line(file_name):
    with pytest.raises(SearchSpaceError) as caught:
        load_search_space(BAD_INPUTS / file_name)
    message = str(caught.value)
    assert file_name in message
    assert EXPECTED_ERRORS[file_name] in message
    assert len(message.splitlines()) == 1


SPACE_KEYS = [
    "name",
    "family",
    "modality",
    "hyperparameters",
    "training",
    "type",
    "min",
    "max",
    "step",
    "sampling",
    "values",
    "default",
    "value",
    "when",
    "parent",
    "repeat",
    "count",
    "batch_size",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.sampled_from(["cnn", "mlp", "image", "int", "choice", "log", "num_blocks", "filters", "\n"])
    | st.text(max_size=6)
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(SPACE_KEYS) | SCALARS, inner, max_size=5)
    ),
    max_leaves=25,
)
FUZZ = settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_parses_or_rejects(data: object) -> None:
    try:
        space = parse_search_space(data, "fuzz.yaml")
    except SearchSpaceError as error:
        assert str(error).startswith("fuzz.yaml: ") and len(str(error).splitlines()) == 1
        return
    # A space that validates must also work everywhere else.
    assert isinstance(space, SearchSpace) and all(
        isinstance(s, HyperparameterSpec) for s in space.hyperparameters
    )
    assert parse_search_space(space.to_dict(), "fuzz.yaml") == space
    search_space_size(space)
    space.declare(kt.HyperParameters())
    describe_architecture(space, {})


@FUZZ
@given(DOCUMENTS)
def test_arbitrary_data_parses_or_raises_search_space_error(data):
    assert_parses_or_rejects(data)


def containers(node: object):
    if isinstance(node, dict):
        for key, child in node.items():
            yield node, key
            yield from containers(child)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield node, index
            yield from containers(child)


@FUZZ
@given(st.sampled_from([SMALL_CNN, SMALL_MOBILE]), st.data())
def test_mutated_valid_spaces_parse_or_raise_search_space_error(base, data):
    document = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        parent, key = data.draw(st.sampled_from(list(containers(document))))
        if data.draw(st.booleans()):
            parent[key] = data.draw(DOCUMENTS)
        else:
            del parent[key]
        if not isinstance(document, dict) or not document:
            break
    assert_parses_or_rejects(document)


@settings(max_examples=50, deadline=None)
@given(
    st.text(max_size=80)
    | st.sampled_from(["a: [", "- 1", "name: !!binary AAAA", "k: &a [*a]", "{a: 1, a: 2}"])
)
def test_arbitrary_yaml_text_loads_or_raises_search_space_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with pytest.raises(SearchSpaceError):
            load_search_space(path)


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundled("cnn").hyperparameters[0].name = "x"
