#!/bin/sh
# Entry point of the cira-db/postgres images, after the official image's:
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB (default: the user),
#   POSTGRES_HOST_AUTH_METHOD=trust to allow an empty password, PGDATA.
#   POSTGRES_TLS_CERT and POSTGRES_TLS_KEY (files in the container): TLS on, plain text over
#   TCP refused. Only a PostgreSQL built with OpenSSL can (docs/containers.md).
# Arguments starting with "-" go to postgres (docker run IMAGE -c fsync=off); others are run as is.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    if [ -n "${POSTGRES_TLS_CERT:-}" ]; then
        # the server wants its key private to its user: copy both where only it reads them
        tls=/var/lib/postgresql/tls
        mkdir -p "$tls"
        cp "$POSTGRES_TLS_CERT" "$tls/tls.crt"
        cp "${POSTGRES_TLS_KEY:?POSTGRES_TLS_KEY is needed with POSTGRES_TLS_CERT}" "$tls/tls.key"
        chown -R postgres:postgres "$tls"
        chmod 0700 "$tls"
        chmod 0600 "$tls/tls.key"
        export POSTGRES_TLS_CERT="$tls/tls.crt" POSTGRES_TLS_KEY="$tls/tls.key"
    fi
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
    echo "entrypoint: POSTGRES_PASSWORD is empty; set it (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
fi
auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:-unused}" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --no-locale \
        --auth-local=trust --auth-host="$auth" >/dev/null
    rm -f "$pwfile"
    if [ -n "${POSTGRES_TLS_CERT:-}" ]; then
        printf 'hostssl all all all %s\nhostnossl all all all reject\n' "$auth" >> "$PGDATA/pg_hba.conf"
    else
        printf 'host all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
    fi
    if [ "$POSTGRES_DB" != postgres ]; then
        printf 'CREATE DATABASE "%s"\n' "$POSTGRES_DB" \
            | postgres --single -D "$PGDATA" -c listen_addresses='' postgres >/dev/null
    fi
    echo "entrypoint: initialised $PGDATA for user $POSTGRES_USER, database $POSTGRES_DB"
fi

set -- -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
if [ -n "${POSTGRES_TLS_CERT:-}" ]; then
    set -- -c ssl=on -c ssl_cert_file="$POSTGRES_TLS_CERT" \
        -c ssl_key_file="${POSTGRES_TLS_KEY:?POSTGRES_TLS_KEY is needed with POSTGRES_TLS_CERT}" "$@"
fi
exec postgres -D "$PGDATA" "$@"
