"""Live progress of a pipeline step, as one readable line per finished unit of work.

A step prints ``nasflow-progress: <line>`` on stdout for every finished trial, training
epoch and compression variant, e.g.::

    nasflow-progress: trial 7/20  val_acc 0.962  best 0.971 (trial 4)  conv32k3-conv64k5bn|gap|dense64  5.8 s  ETA 1m10s

The line is meant for people: on a cluster it is what the step's log in the KFP UI shows;
``nasflow run`` shows the text after the prefix on the terminal (with a progress bar when
the terminal is interactive). Every line starts ``<kind> <done>/<total>`` so the terminal
can drive its bar from it (:func:`parse`).

In a search the process that knows how many trials have ended reports them: the search
process itself, or, when trials run in worker processes, the search step, which watches
the trial runs appear in MLflow (:class:`TrialRunWatcher`).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

logger = logging.getLogger(__name__)

PREFIX = "nasflow-progress: "
_COUNTED = re.compile(r"^(?P<kind>[a-z]+) +(?P<done>\d+)/(?P<total>\d+)\b")


def emit(line: str, stream: TextIO | None = None) -> None:
    """Print one progress line (on stdout unless ``stream`` is given)."""
    out = stream or sys.stdout
    out.write(f"{PREFIX}{line}\n")
    out.flush()


def parse(text: str) -> tuple[str, int, int] | None:
    """``(kind, done, total)`` of a progress line's text, or ``None`` if it has no count."""
    match = _COUNTED.match(text)
    if not match:
        return None
    return match["kind"], int(match["done"]), int(match["total"])


def format_duration(seconds: float) -> str:
    """``5.8 s``, ``1m10s``, ``2h05m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def epoch_line(epoch: int, total: int, logs: Mapping[str, Any], started: float | None = None) -> str:
    """``epoch 3/10  loss 0.412  accuracy 0.874  val_accuracy 0.861  ETA 21.0 s`` (``epoch`` counts from 0)."""
    done = epoch + 1
    parts = [f"epoch {done:>{len(str(total))}}/{total}"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs:
            parts.append(f"{key} {float(logs[key]):.3f}")
    if started is not None and done < total:
        parts.append(f"ETA {format_duration((time.monotonic() - started) / done * (total - done))}")
    return "  ".join(parts)


def variant_line(done: int, total: int, name: str, accuracy: float, size_bytes: float, latency_ms: float) -> str:
    """``variant 2/4  int8  acc 0.953  12.3 KiB  0.041 ms``."""
    return (
        f"variant {done:>{len(str(total))}}/{total}  {name}  acc {accuracy:.3f}  "
        f"{size_bytes / 1024:.1f} KiB  {latency_ms:.3f} ms"
    )


#: How a trial that did not complete is shown instead of its accuracy.
_NOT_SCORED = {
    "FAILED": "failed",
    "INVALID": "invalid",
    "INFEASIBLE": "infeasible",
    "PRUNED": "pruned",
    "STOPPED": "pruned",
    "KILLED": "killed",
}


@dataclass
class SearchProgress:
    """Counts finished trials, keeps the best so far and estimates the time left.

    Args:
        total: The trial budget (``max_trials``).
        deadline: ``time.monotonic()`` at which the wall-clock budget ends, if any.
        emit_line: Where finished lines go (default :func:`emit`).
    """

    total: int
    deadline: float | None = None
    emit_line: Callable[[str], None] = emit
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    best_accuracy: float | None = None
    best_trial: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def trial_finished(
        self,
        trial_id: str,
        status: str,
        *,
        val_accuracy: float | None,
        architecture: str = "",
        seconds: float | None = None,
        reason: str = "",
    ) -> str:
        """Count one finished trial and emit its line; returns the line.

        Args:
            trial_id: Keras Tuner's trial id.
            status: nasflow's trial status (COMPLETED, INFEASIBLE, FAILED, INVALID, ...).
            val_accuracy: Final validation accuracy of a trained trial.
            architecture: The one-line architecture description.
            seconds: How long the trial took.
            reason: Why a trial failed or is infeasible (shortened on the line).
        """
        with self._lock:
            self.done += 1
            selectable = status == "COMPLETED" and val_accuracy is not None and math.isfinite(val_accuracy)
            if selectable and (self.best_accuracy is None or val_accuracy > self.best_accuracy):
                self.best_accuracy, self.best_trial = val_accuracy, trial_number(trial_id)
            width = len(str(self.total))
            parts = [f"trial {self.done:>{width}}/{self.total}"]
            if status == "COMPLETED" and val_accuracy is not None:
                parts.append(f"val_acc {val_accuracy:.3f}")
            else:
                label = _NOT_SCORED.get(status, status.lower() or "ended")
                if val_accuracy is not None:
                    label += f" (val_acc {val_accuracy:.3f})"
                parts.append(label)
            if self.best_accuracy is not None:
                parts.append(f"best {self.best_accuracy:.3f} (trial {self.best_trial})")
            if architecture:
                parts.append(compact_architecture(architecture))
            if seconds is not None:
                parts.append(format_duration(seconds))
            eta = self.eta_seconds()
            if eta is not None:
                parts.append(f"ETA {format_duration(eta)}")
            if reason and status != "COMPLETED":
                parts.append(f"- {_short(reason)}")
            line = "  ".join(parts)
        self.emit_line(line)
        return line

    def eta_seconds(self) -> float | None:
        """Time left at the pace so far, capped by the wall-clock budget; ``None`` when done."""
        remaining = self.total - self.done
        if remaining <= 0 or self.done == 0:
            return None
        now = time.monotonic()
        eta = (now - self.started) / self.done * remaining
        if self.deadline is not None:
            eta = min(eta, max(0.0, self.deadline - now))
        return eta


def trial_number(trial_id: str | int) -> str:
    """``"07"`` -> ``"7"``: Keras Tuner pads trial ids; people count without the zeros."""
    digits = "".join(ch for ch in str(trial_id) if ch.isdigit())
    return str(int(digits)) if digits else str(trial_id)


def compact_architecture(description: str) -> str:
    """``conv32k3 | gap | dense64 drop0.1`` -> ``conv32k3|gap|dense64 drop0.1``, for lines and run names."""
    return " ".join(description.replace(" | ", "|").split())


def _short(text: str, limit: int = 80) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- the reporter of the search process ------------------------------------------------

_reporter: SearchProgress | None = None


def start_search(total: int, deadline: float | None = None) -> SearchProgress:
    """Make this process report trials as they finish (the process that owns the count)."""
    global _reporter
    _reporter = SearchProgress(total=total, deadline=deadline)
    return _reporter


def stop_search() -> None:
    """Stop reporting trials from this process."""
    global _reporter
    _reporter = None


def search_reporter() -> SearchProgress | None:
    """The active reporter, if this process reports trials."""
    return _reporter


# --- watching trial runs in MLflow (trials in worker processes) -------------------------


class TrialRunWatcher:
    """Reports trials that worker processes finish, by polling the parent run's trial runs.

    Every ``interval_s`` one MLflow search lists the trial runs that have ended; each new
    one is reported through ``progress``. :meth:`stop` reports what ended since the last poll.
    """

    def __init__(self, list_ended_runs: Callable[[], list], progress: SearchProgress, interval_s: float = 5.0):
        self.list_ended_runs = list_ended_runs
        self.progress = progress
        self.interval_s = interval_s
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nasflow-progress", daemon=True)

    def __enter__(self) -> TrialRunWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def mark_seen(self, run_ids) -> None:
        """Runs not to report (trials a resumed search already counted)."""
        self._seen.update(run_ids)

    def stop(self) -> None:
        """Stop polling after a last look."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        """Report every ended trial run not reported yet."""
        try:
            runs = self.list_ended_runs()
        except Exception as error:  # noqa: BLE001 - progress must never fail the search
            logger.debug("progress: cannot list trial runs: %s", error)
            return
        fresh = [run for run in runs if run.info.run_id not in self._seen]
        fresh.sort(key=lambda run: run.info.end_time or 0)
        for run in fresh:
            self._seen.add(run.info.run_id)
            if run.info.status == "KILLED":
                continue  # an interrupted attempt: its re-run is the trial's result
            report_trial_run(self.progress, run.data.tags, run.data.metrics)


def report_trial_run(progress: SearchProgress, tags: Mapping[str, str], metrics: Mapping[str, Any]) -> str:
    """Report one trial from its MLflow run's tags and metrics."""
    return progress.trial_finished(
        tags.get("nasflow.trial_id", "?"),
        tags.get("nasflow.trial_status", ""),
        val_accuracy=metrics.get("final_val_accuracy"),
        architecture=tags.get("nasflow.architecture", ""),
        seconds=metrics.get("duration_s"),
        reason=tags.get("nasflow.failure_reason") or tags.get("nasflow.infeasible_reason", ""),
    )
