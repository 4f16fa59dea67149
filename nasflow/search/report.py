"""The search report: one self-contained HTML file for the parent run and the KFP UI.

It holds the Pareto plot, the best-so-far curve and a table of every trial, sortable by
any column (click a header), with the architecture diagram of the trials that have one.
Images are inlined (``data:`` URIs) and the sorting is a few lines of inline script, so
the file opens the same from MLflow's artifact view, the KFP UI or a laptop's disk.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nasflow.progress import format_duration, trial_number

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.5em}
.plots{display:flex;flex-wrap:wrap;gap:1em} .plots img{max-width:48%;min-width:320px;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em} th,td{border:1px solid #ddd;padding:.3em .5em;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0} th:after{content:" \\21C5";color:#aaa}
tr.chosen{background:#e8f5e9} tr.front td:first-child{border-left:4px solid #1565c0}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.arch{font-family:monospace;font-size:.9em}
img.diagram{max-height:220px;cursor:zoom-in} img.diagram.big{max-height:none}
.legend{font-size:.85em;color:#555}
"""

_SCRIPT = """
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
  const key = r => { const c = r.cells[col]; const v = c.dataset.sort ?? c.textContent; const n = parseFloat(v);
                     return isNaN(n) ? v : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    if (typeof x === 'number' && typeof y === 'number') return (x - y) * dir;
    if (typeof x === 'number') return -1; if (typeof y === 'number') return 1;
    return String(x).localeCompare(String(y)) * dir; }).forEach(r => body.appendChild(r));
}));
document.querySelectorAll('img.diagram').forEach(i => i.addEventListener('click', () => i.classList.toggle('big')));
"""

_COLUMNS = (
    ("trial", "trial"),
    ("status", "status"),
    ("val_accuracy", "val accuracy"),
    ("latency_ms", "latency p50 (ms)"),
    ("size_kb", "size (KiB)"),
    ("params", "params"),
    ("flops", "FLOPs"),
    ("duration_s", "time"),
    ("architecture", "architecture"),
    ("diagram", "diagram"),
)


def best_so_far(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """``(trial number, best val accuracy up to it)`` in trial order, over completed trials."""
    points, best = [], None
    for row in sorted(rows, key=lambda row: _trial_sort_key(row["trial_id"])):
        accuracy = row.get("val_accuracy")
        if row.get("status") == "COMPLETED" and accuracy is not None and math.isfinite(accuracy):
            best = accuracy if best is None else max(best, accuracy)
        if best is not None:
            points.append((_trial_sort_key(row["trial_id"]), best))
    return points


def plot_best_so_far(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write a PNG of the best validation accuracy so far against the trial number."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = best_so_far(rows)
    figure = Figure(figsize=(6.4, 4.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    scored = [
        (_trial_sort_key(row["trial_id"]), row["val_accuracy"])
        for row in rows
        if row.get("status") == "COMPLETED" and row.get("val_accuracy") is not None
    ]
    if scored:
        axes.scatter(*zip(*scored, strict=True), s=14, color="0.6", label="trial")
    if points:
        axes.step(*zip(*points, strict=True), where="post", color="tab:blue", label="best so far")
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are counted, not measured
    axes.set_xlabel("trial")
    axes.set_ylabel("validation accuracy")
    axes.set_title("Best validation accuracy so far")
    axes.grid(alpha=0.3)
    if scored or points:
        axes.legend(loc="lower right")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def search_report_html(
    rows: Sequence[Mapping[str, Any]],
    *,
    chosen: int | None,
    front: Sequence[int],
    cost_key: str,
    pareto_png: bytes | None,
    best_so_far_png: bytes | None,
    diagrams: Mapping[str, bytes],
    title: str = "Architecture search",
) -> str:
    """The report as one HTML document.

    Args:
        rows: Trial rows (:func:`nasflow.search.records.collect_trials`).
        chosen: Index of the selected row.
        front: Indices of the Pareto-front rows.
        cost_key: The cost the selection traded accuracy against.
        pareto_png: The Pareto plot, if drawn.
        best_so_far_png: The best-so-far curve, if drawn.
        diagrams: Trial id -> PNG of its architecture diagram.
        title: Heading of the page.
    """
    front_set = set(front)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if chosen is not None:
        row = rows[chosen]
        accuracy = row.get("val_accuracy")
        parts.append(
            f"<p>Chosen: <b>trial {html.escape(trial_number(row['trial_id']))}</b> "
            f"<code>{html.escape(str(row.get('architecture', '')))}</code>"
            + (f", validation accuracy {accuracy:.4f}" if accuracy is not None else "")
            + f"; {len(rows)} trials, {len(front_set)} on the Pareto front (accuracy against {html.escape(cost_key)}).</p>"
        )
    plots = [(pareto_png, f"Pareto front: accuracy against {cost_key}"), (best_so_far_png, "Best accuracy so far")]
    if any(png for png, _ in plots):
        parts.append("<div class='plots'>")
        for png, alt in plots:
            if png:
                parts.append(f"<img alt='{html.escape(alt)}' src='{_data_uri(png)}'>")
        parts.append("</div>")
    parts.append("<h2>Trials</h2><p class='legend'>Click a header to sort. Green: the chosen trial; "
                 "blue edge: on the Pareto front. Click a diagram to enlarge it.</p>")  # fmt: skip
    parts.append("<table><thead><tr>" + "".join(f"<th>{label}</th>" for _, label in _COLUMNS) + "</tr></thead><tbody>")
    for index, row in enumerate(rows):
        classes = " ".join(name for name, on in (("chosen", index == chosen), ("front", index in front_set)) if on)
        parts.append(f"<tr class='{classes}'>" + "".join(_cell(key, row, diagrams) for key, _ in _COLUMNS) + "</tr>")
    parts.append(f"</tbody></table><script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _cell(key: str, row: Mapping[str, Any], diagrams: Mapping[str, bytes]) -> str:
    if key == "trial":
        number = _trial_sort_key(row["trial_id"])
        return f"<td class='num' data-sort='{number}'>{html.escape(trial_number(row['trial_id']))}</td>"
    if key == "status":
        reason = str(row.get("reason") or "")
        return f"<td title='{html.escape(reason)}'>{html.escape(str(row.get('status', '')))}</td>"
    if key == "architecture":
        return f"<td class='arch'>{html.escape(str(row.get('architecture', '')))}</td>"
    if key == "diagram":
        png = diagrams.get(str(row["trial_id"]))
        if not png:
            return "<td data-sort=''></td>"
        alt = f"architecture of trial {trial_number(row['trial_id'])}"
        return f"<td data-sort='1'><img class='diagram' alt='{html.escape(alt)}' src='{_data_uri(png)}'></td>"
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "<td data-sort=''></td>"
    shown = {
        "val_accuracy": f"{value:.4f}",
        "latency_ms": f"{value:.3f}",
        "size_kb": f"{value:.1f}",
        "params": f"{int(value):,}",
        "flops": f"{int(value):,}",
        "duration_s": format_duration(float(value)),
    }.get(key, str(value))
    return f"<td class='num' data-sort='{float(value)!r}'>{shown}</td>"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _trial_sort_key(trial_id: Any) -> int:
    number = trial_number(trial_id)
    return int(number) if number.isdigit() else 0
