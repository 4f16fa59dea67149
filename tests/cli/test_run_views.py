"""What a user sees of a run: progress lines, the terminal, the summary's links, the search
report, architecture views, `nasflow runs` / `nasflow show`, and bad input refused early."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest

from nasflow import progress
from nasflow.cli.local_run import _ProgressTee, _TerminalProgress, format_summary, mlflow_links
from nasflow.cli.main import main as cli_main
from nasflow.search import architecture
from nasflow.search.records import trial_run_name
from nasflow.search.report import best_so_far, search_report_html

LINE = re.compile(
    r"^trial +\d+/\d+  (val_acc \d\.\d{3}|failed|invalid|infeasible|pruned).*"
)


def _reporter(total=4):
    lines = []
    return progress.SearchProgress(total=total, emit_line=lines.append), lines


def test_trial_lines_count_keep_the_best_and_estimate_the_time_left():
    reporter, lines = _reporter(4)
    reporter.trial_finished("00", "COMPLETED", val_accuracy=0.91, architecture="conv32k3 | gap | dense64", seconds=5.8)
    reporter.trial_finished("01", "FAILED", val_accuracy=None, reason="FailedTrialError: loss became NaN")
    reporter.trial_finished("02", "COMPLETED", val_accuracy=0.85, seconds=4.0)
    reporter.trial_finished("03", "INFEASIBLE", val_accuracy=0.97, reason="size 120 KB > max_size_kb 100")
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].startswith("trial 1/4  val_acc 0.910  best 0.910 (trial 0)  conv32k3|gap|dense64  5.8 s  ETA")
    assert "failed" in lines[1] and "loss became NaN" in lines[1] and "best 0.910 (trial 0)" in lines[1]
    assert "best 0.910 (trial 0)" in lines[2], "a worse trial keeps the best"
    # An infeasible trial is never the best, however accurate.
    assert "infeasible (val_acc 0.970)" in lines[3] and "best 0.910 (trial 0)" in lines[3]
    assert "ETA" not in lines[3], "nothing is left after the last trial"


def test_eta_is_capped_by_the_wall_clock_budget():
    reporter = progress.SearchProgress(total=100, deadline=time.monotonic() + 30, emit_line=lambda line: None)
    reporter.started -= 50  # one trial took 50 s: 99 more would take over an hour
    reporter.trial_finished("0", "COMPLETED", val_accuracy=0.5)
    assert reporter.eta_seconds() <= 30


@pytest.mark.parametrize(
    "seconds,shown", [(5.84, "5.8 s"), (70, "1m10s"), (3600 * 2 + 300, "2h05m")]
)
def test_durations_read_like_a_person_writes_them(seconds, shown):
    assert progress.format_duration(seconds) == shown


def test_every_progress_line_starts_with_a_count_the_terminal_can_parse():
    assert progress.parse(progress.epoch_line(2, 10, {"loss": 0.4, "val_accuracy": 0.8}, time.monotonic())) == (
        "epoch", 3, 10
    )
    assert progress.parse(progress.variant_line(2, 4, "int8", 0.95, 12_600, 0.04)) == ("variant", 2, 4)
    assert progress.parse("Executing task") is None


_LOG = (
    "21:24:09.805 - INFO - Executing task \x1b[96m'search'\x1b[0m\n"
    "2026-12-01 21:24:12.1 W tensorflow/lite/converter: Please consider providing the signature\n"
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    "    nasflow-progress: trial 1/2  val_acc 0.500  best 0.500 (trial 0)  mlp  1.0 s  ETA 1.0 s\n"
    "    nasflow-progress: trial 2/2  val_acc 0.700  best 0.700 (trial 1)  mlp  1.0 s\n"
    "21:24:36.783 - INFO - Task 'search' finished with status SUCCESS\n"
)


def test_the_terminal_shows_progress_lines_and_no_conversion_noise():
    log, terminal = io.StringIO(), io.StringIO()
    tee = _ProgressTee(log, _TerminalProgress(terminal, interactive=False))
    tee.write(_LOG[:50])  # lines arrive in pieces
    tee.write(_LOG[50:])
    shown = terminal.getvalue().splitlines()
    assert shown == [
        "  21:24:09.805 - INFO - Executing task 'search'",
        "  trial 1/2  val_acc 0.500  best 0.500 (trial 0)  mlp  1.0 s  ETA 1.0 s",
        "  trial 2/2  val_acc 0.700  best 0.700 (trial 1)  mlp  1.0 s",
        "  21:24:36.783 - INFO - Task 'search' finished with status SUCCESS",
    ]
    assert log.getvalue() == _LOG, "the log keeps everything"


def test_an_interactive_terminal_gets_a_bar_below_the_lines():
    terminal = io.StringIO()
    display = _TerminalProgress(terminal, interactive=True)
    tee = _ProgressTee(io.StringIO(), display)
    tee.write("nasflow-progress: trial 1/2  val_acc 0.500\n")
    assert "search 1/2" in terminal.getvalue(), terminal.getvalue()
    tee.write("nasflow-progress: trial 2/2  val_acc 0.700\n")
    display.close()
    text = terminal.getvalue()
    assert "trial 1/2  val_acc 0.500" in text and "trial 2/2  val_acc 0.700" in text


def test_trial_runs_are_named_to_sort_and_read_well():
    assert trial_run_name("07", "conv32k3-conv64k5bn | gap | dense64 drop0.1") == (
        "trial-007 conv32k3-conv64k5bn|gap|dense64 drop0.1"
    )
    assert trial_run_name("3") == "trial-003"


SUMMARY = {
    "architecture": "conv32k3 | gap | dense64",
    "trial_id": "01",
    "test_accuracy": 0.95,
    "variants": [{"name": "int8", "accuracy": 0.94, "size_bytes": 12_000, "latency_p50_ms": 0.05}],
    "selected_variant": "int8",
    "selection_reason": "smallest within 1 point",
    "model_name": "nasflow model",
    "model_version": "3",
    "aliases": ["challenger", "champion"],
    "promotion": {"promoted": True, "reason": "first version"},
    "tracking_uri": "http://mlflow.example:5000/",
    "parent_run_id": "abc123",
    "experiment_id": "4",
}


def test_the_summary_links_land_on_the_runs_not_the_genai_overview():
    text = format_summary(SUMMARY, 90)
    assert "http://mlflow.example:5000/#/experiments/4/runs/abc123" in text
    assert "http://mlflow.example:5000/#/experiments/4/runs\n" in text
    assert mlflow_links(SUMMARY)["model"] == "http://mlflow.example:5000/#/models/nasflow%20model/versions/3"
    local = mlflow_links({**SUMMARY, "tracking_uri": "sqlite:////tmp/mlflow.db"})
    assert local["run"] == "http://127.0.0.1:5000/#/experiments/4/runs/abc123"
    assert "--port 5000" in format_summary({**SUMMARY, "tracking_uri": "sqlite:////tmp/mlflow.db"})


def _rows():
    def row(trial, status, accuracy, latency, arch):
        return {
            "trial_id": trial, "status": status, "val_accuracy": accuracy, "latency_ms": latency,
            "size_kb": 10.0, "params": 1000.0, "flops": 2e4, "duration_s": 3.0, "architecture": arch,
            "reason": "", "mlflow_run_id": f"run{trial}", "feasible": status == "COMPLETED",
        }  # fmt: skip

    return [
        row("00", "COMPLETED", 0.80, 0.5, "a<b>"),
        row("01", "FAILED", None, None, "b"),
        row("02", "COMPLETED", 0.90, 0.9, "c"),
        row("03", "COMPLETED", 0.85, 0.2, "d"),
    ]


def test_best_so_far_never_goes_down_and_skips_failures():
    assert best_so_far(_rows()) == [(0, 0.80), (1, 0.80), (2, 0.90), (3, 0.90)]


def test_the_report_is_one_self_contained_sortable_page():
    png = b"\x89PNG fake"
    page = search_report_html(
        _rows(), chosen=2, front=[2, 3], cost_key="latency_ms", pareto_png=png, best_so_far_png=png,
        diagrams={"02": png},
    )  # fmt: skip
    assert page.count("<tr class=") == 4
    assert "<tr class='chosen front'>" in page and "<tr class='front'>" in page
    assert page.count("data:image/png;base64,") == 3, "two plots and one diagram, inline"
    assert "a&lt;b&gt;" in page, "architecture text is escaped"
    assert "addEventListener('click'" in page and "src='http" not in page
    assert "data-sort='0.9'" in page, "numbers sort as numbers"


def test_the_architecture_view_of_a_built_model():
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])  # fmt: skip
    view = architecture.describe_model(model)
    assert view.dot.lstrip().startswith("digraph") and "Conv2D" in view.dot
    assert "Total params" in view.summary
    assert set(view.files()) == {"model.dot", "summary.txt"}
    if not architecture.graphviz_available():
        pytest.skip("Graphviz is not installed (apt-get install graphviz): no PNG rendering")
    png = architecture.render_png(view.dot)
    assert png and png.startswith(b"\x89PNG")
    width, height = architecture.png_size(png)
    assert width > 50 and height > 50


def test_trials_to_render_are_bounded_and_start_with_the_choice_and_the_front():
    rows = [{"val_accuracy": 0.5 + i / 100} for i in range(40)]
    chosen = architecture.trials_to_render(rows, 3, [3, 7])
    assert chosen[:2] == [3, 7] and len(chosen) == architecture.MAX_RENDERED
    assert chosen[2] == 39, "then the most accurate others"


# --- refusing bad input before anything exists --------------------------------------------------


@pytest.mark.parametrize(
    "dataset,extra,expected",
    [
        ("{tmp}/no_such_file.csv", [], "file not found"),
        ("{tmp}/table.csv", ["--label-column", "target"], "label column 'target' not found"),
        ("{tmp}/table.csv", ["--search-space", "cnn"], "for image data but the dataset is tabular"),
        ("keras:no_such", [], "unknown Keras dataset"),
    ],
)
def test_nasflow_run_refuses_bad_input_and_creates_nothing(dataset, extra, expected, tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = ["a,b,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{i % 2}" for i in range(40)]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    store = tmp_path / "store" / "mlflow.db"
    code = cli_main(
        ["run", "--dataset", dataset.format(tmp=tmp_path), *extra, "--tracking-uri", f"sqlite:///{store}",
         "--output-dir", str(tmp_path / "runs"), "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("nasflow: run: ") and expected in err[0], err
    assert not store.parent.exists(), "no MLflow store, hence no run"
    assert not (tmp_path / "runs").exists(), "no run folder"


def test_a_good_table_passes_the_early_check(tmp_path):
    from nasflow.cli.inputs import check_run_inputs

    rng = np.random.default_rng(0)
    lines = ["a,b,label"] + [f"{rng.normal():.3f},{rng.normal():.3f},{i % 2}" for i in range(40)]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    check_run_inputs({"dataset": str(tmp_path / "table.csv"), "label_column": "label", "search_space": "mlp"})


# --- `nasflow show` on a store that does not exist (a finished run's views: tests/e2e) ------


def test_show_names_a_run_that_does_not_exist(tmp_path, capsys):
    assert cli_main(["show", "nope", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_a_cell_space_trial_also_draws_its_cell():
    from types import SimpleNamespace

    edges = ("edge_0_1", "edge_0_2", "edge_1_2", "edge_0_3", "edge_1_3", "edge_2_3")
    values = dict.fromkeys(edges, "skip_connect") | {"edge_2_3": "conv_3x3"}
    view = architecture.describe_model(None, SimpleNamespace(family="cell"), values)
    assert "conv_3x3" in view.cell_dot and "skip_connect" in view.cell_dot
    assert "cell.dot" in view.files()
    assert architecture.describe_model(None, SimpleNamespace(family="cnn"), values).cell_dot == ""


def test_trials_finished_by_worker_processes_are_reported_once_each_in_end_order():
    from types import SimpleNamespace

    def run(run_id, trial, end, status="FINISHED", trial_status="COMPLETED", accuracy=0.5):
        return SimpleNamespace(
            info=SimpleNamespace(run_id=run_id, end_time=end, status=status),
            data=SimpleNamespace(
                tags={"nasflow.trial_id": trial, "nasflow.trial_status": trial_status, "nasflow.architecture": "mlp"},
                metrics={"final_val_accuracy": accuracy, "duration_s": 2.0},
            ),
        )

    ended = [run("b", "01", 20, accuracy=0.7), run("a", "00", 10)]
    reporter, lines = _reporter(3)
    watcher = progress.TrialRunWatcher(lambda: list(ended), reporter, interval_s=3600)
    watcher.poll()
    ended += [run("k", "02", 25, status="KILLED", trial_status="KILLED"), run("c", "02", 30, accuracy=0.6)]
    watcher.stop()  # the last look reports what ended since
    assert [line.split("  ")[0] for line in lines] == ["trial 1/3", "trial 2/3", "trial 3/3"]
    assert "best 0.500 (trial 0)" in lines[0] and "best 0.700 (trial 1)" in lines[2]
