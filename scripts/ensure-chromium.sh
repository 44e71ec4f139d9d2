#!/usr/bin/env bash
# Make sure Debian's Chromium is installed: the dashboard's browser tests drive it with
# Playwright (`executable_path=shutil.which("chromium")`), and Playwright must never
# download a browser of its own.
#
#   scripts/ensure-chromium.sh        # no-op when `chromium` is on PATH
#
# Installing needs root (or passwordless sudo) and a reachable Debian mirror.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "chromium is missing; install it as root: apt-get install -y chromium" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet; refresh only when the package is unknown.
if ! apt-cache show chromium >/dev/null 2>&1; then
    "${as_root[@]}" apt-get update -q
fi
"${as_root[@]}" apt-get install -y -q chromium

command -v chromium >/dev/null 2>&1 || {
    echo "chromium was installed but is not on PATH" >&2
    exit 1
}
