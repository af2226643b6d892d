#!/usr/bin/env bash
# Makes sure the PostgreSQL server the tests use answers on 127.0.0.1:5432 (tests/support/
# postgres.py). Idempotent: when it answers, it does nothing; prints what it did either way.
#
#   bash scripts/ensure-postgres.sh
#
# `make test` runs it after `make system`, before pytest. When the server does not answer it
# starts the local cluster (Debian's `pg_ctlcluster`) and waits, a bounded time, until it
# accepts connections. On a machine without PostgreSQL it installs Debian's `postgresql` (as
# root; as anyone else it prints the command) and lets the tests in without a password from
# this host only (trust for 127.0.0.1 and ::1 in that new cluster's pg_hba.conf).
#
# GATEWAY_TEST_POSTGRES (a maintenance database URL) points the tests at another server: then
# this script only checks that it answers.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
WAIT_S=30

answers() {
    if [ -n "${GATEWAY_TEST_POSTGRES:-}" ]; then
        pg_isready -q -t 2 -d "$GATEWAY_TEST_POSTGRES"
    else
        pg_isready -q -t 2 -h "$HOST" -p "$PORT"
    fi
}

cluster_version() {
    # The newest version that has a cluster named `main` (empty: none).
    local version
    [ -d /etc/postgresql ] || return 0
    for version in $(ls /etc/postgresql | sort -V -r); do
        if [ -f "/etc/postgresql/$version/main/postgresql.conf" ]; then
            echo "$version"
            return 0
        fi
    done
}

if [ -n "${GATEWAY_TEST_POSTGRES:-}" ]; then
    if command -v pg_isready >/dev/null 2>&1 && answers; then
        echo "postgresql: the server of GATEWAY_TEST_POSTGRES answers (nothing to do)"
        exit 0
    fi
    echo "postgresql: the server of GATEWAY_TEST_POSTGRES does not answer; start it" >&2
    exit 1
fi

if command -v pg_isready >/dev/null 2>&1 && answers; then
    echo "postgresql: answering on $HOST:$PORT (nothing to do)"
    exit 0
fi

version=$(cluster_version)
if [ -z "$version" ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    install=(apt-get install -y --no-install-recommends postgresql)
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "postgresql: not installed, and the tests need a server on $HOST:$PORT" >&2
        echo "install it as root:  apt-get update && ${install[*]}" >&2
        echo "(or set GATEWAY_TEST_POSTGRES to a server's maintenance database URL)" >&2
        exit 1
    fi
    echo "postgresql: not installed; installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    "${install[@]}"
    version=$(cluster_version)
    if [ -z "$version" ]; then
        echo "postgresql: installed, but no cluster 'main' was created" >&2
        exit 1
    fi
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    # A new cluster on a test machine: the tests connect as `postgres` without a password.
    sed -i -E 's/^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1\/32|::1\/128)[[:space:]]+).*$/\1trust/' "$hba"
    echo "postgresql: cluster $version/main created; trusting connections from this host ($hba)"
fi

echo "postgresql: not answering on $HOST:$PORT; starting cluster $version/main"
pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for ((i = 1; i <= WAIT_S; i++)); do
    if answers; then
        echo "postgresql: cluster $version/main answering on $HOST:$PORT after ${i} check(s)"
        exit 0
    fi
    sleep 1 # the poll interval of a bounded wait
done
echo "postgresql: cluster $version/main does not answer on $HOST:$PORT after ${WAIT_S} s" >&2
log="/var/log/postgresql/postgresql-$version-main.log"
if [ -r "$log" ]; then tail -n 20 "$log" >&2; fi
exit 1
