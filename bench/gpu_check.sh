#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU (driver loaded, `nvidia-smi` works):
#   1. a fresh venv with the `gpu` extra's TensorFlow (tensorflow[and-cuda]) and nasflow's pins,
#      installed the way docker/Dockerfile.gpu does (tensorflow-cpu and tensorflow ship the same
#      module, so the pins go in without tensorflow-cpu, then tensorflow[and-cuda], then nasflow);
#   2. TensorFlow must see the GPU;
#   3. a short search + the final training on the GPU, then the same on the CPU
#      (CUDA_VISIBLE_DEVICES=-1), each timed by bench/gpu_check.py;
#   4. bench/results/gpu_check.{json,md}: trial time GPU vs CPU, mixed precision used or not.
# Budget: under 8 minutes on a GPU cloud machine (the install is most of it).
#   bench/gpu_check.sh              the check (needs the GPU)
#   bench/gpu_check.sh --dry-run    no GPU, no new venv: the CPU half with an existing
#                                   interpreter ($PYTHON, default .venv/bin/python) and a tiny
#                                   budget, results under $TMPDIR (what runs without a GPU)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DRY=0
[ "${1:-}" = --dry-run ] && DRY=1
PYTHON_BASE="${PYTHON_BASE:-python3.11}"
VENV="${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/nasflow-gpu-check-venv}"
BUDGET=(--dataset "${DATASET:-mnist-5k}" --max-trials "${MAX_TRIALS:-4}" --epochs "${EPOCHS:-2}" --train-epochs "${TRAIN_EPOCHS:-5}")
RESULTS="$REPO/bench/results"
started=$SECONDS
die() { echo "nasflow: $*" >&2; exit 2; }
note() { echo "[gpu_check $((SECONDS - started))s] $*" >&2; }

if [ "$DRY" = 1 ]; then
  PY="${PYTHON:-$REPO/.venv/bin/python}"
  [ -x "$PY" ] || die "dry run needs an installed interpreter: run \`make venv\` or set PYTHON"
  RESULTS="$(mktemp -d)"
  BUDGET=(--dataset digits --max-trials 1 --epochs 1 --train-epochs 1)
else
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: this check needs an NVIDIA GPU with its driver (use --dry-run elsewhere)"
  nvidia-smi -L | grep -q GPU || die "nvidia-smi lists no GPU"
  command -v "$PYTHON_BASE" >/dev/null || die "$PYTHON_BASE not found; set PYTHON_BASE=/path/to/python3.11"
  note "fresh venv $VENV with tensorflow[and-cuda]"
  rm -rf "$VENV"
  "$PYTHON_BASE" -m venv "$VENV"
  PY="$VENV/bin/python"
  "$PY" -m pip install --quiet --upgrade pip
  # The pins of setup.cfg without tensorflow(-cpu), then the gpu extra, then nasflow itself.
  "$PY" -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); print('\n'.join(r.strip() for r in c['options']['install_requires'].splitlines() if r.strip() and not r.strip().startswith(('#', 'tensorflow'))))" >"$VENV/requirements.txt"
  gpu_req="$("$PY" -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); print(c['options.extras_require']['gpu'].split()[0])")"
  "$PY" -m pip install --quiet -r "$VENV/requirements.txt" "$gpu_req"
  "$PY" -m pip install --quiet --no-deps -e .
  note "installed"
fi

"$PY" - <<'PY' || die "TensorFlow in $PY cannot be imported"
import tensorflow as tf
print("tensorflow", tf.__version__, "cuda build:", tf.test.is_built_with_cuda(), "GPUs:", tf.config.list_physical_devices("GPU"))
PY
mkdir -p "$RESULTS"
if [ "$DRY" = 1 ]; then
  note "dry run: CPU half only"
  CUDA_VISIBLE_DEVICES=-1 "$PY" bench/gpu_check.py "${BUDGET[@]}" >"$RESULTS/cpu.json"
  cp "$RESULTS/cpu.json" "$RESULTS/gpu.json"
else
  note "search + training on the GPU"
  "$PY" bench/gpu_check.py --require-gpu "${BUDGET[@]}" >"$RESULTS/.gpu.json"
  note "search + training on the CPU"
  CUDA_VISIBLE_DEVICES=-1 "$PY" bench/gpu_check.py "${BUDGET[@]}" >"$RESULTS/.cpu.json"
  mv "$RESULTS/.gpu.json" "$RESULTS/gpu.json"; mv "$RESULTS/.cpu.json" "$RESULTS/cpu.json"
fi
"$PY" - "$RESULTS" "$((SECONDS - started))" "$DRY" <<'PY'
import json, pathlib, sys
folder, wall, dry = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
gpu, cpu = (json.loads((folder / f"{name}.json").read_text().strip().splitlines()[-1]) for name in ("gpu", "cpu"))
speedup = cpu["trial_s_median"] / gpu["trial_s_median"] if gpu["trial_s_median"] else None
result = {"dry_run": dry, "wall_s": wall, "budget_s": 480, "within_budget": wall < 480, "gpu": gpu, "cpu": cpu,
          "trial_speedup_gpu_vs_cpu": speedup, "mixed_precision_on_gpu": gpu["mixed_precision"]}
(folder / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
(folder / "gpu_check.md").write_text(
    f"# GPU check{' (DRY RUN: no GPU, CPU half twice)' if dry else ''}\n\n"
    f"| | GPU run | CPU run |\n|---|---|---|\n"
    f"| devices TensorFlow saw | {', '.join(gpu['gpus']) or 'none'} | {', '.join(cpu['gpus']) or 'none'} |\n"
    f"| median trial (s) | {gpu['trial_s_median']:.2f} | {cpu['trial_s_median']:.2f} |\n"
    f"| final training (s) | {gpu['train_s']:.1f} | {cpu['train_s']:.1f} |\n"
    f"| training device / mixed precision | {gpu['train_device']} / {gpu['mixed_precision']} | {cpu['train_device']} / {cpu['mixed_precision']} |\n"
    f"| test accuracy | {gpu['test_accuracy']:.4f} | {cpu['test_accuracy']:.4f} |\n\n"
    f"Trial speed-up GPU vs CPU: {speedup:.2f}x. Wall time {wall} s (budget 480 s: {'PASS' if wall < 480 else 'MISS'}).\n"
)
print(f"{folder / 'gpu_check.md'}:")
print((folder / "gpu_check.md").read_text())
PY
