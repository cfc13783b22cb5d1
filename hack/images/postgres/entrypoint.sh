#!/bin/sh
# The official postgres image's environment contract, which the chart relies on: an empty PGDATA is
# initialised (UTF-8, C.UTF-8: the migrations fail on SQL_ASCII) with POSTGRES_USER as superuser,
# POSTGRES_PASSWORD as its password and POSTGRES_DB created; then the server runs in the foreground.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "stalk-postgres: POSTGRES_PASSWORD is empty; set it (the chart takes it from its Secret)" >&2
    exit 1
  fi
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  # Inside the pod the socket is trusted (as in the official image); over TCP a password is needed.
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    # Single-user mode: no server, no socket, nothing listening before the database exists.
    name=$(printf '%s' "$POSTGRES_DB" | sed 's/"/""/g')
    echo "CREATE DATABASE \"$name\"" | postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "stalk-postgres: initialised $PGDATA (UTF8, C.UTF-8), database $POSTGRES_DB, user $POSTGRES_USER"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
