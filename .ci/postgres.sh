#!/usr/bin/env bash
# PostgreSQL for the MLflow tracking store, on 127.0.0.1. Idempotent: safe to run again.
#
#   1. installs PostgreSQL from Debian (apt-get) if it is missing (needs root);
#   2. creates the Debian cluster $PG_CLUSTER if missing and starts it (pg_ctlcluster);
#   3. creates/updates the login role $PG_USER (password $PG_PASSWORD, CREATEDB so tests can
#      make a throwaway database per session) and the database $PG_DB owned by it;
#   4. prints the URI on stdout (the only stdout line) and writes it to $PG_URI_FILE if set.
#
#   export PG_TEST_URI="$(.ci/postgres.sh)"   # postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow
#
# Settings (env): PG_CLUSTER (main), PG_PORT (the cluster's port; a new cluster gets
# 5432 or the next free port unless PG_PORT is set), PG_USER/PG_PASSWORD/PG_DB (mlflow).
set -euo pipefail

PG_CLUSTER="${PG_CLUSTER:-main}"
PG_USER="${PG_USER:-mlflow}"
PG_PASSWORD="${PG_PASSWORD:-mlflow}"
PG_DB="${PG_DB:-mlflow}"

log() { echo "[postgres.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }

as_postgres() {
  if [ "$(id -un)" = postgres ]; then
    "$@"
  elif [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    sudo -n -u postgres -- "$@"
  fi
}

# --- 1. install ------------------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root"
  log "installing postgresql from Debian"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
fi
version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
[ -n "$version" ] || die "no PostgreSQL server under /usr/lib/postgresql"

# --- 2. cluster --------------------------------------------------------------------------------
cluster_field() {  # $1 = column of pg_lsclusters (3 port, 4 status)
  pg_lsclusters --no-header | awk -v v="$version" -v c="$PG_CLUSTER" -v f="$1" \
    '$1 == v && $2 == c { print $f }'
}
if [ -z "$(cluster_field 3)" ]; then
  log "creating cluster $version/$PG_CLUSTER"
  pg_createcluster ${PG_PORT:+--port "$PG_PORT"} "$version" "$PG_CLUSTER" >&2
fi
port="$(cluster_field 3)"
if [ -n "${PG_PORT:-}" ] && [ "$port" != "$PG_PORT" ]; then
  die "cluster $version/$PG_CLUSTER listens on $port, not PG_PORT=$PG_PORT (pick another PG_CLUSTER)"
fi
if [ "$(cluster_field 4)" != online ]; then
  log "starting cluster $version/$PG_CLUSTER on 127.0.0.1:$port"
  # pg_ctlcluster drops to the postgres user itself when run as root
  pg_ctlcluster "$version" "$PG_CLUSTER" start >&2 || true
fi
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$port" ||
  die "cluster $version/$PG_CLUSTER is not accepting connections on 127.0.0.1:$port (see /var/log/postgresql/)"

# --- 3. role + database --------------------------------------------------------------------------
sql() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres -tA "$@"; }
password_sql="$(printf "%s" "$PG_PASSWORD" | sed "s/'/''/g")"
sql -c "DO \$\$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    ALTER ROLE \"$PG_USER\" LOGIN CREATEDB PASSWORD '$password_sql';
  ELSE
    CREATE ROLE \"$PG_USER\" LOGIN CREATEDB PASSWORD '$password_sql';
  END IF;
END \$\$;" >&2
if [ "$(sql -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
  log "creating database $PG_DB"
  sql -c "CREATE DATABASE \"$PG_DB\" OWNER \"$PG_USER\"" >&2
fi

# --- 4. check over TCP with the password, then print the URI --------------------------------------
PGPASSWORD="$PG_PASSWORD" psql -X -q -h 127.0.0.1 -p "$port" -U "$PG_USER" -d "$PG_DB" \
  -tA -c "SELECT 1" >/dev/null || die "cannot log in as $PG_USER over 127.0.0.1:$port"
uri="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$port/$PG_DB"
if [ -n "${PG_URI_FILE:-}" ]; then
  printf '%s\n' "$uri" >"$PG_URI_FILE"
fi
log "ready: $uri"
printf '%s\n' "$uri"
