#!/usr/bin/env bash
# `make test-containers`: build the images from docker/ unchanged with podman, then run the
# container-tier tests (tests/containers) against them. Everything this run starts (containers,
# pods, networks, secrets, the Docker-compatible socket service) carries its run id and is
# removed on exit, also on failure or Ctrl-C; the built images stay cached for the next run.
#   IMAGE=... IMAGE_GPU=... PYTHON=.venv/bin/python tests/containers/tier.sh [pytest args]
#   NASFLOW_TIER_GPU_IMAGE=0 skips building and checking docker/Dockerfile.gpu (default 1, below).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/containers/engine.sh
source "$HERE/engine.sh"
: "${IMAGE:?set IMAGE to the CPU image tag (make test-containers does)}"
: "${IMAGE_GPU:?set IMAGE_GPU to the GPU image tag (make test-containers does)}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"

engine_setup
# One tier at a time per machine: the k8s/ manifests fix pod and secret names, so two runs
# would meet (a second run waits here).
exec 9>"/run/lock/nasflow-container-tier.lock"
flock 9
RUN_ID="tier-$(date +%H%M%S)-$$"
export NASFLOW_TIER_RUN_ID="$RUN_ID"
export NASFLOW_TIER_STATE="$CONF_DIR/$RUN_ID"
mkdir -p "$NASFLOW_TIER_STATE"

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  set +e  # remove everything that can be removed, whatever fails
  # Pods first (kube play), then any container or network left by a failed test.
  local ids
  ids="$(podman pod ps -q --filter "label=nasflow.tier=$RUN_ID" 2>/dev/null || true)"
  [ -n "$ids" ] && podman pod rm -f $ids >/dev/null 2>&1
  ids="$(podman ps -aq --filter "label=nasflow.tier=$RUN_ID" 2>/dev/null || true)"
  [ -n "$ids" ] && podman rm -f $ids >/dev/null 2>&1
  ids="$(podman network ls -q --filter "label=nasflow.tier=$RUN_ID" 2>/dev/null || true)"
  [ -n "$ids" ] && podman network rm -f $ids >/dev/null 2>&1
  ids="$(podman volume ls -q --filter "label=nasflow.tier=$RUN_ID" 2>/dev/null || true)"
  [ -n "$ids" ] && podman volume rm -f $ids >/dev/null 2>&1
  # Volumes kube play made for ConfigMaps and secrets made from k8s/ Secrets keep the
  # manifests' names (no label); the session lists them here.
  if [ -f "$NASFLOW_TIER_STATE/podman-volumes" ]; then
    sort -u "$NASFLOW_TIER_STATE/podman-volumes" | xargs -r podman volume rm -f >/dev/null 2>&1
  fi
  if [ -f "$NASFLOW_TIER_STATE/podman-secrets" ]; then
    sort -u "$NASFLOW_TIER_STATE/podman-secrets" | xargs -r podman secret rm >/dev/null 2>&1
  fi
  # The socket service a test session started (its pid file), if the session could not stop it.
  for pidfile in "$NASFLOW_TIER_STATE"/*.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  rm -rf "$NASFLOW_TIER_STATE"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$SECONDS
# Images this store no longer names (superseded by an earlier run's rebuild, build caches of an
# older setup.cfg) are removed first. The store is the tier's own (engine.sh's STORAGE_ROOT),
# and a dozen superseded images had filled this machine's disk (29 GB freed on 2026-12-02).
# Tagged images and the layers they are built from stay: unchanged builds are cache hits.
podman image prune -f >/dev/null
build_image docker/Dockerfile "$IMAGE"
# The GPU image (tensorflow[and-cuda], ~8 GB of CUDA wheels) is built and checked by default;
# its cold build is the tier's longest part (README: make test-containers).
# NASFLOW_TIER_GPU_IMAGE=0 skips it on a machine without the disk or the time.
export NASFLOW_TIER_GPU_IMAGE="${NASFLOW_TIER_GPU_IMAGE:-1}"
export NASFLOW_TIER_GPU_SKIPPED="NASFLOW_TIER_GPU_IMAGE=0"
# A cached image needs only its small nasflow layer rebuilt; a cold build needs the space. A
# build that runs out of it fails 10 minutes in, deep in podman's log, and takes the CPU
# image's tests down with it: without the space the GPU image is left out, and said so.
if [ "$NASFLOW_TIER_GPU_IMAGE" != 0 ] && ! podman image exists "$IMAGE_GPU" \
  && [ "$(free_gb)" -lt "$GPU_BUILD_FREE_GB" ]; then
  NASFLOW_TIER_GPU_IMAGE=0
  NASFLOW_TIER_GPU_SKIPPED="a cold build of docker/Dockerfile.gpu needs about $GPU_BUILD_FREE_GB GB free in $STORAGE_ROOT; $(free_gb) GB are free"
  echo "nasflow: warning: GPU image not built: $NASFLOW_TIER_GPU_SKIPPED" >&2
fi
if [ "$NASFLOW_TIER_GPU_IMAGE" != 0 ]; then
  build_image docker/Dockerfile.gpu "$IMAGE_GPU"
else
  note "docker/Dockerfile.gpu not built ($NASFLOW_TIER_GPU_SKIPPED); its test is skipped"
fi
note "images ready in $((SECONDS - started)) s"
cd "$REPO"
# setup.cfg's 900 s per test is for make test; a container test waits up to 15 min for its
# containers on a busy machine (each wait has its own limit and says what it waited for).
NASFLOW_CONTAINER_TIER=1 NASFLOW_TIER_IMAGE="$IMAGE" NASFLOW_TIER_IMAGE_GPU="$IMAGE_GPU" \
  "$PYTHON" -m pytest tests/containers -p no:cacheprovider --timeout=1800 "$@"
note "container tier passed in $((SECONDS - started)) s"
