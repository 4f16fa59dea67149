"""What it costs a worker pod to get the spec and dataset from the chief (nasflow.cluster.bootstrap).

On a cluster each worker pod downloads the packed dataset once from the chief's bootstrap
server. This measures, for the bundled datasets, the prepared size, the packed (gzip) size,
the chief's one-time packing time and one worker's fetch + check + unpack time over loopback,
and extrapolates the bytes the chief sends to 16 and 64 workers. Network time on a cluster is
not measured here: divide those bytes by the chief pod's bandwidth.

Usage::

    python bench/worker_bootstrap.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from nasflow.cluster.bootstrap import BootstrapServer, fetch_worker_spec
from nasflow.cluster.spec import WorkerSpec
from nasflow.steps.data_prep import data_prep_step


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(dataset: str, work: Path, repeats: int) -> dict[str, float | str]:
    """Pack once, fetch ``repeats`` times; medians in seconds, sizes in MB."""
    dataset_dir = work / dataset / "dataset"
    data_prep_step(dataset, str(dataset_dir), seed=1)
    spec = WorkerSpec(
        dataset_dir=str(dataset_dir), space_config={}, space_source="", settings={}, objective={},
        parent_run_id="", tracking_uri="", work_dir=str(work / dataset), overwrite=False,
    )  # fmt: skip
    started = time.perf_counter()
    with BootstrapServer(spec, host="127.0.0.1", port=0, pack_dir=work / dataset / "pack") as server:
        pack_s = time.perf_counter() - started
        fetches = []
        for attempt in range(repeats):
            started = time.perf_counter()
            fetch_worker_spec(f"http://127.0.0.1:{server.port}", work / dataset / f"worker{attempt}")
            fetches.append(time.perf_counter() - started)
        packed = server.archive.stat().st_size
    prepared = _folder_bytes(dataset_dir)
    return {
        "dataset": dataset,
        "prepared_mb": round(prepared / 1e6, 3),
        "packed_mb": round(packed / 1e6, 3),
        "pack_s": round(pack_s, 3),
        "fetch_s_median": round(statistics.median(fetches), 3),
        "sent_by_chief_mb_16_workers": round(16 * packed / 1e6, 1),
        "sent_by_chief_mb_64_workers": round(64 * packed / 1e6, 1),
    }


def main() -> None:
    """Run the measurement and write JSON + Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist-5k"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="/tmp/nasflow-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(name, Path(folder), args.repeats) for name in args.datasets]
    result = {"machine": f"{platform.machine()}, {platform.python_version()}", "repeats": args.repeats, "rows": rows}
    (out / "worker_bootstrap.json").write_text(json.dumps(result, indent=2) + "\n")
    header = "| dataset | prepared MB | packed MB | pack s (once) | fetch+unpack s (median) | chief sends, 16 workers | 64 workers |"
    lines = [
        "# Worker bootstrap: spec + dataset from the chief",
        "",
        f"`python bench/worker_bootstrap.py --out bench/results` on {result['machine']}, loopback, {args.repeats} fetches.",
        "",
        header,
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['prepared_mb']} | {row['packed_mb']} | {row['pack_s']} | {row['fetch_s_median']} "
            f"| {row['sent_by_chief_mb_16_workers']} MB | {row['sent_by_chief_mb_64_workers']} MB |"
        )
    (out / "worker_bootstrap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
