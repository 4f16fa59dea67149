#!/usr/bin/env bash
# The container tier's engine: Debian's podman, rootful, configured for these machines, and the
# images built from docker/ unchanged. Sourced by tests/containers/tier.sh; usable alone:
#   tests/containers/engine.sh setup            install podman + write .containers/*.conf
#   tests/containers/engine.sh build FILE TAG   build FILE (base image made first if needed)
# The measured facts behind every setting are in STACK.md ("Real containers with podman").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONF_DIR="${NASFLOW_CONTAINERS_DIR:-$REPO/.containers}"
# Image storage lives outside the checkout so every clone on a machine shares the built layers
# (a clean clone's build is then a cache hit); point it elsewhere for a cold build.
STORAGE_ROOT="${NASFLOW_CONTAINERS_STORAGE:-/var/lib/containers/nasflow}"
# The run root holds podman's locks: one per graph root, shared by every clone using it.
RUN_ROOT="${NASFLOW_CONTAINERS_RUNROOT:-/run/containers/nasflow$(echo "$STORAGE_ROOT" | md5sum | cut -c1-8)}"

die() { echo "nasflow: $*" >&2; exit 2; }
note() { echo "[containers] $*" >&2; }

engine_install() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "the container tier needs ${missing[*]} and root to run rootful podman; install them (apt-get install ${missing[*]}) or run as root"
  command -v apt-get >/dev/null || die "the container tier needs ${missing[*]}; this machine has no apt-get to install them"
  note "installing ${missing[*]} from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; } \
    || die "could not install ${missing[*]} with apt-get"
}

engine_configure() {
  [ "$(id -u)" -eq 0 ] || die "the container tier runs rootful podman: run it as root"
  mkdir -p "$CONF_DIR" "$STORAGE_ROOT" "$RUN_ROOT"
  local nofile
  nofile="$(ulimit -Hn)"
  [ "$nofile" = unlimited ] && nofile=1048576
  # crun refuses this host's hybrid cgroup v1/v2 layout; runc + cgroupfs work. Without explicit
  # ulimits every container fails with "setrlimit RLIMIT_NOFILE: Operation not permitted".
  cat >"$CONF_DIR/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  cat >"$CONF_DIR/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$STORAGE_ROOT"
runroot = "$RUN_ROOT"
CONF
  export CONTAINERS_CONF="$CONF_DIR/containers.conf"
  export CONTAINERS_STORAGE_CONF="$CONF_DIR/storage.conf"
}

engine_setup() {
  engine_install
  engine_configure
}

# A Python base image from Debian packages, tagged with the name a Dockerfile's FROM uses, for
# machines where no registry can be pulled from. The host's CA bundle goes in so that pip inside
# `podman build` trusts the egress proxy (whose CA only the host trusts).
base_image() {
  local name="$1" full="$1"
  case "$name" in */*) ;; *) full="docker.io/library/$name" ;; esac
  if podman image exists "$full"; then return 0; fi
  note "pulling $full"
  if timeout 60 podman pull -q "$full" >/dev/null 2>&1; then return 0; fi
  note "$full cannot be pulled: building it from Debian packages with mmdebstrap"
  local mirror work
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [ -n "$mirror" ] || mirror="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  work="$(mktemp -d)"
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    --customize-hook="upload /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar" "$mirror" \
    || { rm -rf "$work"; die "mmdebstrap could not build a base image from $mirror"; }
  podman import --quiet --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$work/rootfs.tar" "$full" >/dev/null \
    || { rm -rf "$work"; die "podman import of the Debian base image failed"; }
  rm -rf "$work"
}

# Free space a cold build of docker/Dockerfile.gpu needs in the image store: the builder's
# venv layer (7.7 GB), its copy in the final stage and podman's temporary tar of each.
GPU_BUILD_FREE_GB="${NASFLOW_GPU_BUILD_FREE_GB:-24}"

# The gigabytes free on the image store's file system.
free_gb() {
  df --output=avail -B1G "$STORAGE_ROOT" | tail -n 1 | tr -d ' '
}

# podman build with the settings these machines need (no registry, host network, layer cache).
podman_build() {
  podman build --pull=never --format docker --network=host --layers "$@"
}

# Build DOCKERFILE as TAG exactly as a user's `docker build` would: the file is not changed.
build_image() {
  local dockerfile="$1" tag="$2" from
  from="$(awk 'toupper($1) == "FROM" {print $2; exit}' "$REPO/$dockerfile")"
  base_image "$from"
  local log="$CONF_DIR/build-$(basename "$dockerfile").log" started=$SECONDS
  # podman writes the image id only when the build succeeded; a build stopped by SIGTERM was
  # seen to exit 0 here, and the tag would still name the previous (stale) image.
  local iid="$CONF_DIR/iid-$(basename "$dockerfile")"
  rm -f "$iid"
  note "building $dockerfile as $tag (log: $log)"
  if ! podman_build --iidfile "$iid" -f "$REPO/$dockerfile" -t "$tag" "$REPO" >"$log" 2>&1 \
    || [ ! -s "$iid" ]; then
    tail -n 20 "$log" >&2
    die "podman build of $dockerfile failed (full log: $log)"
  fi
  # The dependency stage (docker/Dockerfile's `deps`: setup.cfg's pins, minutes to install) is no
  # ancestor of the final image, so the `podman image prune` before every tier run would remove
  # its cache and the next build would install the pins again. Tagged, it stays (seconds: the
  # build above made every layer of it); a setup.cfg change moves the tag and frees the old one.
  if grep -qE '^FROM .* AS deps$' "$REPO/$dockerfile"; then
    if ! podman_build --target deps -f "$REPO/$dockerfile" -t "$tag-deps" "$REPO" >>"$log" 2>&1; then
      tail -n 20 "$log" >&2
      die "podman build --target deps of $dockerfile failed (full log: $log)"
    fi
  fi
  note "built $tag in $((SECONDS - started)) s"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    setup) engine_setup; echo "export CONTAINERS_CONF=$CONTAINERS_CONF CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF" ;;
    build) engine_setup; build_image "$2" "$3" ;;
    *) echo "usage: $0 setup | build DOCKERFILE TAG" >&2; exit 2 ;;
  esac
fi
