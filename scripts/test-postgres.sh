#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the store tests, on 127.0.0.1 (trust auth), port
# 55432 or, if another checkout holds that, a free one recorded in .cache/pgtest-port.
# Usage: scripts/test-postgres.sh start|stop|url|status|dir
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$(pwd)"
PGBIN=/usr/lib/postgresql/15/bin
PGDATA="$REPO/.cache/pgtest"
PGRUN="$REPO/.cache/pgtest-run"   # socket and lock directory
# As root the server runs as user postgres, which must be able to reach the checkout (a clone
# in a `mktemp -d` directory, mode 0700, is not): then the cluster lives under
# /var/lib/oneplatform/pgtest/, one per checkout.
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$REPO"; then
  key="$(printf '%s' "$REPO" | sha256sum | cut -c1-12)"
  PGDATA="/var/lib/oneplatform/pgtest/$key/data"
  PGRUN="/var/lib/oneplatform/pgtest/$key/run"
  mkdir -p "$(dirname "$PGDATA")"
fi
PORTFILE="$REPO/.cache/pgtest-port"
# 55432 unless another checkout's cluster holds it: then a free port, remembered per checkout.
if [ -f "$PORTFILE" ]; then
  PORT="$(cat "$PORTFILE")"
else
  PORT=55432
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
  mkdir -p "$REPO/.cache"
  echo "$PORT" >"$PORTFILE"
fi
URL="postgresql+psycopg://postgres@127.0.0.1:${PORT}/postgres"

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")  # from a directory postgres may enter
  else
    "$@"
  fi
}

running() {
  as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

init_cluster() {
  [ -f "$PGDATA/PG_VERSION" ] && return 0
  echo "test-postgres: initdb $PGDATA"
  mkdir -p "$PGDATA"
  rm -rf "${PGDATA:?}"/*
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  cat >"$PGDATA/pg_hba.conf" <<'EOF'
local   all   all                  trust
host    all   all   127.0.0.1/32   trust
EOF
  cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$PGRUN'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGDATA/pg_hba.conf"
  return 0
}

start() {
  init_cluster
  mkdir -p "$PGRUN"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGRUN"
  if running; then
    echo "test-postgres: already running on 127.0.0.1:$PORT"
    return 0
  fi
  as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 start >/dev/null
  echo "test-postgres: started on 127.0.0.1:$PORT"
}

stop() {
  if [ -f "$PGDATA/PG_VERSION" ] && running; then
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    echo "test-postgres: stopped"
  else
    echo "test-postgres: not running"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$URL" ;;
  dir) echo "$PGDATA" ;;
  status) if [ -f "$PGDATA/PG_VERSION" ] && running; then echo running; else echo stopped; exit 3; fi ;;
  *) echo "usage: $0 start|stop|url|status" >&2; exit 2 ;;
esac
