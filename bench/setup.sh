#!/bin/bash
# Install the peers the benchmarks compare against into the stock ruby:
# async and io-event from RubyGems, io-event built against the series'
# static liburing so that its URing selector exists.  Also gnuplot (Debian)
# for the charts, when run as root.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
stock=$top/build/stock/ruby/bin
[ -x "$stock/ruby" ] || { echo "bench/setup.sh: run 'make stock' first" >&2; exit 1; }
[ -f "$top/build/liburing/lib/liburing.a" ] || make -C "$top" liburing
"$stock/gem" install --no-document io-event -- --with-opt-dir="$top/build/liburing"
"$stock/gem" install --no-document async
"$stock/ruby" -e 'require "io/event"; abort "io-event has no URing selector" unless defined?(IO::Event::Selector::URing)'
if ! command -v gnuplot >/dev/null && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends gnuplot-nox >/dev/null
fi
