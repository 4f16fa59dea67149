"""What an architecture view costs per trial, against the trial itself.

For ``--models`` candidates sampled from the bundled ``cnn`` space on ``mnist-5k`` (28x28),
this times, in one process:

* ``fit``: one epoch of ``model.fit`` on the training split (a trial trains 3 by default);
* ``describe``: :func:`nasflow.search.architecture.describe_model` (DOT text + summary),
  what every trial pays;
* ``render``: DOT -> PNG with Graphviz (``dot -Tpng``), what the search pays after the
  loop for the chosen trial, the Pareto front and a bounded number of others;
* ``plot_model``: ``keras.utils.plot_model`` to a PNG file, the one-call alternative.

Usage::

    python bench/architecture_diagram_cost.py --models 8 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: A 3-epoch mnist-5k trial of this space on a quiet machine of the project's kind (shared/STACK.md).
REFERENCE_TRIAL_S = 5.6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--out", default="/tmp/nasflow-bench")
    args = parser.parse_args()

    import keras
    import keras_tuner

    from nasflow.data import load_raw_dataset, split_dataset
    from nasflow.search.architecture import describe_model, graphviz_available, render_png
    from nasflow.spaces.schema import load_search_space, resolve_search_space

    splits = split_dataset(load_raw_dataset(args.dataset), 0.2, 0.2, 42)
    space = load_search_space(resolve_search_space("cnn", "image"))
    shape, classes = list(splits.metadata.input_shape), int(splits.metadata.num_classes)
    rows = []
    for index in range(args.models):
        hp = keras_tuner.HyperParameters()
        space.declare(hp)
        oracle = keras_tuner.oracles.RandomSearchOracle(hyperparameters=hp, max_trials=1, seed=100 + index)
        values = oracle.populate_space(str(index))["values"]
        hp.values.update(values)
        keras.backend.clear_session()
        model = space.build_model(hp, shape, classes)
        started = time.perf_counter()
        model.fit(splits.x_train, splits.y_train, epochs=1, batch_size=space.batch_size(), verbose=0)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        view = describe_model(model, space, values)
        describe_s = time.perf_counter() - started
        started = time.perf_counter()
        png = render_png(view.dot)
        render_s = time.perf_counter() - started if png else None
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            try:
                keras.utils.plot_model(model, to_file=str(Path(folder) / "m.png"), show_shapes=True, dpi=60)
                plot_s = time.perf_counter() - started
            except Exception:  # noqa: BLE001 - no graphviz: not measured
                plot_s = None
        rows.append(
            {
                "model": index,
                "layers": len(model.layers),
                "params": int(model.count_params()),
                "fit_1_epoch_s": fit_s,
                "describe_s": describe_s,
                "render_png_s": render_s,
                "plot_model_s": plot_s,
                "dot_bytes": len(view.dot),
                "summary_bytes": len(view.summary),
                "png_bytes": len(png or b""),
            }
        )
        print(json.dumps(rows[-1]))

    def median(key):
        values = [row[key] for row in rows if row[key] is not None]
        return statistics.median(values) if values else None

    summary = {key: median(key) for key in ("fit_1_epoch_s", "describe_s", "render_png_s", "plot_model_s")}
    trial_s = 3 * summary["fit_1_epoch_s"]  # the default 3 epochs per trial
    summary["describe_share_of_3_epoch_trial"] = summary["describe_s"] / trial_s
    # A busy machine inflates fit more than the rest; also compare with a quiet machine's trial.
    summary["describe_share_of_reference_trial"] = summary["describe_s"] / REFERENCE_TRIAL_S
    if summary["render_png_s"] is not None:
        summary["render_share_of_3_epoch_trial"] = summary["render_png_s"] / trial_s
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "graphviz": graphviz_available()},
        "dataset": args.dataset,
        "rows": rows,
        "median": summary,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "architecture_diagram_cost.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Architecture view: cost per trial",
        "",
        f"`python bench/architecture_diagram_cost.py --models {args.models} --dataset {args.dataset}`, "
        f"{os.cpu_count()} CPUs (shared with other work), Graphviz {'present' if graphviz_available() else 'absent'}.",
        "",
        "| median over candidates | seconds | share of a 3-epoch trial |",
        "|---|---|---|",
        f"| fit, 1 epoch | {summary['fit_1_epoch_s']:.3f} | |",
        f"| describe (DOT + summary, every trial) | {summary['describe_s']:.4f} | "
        f"{summary['describe_share_of_3_epoch_trial']:.1%} "
        f"({summary['describe_share_of_reference_trial']:.1%} of a quiet machine's {REFERENCE_TRIAL_S} s trial) |",
    ]
    if summary["render_png_s"] is not None:
        lines.append(
            f"| render PNG with `dot` (after the search, chosen + front + bounded) | {summary['render_png_s']:.4f} | "
            f"{summary['render_share_of_3_epoch_trial']:.1%} |"
        )
    if summary["plot_model_s"] is not None:
        lines.append(f"| `keras.utils.plot_model` (for comparison) | {summary['plot_model_s']:.4f} | |")
    lines += [
        "",
        "Verdict (the per-trial part, DOT text + summary without Graphviz, under 5% of a quiet machine's",
        f"trial): {'PASS' if summary['describe_share_of_reference_trial'] < 0.05 else 'MISS'}. "
        "PNGs are rendered after the search for the chosen trial, the Pareto",
        "front and at most `MAX_RENDERED` others, so their cost does not grow with the trial budget.",
        f"Load average while measuring: {os.getloadavg()[0]:.1f}.",
    ]
    (out / "architecture_diagram_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
