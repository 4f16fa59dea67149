"""The final training checkpoints every epoch and resumes from the last one after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

TRAIN = """
import json, sys, time
from nasflow.data import load_raw_dataset, split_dataset
from nasflow.spaces import load_search_space, resolve_search_space
from nasflow.train import train_final_model

out, log, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "slow"
data = split_dataset(load_raw_dataset("digits"), 0.2, 0.2, seed=3)
space = load_search_space(resolve_search_space("cnn", "image"))
values = {"num_blocks": 1, "filters_0": 16, "kernel_size_0": 3, "pooling": "flatten", "dense_units": 32,
          "dropout": 0.0, "learning_rate": 1e-3}

def on_epoch(epoch, logs):
    with open(log, "a") as handle:
        handle.write(json.dumps({"epoch": epoch}) + "\\n")
    if slow:
        time.sleep(1.0)  # leave the test time to kill between epochs

train_final_model(data, space, values, epochs=6, output_dir=out, seed=1, patience=100, use_gpu=False,
                  epoch_callback=on_epoch)
"""


def _epochs(path):
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def test_training_resumes_from_the_last_finished_epoch(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out, first_log, second_log = tmp_path / "model", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first = subprocess.Popen([sys.executable, str(script), str(out), str(first_log), "slow"])
    deadline = time.monotonic() + 180
    while len(_epochs(first_log)) < 3:
        assert first.poll() is None and time.monotonic() < deadline, "training ended before the kill point"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = _epochs(first_log)
    subprocess.run([sys.executable, str(script), str(out), str(second_log), "fast"], check=True, timeout=300)
    resumed = _epochs(second_log)
    assert resumed[0] >= 2 and resumed[0] <= len(done), (done, resumed)
    assert resumed[-1] == 5, "it still trains to the last epoch"
    assert (out / "model.keras").exists()
