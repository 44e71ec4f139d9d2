#!/usr/bin/env bash
# Make sure a command from a Debian package is installed, installing the package if not.
#
#   scripts/ensure-command.sh chromium          # the dashboard's browser tests (Playwright
#                                               # drives Debian's Chromium, never its own)
#   scripts/ensure-command.sh wrk               # the gateway benchmark's load generator
#   scripts/ensure-command.sh COMMAND PACKAGE   # when the package is named otherwise
#   scripts/ensure-command.sh /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf fonts-dejavu-core
#                                               # a file, not a command: invoice PDFs' font
#
# A no-op when COMMAND is on PATH (or, given as a path, exists). Installing needs root (or passwordless sudo) and a
# reachable Debian mirror.
set -euo pipefail

command_name=${1:?usage: ensure-command.sh COMMAND [PACKAGE]}
package=${2:-$command_name}

present() {
    if [[ $command_name == */* ]]; then
        [ -e "$command_name" ]
    else
        command -v "$command_name" >/dev/null 2>&1
    fi
}

if present; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "$command_name is missing; install it as root: apt-get install -y $package" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet; refresh only when the package is unknown.
if ! apt-cache show "$package" >/dev/null 2>&1; then
    "${as_root[@]}" apt-get update -q
fi
"${as_root[@]}" apt-get install -y -q "$package"

present || {
    echo "$package was installed but $command_name is still missing" >&2
    exit 1
}
