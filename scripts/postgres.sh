#!/usr/bin/env bash
# Start a private PostgreSQL server for tests (idempotent): trust auth on 127.0.0.1:${TRANSFERLAB_PGPORT:-54329},
# role "transferlab", database "transferlab_test", data in ${TRANSFERLAB_PGDATA:-/tmp/transferlab-postgres}.
# Tests reach it at $TRANSFERLAB_TEST_POSTGRES or, by default, the URL printed at the end.
# PostgreSQL refuses to run as root, so as root the server runs as the 'postgres' system user.
set -euo pipefail

port="${TRANSFERLAB_PGPORT:-54329}"
data="${TRANSFERLAB_PGDATA:-/tmp/transferlab-postgres}"
bin="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$bin" ]; then
    echo "postgres.sh: no PostgreSQL under /usr/lib/postgresql (install the 'postgresql' Debian package)" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then as_owner=(runuser -u postgres --); else as_owner=(); fi

if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    if [ ! -f "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
        "${as_owner[@]}" "$bin/initdb" -D "$data" -U transferlab --auth=trust -E UTF8 >/dev/null
    fi
    "${as_owner[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
        -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=50 -c fsync=off" start >/dev/null
fi
if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U transferlab -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'transferlab_test'" | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U transferlab transferlab_test
fi
echo "postgresql://transferlab@127.0.0.1:$port/transferlab_test"
