#!/bin/bash
# Make sure the Debian packages the build needs are installed.  As root the
# missing ones are installed with apt-get; otherwise they are named.
#
#   tools/deps.sh [PACKAGE...]     also these (`make test-gdb`: gdb)
set -euo pipefail
need=()
for pkg in autoconf bison gcc make pkg-config libssl-dev libyaml-dev libffi-dev \
           zlib1g-dev libreadline-dev libgmp-dev xz-utils "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "deps: please install these Debian packages: ${need[*]}" >&2
    exit 1
fi
echo "deps: installing ${need[*]}"
apt-get -qq update
DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${need[@]}" >/dev/null
