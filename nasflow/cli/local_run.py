"""Run the same KFP pipeline on this machine with ``kfp.local``.

There is no second code path: the pipeline object compiled for a cluster is the one
executed here, each task a subprocess in the current environment.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from nasflow import tracking
from nasflow.errors import NasflowError
from nasflow.steps._common import ERROR_FILE_ENV

_PROGRESS = re.compile(r"Executing task|finished with status|^nasflow:|Running pipeline|Pipeline .* finished")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PipelineFailed(NasflowError):
    """A local pipeline run failed; the message is the failing step's own line."""


@dataclass
class LocalRun:
    """Where a local run wrote things, and its summary."""

    run_dir: Path
    log_path: Path
    summary: dict[str, Any]
    seconds: float


class _TerminalProgress:
    """What the terminal shows: task lines, the steps' progress lines, a bar while interactive.

    Steps print ``nasflow-progress: <kind> <done>/<total> ...`` (:mod:`nasflow.progress`);
    the text after the prefix is shown as is, and on an interactive terminal a ``tqdm`` bar
    per kind (trials, epochs, variants) sits below the lines until its count is complete.
    """

    def __init__(self, terminal: TextIO, interactive: bool | None = None):
        self.terminal = terminal
        self.interactive = _is_interactive(terminal) if interactive is None else interactive
        self._bar = None
        self._bar_kind = ""

    def line(self, text: str) -> None:
        """Show one line of the log (already stripped); ignore lines that are not for people."""
        from nasflow import progress

        if text.startswith(progress.PREFIX):
            self._progress(text[len(progress.PREFIX) :].strip())
        elif _PROGRESS.search(text):
            self._close_bar()
            self._write(text)

    def _progress(self, text: str) -> None:
        from nasflow import progress

        counted = progress.parse(text)
        if not self.interactive or counted is None:
            self._write(text)
            return
        kind, done, total = counted
        if self._bar is None or self._bar_kind != kind or self._bar.total != total:
            self._close_bar()
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=f"  {_BAR_LABELS.get(kind, kind)}", file=self.terminal, leave=False,
                dynamic_ncols=True, bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {elapsed}",
            )  # fmt: skip
            self._bar_kind = kind
        self._bar.write(f"  {text}", file=self.terminal)
        self._bar.update(max(0, done - self._bar.n))
        self._bar.refresh()  # lines come seconds apart: show the count now, not at tqdm's next tick
        if done >= total:
            self._close_bar()

    def _write(self, text: str) -> None:
        self.terminal.write(f"  {text}\n")
        self.terminal.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Remove a bar left open (a step that failed half-way)."""
        self._close_bar()


_BAR_LABELS = {"trial": "search", "epoch": "training", "variant": "compression"}


def _is_interactive(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class _ProgressTee(io.TextIOBase):
    """Everything to the log file; only task progress and nasflow lines to the terminal."""

    def __init__(self, log: TextIO, display: _TerminalProgress | None):
        self.log = log
        self.display = display
        self._pending = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.display is not None:
            self._pending += text
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                self.display.line(_ANSI.sub("", line).strip())
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def run_pipeline_locally(
    parameters: Mapping[str, Any],
    output_dir: str | Path = "nasflow-runs",
    *,
    stream: TextIO | None = sys.stderr,
    runner: Callable[[Path, Mapping[str, str]], Any] | None = None,
) -> LocalRun:
    """Execute ``pipelines.nas_pipeline`` through ``kfp.local`` and return its summary.

    Args:
        parameters: Pipeline parameters (names as in ``nas_pipeline``).
        output_dir: Pipeline root: every task's artifacts and the run log go here.
        stream: Where progress lines go (``None``: silent).
        runner: Builds the ``kfp.local`` runner from the run folder (the pipeline root) and the
            environment variables every task needs, e.g. a ``local.DockerRunner`` that runs
            each task in the pipeline's image. Default: each task a subprocess here.

    Raises:
        PipelineFailed: A task failed; the message names the step and the cause.
    """
    from kfp import local

    from pipelines.nas_pipeline import nas_pipeline

    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = output_dir / f"run-{stamp}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "pipeline.log"
    error_file = run_dir / "error.txt"

    params = dict(parameters)
    params["tracking_uri"] = tracking.resolve_tracking_uri(params.get("tracking_uri") or None)
    # Fail before anything runs if MLflow is not there.
    tracking.check_reachable(params["tracking_uri"])

    task_env = {
        ERROR_FILE_ENV: str(error_file),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore"),
    }
    task_runner = runner(run_dir, task_env) if runner else local.SubprocessRunner(use_venv=False)
    local.init(runner=task_runner, pipeline_root=str(run_dir), raise_on_error=True)
    env_before = {key: os.environ.get(key) for key in task_env}
    os.environ.update(task_env)
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            # The local runner warns that images and resource requests are ignored here:
            # true, and exactly what running the cluster pipeline on one machine means.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"kfp\.local")
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"kfp\.local")
            _run_with_log(nas_pipeline, params, log_path, stream)
    except RuntimeError as error:
        raise PipelineFailed(f"{failure_line(error_file, str(error))} (full log: {log_path})") from error
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    summary = _find_summary(run_dir)
    return LocalRun(run_dir=run_dir, log_path=log_path, summary=summary, seconds=time.monotonic() - started)


#: The innermost failed task in kfp.local's message ("Inner task failed: 'train-2' inside ...").
_FAILED_TASK = re.compile(r"Inner task failed: '([A-Za-z0-9-]+?)(?:-\d+)?'")


def failure_line(error_file: Path, kfp_message: str) -> str:
    """The failing step's own one-line error, else kfp.local's message.

    Every failed attempt of a step appends its line to ``error_file`` (``user_errors``).
    A step that failed once and then succeeded on a retry leaves a line as well, so the
    last line of the task kfp.local names wins over the last line of the file.
    """
    kfp_message = _ANSI.sub("", kfp_message).strip()
    try:
        lines = [line for line in error_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        lines = []
    failed = _FAILED_TASK.search(kfp_message)
    if failed:
        own = [line for line in lines if line.startswith(f"{failed.group(1)}: ")]
        if own:
            return own[-1]
    return lines[-1] if lines else kfp_message


def _run_with_log(pipeline, params: Mapping[str, Any], log_path: Path, stream: TextIO | None) -> None:
    display = _TerminalProgress(stream) if stream is not None else None
    with log_path.open("w", encoding="utf-8") as log, contextlib.redirect_stdout(_ProgressTee(log, display)):
        handlers = _redirect_kfp_logging(log, display)
        try:
            pipeline(**params)
        finally:
            for logger_obj, saved in handlers:
                logger_obj.handlers = saved
            if display is not None:
                display.close()


def _redirect_kfp_logging(log: TextIO, display: _TerminalProgress | None):
    """kfp.local logs through ``logging`` handlers bound to the real stdout; point them at the tee."""
    import logging

    saved = []
    tee = _ProgressTee(log, display)
    for name in ("kfp.local", "kfp", ""):
        logger_obj = logging.getLogger(name)
        saved.append((logger_obj, list(logger_obj.handlers)))
        for handler in logger_obj.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
                sys.__stdout__,
                sys.__stderr__,
            ):
                handler.setStream(tee)
    return saved


def _find_summary(run_dir: Path) -> dict[str, Any]:
    candidates = sorted(run_dir.glob("*/register*/summary"), key=lambda path: path.stat().st_mtime)
    if not candidates:
        return {}
    return json.loads(candidates[-1].read_text())


def format_summary(summary: Mapping[str, Any], seconds: float | None = None) -> str:
    """The short human summary printed at the end of ``nasflow run``."""
    if not summary:
        return "The pipeline finished but wrote no summary."
    lines = [
        "",
        "nasflow run finished" + (f" in {seconds / 60:.1f} min" if seconds else ""),
        f"  best architecture : {summary['architecture']} (trial {summary.get('trial_id')})",
        f"  test accuracy     : {summary['test_accuracy']:.4f} (float Keras model)",
        "  compressed variants (test accuracy through LiteRT, batch-1 latency p50):",
    ]
    for variant in summary["variants"]:
        marker = " <- registered" if variant["name"] == summary["selected_variant"] else ""
        lines.append(
            f"    {variant['name']:<24} acc {variant['accuracy']:.4f}  size {variant['size_bytes'] / 1024:8.1f} KiB"
            f"  latency {variant['latency_p50_ms']:.3f} ms{marker}"
        )
    lines += [
        f"  selection         : {summary['selection_reason']}",
        f"  registered model  : {summary['model_name']} version {summary['model_version']}"
        f" (aliases: {', '.join(summary['aliases'])})",
        f"  promotion gate    : {'promoted' if summary['promotion']['promoted'] else 'refused'}"
        f" - {summary['promotion']['reason']}",
        f"  MLflow UI         : {mlflow_ui_command(summary['tracking_uri'])}",
    ]
    links = mlflow_links(summary)
    if links:
        # MLflow 3.17 opens an experiment on its GenAI overview; these land on the runs.
        lines += [
            f"  this run          : {links['run']}",
            f"  all runs          : {links['runs']}",
            f"  registered model  : {links['model']}",
        ]
    return "\n".join(lines)


#: Port of the ``mlflow ui`` command the summary prints for a local store.
LOCAL_UI_PORT = 5000


def mlflow_ui_base(tracking_uri: str) -> str:
    """The address of the MLflow UI for these results (the printed ``mlflow ui`` command's for a local store)."""
    if tracking.is_remote(tracking_uri):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{LOCAL_UI_PORT}"


def mlflow_links(summary: Mapping[str, Any]) -> dict[str, str]:
    """Direct UI links: the parent run's page, the experiment's runs table, the registered model."""
    experiment_id, run_id = summary.get("experiment_id"), summary.get("parent_run_id")
    if not experiment_id or not run_id:
        return {}
    from urllib.parse import quote

    base = mlflow_ui_base(summary["tracking_uri"])
    return {
        "run": f"{base}/#/experiments/{experiment_id}/runs/{run_id}",
        "runs": f"{base}/#/experiments/{experiment_id}/runs",
        "model": f"{base}/#/models/{quote(str(summary['model_name']), safe='')}/versions/{summary['model_version']}",
    }


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on these results."""
    if tracking.is_remote(tracking_uri):
        return f"open {tracking_uri}"
    venv_bin = Path(sys.executable).parent
    return f"{venv_bin / 'mlflow'} ui --backend-store-uri {tracking_uri} --port {LOCAL_UI_PORT}"
