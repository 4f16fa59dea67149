#!/usr/bin/env bash
# Install the Debian packages of missing programs, when this machine lets us (root + apt-get).
#   scripts/ensure_debian_packages.sh [--required] PROGRAM:PACKAGE ...
#   e.g. scripts/ensure_debian_packages.sh dot:graphviz
# Without --required a program that cannot be installed is a one-line warning and exit 0
# (what needs it degrades: no PNG diagrams without graphviz); with --required it is exit 1.
set -uo pipefail
required=0
if [ "${1:-}" = "--required" ]; then required=1; shift; fi
missing=()
for pair in "$@"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
fail() {
  echo "warning: $1" >&2
  exit "$required"
}
[ "$(id -u)" -eq 0 ] || fail "needs ${missing[*]}: not root, install them yourself (apt-get install ${missing[*]})"
command -v apt-get >/dev/null || fail "needs ${missing[*]}: this machine has no apt-get"
echo "installing ${missing[*]} (apt-get, once)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } \
  || fail "could not install ${missing[*]} with apt-get"
exit 0
