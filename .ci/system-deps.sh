#!/usr/bin/env bash
# Installs the Debian packages the test suite needs when they are missing (CI runs as root):
# promtool and prometheus for the alert-rule and real-Prometheus tests, kubectl for the manifests,
# chromium and its driver for the console's browser tests (tests/e2e/test_console_browser.py), npm.
set -euo pipefail
missing=()
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
# npm installs the pinned openapi-typescript for tests/e2e/test_generated_client.py.
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        # Debian's prometheus package would start a server on :9090 (the tests run their own): a
        # policy-rc.d answering 101 tells the package scripts not to start any service, so nothing
        # has to be stopped, let alone ended by name, afterwards.
        policy=/usr/sbin/policy-rc.d
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod +x "$policy"
            trap 'rm -f "$policy"' EXIT
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "missing Debian packages: ${missing[*]} (run as root to install)" >&2
        exit 1
    fi
fi
