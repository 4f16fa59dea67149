#!/usr/bin/env bash
# Replay the builder stage of docker/Dockerfile without a Docker engine, then use the result with
# the final stage's environment (HOME and the working folder in a scratch /tmp, the venv first on
# PATH) from outside the source tree, so only what the wheel installs is there. It runs as the
# calling user, not the image's UID 10001.
#
#   bash docker/replay_build.sh [SCRATCH_DIR]     # needs python3.11 and the package registry
#
# What this checks that the linters cannot: the wheel holds every module and the search spaces
# (<venv>/share/nasflow/search_spaces), the pins of setup.cfg install together, the CLI and the
# worker entry point start, and a chief + worker search runs from the installed package.
# What it cannot check: the base image itself, the non-root UID and the read-only root filesystem.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${1:-$(mktemp -d /tmp/nasflow-image.XXXXXX)}
PYTHON=${PYTHON:-python3.11}
VENV="$SCRATCH/opt/venv"
WHEELS="$SCRATCH/wheels"

echo "== builder stage: venv, wheel, install (as docker/Dockerfile's RUN lines) in $SCRATCH"
"$PYTHON" -m venv "$VENV"
export PATH="$VENV/bin:$PATH" PIP_DISABLE_PIP_VERSION_CHECK=1
(cd "$ROOT" && pip wheel --quiet --no-deps --wheel-dir "$WHEELS" .)
pip install --quiet "$WHEELS"/nasflow-*.whl "psycopg[binary]==3.3.9"
python -c "import nasflow, mlflow, keras_tuner, kfp"

echo "== final stage: the image's environment, outside the source tree"
HOME_DIR="$SCRATCH/tmp"
mkdir -p "$HOME_DIR"
cd "$HOME_DIR"
export HOME="$HOME_DIR" MPLCONFIGDIR="$HOME_DIR/matplotlib" KERAS_HOME="$HOME_DIR/keras" \
  PYTHONDONTWRITEBYTECODE=1 TF_CPP_MIN_LOG_LEVEL=2
unset PYTHONPATH
python - <<'PY'
import pathlib, sys
import nasflow, nasflow.cluster.bootstrap, nasflow.cluster.worker, nasflow.cluster.job  # noqa: F401
root = pathlib.Path(nasflow.__file__).resolve()
assert "site-packages" in str(root), f"nasflow imported from the source tree: {root}"
from nasflow.config import search_spaces_dirs
dirs = search_spaces_dirs()
assert dirs and all(str(d).startswith(sys.prefix) for d in dirs), dirs
print("installed package:", root.parent, "| search spaces:", [p.name for p in dirs[0].glob("*.yaml")])
PY
nasflow --help >/dev/null
nasflow validate cnn
python -m nasflow.cluster.worker --help >/dev/null

echo "== a chief + 1 worker search on digits from the installed package"
nasflow run --dataset digits --strategy random --max-trials 2 --epochs 1 --train-epochs 1 \
  --workers 1 --compression-variants int8 --tracking-uri "sqlite:///$HOME_DIR/mlflow.db" \
  --output-dir "$HOME_DIR/run" | tail -n 5
echo "== replay OK: $SCRATCH"
