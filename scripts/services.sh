#!/usr/bin/env bash
# Install the system packages tests and tools rely on, if missing (Debian/Ubuntu; idempotent, safe to re-run).
# Each entry is "command-that-proves-it-is-installed:debian-package"; add new services as new entries.
set -euo pipefail

NEEDED=(
    "chromium:chromium"  # headless browser test of report.html (tests/test_report_browser.py)
    "pg_ctlcluster:postgresql"  # study storage for the two-worker head-search test (tests/test_search_postgres.py)
)

missing=()
for entry in "${NEEDED[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash "$(dirname "$0")/postgres.sh"  # start the private test server (idempotent)
