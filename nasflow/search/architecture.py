"""The architecture view of a candidate: a diagram of the built model and its summary as text.

Every trial keeps two cheap texts (measured in ``bench/results/architecture_diagram_cost.md``):
the model's graph in Graphviz DOT (``keras.utils.model_to_dot``, needs only ``pydot``) and
Keras' layer summary. Rendering DOT to PNG needs Graphviz's ``dot`` program and costs more,
so it is done once after the search, for the chosen trial, the Pareto front and a bounded
number of others (:func:`render_png`).

Cell-family spaces also draw the cell itself, a graph of operations
(``nasflow.spaces.cell.cell_graph_dot``): a stack of identical cells says less as a layer
graph than the cell does.
"""

from __future__ import annotations

import importlib
import io
import logging
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

#: Artifact folder of a trial run that holds its architecture view.
ARTIFACT_DIR = "architecture"
DOT_FILE = "model.dot"
SUMMARY_FILE = "summary.txt"
PNG_FILE = "model.png"
CELL_DOT_FILE = "cell.dot"

#: Rendering one diagram must never hold up a search for long.
RENDER_TIMEOUT_S = 20.0


@dataclass
class ArchitectureView:
    """The texts that describe one built candidate."""

    dot: str
    summary: str
    cell_dot: str = ""

    def files(self) -> dict[str, str]:
        """File name -> text, for the trial run's ``architecture/`` artifacts (empty texts left out)."""
        named = {DOT_FILE: self.dot, SUMMARY_FILE: self.summary, CELL_DOT_FILE: self.cell_dot}
        return {name: text for name, text in named.items() if text}


def describe_model(model, space: Any = None, values: Mapping[str, Any] | None = None) -> ArchitectureView:
    """DOT text and layer summary of a built Keras model (plus the cell graph for cell spaces).

    Never raises: a view is a nicety, a trial must not fail for it; what cannot be made is
    left empty and logged at debug level.
    """
    return ArchitectureView(dot=_model_dot(model), summary=_model_summary(model), cell_dot=_cell_dot(space, values))


def _model_dot(model) -> str:
    try:
        import keras

        graph = keras.utils.model_to_dot(
            model, show_shapes=True, show_layer_names=False, show_layer_activations=True, dpi=60
        )
        return graph.to_string()
    except Exception as error:  # noqa: BLE001 - pydot missing or a layer it cannot draw
        logger.debug("no DOT diagram for %s: %s", getattr(model, "name", "model"), error)
        return ""


def _model_summary(model) -> str:
    lines: list[str] = []
    try:
        # 78 columns: rich renders a captured summary 80 columns wide and cuts what does not fit.
        model.summary(line_length=78, print_fn=lambda line, *args, **kwargs: lines.append(line))
    except Exception as error:  # noqa: BLE001
        logger.debug("no model summary: %s", error)
        return ""
    return "\n".join(lines) + "\n"


def _cell_dot(space: Any, values: Mapping[str, Any] | None) -> str:
    """The cell's own graph, where the space's family provides one (``nasflow.spaces.cell``)."""
    if space is None or values is None or getattr(space, "family", "") != "cell":
        return ""
    try:
        module = importlib.import_module("nasflow.spaces.cell")
    except ImportError:
        return ""
    draw = getattr(module, "cell_graph_dot", None)
    if draw is None:
        return ""
    try:
        return str(draw(values))
    except Exception as error:  # noqa: BLE001
        logger.debug("no cell graph: %s", error)
        return ""


def graphviz_available() -> bool:
    """Whether Graphviz's ``dot`` program is on PATH (Debian package ``graphviz``)."""
    return shutil.which("dot") is not None


def render_png(dot_text: str) -> bytes | None:
    """Render DOT text to PNG with Graphviz; ``None`` when Graphviz is missing or fails."""
    if not dot_text or not graphviz_available():
        return None
    try:
        done = subprocess.run(
            ["dot", "-Tpng"], input=dot_text.encode(), capture_output=True, timeout=RENDER_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("could not render an architecture diagram: %s", error)
        return None
    if done.returncode != 0 or not done.stdout.startswith(b"\x89PNG"):
        logger.warning("could not render an architecture diagram: %s", done.stderr.decode(errors="replace")[:200])
        return None
    return done.stdout


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height of a PNG image."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.size


#: Besides the chosen trial and the Pareto front, at most this many trials get a PNG.
MAX_RENDERED = 12


def trials_to_render(rows: list[dict[str, Any]], chosen: int | None, front: list[int]) -> list[int]:
    """Row indices that get a PNG: the chosen trial, the front, then the most accurate others."""
    wanted = list(dict.fromkeys([*([chosen] if chosen is not None else []), *front]))
    others = sorted(
        (index for index, row in enumerate(rows) if index not in wanted and row.get("val_accuracy") is not None),
        key=lambda index: -float(rows[index]["val_accuracy"]),
    )
    return wanted + others[: max(0, MAX_RENDERED - len(wanted))]


def render_trial_diagrams(client, rows: list[dict[str, Any]], indices: list[int]) -> dict[str, bytes]:
    """Render the stored DOT of these trials to PNG, log each PNG on its trial run.

    Returns:
        Trial id -> PNG (the cell drawing where there is one, else the layer graph). Empty
        when Graphviz is not installed (a warning says so once).
    """
    import tempfile
    from pathlib import Path

    if not graphviz_available():
        logger.warning(
            "Graphviz's 'dot' is not installed (Debian: apt-get install graphviz): "
            "trial runs keep their architecture as DOT text and summary, without PNG diagrams"
        )
        return {}
    rendered: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as folder:
        for index in indices:
            row = rows[index]
            run_id = row["mlflow_run_id"]
            try:
                names = {item.path.rsplit("/", 1)[-1] for item in client.list_artifacts(run_id, ARTIFACT_DIR)}
            except Exception as error:  # noqa: BLE001 - a diagram is a nicety
                logger.debug("trial %s: cannot list its architecture files: %s", row["trial_id"], error)
                continue
            out = Path(folder) / str(run_id)
            out.mkdir()
            pngs: dict[str, bytes] = {}
            for dot_name in (DOT_FILE, CELL_DOT_FILE):
                if dot_name not in names:
                    continue
                try:
                    local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{dot_name}", str(out))
                    png = render_png(Path(local).read_text(encoding="utf-8"))
                except Exception as error:  # noqa: BLE001
                    logger.debug("trial %s: cannot render %s: %s", row["trial_id"], dot_name, error)
                    continue
                if png:
                    pngs[dot_name] = png
            if not pngs:
                continue
            upload = out / "png"
            upload.mkdir()
            for dot_name, png in pngs.items():
                (upload / dot_name.replace(".dot", ".png")).write_bytes(png)
            try:
                client.log_artifacts(run_id, str(upload), ARTIFACT_DIR)
            except Exception as error:  # noqa: BLE001
                logger.warning("trial %s: could not store its diagram: %s", row["trial_id"], error)
            rendered[str(row["trial_id"])] = pngs.get(CELL_DOT_FILE) or pngs[DOT_FILE]
    return rendered
