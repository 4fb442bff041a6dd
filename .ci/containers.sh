#!/usr/bin/env bash
# The container pass (docs/containers.md), called from .ci/run:
#   1. a Docker engine: the one that answers, else Debian's docker.io installed and dockerd
#      started as root on a socket of its own (so other test runs on this machine keep their
#      embedded server), stopped again at the end;
#   2. the local images (make images: offline, cached);
#   3. the tests that need containers' own network addresses (tests/test_containers.py), which
#      must not skip, then the focused subset and the plugin's tests through the plugin's Docker
#      path (CIRA_DB_TEST_IMAGE=cira-db/postgres:16; the list is CONTAINER in .ci/suites.sh).
# Where no engine can be had the pass says so and is skipped (exit 0, "SKIPPED" in the log);
# with CIRA_DB_REQUIRE_CONTAINERS=1 that is a failure instead.
set -euo pipefail
cd "$(dirname "$0")/.."
started_at=$(date +%s)
socket_dir=/run/cira-db-docker
own_pid=""

say() { echo "ci containers: $*"; }
skip() {
    if [ "${CIRA_DB_REQUIRE_CONTAINERS:-0}" = 1 ]; then
        say "FAILED: $* (CIRA_DB_REQUIRE_CONTAINERS=1)" >&2
        exit 1
    fi
    say "SKIPPED: $*; no container test ran"
    exit 0
}
answers() { timeout 10 docker version >/dev/null 2>&1; }
stop_own_engine() {
    if [ -n "$own_pid" ] && kill -0 "$own_pid" 2>/dev/null; then
        # containers this pass started are removed by the tests; stop what is left, then the engine
        docker ps -q --filter label=org.testcontainers=true | xargs -r docker rm -f >/dev/null 2>&1 || true
        kill "$own_pid"
        for _ in $(seq 1 30); do kill -0 "$own_pid" 2>/dev/null || break; sleep 0.5; done
        say "stopped the engine it started (pid $own_pid)"
    fi
    say "took $(( $(date +%s) - started_at )) s"
}
trap stop_own_engine EXIT

# -- 1. the engine ----------------------------------------------------------------------------
if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing docker.io"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null) \
            || skip "docker.io could not be installed"
    fi
fi
command -v docker >/dev/null || skip "no docker command"

if [ -n "${DOCKER_HOST:-}" ] && answers; then
    say "using the engine at DOCKER_HOST=$DOCKER_HOST"
elif unset DOCKER_HOST && [ -S /var/run/docker.sock ] && answers; then
    say "using the engine at /var/run/docker.sock"
elif export DOCKER_HOST="unix://$socket_dir/docker.sock" && answers; then
    say "using the engine at $DOCKER_HOST"
else
    [ "$(id -u)" = 0 ] || skip "no Docker engine answers and starting one needs root"
    command -v dockerd >/dev/null || skip "no Docker engine answers and dockerd is not installed"
    mkdir -p "$socket_dir"
    say "starting dockerd at $DOCKER_HOST"
    dockerd -H "$DOCKER_HOST" --pidfile "$socket_dir/dockerd.pid" >"$socket_dir/dockerd.log" 2>&1 &
    own_pid=$!
    for _ in $(seq 1 60); do answers && break; kill -0 "$own_pid" 2>/dev/null || break; sleep 0.5; done
    answers || skip "dockerd did not start: $(tail -n 3 "$socket_dir/dockerd.log" | tr '\n' ' ')"
fi
export DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}"
export TESTCONTAINERS_RYUK_DISABLED="${TESTCONTAINERS_RYUK_DISABLED:-true}"

# -- 2. the images ----------------------------------------------------------------------------
make --no-print-directory images

# -- 3. the tests -----------------------------------------------------------------------------
unset CIRA_DB_TEST_URL CIRA_DB_TEST_VIA_PGBOUNCER
export CIRA_DB_TEST_IMAGE=cira-db/postgres:16   # asks for Docker: no silent fallback

say "the container tests (real network addresses: TLS by host name, restarts, a partition)"
CIRA_DB_CONTAINER_TESTS=required .venv/bin/python -m pytest -p no:cacheprovider -q \
    tests/test_containers.py

say "the focused subset and the plugin's tests through the plugin's Docker path ($CIRA_DB_TEST_IMAGE)"
# the first pass of .ci/run ran the whole suite on PostgreSQL 16; this one looks for what the
# Docker route changes (CONTAINER in .ci/suites.sh)
# shellcheck source=.ci/suites.sh
source .ci/suites.sh
suite_log=$(mktemp)
.venv/bin/python -m pytest -p no:cacheprovider -q "${CONTAINER[@]}" | tee "$suite_log"
grep -q "cira_db test server: testcontainers $CIRA_DB_TEST_IMAGE" "$suite_log" \
    || { say "FAILED: the suite did not run on $CIRA_DB_TEST_IMAGE" >&2; exit 1; }
say "passed"
