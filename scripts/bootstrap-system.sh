#!/usr/bin/env bash
# Installs the Debian packages the tests need, when they are missing. Idempotent: once
# everything is there it installs nothing and touches no network.
#
#   bash scripts/bootstrap-system.sh
#
# `make test` runs it first (the `system` target). As root it runs `apt-get update` once and
# then `apt-get install -y`; as anyone else it prints the command to run and exits non-zero.
set -euo pipefail

# One entry per Debian package: "package:check[,check...]" — the package counts as installed
# when every check holds: a command is on PATH, or a path (one with a '/', globs allowed) exists.
REQUIRED=(
    # promtool (`check rules`, `test rules`) and the server for tests/observability.
    "prometheus:prometheus,promtool"
    # Headless browser for the /status page test (tests/observability/test_status_chromium.py).
    "chromium:chromium"
    # The load generator of `invoice-gateway bench` (tests/unit/tools/bench/ runs it once).
    "wrk:wrk"
    # The fast upstream and the reference reverse proxy of the bench's pass-through scenario.
    "nginx:nginx"
    # LD_PRELOAD library that jumps a process's wall clock (the clock-jump test in
    # tests/integration/test_resilience.py).
    "libfaketime:/usr/lib/*/faketime/libfaketime.so.1"
    # The connection pooler replicas may sit behind (tests/integration/test_pgbouncer.py).
    "pgbouncer:pgbouncer"
    # Alertmanager and amtool: the shipped alert routing is checked and tested
    # (deploy/alertmanager, tests/observability/test_alert_delivery.py).
    "prometheus-alertmanager:prometheus-alertmanager,amtool"
    # `systemd-analyze verify` on deploy/invoice-gateway.service (tests/deploy/test_systemd.py).
    "systemd:systemd-analyze"
)

present() {
    if [[ $1 == */* ]]; then
        compgen -G "$1" >/dev/null
    else
        command -v "$1" >/dev/null 2>&1
    fi
}

missing=()
for entry in "${REQUIRED[@]}"; do
    package=${entry%%:*}
    IFS=, read -r -a checks <<<"${entry#*:}"
    for check in "${checks[@]}"; do
        if ! present "$check"; then
            missing+=("$package")
            break
        fi
    done
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi

install=(apt-get install -y --no-install-recommends "${missing[@]}")
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system packages missing: ${missing[*]}" >&2
    echo "this is not a Debian-like system; install them with its package manager" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "system packages missing: ${missing[*]}" >&2
    echo "run as root:  apt-get update && ${install[*]}" >&2
    exit 1
fi

echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
"${install[@]}"
