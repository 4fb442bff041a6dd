#!/bin/sh
# Entry point of the cira-db/pgbouncer image: the local RDS Proxy stand-in.
#   PGBOUNCER_UPSTREAM_HOST (required), PGBOUNCER_UPSTREAM_PORT (5432)
#   PGBOUNCER_USER, PGBOUNCER_PASSWORD: the one login, used both by clients and upstream
#   PGBOUNCER_POOL_MODE (transaction), PGBOUNCER_POOL_SIZE (5)
#   PGBOUNCER_TLS_CERT and PGBOUNCER_TLS_KEY (files in the container): client TLS required.
# A mounted /etc/pgbouncer/pgbouncer.ini is used as is.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

conf=/etc/pgbouncer
if [ ! -f "$conf/pgbouncer.ini" ]; then
    mkdir -p "$conf"
    : "${PGBOUNCER_UPSTREAM_HOST:?PGBOUNCER_UPSTREAM_HOST names the PostgreSQL server}"
    : "${PGBOUNCER_USER:?PGBOUNCER_USER is the login}"
    : "${PGBOUNCER_PASSWORD:?PGBOUNCER_PASSWORD is the login password}"
    printf '"%s" "%s"\n' "$PGBOUNCER_USER" "$PGBOUNCER_PASSWORD" > "$conf/userlist.txt"
    cat > "$conf/pgbouncer.ini" <<EOF
[databases]
* = host=${PGBOUNCER_UPSTREAM_HOST} port=${PGBOUNCER_UPSTREAM_PORT:-5432}
[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $conf/userlist.txt
pool_mode = ${PGBOUNCER_POOL_MODE:-transaction}
default_pool_size = ${PGBOUNCER_POOL_SIZE:-5}
max_client_conn = 200
server_login_retry = 1
ignore_startup_parameters = extra_float_digits
EOF
    if [ -n "${PGBOUNCER_TLS_CERT:-}" ]; then
        # client_tls_ca_file only matters for client certificates (not asked for); without
        # one pgbouncer looks for a system CA bundle this image does not have
        cp "$PGBOUNCER_TLS_CERT" "$conf/tls.crt"
        cp "${PGBOUNCER_TLS_KEY:?PGBOUNCER_TLS_KEY is needed with PGBOUNCER_TLS_CERT}" "$conf/tls.key"
        chmod 0600 "$conf/tls.key"
        cat >> "$conf/pgbouncer.ini" <<EOF
client_tls_sslmode = require
client_tls_cert_file = $conf/tls.crt
client_tls_key_file = $conf/tls.key
client_tls_ca_file = $conf/tls.crt
EOF
    fi
fi
if [ "$(id -u)" = 0 ]; then
    chown -R pgbouncer:pgbouncer "$conf"
    exec setpriv --reuid=pgbouncer --regid=pgbouncer --init-groups pgbouncer "$@" "$conf/pgbouncer.ini"
fi
exec pgbouncer "$@" "$conf/pgbouncer.ini"
