"""The ``cell`` family: an architecture is a DAG of operations, stacked (NASNet / NAS-Bench-201 style).

A cell has ``nodes`` feature maps (default 4): node 0 is the cell's input, the last node
its output, and every edge ``i -> j`` (``i < j``) carries one operation, the value of the
hyperparameter ``edge_<i>_<j>``. A node is the sum of its incoming edges. The network is
NAS-Bench-201's skeleton: a 3x3 stem conv (``stem_filters`` channels), ``num_stages``
stages of ``cells_per_stage`` cells each, a reduction between stages (stride 2, channels
x2), batch norm + ReLU, global average pooling and a softmax classifier.

Every cell shares one genotype, as in NAS-Bench-201, and the reduction is its ResNet
basic block, unless the space declares ``reduce_edge_<i>_<j>``: then, as in NASNet, the
reduction is a cell of its own genotype whose edges out of node 0 have stride 2.

Edges are not built for ``none``, nor out of a node that nothing reaches (a node whose
every incoming edge is ``none`` is zero), so such edges cost no parameters and no
FLOPs. A cell whose output no path reaches from its input is an invalid architecture.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
from keras import layers

from nasflow.errors import InvalidArchitectureError
from nasflow.spaces.families import (
    _LEARNING_RATE,
    Family,
    GraphNeeds,
    Need,
    SpaceProblem,
    Values,
    _batch_norm,
    _image_size,
    _short_float,
)

#: Operations an edge can carry (NAS-Bench-201's five, then DARTS' extra ones).
OPERATIONS = (
    "none",
    "skip_connect",
    "conv_1x1",
    "conv_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
    "max_pool_3x3",
)
#: Short names for the architecture line and the cell drawing.
OP_SHORT = {
    "none": "none",
    "skip_connect": "skip",
    "conv_1x1": "conv1",
    "conv_3x3": "conv3",
    "avg_pool_3x3": "avg3",
    "sep_conv_3x3": "sep3",
    "dil_conv_3x3": "dil3",
    "max_pool_3x3": "max3",
}
DEFAULT_NODES = 4
#: Largest cell: 8 nodes have 28 edges, 8^28 genotypes with every operation.
_MAX_NODES = 8
#: Edge hyperparameters: ``edge_<i>_<j>`` for the normal cell, ``reduce_edge_<i>_<j>`` for the reduction cell.
NORMAL, REDUCE = "edge", "reduce_edge"
_EDGE_LIKE = re.compile(r"(reduce_)?edge.*")
_EDGE = re.compile(r"(reduce_edge|edge)_(\d+)_(\d+)")


def edge_name(source: int, target: int, prefix: str = NORMAL) -> str:
    """The hyperparameter of the edge ``source -> target`` (``edge_0_1``, ``reduce_edge_0_1``)."""
    return f"{prefix}_{source}_{target}"


def cell_edges(nodes: int) -> list[tuple[int, int]]:
    """Every edge ``(i, j)`` of a cell, grouped by target node: (0,1), (0,2), (1,2), (0,3), ...

    This is NAS-Bench-201's order (its architecture string lists node 1's inputs, then
    node 2's, ...), so the edges of a 4-node cell are its ``Op0`` .. ``Op5``.
    """
    return [(i, j) for j in range(1, nodes) for i in range(j)]


def genotype(values: Values, prefix: str = NORMAL) -> dict[tuple[int, int], str]:
    """The operation on every edge of one cell, by ``(source, target)``.

    Args:
        values: A trial's values (defaults filled in).
        prefix: :data:`NORMAL` or :data:`REDUCE`.
    """
    nodes = int(values.get("nodes", DEFAULT_NODES))  # type: ignore[arg-type]
    return {(i, j): str(values[edge_name(i, j, prefix)]) for i, j in cell_edges(nodes)}


def has_reduction_cell(values: Values) -> bool:
    """Whether the space gives reduction cells a genotype of their own (NASNet style)."""
    return any(str(name).startswith(REDUCE + "_") for name in values)


def live_edges(ops: Mapping[tuple[int, int], str], nodes: int) -> set[tuple[int, int]]:
    """The edges that carry a signal: not ``none``, from a node the input reaches.

    Args:
        ops: Operation by edge, as from :func:`genotype`.
        nodes: Number of nodes of the cell.

    Returns:
        The edges worth building; an edge out of a node whose every input is ``none``
        would only transform zeros.
    """
    reached = {0}
    live = set()
    for i, j in cell_edges(nodes):  # grouped by target, so a source is settled before use
        if i in reached and ops[(i, j)] != "none":
            live.add((i, j))
            reached.add(j)
    return live


def output_reached(ops: Mapping[tuple[int, int], str], nodes: int) -> bool:
    """Whether some path of non-``none`` edges joins the cell's input to its output."""
    return any(j == nodes - 1 for _, j in live_edges(ops, nodes))


# --- validation against the declared space ------------------------------------------


def _graph_needs(declared: Mapping[str, tuple | None]) -> tuple[Need, ...]:
    """The edge hyperparameters a declared cell space must have; rejects impossible cells.

    Args:
        declared: Every declared hyperparameter's possible values (``None`` when there
            are too many to list).

    Returns:
        One required ``str`` need per edge of the normal cell (and of the reduction cell
        when any ``reduce_edge_*`` is declared).

    Raises:
        SpaceProblem: ``nodes`` is not one value, an edge name is malformed or names a
            node the cell lacks, or no choice of operations joins input and output.
    """
    nodes_values = declared.get("nodes", (DEFAULT_NODES,))
    if nodes_values is None or len(nodes_values) != 1:
        raise SpaceProblem("the edges a cell has depend on it, so it must be one value (a fixed)", "nodes")
    nodes = nodes_values[0]
    if type(nodes) is not int or not 2 <= nodes <= _MAX_NODES:
        return ()  # the need on 'nodes' reports the range
    last = nodes - 1
    for name in declared:
        if not _EDGE_LIKE.fullmatch(name):
            continue
        match = _EDGE.fullmatch(name)
        if match is None:
            raise SpaceProblem(
                f"not an edge name; edges are edge_<i>_<j> (or reduce_edge_<i>_<j>) with 0 <= i < j <= {last}", name
            )
        source, target = int(match[2]), int(match[3])
        if source >= target:
            raise SpaceProblem(
                f"edges go from a lower node to a higher one (i < j): node {source} cannot feed node {target}", name
            )
        if target > last:
            raise SpaceProblem(f"node {target} does not exist: a cell of {nodes} nodes has nodes 0..{last}", name)
    prefixes = [NORMAL] + ([REDUCE] if has_reduction_cell(declared) else [])
    for prefix in prefixes:
        # An undeclared edge counts as connected here: the missing-edge error says more.
        possible = {
            edge: declared.get(edge_name(*edge, prefix)) or ("?",) for edge in cell_edges(nodes)
        }
        best = {edge: next((op for op in ops if op != "none"), "none") for edge, ops in possible.items()}
        if not output_reached(best, nodes):
            which = "the reduction cell" if prefix == REDUCE else "the cell"
            raise SpaceProblem(
                f"in every architecture of {which}, each path from node 0 (input) to node {last} (output) "
                f"has an edge that is always 'none': the output is disconnected from the input"
            )
    return tuple(
        Need(edge_name(i, j, prefix), "str", allowed=OPERATIONS) for prefix in prefixes for i, j in cell_edges(nodes)
    )


# --- the model ---------------------------------------------------------------------------


def _check_cell(values: Values, input_shape: Sequence[int]) -> None:
    height, width = _image_size(input_shape)
    nodes = int(values["nodes"])  # type: ignore[arg-type]
    for prefix in [NORMAL] + ([REDUCE] if has_reduction_cell(values) else []):
        ops = genotype(values, prefix)
        unknown = sorted({op for op in ops.values() if op not in OPERATIONS})
        if unknown:
            raise InvalidArchitectureError(f"unknown cell operation(s) {', '.join(unknown)}")
        if not output_reached(ops, nodes):
            which = "reduction cell" if prefix == REDUCE else "cell"
            raise InvalidArchitectureError(
                f"{which} {describe_genotype(ops)}: every path from node 0 (input) to node {nodes - 1} "
                "(output) passes a 'none' edge, so the output is disconnected from the input"
            )
    for stage in range(1, int(values["num_stages"])):  # type: ignore[arg-type]
        # 'same' padding rounds up, so only a 1-pixel map stops shrinking: treat it as a collapse.
        if height < 2 or width < 2:
            raise InvalidArchitectureError(
                f"stage {stage}: spatial size {height}x{width} cannot be reduced by stride 2"
            )
        height, width = -(-height // 2), -(-width // 2)


def _relu_conv_bn(
    x: keras.KerasTensor, filters: int, kernel_size: int, stride: int, name: str
) -> keras.KerasTensor:
    """NAS-Bench-201's ReLUConvBN: ReLU, conv without bias (BN's beta replaces it), BN."""
    x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.Conv2D(
        filters, kernel_size, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    return _batch_norm(f"{name}_bn")(x)


def _separable(
    x: keras.KerasTensor, filters: int, stride: int, dilation: int, name: str
) -> keras.KerasTensor:
    """ReLU, depthwise 3x3, pointwise 1x1, BN (DARTS' DilConv; SepConv stacks two)."""
    x = layers.ReLU(name=f"{name}_relu")(x)
    # Keras refuses stride > 1 together with dilation > 1: a dilated reduction subsamples in the 1x1.
    depthwise_stride, pointwise_stride = (1, stride) if dilation > 1 else (stride, 1)
    x = layers.DepthwiseConv2D(
        3, strides=depthwise_stride, dilation_rate=dilation, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = layers.Conv2D(filters, 1, strides=pointwise_stride, use_bias=False, name=f"{name}_pw")(x)
    return _batch_norm(f"{name}_bn")(x)


def _downsample(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """NAS-Bench-201's ResNet shortcut for stride 2: 2x2 average pool, then a 1x1 conv to ``filters``."""
    x = layers.AveragePooling2D(2, strides=2, padding="same", name=f"{name}_pool")(x)
    return layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)


def _operation(x: keras.KerasTensor, op: str, filters: int, stride: int, name: str) -> keras.KerasTensor:
    """One edge's operation; ``filters`` and ``stride`` differ from the input's only in a reduction cell."""
    in_channels = int(x.shape[-1])
    if op == "skip_connect":
        if stride == 1 and in_channels == filters:
            return x
        return _downsample(x, filters, name)
    if op in ("conv_1x1", "conv_3x3"):
        return _relu_conv_bn(x, filters, 1 if op == "conv_1x1" else 3, stride, name)
    if op in ("avg_pool_3x3", "max_pool_3x3"):
        if in_channels != filters:  # NAS-Bench-201's POOLING: match channels first
            x = _relu_conv_bn(x, filters, 1, 1, f"{name}_pre")
        pooling = layers.AveragePooling2D if op == "avg_pool_3x3" else layers.MaxPooling2D
        return pooling(3, strides=stride, padding="same", name=f"{name}_pool")(x)
    if op == "sep_conv_3x3":
        x = _separable(x, in_channels, stride, 1, f"{name}_a")
        return _separable(x, filters, 1, 1, f"{name}_b")
    if op == "dil_conv_3x3":
        return _separable(x, filters, stride, 2, name)
    raise InvalidArchitectureError(f"unknown cell operation {op!r}")


def _cell(
    x: keras.KerasTensor, ops: Mapping[tuple[int, int], str], nodes: int, filters: int, stride: int, name: str
) -> keras.KerasTensor:
    """One cell: node ``j`` sums ``op(i -> j)(node i)`` over its live edges; edges out of node 0 carry ``stride``."""
    states: dict[int, keras.KerasTensor] = {0: x}
    live = live_edges(ops, nodes)
    for target in range(1, nodes):
        inputs = [
            _operation(states[i], ops[(i, target)], filters, stride if i == 0 else 1, f"{name}_e{i}{target}")
            for i in range(target)
            if (i, target) in live
        ]
        if len(inputs) == 1:
            states[target] = inputs[0]
        elif inputs:
            states[target] = layers.Add(name=f"{name}_n{target}")(inputs)
    return states[nodes - 1]


def _resnet_reduction(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """NAS-Bench-201's ResNet basic block with stride 2 (its reduction between stages)."""
    residual = _relu_conv_bn(x, filters, 3, 2, f"{name}_a")
    residual = _relu_conv_bn(residual, filters, 3, 1, f"{name}_b")
    return layers.Add(name=f"{name}_add")([_downsample(x, filters, f"{name}_down"), residual])


def _build_cell(values: Values, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    nodes = int(values["nodes"])  # type: ignore[arg-type]
    filters = int(values["stem_filters"])  # type: ignore[arg-type]
    normal = genotype(values)
    reduce = genotype(values, REDUCE) if has_reduction_cell(values) else None
    inputs = keras.Input(shape=tuple(input_shape))
    # Stride 1 in the stem, as in NAS-Bench-201 (its inputs are 32x32; ours are smaller still).
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _batch_norm("stem_bn")(x)
    for stage in range(int(values["num_stages"])):  # type: ignore[arg-type]
        if stage > 0:
            filters *= 2
            if reduce is None:
                x = _resnet_reduction(x, filters, f"reduce{stage}")
            else:
                x = _cell(x, reduce, nodes, filters, 2, f"reduce{stage}")
        for index in range(int(values["cells_per_stage"])):  # type: ignore[arg-type]
            x = _cell(x, normal, nodes, filters, 1, f"s{stage}c{index}")
    x = _batch_norm("last_bn")(x)
    x = layers.ReLU(name="last_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="cell")


def describe_genotype(ops: Mapping[tuple[int, int], str]) -> str:
    """``[conv3|conv3,avg3|skip,conv3,skip]``: each node's inputs (from node 0 up), nodes split by ``|``."""
    nodes = 1 + max(j for _, j in ops)
    groups = [",".join(OP_SHORT.get(ops[(i, j)], ops[(i, j)]) for i in range(j)) for j in range(1, nodes)]
    return f"[{'|'.join(groups)}]"


def _describe_cell(values: Values) -> str:
    text = "cell" + describe_genotype(genotype(values))
    if has_reduction_cell(values):
        text += " reduce" + describe_genotype(genotype(values, REDUCE))
    stages = int(values["num_stages"])  # type: ignore[arg-type]
    return (
        f"{text} {stages}x{values['cells_per_stage']} c{values['stem_filters']}"
        f" | lr {_short_float(values['learning_rate'])}"
    )


# --- the architecture view ----------------------------------------------------------------


def cell_graph_dot(values: Values) -> str:
    """The cell as a graph of operations, in graphviz DOT: nodes are feature maps, edges operations.

    ``none`` edges are left out; an edge out of a node nothing reaches is drawn dashed
    and grey (it is not built). A space with its own reduction cell gets a second cluster.

    Args:
        values: A trial's hyperparameter values (``edge_<i>_<j>``, optionally ``nodes``
            and ``reduce_edge_<i>_<j>``); other values are ignored.

    Returns:
        DOT text for ``dot -Tpng``.
    """
    nodes = int(values.get("nodes", DEFAULT_NODES))  # type: ignore[arg-type]
    cells = [(NORMAL, "cell (every stage)" if has_reduction_cell(values) else "cell")]
    if has_reduction_cell(values):
        cells.append((REDUCE, "reduction cell (stride 2 out of node 0)"))
    lines = [
        "digraph cell {",
        "  rankdir=LR;",
        '  node [shape=circle, fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for prefix, title in cells:
        ops = genotype(values, prefix)
        live = live_edges(ops, nodes)
        lines.append(f"  subgraph cluster_{prefix} {{")
        lines.append(f'    label="{title}: {describe_genotype(ops)}";')
        for node in range(nodes):
            label = "in" if node == 0 else "out" if node == nodes - 1 else str(node)
            shape = ", shape=doublecircle" if node in (0, nodes - 1) else ""
            lines.append(f'    {prefix}_{node} [label="{label}"{shape}];')
        for (source, target), op in ops.items():
            if op == "none":
                continue
            style = "" if (source, target) in live else ', style=dashed, color=grey, fontcolor=grey'
            lines.append(f'    {prefix}_{source} -> {prefix}_{target} [label="{op}"{style}];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_cell_graph(values: Values, path: str | Path) -> Path:
    """Writes the cell view: ``<path>.dot`` always, ``<path>.png`` too when graphviz' ``dot`` is installed.

    Args:
        values: A trial's hyperparameter values, as for :func:`cell_graph_dot`.
        path: Output path; its suffix is replaced.

    Returns:
        The PNG when it was drawn, else the DOT file.
    """
    dot_path = Path(path).with_suffix(".dot")
    dot_path.parent.mkdir(parents=True, exist_ok=True)
    dot_path.write_text(cell_graph_dot(values), encoding="utf-8")
    dot = shutil.which("dot")
    if dot is None:
        return dot_path
    png_path = dot_path.with_suffix(".png")
    # A drawing is a convenience: a broken graphviz must not fail the trial that asked for it.
    try:
        done = subprocess.run([dot, "-Tpng", str(dot_path), "-o", str(png_path)], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return dot_path
    return png_path if done.returncode == 0 and png_path.is_file() else dot_path


CELL = Family(
    name="cell",
    modality="image",
    unit="cell",
    count="cells_per_stage",
    needs=(
        Need("nodes", "int", low=2, high=_MAX_NODES, default=DEFAULT_NODES),
        Need("stem_filters", "int", low=1, high=512),
        Need("num_stages", "int", low=1, high=5, default=3),
        Need("cells_per_stage", "int", low=1, high=16),
        _LEARNING_RATE,
    ),
    check=_check_cell,
    build=_build_cell,
    describe=_describe_cell,
    graph=GraphNeeds(names=("edge_<i>_<j>", "reduce_edge_<i>_<j>"), expand=_graph_needs),
)
