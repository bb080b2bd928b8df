#!/usr/bin/env bash
# A local PostgreSQL for the Prefect server of large builds (`make postgres`): SQLite serves one
# machine's tens of task runs well, PostgreSQL many concurrent writers (a Dask cluster, several
# builds). Installs Debian's postgresql when missing, keeps the cluster in runs/postgres (ignored),
# listens on 127.0.0.1 only, and prints the setting that points Prefect at it. Idempotent.
#   make postgres            start (or reuse) it
#   make postgres-stop       stop it
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${POSTGRES_DATA:-runs/postgres}
PORT=${POSTGRES_PORT:-5433}
say() { printf '[postgres] %s\n' "$*"; }

if [ "${1:-start}" = stop ]; then
  [ -d "$DATA/cluster" ] && su postgres -c "$(ls -d /usr/lib/postgresql/*/bin | tail -1)/pg_ctl -D $DATA/cluster stop" || true
  exit 0
fi

if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's postgresql"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    say "ERROR: PostgreSQL is not installed; as root: apt-get install -y postgresql"; exit 1
  fi
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)
chown postgres "$DATA" 2>/dev/null || true
as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi; }

if [ ! -f "$DATA/cluster/PG_VERSION" ]; then
  say "creating a cluster in $DATA/cluster"
  as_postgres "$BIN/initdb -D $DATA/cluster -U postgres --auth=trust >/dev/null"
fi
if ! as_postgres "$BIN/pg_ctl -D $DATA/cluster status" >/dev/null 2>&1; then
  as_postgres "$BIN/pg_ctl -D $DATA/cluster -l $DATA/server.log -o '-c listen_addresses=127.0.0.1 -p $PORT -k $DATA' -w start" >/dev/null
fi
psql_() { psql -h 127.0.0.1 -p "$PORT" -U postgres -tAc "$1"; }
[ "$(psql_ "SELECT 1 FROM pg_roles WHERE rolname='prefect'")" = 1 ] || psql_ "CREATE ROLE prefect LOGIN PASSWORD 'prefect'" >/dev/null
[ "$(psql_ "SELECT 1 FROM pg_database WHERE datname='prefect'")" = 1 ] || psql_ "CREATE DATABASE prefect OWNER prefect" >/dev/null
URL="postgresql+asyncpg://prefect:prefect@127.0.0.1:$PORT/prefect"
say "running on 127.0.0.1:$PORT (data in $DATA/cluster)"
say "point the Prefect server at it, then start it (llama-recipe ui / build start it when none answers):"
echo "export PREFECT_API_DATABASE_CONNECTION_URL=$URL"
