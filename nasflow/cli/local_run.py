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
from collections.abc import Mapping
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


class _ProgressTee(io.TextIOBase):
    """Everything to the log file; only task progress and nasflow errors to the terminal."""

    def __init__(self, log: TextIO, terminal: TextIO | None):
        self.log = log
        self.terminal = terminal
        self._pending = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.terminal is not None:
            self._pending += text
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                clean = _ANSI.sub("", line).strip()
                if _PROGRESS.search(clean):
                    self.terminal.write(f"  {clean}\n")
                    self.terminal.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def run_pipeline_locally(
    parameters: Mapping[str, Any],
    output_dir: str | Path = "nasflow-runs",
    *,
    stream: TextIO | None = sys.stderr,
) -> LocalRun:
    """Execute ``pipelines.nas_pipeline`` through ``kfp.local`` and return its summary.

    Args:
        parameters: Pipeline parameters (names as in ``nas_pipeline``).
        output_dir: Pipeline root: every task's artifacts and the run log go here.
        stream: Where progress lines go (``None``: silent).

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

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir), raise_on_error=True)
    env_before = {key: os.environ.get(key) for key in (ERROR_FILE_ENV, "TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    os.environ[ERROR_FILE_ENV] = str(error_file)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
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
    with log_path.open("w", encoding="utf-8") as log, contextlib.redirect_stdout(_ProgressTee(log, stream)):
        handlers = _redirect_kfp_logging(log, stream)
        try:
            pipeline(**params)
        finally:
            for logger_obj, saved in handlers:
                logger_obj.handlers = saved


def _redirect_kfp_logging(log: TextIO, terminal: TextIO | None):
    """kfp.local logs through ``logging`` handlers bound to the real stdout; point them at the tee."""
    import logging

    saved = []
    tee = _ProgressTee(log, terminal)
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
    return "\n".join(lines)


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on these results."""
    if tracking.is_remote(tracking_uri):
        return f"open {tracking_uri}"
    venv_bin = Path(sys.executable).parent
    return f"{venv_bin / 'mlflow'} ui --backend-store-uri {tracking_uri} --port 5000"
