#!/usr/bin/env bash
# initdb on first start, the POSTGRES_USER's role and POSTGRES_DB, then the server in the foreground
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | head -1)
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  "$bin/initdb" -D "$PGDATA" --auth=md5 --username=postgres --pwfile=<(echo "${POSTGRES_PASSWORD:?}") >/dev/null
  "$bin/pg_ctl" -D "$PGDATA" -o "-p $PGPORT -k /tmp -c listen_addresses=''" -w start >/dev/null
  PGPASSWORD=$POSTGRES_PASSWORD psql -h /tmp -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -q <<SQL
CREATE ROLE "${POSTGRES_USER:-postgres}" LOGIN PASSWORD '${POSTGRES_PASSWORD}' SUPERUSER;
CREATE DATABASE "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" OWNER "${POSTGRES_USER:-postgres}";
SQL
  "$bin/pg_ctl" -D "$PGDATA" -w stop >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -p "$PGPORT" -k /tmp -c listen_addresses="${LISTEN:-*}"
