#!/bin/bash
# The postgres image's entrypoint, as far as manifests/postgres.yaml relies on it (its contract is
# written at the top of that manifest), for the stand-in image of scripts/stand-in-images.sh. This
# is written from that contract, not copied: the official docker-entrypoint.sh does more (running
# as root and stepping down, nss_wrapper for a uid without a passwd entry, compressed init files,
# POSTGRES_HOST_AUTH_METHOD), none of which the manifest uses.
#
# On a first start (no $PGDATA/PG_VERSION): initdb as POSTGRES_USER with POSTGRES_PASSWORD, every
# address allowed with scram-sha-256 passwords, POSTGRES_DB created, /docker-entrypoint-initdb.d/*.sql
# run with psql against it over the socket; then the server, listening on every address.
set -Eeuo pipefail

if [ "${1:-}" = postgres ]; then
  : "${PGDATA:?PGDATA must be set}"
  mkdir -p "$PGDATA" /var/run/postgresql
  # Not root: these may fail on a volume that is not ours to chmod; initdb checks what matters.
  chmod 700 "$PGDATA" 2>/dev/null || true
  chmod 3775 /var/run/postgresql 2>/dev/null || true
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
      echo "postgres-entrypoint: POSTGRES_PASSWORD must be set for the first start" >&2
      exit 1
    fi
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments, as the official image reads it
    initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") -D "$PGDATA" ${POSTGRES_INITDB_ARGS:-}
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all $(postgres -D "$PGDATA" -C password_encryption)" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
    psql=(psql -v ON_ERROR_STOP=1 --username "$user" --no-password --no-psqlrc)
    if [ "$db" != postgres ] && [ -z "$(echo "SELECT 1 FROM pg_database WHERE datname = :'db';" | "${psql[@]}" --dbname postgres -tA -v db="$db")" ]; then
      echo 'CREATE DATABASE :"db";' | "${psql[@]}" --dbname postgres -v db="$db"
    fi
    for f in /docker-entrypoint-initdb.d/*; do
      case $f in
        *.sql) echo "postgres-entrypoint: running $f"; "${psql[@]}" --dbname "$db" -f "$f" ;;
        *.sh) echo "postgres-entrypoint: sourcing $f"; . "$f" ;;
        *) [ -e "$f" ] && echo "postgres-entrypoint: ignoring $f" ;;
      esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "postgres-entrypoint: initialized $PGDATA"
  fi
fi
exec "$@"
