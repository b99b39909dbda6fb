#!/bin/sh
# Start PostgreSQL 15 in the foreground; initialise the data directory on first start.
# Minimal on purpose: a guest agent will take this job over later.
set -eu

PGBIN=/usr/lib/postgresql/15/bin
PGDATA="${PGDATA:-/var/lib/oneplatform/pgdata}"
export PGDATA

# The server keeps its socket and lock files here; /var/run is often a fresh tmpfs.
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"
chmod 2775 /var/run/postgresql

if [ -z "$(ls -A "$PGDATA")" ]; then
    echo "onep-pg-start: initialising $PGDATA" >&2
    pwfile=""
    if [ -n "${ONEP_PG_PASSWORD:-}" ]; then
        pwfile="$(mktemp)"
        printf '%s\n' "$ONEP_PG_PASSWORD" >"$pwfile"
        chown postgres "$pwfile"
    fi
    runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres \
        --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 \
        ${pwfile:+--pwfile="$pwfile"} >&2
    [ -n "$pwfile" ] && rm -f "$pwfile"
    cat >"$PGDATA/pg_hba.conf" <<'HBA'
# TYPE  DATABASE     USER  ADDRESS     METHOD
local   all          all               trust
local   replication  all               trust
host    all          all   0.0.0.0/0   scram-sha-256
host    all          all   ::/0        scram-sha-256
host    replication  all   0.0.0.0/0   scram-sha-256
host    replication  all   ::/0        scram-sha-256
HBA
    cat >>"$PGDATA/postgresql.conf" <<'CONF'
listen_addresses = '*'
password_encryption = 'scram-sha-256'
logging_collector = off
log_destination = 'stderr'
jit = off  # the image leaves out the LLVM JIT provider
CONF
    chown postgres:postgres "$PGDATA/pg_hba.conf" "$PGDATA/postgresql.conf"
fi

unset ONEP_PG_PASSWORD

# setpriv execs in place (runuser/su would stay as a parent that SIGKILLs the server
# two seconds after forwarding a SIGTERM), so the server gets signals directly.
exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
    "$PGBIN/postgres" -D "$PGDATA" -c logging_collector=off -c log_destination=stderr
