#!/usr/bin/env bash
# The official postgres image's entrypoint contract, as far as k8s/base/postgres.yaml uses it.
set -Eeuo pipefail
file_env() {
  local var="$1" file_var="${1}_FILE"
  if [ -n "${!file_var:-}" ]; then
    export "$var"="$(<"${!file_var}")"
  fi
}
file_env POSTGRES_USER
file_env POSTGRES_PASSWORD
file_env POSTGRES_DB
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

# An arbitrary UID (runAsUser) has no passwd entry; initdb and postgres need one.
if ! getent passwd "$(id -u)" >/dev/null; then
  NSS_WRAPPER_PASSWD="$(mktemp)"
  NSS_WRAPPER_GROUP="$(mktemp)"
  { grep -v '^postgres:' /etc/passwd; echo "postgres:x:$(id -u):$(id -g):PostgreSQL:$PGDATA:/bin/false"; } >"$NSS_WRAPPER_PASSWD"
  { cat /etc/group; getent group "$(id -g)" >/dev/null || echo "postgres:x:$(id -g):"; } >"$NSS_WRAPPER_GROUP"
  export LD_PRELOAD=libnss_wrapper.so NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "error: POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) is empty" >&2; exit 1; }
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  # UTF8 as in the official image (LANG=en_US.utf8 there); with C the database is SQL_ASCII and
  # psycopg returns bytes, which SQLAlchemy cannot parse.
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -h /var/run/postgresql --username "$POSTGRES_USER" --dbname postgres \
      -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "PostgreSQL init process complete; ready for start up."
fi
unset POSTGRES_PASSWORD
if [ "${1:-}" = postgres ]; then
  set -- "$@" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
fi
exec "$@"
