#!/usr/bin/env bash
# Checks the locked packages for known vulnerabilities with pip-audit (`make audit`, part of
# `make test`).
#
#   scripts/audit.sh VENV LOCK [--ignore-vuln ID ...]
#
# A known vulnerability fails, with its advisory named (accepted ones are listed, with why and
# until when, in .pip-audit-ignore). A package the vulnerability service cannot answer for is
# named; when it could answer for none at all (a machine whose package index serves packages
# but no vulnerability data), the check says loudly that NOTHING was checked and passes, unless
# STRICT_AUDIT=1, which fails then. SECURITY.md, "Supply chain", says how to run it elsewhere.
set -uo pipefail
venv=$1 lock=$2
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$venv/bin/pip-audit" --require-hashes --disable-pip --progress-spinner off \
    --requirement "$lock" "$@" >"$out" 2>&1
status=$?
cat "$out"
if [[ $status -ne 0 ]]; then
    echo "make audit FAILED: a known vulnerability (named above), or pip-audit could not run." \
        "Accepting an advisory: .pip-audit-ignore (SECURITY.md, Supply chain)" >&2
    exit 1
fi
packages=$(grep -cE '^[A-Za-z0-9_.-]+==' "$lock")
unchecked=$(grep -c 'could not be audited' "$out")
if [[ $unchecked -ge $packages ]]; then
    echo "WARNING: NOTHING WAS CHECKED for known vulnerabilities: the vulnerability service" \
        "answered for none of the $packages locked packages (this machine's package index" \
        "serves no vulnerability data). Run \`make audit\` where it answers." >&2
    if [[ -n ${STRICT_AUDIT:-} ]]; then
        exit 1
    fi
elif [[ $unchecked -gt 0 ]]; then
    echo "WARNING: $unchecked of $packages locked packages could not be checked (named above)" >&2
fi
