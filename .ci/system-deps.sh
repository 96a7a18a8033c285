#!/usr/bin/env bash
# Installs the Debian packages the test suite needs when they are missing (CI runs as root).
set -euo pipefail
missing=()
command -v python3 >/dev/null || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}"
    else
        echo "missing Debian packages: ${missing[*]} (run as root to install)" >&2
        exit 1
    fi
fi
